"""``/mesh/rpc-tensor/1.0.0``: lend and borrow memory to split a model's layers.

llama.cpp's own RPC backend, unmodified, runs through an authenticated tunnel:
the host's llama.cpp talks to a 127.0.0.1 port (``TensorTunnel``, ``open_tunnels``)
that carries each connection as a ``/mesh/rpc-tensor`` stream to a worker, whose
``TensorServer`` runs a llama.cpp RPC server of its own on 127.0.0.1.

- Sans-I/O core: the hello records, ``HostRewriter`` / ``WorkerRewriter`` (tensor
  uploads sent as references into a GGUF file both sides hold), and the llama.cpp
  RPC stream parser ``RpcRequestParser``.
- ``plan_placement``: where a model runs (solo, or which layers on which workers),
  a pure function of a ``MeshView``.
"""

from ._placement import LayerAssignment, PlacementPlan, plan_placement, tensor_split
from ._protocol import (
    PROTOCOL_ID,
    HostHello,
    HostRewriter,
    Refused,
    ResponseFilter,
    RewriteCounters,
    WorkerHello,
    WorkerRewriter,
)
from ._rpc_wire import RpcCommand, RpcRequestParser, RpcTensor
from ._service import (
    RPC_TENSOR,
    LocalFiles,
    TensorServer,
    TensorTunnel,
    WorkerUnavailable,
    open_tunnels,
)

__all__ = [
    "PROTOCOL_ID",
    "RPC_TENSOR",
    "HostHello",
    "HostRewriter",
    "LayerAssignment",
    "LocalFiles",
    "PlacementPlan",
    "Refused",
    "ResponseFilter",
    "RewriteCounters",
    "RpcCommand",
    "RpcRequestParser",
    "RpcTensor",
    "TensorServer",
    "TensorTunnel",
    "WorkerHello",
    "WorkerRewriter",
    "WorkerUnavailable",
    "open_tunnels",
    "plan_placement",
    "tensor_split",
]
