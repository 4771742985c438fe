"""Image encoders run by OpenVINO on the CPU: exported from the loaded torch encoder at first use, cached on disk.

:func:`set_encoder_backend` makes ``network.image_encoder`` compute through OpenVINO (``"openvino"``), or through
torch again (``"torch"``); ``"auto"`` is OpenVINO where it is installed and the encoder is on the CPU, else torch.
The prompt encoder, the mask decoder and every embedding cache on top of ``encode`` stay as they are.

At the first call for an input shape the encoder (as it is then: BatchNorms folded, eval mode) is converted with
``openvino.convert_model`` and saved as ``<cache_dir>/<EncoderClass>-<weights sha256, 16 hex>-<B>x<C>x<H>x<W>.xml``
(+ ``.bin``, written atomically): new weights or another input size give another file, a later process reads the
file instead of converting (seconds for TinyViT, a minute for ViT-B). Without ``cache_dir``, or where it cannot be
written, the converted model lives in memory only. Precision is a compile-time hint on the same file: ``"float32"``
(OpenVINO's ``f32``; its default on AMX/AVX512-BF16 CPUs would be bf16) or ``"bf16"``.

Only encoders with one image in and one embedding out run here: an encoder that passes features on
through its ``context`` (HQ-SAMUS's early features, SAMUS's CNN branch) raises ``ValueError`` naming ``"torch"``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from common.networks.precision import resolve_precision

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "auto")
OPENVINO_HINT = 'install it with: pip install -e ".[openvino]" (tools/setup.sh does), or use encoder_backend "torch"'

__all__ = ["BACKENDS", "OpenVINOEncoder", "openvino_installed", "resolve_backend", "set_encoder_backend"]


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"openvino"`` where it is installed and ``device`` is the CPU, else ``"torch"``. Unknown names,
    and ``"openvino"`` where it cannot run, raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"encoder_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        return "openvino" if openvino_installed() and device.type == "cpu" else "torch"
    if backend == "openvino" and device.type != "cpu":
        raise ValueError(f"encoder_backend 'openvino' runs on the CPU; the network is on {device}: use 'torch'")
    if backend == "openvino" and not openvino_installed():
        raise ValueError(f"encoder_backend 'openvino': OpenVINO is not installed; {OPENVINO_HINT}")
    return backend


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over ``module``'s state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _ImageOnly(nn.Module):
    """``encoder`` as a function of the image alone, through its own class's torch ``forward`` (an instance-level
    ``forward``, i.e. this backend or bf16 autocast, is bypassed)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.encoder).forward(self.encoder, x)


