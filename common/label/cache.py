"""Image-embedding reuse across interactive requests on the same image."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable

import torch


def _detached(embeddings: Any) -> Any:
    """A tensor, or a tuple / NamedTuple of tensors (HQ-SAMUS: embeddings and its early feature), detached."""
    if isinstance(embeddings, torch.Tensor):
        return embeddings.detach()
    return type(embeddings)(*(t.detach() for t in embeddings))


def _nbytes(embeddings: Any) -> int:
    tensors = [embeddings] if isinstance(embeddings, torch.Tensor) else list(embeddings)
    return sum(t.element_size() * t.nelement() for t in tensors)


class StackEmbeddingCache:
    """Memoise ``encode(images) -> embeddings`` on the whole input tensor, bounded in memory.

    The key covers the entire ``(B, C, H, W)`` input (bytes, shape and dtype), not each item: MSA's depth branch
    mixes the slices of one stack, so a slice's embedding depends on its neighbours and per-item keys
    (``common.networks.medsam.EmbeddingCache``) would be wrong there. Least recently used entries are dropped
    once the cached embeddings exceed ``max_bytes``. Thread-safe.

    Args:
        encode: the frozen image encoder call, e.g. ``Sam.encode``: ``(B, 3, S, S) -> (B, 256, S/16, S/16)`` (or a
            tuple of tensors, as HQ-SAMUS's ``encode``).
        max_bytes: memory bound for the stored embeddings, in bytes.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_bytes: int):
        self.encode = encode
        self.max_bytes = int(max_bytes)
        self.store: OrderedDict[str, Any] = OrderedDict()
        self.stored_bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(images: torch.Tensor) -> str:
        digest = hashlib.sha1(f"{tuple(images.shape)}{images.dtype}".encode())
        digest.update(images.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Any:
        key = self.key(images)
        with self._lock:
            if key in self.store:
                self.hits += 1
                self.store.move_to_end(key)
                return self.store[key]
        embeddings = self.encode(images)
        with self._lock:
            self.misses += 1
            if key not in self.store:  # another thread may have stored it meanwhile
                self.store[key] = _detached(embeddings)
                self.stored_bytes += _nbytes(embeddings)
            while self.store and self.stored_bytes > self.max_bytes:
                _, dropped = self.store.popitem(last=False)
                self.stored_bytes -= _nbytes(dropped)
        return embeddings


def cache_image_embeddings(network: torch.nn.Module, max_bytes: int) -> StackEmbeddingCache | None:
    """Route ``network.encode`` (SAM-style models: MedSAM, MSA) through a :class:`StackEmbeddingCache`.

    Returns the cache, or None when the model has no prompt-independent ``encode`` step to reuse (3DSAM-adapter:
    its encoder input is a patch centred on the clicks, so it changes with them). Idempotent.
    """
    current = network.__dict__.get("encode")
    if isinstance(current, StackEmbeddingCache):
        return current
    encode = getattr(network, "encode", None)
    if not callable(encode):
        return None
    cache = StackEmbeddingCache(encode, max_bytes)
    # setattr: torch types Module.__setattr__ for tensors and modules only; other values become plain attributes
    setattr(network, "encode", cache)
    return cache
