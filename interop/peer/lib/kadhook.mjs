// Instruments @libp2p/kad-dht's inbound RPC on the mesh-scoped protocol:
// - reports every inbound message (type, sender, key, whether it was answered), so a
//   runner can tell that the Python node's FIND_NODE / GET_PROVIDERS reached this peer and
//   were answered;
// - serves members only (the Python side does the same).
// Everything else, provider records included, is kad-dht's own: meshp2p's provider keys
// are sha2-256 multihashes (lib/kad.mjs), which kad-dht stores and serves like any CID.

import { CID } from 'multiformats/cid'
import { hex } from './wire.mjs'

/** The key as a CID string when it is one (a bare multihash decodes as a CID v0), else null. */
function keyCid (key) {
  try {
    return CID.decode(key).toString()
  } catch {
    return null
  }
}

export function instrumentKad (dht, { isMember, onEvent }) {
  const rpc = dht.rpc
  if (!rpc || typeof rpc.handleMessage !== 'function') throw new Error('this @libp2p/kad-dht has no rpc.handleMessage to instrument')
  const original = rpc.handleMessage.bind(rpc)

  rpc.handleMessage = async (peerId, msg) => {
    const key = msg.key ?? new Uint8Array()
    const event = { event: 'kad-in', type: msg.type, from: peerId.toString(), key_hex: hex(key), key_cid: keyCid(key) }
    if (!isMember(peerId)) {
      onEvent({ ...event, answered: false, refused: 'not a mesh member' })
      throw new Error('not a mesh member')
    }
    let response
    try {
      response = await original(peerId, msg)
    } catch (err) {
      onEvent({ ...event, answered: false, error: err.message })
      throw err
    }
    onEvent({
      ...event,
      answered: response != null,
      closer: response?.closer?.length ?? null,
      providers: response?.providers?.length ?? null
    })
    return response
  }

  return {
    /**
     * Hold a provider record for the CID `key` naming this peer, in kad-dht's own provider
     * store, without announcing it to anyone: only this peer can then answer for it.
     */
    async provideLocally (key, peerId) {
      await dht.providers.addProvider(key, peerId)
    },
    /** The peers kad-dht's provider store holds for the CID `key`. */
    async providersOf (key) {
      return (await dht.providers.getProviders(key)).map(String)
    }
  }
}
