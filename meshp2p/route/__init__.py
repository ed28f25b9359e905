"""``/mesh/route/1.0.0``: OpenAI requests between mesh nodes, and tables for clients.

- Sans-I/O core: the message records, ``RouteClientExchange`` and
  ``RouteServerExchange`` (state machines with size limits), ``RoutingTable``.
- Trio drivers: ``RouteServer`` answers members' requests with a node's workers;
  ``route_request`` (or ``RemoteUpstream``) sends one request to a node and
  streams its answer; ``RoutingTableClient`` keeps a passive client's table.
- ``RequestRouter`` picks the host for each API request (this node's worker or
  another node) by the pure rule ``order_hosts``: fewest in flight, prompt-prefix
  affinity, round-trip time, failed hosts last.
"""

from ._protocol import (
    PROTOCOL_ID,
    HostEntry,
    ResponseData,
    ResponseEnd,
    ResponseHead,
    RouteClientExchange,
    RouteError,
    RouteRequest,
    RouteServerExchange,
    RoutingTable,
    TableRequest,
    TableUnchanged,
    Unavailable,
)
from ._router import RemoteHost, RequestRouter
from ._routing import Candidate, affinity_key, order_hosts
from ._service import (
    ROUTE,
    RemoteUpstream,
    RouteServer,
    RoutingTableClient,
    route_request,
    table_from_view,
)
from ._upstream import HostUnavailable, LocalUpstream, UpstreamBroken, UpstreamResponse

__all__ = [
    "PROTOCOL_ID",
    "ROUTE",
    "Candidate",
    "HostEntry",
    "HostUnavailable",
    "LocalUpstream",
    "RemoteHost",
    "RemoteUpstream",
    "RequestRouter",
    "ResponseData",
    "ResponseEnd",
    "ResponseHead",
    "RouteClientExchange",
    "RouteError",
    "RouteRequest",
    "RouteServer",
    "RouteServerExchange",
    "RoutingTable",
    "RoutingTableClient",
    "TableRequest",
    "TableUnchanged",
    "Unavailable",
    "UpstreamBroken",
    "UpstreamResponse",
    "affinity_key",
    "order_hosts",
    "route_request",
    "table_from_view",
]
