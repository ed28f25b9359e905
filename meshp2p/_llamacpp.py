"""Facts about the installed llama-cpp-python build that meshp2p relies on.

Run ``python -m meshp2p._llamacpp`` to check the build: meshp2p needs the
llama.cpp RPC backend (``-DGGML_RPC=ON``) to split models across nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._errors import WorkerError

REQUIRED_VERSION = "0.3.36"
BUILD_HINT = (
    'reinstall it with RPC: CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir '
    f"--force-reinstall --no-deps llama-cpp-python=={REQUIRED_VERSION}"
)


def library_dir() -> Path:
    """The folder holding llama-cpp-python's shared libraries."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise WorkerError(f"llama-cpp-python is not installed; {BUILD_HINT}")
    return Path(spec.origin).parent / "lib"


def rpc_library() -> Path:
    """The RPC backend library, by the soname libllama links against.

    Wheels copy shared libraries instead of symlinking them, so ``libggml-rpc.so``
    and ``libggml-rpc.so.0`` are distinct files; loading the wrong one gives a
    second ggml registry that llama never sees.
    """
    for name in ("libggml-rpc.so.0", "libggml-rpc.dylib", "libggml-rpc.0.dylib"):
        path = library_dir() / name
        if path.exists():
            return path
    raise WorkerError(f"llama-cpp-python was built without the RPC backend; {BUILD_HINT}")


def main() -> int:
    try:
        path = rpc_library()
    except WorkerError as exc:
        print(f"meshp2p: {exc}", file=sys.stderr)
        return 1
    print(f"llama.cpp RPC backend: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
