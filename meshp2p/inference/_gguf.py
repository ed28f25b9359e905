"""The layout of a GGUF file: its layer count and where each tensor's bytes lie.

Placement needs a model's layer count and the size of the tensors that stay on the
host; the ``/mesh/rpc-tensor`` host tunnel needs each tensor's byte range in the file
to send references instead of weights. ``gguf.GGUFReader`` builds numpy views of every
metadata value (about 20 s for a 262k-token vocabulary), so this reads the header
itself: metadata values are skipped except the few needed, then the tensor infos.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ModelError
from ._llamacpp import OUTPUT_TENSORS

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# Metadata value types: fixed sizes, 8 = string, 9 = array.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINTS = {0: "<B", 2: "<H", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4
_MAX_TENSORS = 1 << 20

HOST_ONLY_TENSORS = re.compile(OUTPUT_TENSORS)
"""The tensors a split keeps on its host: the pattern ``_llamacpp`` overrides to the CPU."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int
    """Absolute offset of the tensor's data in the file."""
    n_bytes: int


@dataclass(frozen=True)
class GgufLayout:
    path: Path
    architecture: str
    n_layers: int
    """``<arch>.block_count``: the model's repeating layers."""
    file_size: int
    tensors: tuple[TensorInfo, ...]

    @functools.cached_property
    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def layers_bytes(self, n: int) -> int:
        """About what ``n`` repeating layers take: the file less the host-only tensors,
        shared equally among the layers, rounded up (as placement counts them)."""
        return -(-n * (self.file_size - self.host_only_bytes) // self.n_layers)

    @property
    def host_only_bytes(self) -> int:
        """Bytes of the tensors a split keeps on its host (embeddings, output layer)."""
        return sum(t.n_bytes for t in self.tensors if HOST_ONLY_TENSORS.match(t.name))


class _Reader:
    def __init__(self, buf: Any, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ModelError(f"{self.path}: GGUF header is cut short")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.pos + length > len(self.buf):
            raise ModelError(f"{self.path}: GGUF string runs past the end of the file")
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        length = self.take("<Q")
        self.pos += length

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _FIXED:
            if keep and vtype in _UINTS:
                return self.take(_UINTS[vtype])
            self.pos += _FIXED[vtype]
            return None
        if vtype == _STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if vtype == _ARRAY:
            item_type = self.take("<I")
            count = self.take("<Q")
            if item_type in _FIXED:
                self.pos += _FIXED[item_type] * count
            else:
                for _ in range(count):
                    self.value(item_type, False)
            return None
        raise ModelError(f"{self.path}: unknown GGUF metadata type {vtype}")


def _type_sizes() -> dict[int, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


@functools.lru_cache(maxsize=16)
def _read_cached(path: Path, size: int, mtime_ns: int) -> GgufLayout:
    sizes = _type_sizes()
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, path)
        if bytes(buf[:4]) != _MAGIC:
            raise ModelError(f"{path} is not a GGUF file")
        r.pos = 4
        version = r.take("<I")
        if version not in (2, 3):
            raise ModelError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors = r.take("<Q")
        n_kv = r.take("<Q")
        if n_tensors > _MAX_TENSORS:
            raise ModelError(f"{path}: {n_tensors} tensors is more than a GGUF holds")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.take("<I")
            wanted = key in ("general.architecture", "general.alignment") or key.endswith(
                ".block_count"
            )
            meta[key] = r.value(vtype, wanted)
        raw: list[tuple[str, int, tuple[int, ...], int]] = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.take("<I")
            if n_dims > _MAX_DIMS:
                raise ModelError(f"{path}: tensor {name} has {n_dims} dimensions")
            shape = tuple(r.take("<Q") for _ in range(n_dims))
            ggml_type = r.take("<I")
            offset = r.take("<Q")
            raw.append((name, ggml_type, shape, offset))
        alignment = meta.get("general.alignment") or _DEFAULT_ALIGNMENT
        data_start = -(-r.pos // alignment) * alignment
    arch = meta.get("general.architecture") or ""
    n_layers = meta.get(f"{arch}.block_count")
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ModelError(f"{path}: no {arch}.block_count in the GGUF metadata")
    tensors = []
    for name, ggml_type, shape, offset in raw:
        if ggml_type not in sizes:
            raise ModelError(f"{path}: tensor {name} has unknown ggml type {ggml_type}")
        block, type_size = sizes[ggml_type]
        elements = 1
        for dim in shape:
            elements *= dim
        n_bytes = elements // block * type_size
        start = data_start + offset
        if start + n_bytes > size:
            raise ModelError(f"{path}: tensor {name} runs past the end of the file")
        tensors.append(TensorInfo(name, ggml_type, shape, start, n_bytes))
    return GgufLayout(path, arch, n_layers, size, tuple(tensors))


def read_layout(path: Path) -> GgufLayout:
    """The layout of the GGUF at ``path`` (cached per path, size and mtime).

    Raises ModelError for a file that is not a GGUF this reader understands.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from None
    return _read_cached(path, st.st_size, st.st_mtime_ns)