class OpenVINOEncoder:
    """Stands in for ``encoder.forward``: ``(B, C, H, W)`` float -> the torch encoder's output, computed by
    OpenVINO in ``precision`` (``"float32"`` / ``"bf16"``), one compiled model per input shape."""

    def __init__(self, encoder: nn.Module, precision: str = "float32", cache_dir: str | None = None) -> None:
        if precision not in ("float32", "bf16"):
            raise ValueError(f"OpenVINO precision must be 'float32' or 'bf16', got {precision!r}")
        self.encoder, self.precision, self.cache_dir = encoder, precision, cache_dir
        self.compiled: dict[tuple[int, ...], Any] = {}
        self._sha256: str | None = None
        self.conversions = 0  # torch -> OpenVINO conversions made by this instance (a cache hit makes none)
        self.output_count: int | None = None  # None: one tensor out; n: a list of n tensors (the 3-D encoder)

    def refresh(self) -> None:
        """Forget the compiled models if the encoder's weights changed since they were made (weights reloaded in
        place, as MONAI Label does)."""
        if self._sha256 is not None and weights_sha256(self.encoder) != self._sha256:
            self.compiled.clear()
            self._sha256 = None

    def model_path(self, shape: tuple[int, ...]) -> str | None:
        """The cached IR (``.xml``) for this encoder's weights and input ``shape``; None without ``cache_dir``."""
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.encoder)
        if self.cache_dir is None:
            return None
        name = f"{type(self.encoder).__name__}-{self._sha256[:16]}-{'x'.join(map(str, shape))}.xml"
        return os.path.join(self.cache_dir, name)

    def _read_or_convert(self, example: torch.Tensor):
        import openvino as ov

        path = self.model_path(tuple(example.shape))
        if path is not None and os.path.isfile(path):
            try:
                return ov.Core().read_model(path)
            except RuntimeError as e:  # a damaged file: convert again and replace it
                logger.warning(f"cannot read the cached OpenVINO model {path} ({e}); converting again")
        self._check_image_only(example)
        logger.info(
            f"converting the {type(self.encoder).__name__} image encoder to OpenVINO for {tuple(example.shape)}"
        )
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: one shape
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace")  # how OpenVINO converts, not ours
            model = ov.convert_model(_ImageOnly(self.encoder).eval(), example_input=example)
        self.conversions += 1
        if path is not None:
            self._save(model, path)
        return model

    def _check_image_only(self, example: torch.Tensor) -> None:
        """Run the torch encoder once before converting it: it must leave its context empty and return a tensor or
        a list of them (the 3-D encoder's feature pyramid)."""
        context: dict[str, Any] = {}
        with torch.no_grad():
            try:
                out = type(self.encoder).forward(self.encoder, example, context=context)
            except TypeError:  # no context argument
                out = type(self.encoder).forward(self.encoder, example)
        if context:
            raise ValueError(
                f"{type(self.encoder).__name__} fills its context with {sorted(context)} (features its blocks or the "
                "decoder read); encoder_backend 'openvino' runs encoders with one image in and one embedding out: "
                "use 'torch'"
            )
        outputs = [out] if isinstance(out, torch.Tensor) else list(out)
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            raise ValueError(f"{type(self.encoder).__name__} returns {type(out).__name__}: use encoder_backend 'torch'")

    @staticmethod
    def _save(model, path: str) -> None:
        """``.bin`` then ``.xml`` renamed into place (a reader sees both or no ``.xml``); unwritable folders warn."""
        import openvino as ov

        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with tempfile.TemporaryDirectory(dir=os.path.dirname(path), prefix=".tmp_openvino_") as tmp:
                ov.save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
                os.replace(os.path.join(tmp, "model.bin"), path[: -len(".xml")] + ".bin")
                os.replace(os.path.join(tmp, "model.xml"), path)
        except OSError as e:
            logger.warning(f"cannot cache the OpenVINO model in {os.path.dirname(path)} ({e}); keeping it in memory")

    def compiled_for(self, example: torch.Tensor):
        shape = tuple(example.shape)
        if shape not in self.compiled:
            import openvino as ov

            config = {
                "INFERENCE_PRECISION_HINT": "f32" if self.precision == "float32" else "bf16",
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            }
            model = self._read_or_convert(example)
            self.output_count = None if len(model.outputs) == 1 else len(model.outputs)
            self.compiled[shape] = ov.Core().compile_model(model, "CPU", config)
        return self.compiled[shape]

    def __call__(self, x: torch.Tensor, context: dict[str, Any] | None = None) -> torch.Tensor | list[torch.Tensor]:
        if context:
            raise ValueError("encoder_backend 'openvino' cannot fill an encoder context: use 'torch'")
        x = x.detach().float().contiguous()
        result = self.compiled_for(x)(x.cpu().numpy(), share_inputs=True, share_outputs=False)
        outputs = [torch.from_numpy(result[i]).to(x.device) for i in range(self.output_count or 1)]
        return outputs[0] if self.output_count is None else outputs


def set_encoder_backend(
    network: nn.Module, backend: str = "torch", precision: str = "float32", cache_dir: str | None = None
) -> str:
    """Compute ``network.image_encoder`` with ``backend`` (see the module docstring) in ``precision`` (``"auto"``
    resolved for the CPU); returns the backend in effect. With ``"torch"`` an OpenVINO stand-in set earlier is
    removed (precision is then :func:`common.networks.precision.set_encoder_precision`'s job); asked again with the
    same settings, the compiled models are kept unless the weights changed. A network without an image encoder
    stays on torch."""
    encoder = getattr(network, "image_encoder", None)
    device = next(encoder.parameters()).device if isinstance(encoder, nn.Module) else torch.device("cpu")
    resolved = resolve_backend(backend, device)
    if not isinstance(encoder, nn.Module):
        return "torch"
    precision = resolve_precision(precision, device)
    current = encoder.__dict__.get("forward")
    if isinstance(current, OpenVINOEncoder):
        if resolved == "openvino" and (current.precision, current.cache_dir) == (precision, cache_dir):
            current.refresh()  # asked again (MONAI Label: every request): keep the compiled models if still valid
            return resolved
        del encoder.forward
    if resolved == "openvino":
        if current is not None and not isinstance(current, OpenVINOEncoder):
            del encoder.forward  # a bf16 autocast wrapper: OpenVINO takes the precision itself
        encoder.forward = OpenVINOEncoder(encoder, precision, cache_dir)
        logger.info(f"image encoder: OpenVINO, {precision} (cache: {cache_dir or 'memory only'})")
    return resolved
