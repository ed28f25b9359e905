"""Facts about the installed llama-cpp-python build, and its llama.cpp RPC backend.

Run ``meshp2p doctor`` to check the build: meshp2p needs the
llama.cpp RPC backend (``-DGGML_RPC=ON``) to split models across nodes.

Splitting a model's layers (``docs/rpc-notes.md`` has the measurements): in the
process that loads the model, and before it loads, check each worker with
``rpc_endpoint_reachable`` and register it with ``register_rpc_servers``; plan
with ``split_fractions`` and ``split_layers``; create ``llama_cpp.Llama`` inside
``split_model_params()`` with ``n_gpu_layers`` and ``tensor_split`` from the plan.
Registration is process-global and llama.cpp aborts the whole process when a
worker's connection fails, so this only ever runs in a child process.
"""

from __future__ import annotations

import ctypes
import functools
import math
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import WorkerError

REQUIRED_VERSION = "0.3.36"
BUILD_HINT = (
    'reinstall it with RPC: CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir '
    f"--force-reinstall --no-deps llama-cpp-python=={REQUIRED_VERSION}"
)

GGML_BACKEND_DEVICE_TYPE_CPU = 0
GGML_BACKEND_DEVICE_TYPE_GPU = 1

OUTPUT_TENSORS = r"^(output|output_norm|token_embd)\.weight$"
"""The output layer's weights. Models with tied embeddings (Gemma) use a second
copy of ``token_embd.weight`` as the output matrix, so it is named here too."""


def library_dir() -> Path:
    """The folder holding llama-cpp-python's shared libraries."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise WorkerError(f"llama-cpp-python is not installed; {BUILD_HINT}")
    return Path(spec.origin).parent / "lib"


def _by_soname(stem: str) -> Path | None:
    # Wheels copy shared libraries instead of symlinking them, so ``libggml.so``
    # and ``libggml.so.0`` are distinct files; only the soname is the copy libllama
    # loaded. Loading another one gives a second ggml registry that llama never sees.
    for name in (f"{stem}.so.0", f"{stem}.0.dylib", f"{stem}.dylib"):
        path = library_dir() / name
        if path.exists():
            return path
    return None


def rpc_library() -> Path:
    """The RPC backend library, by the soname libllama links against."""
    path = _by_soname("libggml-rpc")
    if path is None:
        raise WorkerError(f"llama-cpp-python was built without the RPC backend; {BUILD_HINT}")
    return path


def ggml_library() -> Path:
    """ggml's backend registry library, by the soname libllama links against."""
    path = _by_soname("libggml")
    if path is None:
        raise WorkerError(f"llama-cpp-python's libggml is missing; {BUILD_HINT}")
    return path


class GgmlLibraries:
    """The ggml registry and RPC libraries that libllama uses, with the C signatures we call.

    The signatures are those of the vendored ``ggml/include/ggml-backend.h`` and
    ``ggml-rpc.h`` of llama-cpp-python 0.3.36 (RPC protocol v7).
    """

    def __init__(self) -> None:
        vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        self.ggml = ctypes.CDLL(str(ggml_library()))
        self.rpc = ctypes.CDLL(str(rpc_library()))
        g, r = self.ggml, self.rpc
        _sig(g.ggml_backend_register, None, vp)  # void (ggml_backend_reg_t)
        _sig(g.ggml_backend_dev_count, sz)  # size_t (void)
        _sig(g.ggml_backend_dev_get, vp, sz)  # ggml_backend_dev_t (size_t)
        _sig(g.ggml_backend_dev_by_type, vp, ctypes.c_int)  # (enum ggml_backend_dev_type)
        _sig(g.ggml_backend_dev_name, cp, vp)
        _sig(g.ggml_backend_dev_description, cp, vp)
        _sig(g.ggml_backend_dev_type, ctypes.c_int, vp)
        _sig(g.ggml_backend_dev_memory, None, vp, ctypes.POINTER(sz), ctypes.POINTER(sz))
        _sig(g.ggml_backend_dev_backend_reg, vp, vp)
        _sig(g.ggml_backend_reg_name, cp, vp)
        _sig(g.ggml_backend_dev_buffer_type, vp, vp)
        # ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint)
        _sig(r.ggml_backend_rpc_add_server, vp, cp)
        # void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir,
        #     size_t n_threads, size_t n_devices, ggml_backend_dev_t * devices)
        _sig(r.ggml_backend_rpc_start_server, None, cp, cp, sz, sz, ctypes.POINTER(vp))

    def cpu_device(self) -> int:
        dev: int | None = self.ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
        if not dev:
            raise WorkerError(f"llama.cpp has no CPU backend; {BUILD_HINT}")
        return dev

    def devices(self) -> list[int]:
        """Every registered device, in registry order (the CPU first)."""
        count: int = self.ggml.ggml_backend_dev_count()
        return [self.ggml.ggml_backend_dev_get(i) for i in range(count)]

    def device_name(self, dev: int) -> str:
        return bytes(self.ggml.ggml_backend_dev_name(dev)).decode()

    def device_description(self, dev: int) -> str:
        return bytes(self.ggml.ggml_backend_dev_description(dev)).decode()

    def device_memory(self, dev: int) -> tuple[int, int]:
        """(free, total) bytes; for an RPC device this is a round trip to its server."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def is_rpc_device(self, dev: int) -> bool:
        """llama.cpp's own test for an RPC device: GPU type, backend named "RPC"."""
        if self.ggml.ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_GPU:
            return False
        reg = self.ggml.ggml_backend_dev_backend_reg(dev)
        return bool(reg) and bytes(self.ggml.ggml_backend_reg_name(reg)) == b"RPC"


