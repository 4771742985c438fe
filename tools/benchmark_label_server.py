"""Time repeated interactive requests against a running MONAI Label server (apps/sam_bundles).

    python tools/benchmark_label_server.py --server http://127.0.0.1:8000 --model medsam --image ct_abdomen_3mm \
        --label ../shared/data/totalseg_ct/ct_abdomen_3mm_labels.nii.gz --label_value 5 --repeats 3 \
        --output_md docs/label_server_benchmark.md

Sends the same prompt ``repeats`` times on one image (an ROI box around ``label_value`` for box models, three
foreground clicks on it for click models), as an annotator refining a structure does. Start the server just
before, so that the first request finds no cached embeddings; run once with ``--conf embedding_cache_mb 0`` on
the server for the no-reuse baseline. Reports the client's wall time and the server's own ``infer`` latency (s)
per request, and the embedding cache's hits / misses.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.atomic import write_text_atomic  # noqa: E402


def prompt_for(model_info: dict, mask: np.ndarray) -> dict:
    """Slicer-style request prompts for ``mask`` (file voxel indices): ``roi`` or three ``foreground`` clicks."""
    voxels = np.argwhere(mask)
    if not len(voxels):
        raise ValueError("the label value does not occur in the label file")
    if "boxes" in model_info["prompts"]:
        lo, hi = voxels.min(0), voxels.max(0)
        return {"roi": [int(v) for pair in zip(lo, hi) for v in pair]}
    picks = voxels[np.linspace(0, len(voxels) - 1, 3).astype(int)]
    return {"foreground": [[int(v) for v in p] for p in picks], "background": []}


def benchmark(
    server: str, model: str, image: str, label: str, label_value: int, repeats: int = 3, output_md: str | None = None
) -> list[dict]:
    client = MONAILabelClient(server)
    models = client.info()["models"]
    if model not in models:
        raise ValueError(f"model '{model}' is not served by {server}; it serves {sorted(models)}")
    info = models[model]
    mask = np.asarray(nib.load(label).dataobj) == label_value
    params = prompt_for(info, mask)
    rows = []
    for index in range(repeats):
        start = time.perf_counter()
        _, result = client.infer(model, image, dict(params))
        rows.append(
            {
                "request": index + 1,
                "wall_s": time.perf_counter() - start,
                "infer_s": result["latencies"]["infer"],
                **result.get("embedding_cache", {}),
            }
        )
        print(rows[-1])
    if output_md:
        lines = [
            f"Model `{model}`, image `{image}`, prompt {params}, server {server}.",
            "",
            "| request | wall (s) | server infer (s) | cache hits | cache misses |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['request']} | {r['wall_s']:.2f} | {r['infer_s']:.2f} | {r.get('hits', '-')} | "
            f"{r.get('misses', '-')} |"
            for r in rows
        ]
        write_text_atomic(output_md, "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    fire.Fire(benchmark)
