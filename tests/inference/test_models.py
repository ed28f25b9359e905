"""Tests of model ids, the sha256 cache, catalog loading and ModelStore.resolve."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshp2p._errors import ChecksumError, ConfigError, ModelError, ModelNotFoundError
from meshp2p.inference._models import (
    DEFAULT_MODEL,
    CatalogEntry,
    ModelStore,
    default_home,
    load_catalog,
    model_id_for_path,
)
from meshp2p.inference._progress import ProgressBar, quiet_progress

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_SIZE = 253_113_024


def _gguf(path: Path, body: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + body)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-Q4_K_M"),
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Llama-3.2-1B-Instruct-Q4_K_M"),
        ("qwen2.5-0.5b-instruct-q8_0.gguf", "qwen2.5-0.5b-instruct-Q8_0"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("model-f16.gguf", "model-F16"),
        ("model.bf16.gguf", "model.BF16"),
        ("phi-3-mini-iq4_xs.gguf", "phi-3-mini-IQ4_XS"),
        ("mistral-7b-q5_k_s.GGUF", "mistral-7b-Q5_K_S"),
        ("tiny-iq2_xxs.gguf", "tiny-IQ2_XXS"),
        ("my-finetune.gguf", "my-finetune"),
        ("f16.gguf", "f16"),
        ("model_q4.gguf", "model_q4"),
    ],
)
def test_model_id_for_path(name: str, expected: str) -> None:
    assert model_id_for_path(Path("/models") / name) == expected


def test_split_gguf_is_rejected() -> None:
    with pytest.raises(ModelError, match="split GGUF"):
        model_id_for_path(Path("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"))


def test_sha256_is_cached_in_sidecar_and_invalidated(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = _gguf(store.models_dir / "m-q4_0.gguf", b"one")
    assert store.sha256(path) == _sha(b"GGUFone")

    sidecar = path.with_name("m-q4_0.gguf.sha256")
    record = json.loads(sidecar.read_text())
    assert record["size"] == path.stat().st_size
    assert record["mtime_ns"] == path.stat().st_mtime_ns

    # A planted digest with matching size and mtime is returned: the cache is really used.
    sidecar.write_text(json.dumps({**record, "sha256": "b" * 64}))
    assert store.sha256(path) == "b" * 64

    # Same size, new mtime: recomputed.
    path.write_bytes(b"GGUFtwo")
    os.utime(path, ns=(record["mtime_ns"] + 5_000_000_000,) * 2)
    assert store.sha256(path) == _sha(b"GGUFtwo")

    # New size, same mtime: recomputed.
    mtime_ns = path.stat().st_mtime_ns
    path.write_bytes(b"GGUFthree")
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert store.sha256(path) == _sha(b"GGUFthree")


def test_corrupt_sidecar_is_ignored(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = _gguf(store.models_dir / "m.gguf")
    path.with_name("m.gguf.sha256").write_text("{not json")
    assert store.sha256(path) == _sha(path.read_bytes())


def test_list_returns_gguf_files_sorted_by_id(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _gguf(store.models_dir / "zeta-q8_0.gguf", b"z")
    _gguf(store.models_dir / "alpha-q4_k_m.gguf", b"a")
    _gguf(store.models_dir / "split-00001-of-00002.gguf")
    (store.models_dir / "notes.txt").write_text("hi")
    (store.models_dir / "half.gguf.part").write_bytes(b"GGUF")
    (store.models_dir / "fake.gguf").write_bytes(b"<html>")

    models = store.list()

    assert [m.id for m in models] == ["alpha-Q4_K_M", "zeta-Q8_0"]
    assert models[0].path == store.models_dir / "alpha-q4_k_m.gguf"
    assert models[0].size == 5
    assert models[0].sha256 == _sha(b"GGUFa")


def test_resolve_existing_path_is_used_in_place(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home")
    outside = _gguf(tmp_path / "elsewhere" / "mine-q6_k.gguf")

    model = store.resolve(str(outside))

    assert model.path == outside.resolve()
    assert model.id == "mine-Q6_K"
    assert model.sha256 == _sha(outside.read_bytes())
    assert list(store.models_dir.glob("*.gguf")) == []


def test_resolve_file_name_and_id_in_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = _gguf(store.models_dir / "tiny-llama-q4_k_m.gguf")
    empty: dict[str, CatalogEntry] = {}

    by_name = store.resolve("tiny-llama-q4_k_m.gguf", catalog=empty)
    by_id = store.resolve("tiny-llama-Q4_K_M", catalog=empty)
    by_folded_id = store.resolve("TINY-LLAMA-q4_k_m", catalog=empty)

    assert by_name == by_id == by_folded_id
    assert by_id.path == path.resolve()
    assert by_id.id == "tiny-llama-Q4_K_M"


def test_resolve_unknown_lists_what_it_tried(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _gguf(store.models_dir / "have-q8_0.gguf")
    catalog = {"cat-model": CatalogEntry("cat-model", "http://x/y.gguf", "y.gguf", 1, "c" * 64)}

    with pytest.raises(ModelNotFoundError) as info:
        store.resolve("nope", catalog=catalog)

    message = str(info.value)
    assert "\n" not in message
    assert "'nope'" in message and "cat-model" in message and "have-Q8_0" in message


def test_resolve_unknown_name_lists_packaged_catalog(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=DEFAULT_MODEL):
        ModelStore(tmp_path).resolve("no-such-model")


def test_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"<!DOCTYPE html>")
    with pytest.raises(ModelError, match="not a GGUF model file"):
        ModelStore(tmp_path / "home").resolve(str(bad))


def test_directory_path_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    with pytest.raises(ModelError, match="is a directory"):
        ModelStore(tmp_path / "home").resolve(str(folder))


def test_split_file_path_is_rejected(tmp_path: Path) -> None:
    part = _gguf(tmp_path / "big-q4_k_m-00001-of-00003.gguf")
    with pytest.raises(ModelError, match="split GGUF"):
        ModelStore(tmp_path / "home").resolve(str(part))


def test_packaged_catalog_has_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHP2P_HUB_ENDPOINT", raising=False)
    catalog = load_catalog()

    default = catalog[DEFAULT_MODEL]
    assert default.sha256 == GEMMA_SHA256
    assert default.size == GEMMA_SIZE
    assert default.filename == "gemma-3-270m-q4_k_m.gguf"
    for entry in catalog.values():
        assert entry.url.startswith("https://huggingface.co/")
        assert entry.url.endswith(".gguf")
        # The catalog name is the id the store gives the downloaded file.
        assert model_id_for_path(Path(entry.filename)) == entry.name


def test_hub_endpoint_env_rebases_catalog_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHP2P_HUB_ENDPOINT", "http://mirror.example:8080/hf/")
    for entry in load_catalog().values():
        assert entry.url.startswith("http://mirror.example:8080/hf/")
        assert "//" not in entry.url.removeprefix("http://")


def test_bad_hub_endpoint_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHP2P_HUB_ENDPOINT", "mirror.example")
    with pytest.raises(ConfigError, match="MESHP2P_HUB_ENDPOINT"):
        load_catalog()


def test_malformed_catalog_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": [{"name": "x", "path": "/x", "filename": "x.gguf"}]}))
    with pytest.raises(ConfigError, match="malformed"):
        load_catalog(path)


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHP2P_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("MESHP2P_HOME")
    assert default_home() == Path.home() / ".meshp2p"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving the files under a directory."""
    root = tmp_path / "hub"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _write_catalog(path: Path, data: bytes) -> Path:
    entry = {
        "name": "tiny-Q4_K_M",
        "path": "/org/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf",
        "filename": "tiny-Q4_K_M.gguf",
        "size": len(data),
        "sha256": _sha(data),
        "description": "test model",
    }
    path.write_text(json.dumps({"models": [entry]}))
    return path


