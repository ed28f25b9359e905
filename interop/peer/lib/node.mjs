// The js-libp2p node the interop peer runs on: TCP + Noise + Yamux, or QUIC v1, with
// identify, ping and Kademlia on the mesh's own protocol id (server mode, answering).

import { noise } from '@chainsafe/libp2p-noise'
import { quic } from '@chainsafe/libp2p-quic'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { serviceCapabilities } from '@libp2p/interface'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'

export const LISTEN = {
  tcp: '/ip4/127.0.0.1/tcp/0',
  quic: '/ip4/127.0.0.1/udp/0/quic-v1'
}

/** Does multiaddr text `addr` use `transport` (tcp | quic)? */
export function usesTransport (addr, transport) {
  if (transport === 'quic') return addr.includes('/quic-v1')
  return addr.includes('/tcp/') && !addr.includes('/ws') && !addr.includes('/tls')
}

/**
 * @libp2p/ping as pinned (2.0.9) predates the '@libp2p/ping' capability marker that
 * @libp2p/kad-dht 15 checks for (it calls components.ping.ping(), which 2.0.9 has), so
 * the marker is added here instead of using kad-dht's own nested, newer copy.
 */
function pingService (init) {
  const factory = ping(init)
  return (components) => {
    const service = factory(components)
    const caps = service[serviceCapabilities] ?? []
    if (!caps.includes('@libp2p/ping')) service[serviceCapabilities] = [...caps, '@libp2p/ping']
    return service
  }
}

export async function createNode ({ privateKey, transport, kadProtocol }) {
  if (!(transport in LISTEN)) throw new Error(`unknown transport ${transport}`)
  return createLibp2p({
    privateKey,
    addresses: { listen: [LISTEN[transport]] },
    transports: [tcp(), quic()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: pingService({ maxOutboundStreams: 8, maxInboundStreams: 8 }),
      dht: kadDHT({
        protocol: kadProtocol,
        // Answer queries although our only addresses are private (loopback): without
        // this kad-dht stays a client and never registers the handler.
        clientMode: false,
        // Keep loopback addresses in answers and in the routing table.
        peerInfoMapper: passthroughMapper,
        // Our own lookups are not what is tested; do not send them to peers that have
        // not admitted us yet (meshp2p resets kad streams from non-members).
        initialQuerySelfInterval: 3_600_000,
        querySelfInterval: 3_600_000,
        allowQueryWithZeroPeers: true
      })
    }
  })
}
