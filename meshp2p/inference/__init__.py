"""Inference: models on disk and llama.cpp in supervised child processes.

- ``ModelStore``: GGUF files under ``<home>/models`` by path, file name, model id
  or catalog name (downloads resume and are checked by sha256); the default model
  assembled from its PyPI package.
- ``InferenceWorker``: keeps one llama.cpp child serving a model on 127.0.0.1,
  restarted with backoff; ``Engine`` is the generation loop inside that child.
- ``read_layout``: a GGUF's layers and tensor sizes, for placement.
- ``emulate_tools``: tool calls for models whose chat template has none (the tools in
  the prompt, calls held to their schemas by a llama.cpp grammar); ``Embedder``:
  embeddings in a llama.cpp context of their own.
"""

from ._embed import Embedder
from ._engine import Delta, Engine, Finish, PreparedRequest
from ._gguf import GgufLayout, read_layout
from ._models import DEFAULT_MODEL, CatalogEntry, ModelFile, ModelStore, default_home, load_catalog
from ._progress import ProgressBar, ProgressFactory
from ._toolcalls import ToolCall, parse_tool_calls
from ._toolemu import ToolEmulation, emulate_tools
from ._worker import InferenceWorker, Launch, Placement, Unplaceable, WorkerSettings, WorkerState

__all__ = [
    "DEFAULT_MODEL",
    "CatalogEntry",
    "Delta",
    "Embedder",
    "Engine",
    "Finish",
    "GgufLayout",
    "InferenceWorker",
    "Launch",
    "ModelFile",
    "ModelStore",
    "Placement",
    "PreparedRequest",
    "ProgressBar",
    "ProgressFactory",
    "ToolCall",
    "ToolEmulation",
    "Unplaceable",
    "WorkerSettings",
    "WorkerState",
    "default_home",
    "emulate_tools",
    "load_catalog",
    "parse_tool_calls",
    "read_layout",
]