def _sig(fn: Any, restype: Any, *argtypes: Any) -> None:
    fn.restype = restype
    fn.argtypes = list(argtypes)


@functools.cache
def ggml_libraries() -> GgmlLibraries:
    """Loaded once per process: the registry they hold is process-global anyway."""
    return GgmlLibraries()


@dataclass(frozen=True)
class RpcDevice:
    """A remote llama.cpp RPC device, as registered in this process.

    ``index`` is its position in the device list llama.cpp builds for a model,
    which is the index of its share in ``tensor_split``.
    """

    endpoint: str
    name: str  # ggml's name, "RPC0", "RPC1"... numbered in registration order
    index: int
    memory_free: int
    memory_total: int


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` as llama.cpp's RPC client reads it (IPv4 only); ValueError if not."""
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"RPC endpoint {endpoint!r} is not host:port")
    return host, int(port_text)


def rpc_endpoint_reachable(endpoint: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``endpoint`` opens within ``timeout`` seconds.

    llama.cpp connects without a timeout and aborts the process when the
    connection fails, so a caller checks here first. A listening socket is all
    this proves: a server busy with another client (it serves one at a time)
    also accepts here, and llama.cpp would then wait for it.
    """
    host, port = parse_endpoint(endpoint)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(infos[0][4])
    except OSError:
        return False
    return True


_registered: dict[str, int] = {}  # endpoint -> ggml_backend_reg_t, per process


def register_rpc_servers(endpoints: Sequence[str], timeout: float = 2.0) -> list[RpcDevice]:
    """Make each endpoint's devices available to the next ``llama_cpp.Llama`` of this process.

    Returns the devices of ``endpoints`` in order. llama.cpp puts RPC devices
    first in a model's device list, in registration order, then local GPUs; the
    host CPU is not in the list (it takes the layers ``n_gpu_layers`` leaves
    over). Registering an endpoint again is a no-op. Raises ``WorkerError``,
    before registering any, when an endpoint does not accept a connection.
    """
    for endpoint in endpoints:
        parse_endpoint(endpoint)
    unreachable = [e for e in endpoints if e not in _registered]
    unreachable = [e for e in unreachable if not rpc_endpoint_reachable(e, timeout)]
    if unreachable:
        raise WorkerError(f"RPC server not reachable: {', '.join(unreachable)}")
    libs = ggml_libraries()
    for endpoint in endpoints:
        if endpoint in _registered:
            continue
        reg: int | None = libs.rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise WorkerError(f"RPC server {endpoint} offers no devices")
        libs.ggml.ggml_backend_register(reg)
        _registered[endpoint] = reg
    rpc_devices = [dev for dev in libs.devices() if libs.is_rpc_device(dev)]
    found: list[RpcDevice] = []
    for endpoint in endpoints:
        for index, dev in enumerate(rpc_devices):
            if libs.device_description(dev) == endpoint:
                free, total = libs.device_memory(dev)
                found.append(RpcDevice(endpoint, libs.device_name(dev), index, free, total))
    return found


def split_fractions(host_memory: int, worker_memories: Sequence[int]) -> list[float]:
    """Each node's share of a model's layers, in proportion to the memory it offers.

    Returns ``[host, worker 0, worker 1, ...]``, summing to 1. Feed it to
    ``split_layers``: llama.cpp's ``tensor_split`` has no entry for the host CPU.
    """
    memories = [host_memory, *worker_memories]
    if any(m < 0 for m in memories):
        raise ValueError("memory sizes must not be negative")
    total = sum(memories)
    if total <= 0:
        raise ValueError("no memory offered: cannot split a model over nothing")
    return [m / total for m in memories]


@dataclass(frozen=True)
class LayerSplit:
    """How many of a model's repeating layers each node holds, as llama.cpp parameters.

    llama.cpp gives a model's *last* ``n_gpu_layers`` slots to its devices (the
    repeating layers, then one slot for the output layer) and the rest to the
    host CPU, cutting the slots at the cumulative ``tensor_split`` points.
    """

    host_layers: int
    worker_layers: tuple[int, ...]

    @property
    def n_gpu_layers(self) -> int:
        """Worker layers plus the output layer's slot (kept on the host by
        ``split_model_params``); 0 when nothing goes to a worker."""
        offloaded = sum(self.worker_layers)
        return offloaded + 1 if offloaded else 0

    @property
    def tensor_split(self) -> list[float] | None:
        """Whole layer counts per RPC device; the last one also holds the output slot."""
        if not self.n_gpu_layers:
            return None
        shares = [float(n) for n in self.worker_layers]
        shares[-1] += 1.0
        return shares


def split_layers(n_layers: int, fractions: Sequence[float]) -> LayerSplit:
    """Whole layers per node from ``split_fractions``' shares, by largest remainder.

    Ties go to the earlier node, so the host keeps a layer before a worker does.
    """
    if n_layers < 0 or not fractions or any(f < 0 or not math.isfinite(f) for f in fractions):
        raise ValueError("need n_layers >= 0 and finite, non-negative fractions")
    total = sum(fractions)
    if total <= 0:
        raise ValueError("fractions sum to zero")
    exact = [n_layers * f / total for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n_layers - sum(counts)]:
        counts[i] += 1
    return LayerSplit(host_layers=counts[0], worker_layers=tuple(counts[1:]))


class _TensorBuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override {
    #     const char * pattern; ggml_backend_buffer_type_t buft; };
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@contextmanager
def split_model_params(
    keep_on_host: str | None = OUTPUT_TENSORS, cpu_repack: bool = False
) -> Iterator[None]:
    """Within this block, each ``llama_cpp.Llama`` created loads with two changes.

    ``keep_on_host``: a regex; weights whose names match stay in host memory
    whatever ``n_gpu_layers`` says (llama.cpp's ``--override-tensor PATTERN=CPU``).
    The default keeps the output layer home, so the logits over the whole
    vocabulary are computed where they are used instead of travelling back for
    each token. ``cpu_repack``: llama.cpp repacks some quantised weights for the
    host CPU's faster kernels, which an RPC worker's plain CPU buffer does not,
    so a split's greedy output equals a solo run's only when both leave it off.

    llama-cpp-python has no argument for either, so this wraps the
    ``llama_model_default_params`` it builds its parameters from. Process-global:
    create models from one thread.
    """
    import llama_cpp.llama_cpp as bindings

    overrides = (_TensorBuftOverride * 2)()  # NULL-terminated
    if keep_on_host is not None:
        libs = ggml_libraries()
        cpu_buft = libs.ggml.ggml_backend_dev_buffer_type(libs.cpu_device())
        overrides[0] = _TensorBuftOverride(keep_on_host.encode(), cpu_buft)
    original = bindings.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = cpu_repack
        params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return params

    bindings.llama_model_default_params = patched
    try:
        yield  # the model loader reads the overrides only while loading
    finally:
        bindings.llama_model_default_params = original


def main() -> int:
    try:
        path = rpc_library()
    except WorkerError as exc:
        print(f"meshp2p: {exc}", file=sys.stderr)
        return 1
    print(f"llama.cpp RPC backend: {path}")
    return 0
