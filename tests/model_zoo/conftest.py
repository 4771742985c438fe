"""pytest does not collect this folder's files: they are plain ``unittest`` modules for model-zoo CI and run, each in
its own process, through tests/bundles/test_model_zoo_unittests.py. Collected directly they would also clash with
tests/unit/test_msa.py (same module name ``test_msa`` without package ``__init__`` files: "import file mismatch")."""

collect_ignore_glob = ["test_*.py"]
