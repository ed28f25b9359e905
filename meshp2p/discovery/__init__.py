"""Discovery: public meshes on Nostr, private rendezvous, and the LAN.

- Nostr core (sans-I/O): ``Event``, ``NostrKey`` (BIP-340 signing), ``verify``,
  relay messages, NIP-40 expiry and replaceable events enforced on our side
  (``newest_replaceable``); ``RelayPool`` / ``RelayClient`` talk to relays on
  trio, each operation bounded by timeouts and sizes.
- Listings: ``MeshListing`` (kind 31990), ``current_listings`` (one per mesh,
  freshest, bad ones dropped), ``score`` / ``ranked`` for ``--auto``;
  ``find_listings`` and ``choose_mesh`` (with a health check, ``probe``).
- Rendezvous: members' addresses sealed under the mesh secret (kind 30078,
  opaque daily tags): ``rendezvous_event``, ``current_rendezvous``.
- ``DiscoveryService`` publishes and watches a running node's listing (another
  member takes over when the publisher goes) and its rendezvous records;
  ``LanDiscovery`` finds members on the LAN by mDNS.
"""

from ._auto import choose_mesh, find_listings, load_or_create_nostr_key, probe
from ._lan import LanDiscovery
from ._listing import (
    LISTING_KIND,
    LISTING_TTL_S,
    RENDEZVOUS_KIND,
    REPUBLISH_S,
    MeshListing,
    Preferences,
    RendezvousRecord,
    current_listings,
    current_rendezvous,
    listing_event,
    listing_filter,
    open_rendezvous,
    parse_listing,
    ranked,
    rendezvous_event,
    rendezvous_filter,
    score,
)
from ._nostr import Event, NostrKey, newest_replaceable, parse_event, parse_relay_message, verify
from ._relay import DEFAULT_RELAYS, RelayClient, RelayError, RelayPool
from ._service import DiscoveryService, ListingMeta

__all__ = [
    "DEFAULT_RELAYS",
    "LISTING_KIND",
    "LISTING_TTL_S",
    "RENDEZVOUS_KIND",
    "REPUBLISH_S",
    "DiscoveryService",
    "Event",
    "LanDiscovery",
    "ListingMeta",
    "MeshListing",
    "NostrKey",
    "Preferences",
    "RelayClient",
    "RelayError",
    "RelayPool",
    "RendezvousRecord",
    "choose_mesh",
    "current_listings",
    "current_rendezvous",
    "find_listings",
    "listing_event",
    "listing_filter",
    "load_or_create_nostr_key",
    "newest_replaceable",
    "open_rendezvous",
    "parse_event",
    "parse_listing",
    "parse_relay_message",
    "probe",
    "ranked",
    "rendezvous_event",
    "rendezvous_filter",
    "score",
    "verify",
]
