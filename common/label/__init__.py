"""MONAI Label integration: serve the bundles with their prompts (needs the ``monailabel`` extra).

``prompts`` and ``cache`` import no monailabel and are usable anywhere; ``infer`` and ``app`` need
``pip install .[monailabel]``. The app itself is ``apps/sam_bundles/main.py``.
"""