def test_catalog_model_is_downloaded_through_resolve(
    hub: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, root = hub
    data = b"GGUF" + os.urandom(200_000)
    _gguf(root / "org/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf", data[4:])
    monkeypatch.setenv("MESHP2P_HUB_ENDPOINT", base_url)
    catalog = load_catalog(_write_catalog(tmp_path / "catalog.json", data))
    assert catalog["tiny-Q4_K_M"].url.startswith(base_url + "/org/")
    store = ModelStore(tmp_path / "home")

    model = store.resolve("tiny-Q4_K_M", catalog=catalog)

    assert model.id == "tiny-Q4_K_M"
    assert model.path == store.models_dir / "tiny-Q4_K_M.gguf"
    assert model.path.read_bytes() == data
    assert model.sha256 == _sha(data)
    assert [m.id for m in store.list()] == ["tiny-Q4_K_M"]

    # Once stored, the hub is not needed any more.
    (root / "org/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf").unlink()
    assert store.resolve("tiny-Q4_K_M", catalog=catalog) == model


def test_catalog_model_with_wrong_stored_file_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _gguf(store.models_dir / "tiny-Q4_K_M.gguf", b"tampered")
    catalog = {
        "tiny-Q4_K_M": CatalogEntry(
            "tiny-Q4_K_M", "http://127.0.0.1:9/x", "tiny-Q4_K_M.gguf", 12, "d" * 64
        )
    }
    with pytest.raises(ChecksumError, match="delete the file"):
        store.resolve("tiny-Q4_K_M", catalog=catalog)


def test_default_model_with_wrong_contents_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _gguf(store.models_dir / "gemma-3-270m-q4_k_m.gguf", b"not the real weights")
    with pytest.raises(ChecksumError, match="rebuild the default model"):
        store.ensure_default()


def test_ensure_default_assembles_the_real_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    seen: list[int | None] = []

    def progress(label: str, total: int | None) -> ProgressBar:
        seen.append(total)
        return quiet_progress(label, total)

    model = store.ensure_default(progress)

    assert model.id == DEFAULT_MODEL
    assert model.path == store.models_dir / "gemma-3-270m-q4_k_m.gguf"
    assert model.size == GEMMA_SIZE == model.path.stat().st_size
    assert seen == [GEMMA_SIZE]
    # Hash the bytes on disk independently of the store's cache.
    hasher = hashlib.sha256()
    with model.path.open("rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    assert hasher.hexdigest() == model.sha256 == GEMMA_SHA256
    assert not (store.models_dir / "gemma-3-270m-q4_k_m.gguf.part").exists()

    # A second call and a resolve by catalog name reuse the file untouched.
    mtime_ns = model.path.stat().st_mtime_ns
    assert store.ensure_default() == model
    assert store.resolve(DEFAULT_MODEL) == model
    assert model.path.stat().st_mtime_ns == mtime_ns
