"""Sign a mesh listing, read it back the way a node does, and score it.

No relay is needed: ``current_listings`` takes events from anywhere (a relay's
answer, a file) and keeps one valid, unexpired listing per mesh, the freshest.
"""

import time

from meshp2p.discovery import (
    MeshListing,
    NostrKey,
    Preferences,
    current_listings,
    listing_event,
    score,
)

key = NostrKey(bytes(range(32)))  # a node keeps its own in <home>/nostr.key
now = int(time.time())
mine = MeshListing(
    mesh_id="0011223344556677",
    invite="mp1.example",
    name="poker-night",
    models_served=("gemma-3-270m-Q4_K_M",),
    nodes=3,
)
events = [
    listing_event(key, mine, now - 90),  # an older version of the same listing
    listing_event(key, mine, now),
]
for listing in current_listings(events, now):
    points = score(listing, Preferences(mesh_name="poker-night"))
    age = now - listing.created_at
    print(f"{listing.name}: {listing.nodes} nodes, listed {age} s ago, score {points}")
