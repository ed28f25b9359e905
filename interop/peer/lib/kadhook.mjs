// Instruments @libp2p/kad-dht's inbound RPC on the mesh-scoped protocol:
// - reports every inbound message (type, sender, key, whether it was answered), so a
//   runner can tell that the Python node's FIND_NODE reached this peer and was answered;
// - serves members only (the Python side does the same);
// - stores and serves provider records under meshp2p's keys. meshp2p's provider keys are
//   raw UTF-8 strings ("/mesh-model/served/<model>"), while js-libp2p (like go-libp2p)
//   only accepts CID multihash keys in ADD_PROVIDER/GET_PROVIDERS and drops the rest
//   without an answer. Such keys are kept here in a small store of our own.

import { CID } from 'multiformats/cid'
import { hex } from './wire.mjs'

function isCid (key) {
  try {
    CID.decode(key)
    return true
  } catch {
    return false
  }
}

function keyText (key) {
  const text = Buffer.from(key).toString('utf8')
  return /^[\x20-\x7e]+$/.test(text) ? text : null
}

export function instrumentKad (dht, { isMember, onEvent }) {
  const rpc = dht.rpc
  if (!rpc || typeof rpc.handleMessage !== 'function') throw new Error('this @libp2p/kad-dht has no rpc.handleMessage to instrument')
  const original = rpc.handleMessage.bind(rpc)
  const store = new Map() // hex key -> Map(peer id -> { id, multiaddrs })

  rpc.handleMessage = async (peerId, msg) => {
    const key = msg.key ?? new Uint8Array()
    const event = { event: 'kad-in', type: msg.type, from: peerId.toString(), key_hex: hex(key), key_text: keyText(key) }
    if (!isMember(peerId)) {
      onEvent({ ...event, answered: false, refused: 'not a mesh member' })
      throw new Error('not a mesh member')
    }
    let response
    try {
      if (msg.type === 'ADD_PROVIDER' && !isCid(key)) {
        const records = store.get(hex(key)) ?? new Map()
        for (const p of msg.providers ?? []) {
          // Like kad-dht: only the sender may name itself a provider.
          if (Buffer.from(p.id).equals(Buffer.from(peerId.toMultihash().bytes)) && p.multiaddrs.length > 0) {
            records.set(peerId.toString(), { id: p.id, multiaddrs: p.multiaddrs })
          }
        }
        store.set(hex(key), records)
        event.stored = records.has(peerId.toString())
        response = undefined
      } else if (msg.type === 'GET_PROVIDERS' && !isCid(key)) {
        response = {
          type: 'GET_PROVIDERS',
          key,
          clusterLevel: msg.clusterLevel,
          closer: [],
          providers: [...(store.get(hex(key))?.values() ?? [])]
        }
      } else {
        response = await original(peerId, msg)
      }
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
    /** Hold a provider record for `keyText` naming `peerId` at `multiaddrs` (bytes). */
    provideLocally (keyTextValue, peerId, multiaddrs) {
      const k = hex(Buffer.from(keyTextValue, 'utf8'))
      const records = store.get(k) ?? new Map()
      records.set(peerId.toString(), { id: peerId.toMultihash().bytes, multiaddrs })
      store.set(k, records)
    },
    providersOf (keyTextValue) {
      return [...(store.get(hex(Buffer.from(keyTextValue, 'utf8')))?.keys() ?? [])]
    }
  }
}
