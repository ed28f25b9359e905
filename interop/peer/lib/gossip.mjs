// /mesh/gossip/1.0.0 (protocols/gossip.md): signed announcements and the messages that
// spread them. Signatures cover DOMAIN || deterministic_cbor(map as received minus
// "signature"), unknown keys included, so received maps are verified as they came.

import { publicKeyFromProtobuf, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import {
  bytesField, concat, encodeCbor, isPlainMap, listField, mapField, messageType, ProtocolError,
  textField, uintField, utf8, CborFloat
} from './wire.mjs'

export const GOSSIP_PROTOCOL = '/mesh/gossip/1.0.0'
export const GOSSIP_MAX_FRAME = 64 * 1024
export const ANNOUNCEMENT_DOMAIN = concat([utf8('meshp2p/gossip/v1 announcement'), Uint8Array.of(0)])
export const LEAVING_DOMAIN = concat([utf8('meshp2p/gossip/v1 leaving'), Uint8Array.of(0)])
export const ROLES = ['host', 'worker', 'client', 'standby']
const MAX_MAP_KEYS = 64
const SHA256_HEX = /^[0-9a-f]{64}$/

function textItems (list, name, max) {
  for (const item of list) {
    if (typeof item !== 'string' || item.length < 1 || [...item].length > max) {
      throw new ProtocolError(`announcement field '${name}' holds an item that is not 1..${max} characters of text`)
    }
  }
}

/** Check every limit and type of an announcement map (gossip.md's table); no crypto. */
export function parseAnnouncement (m) {
  if (!isPlainMap(m)) throw new ProtocolError('an announcement must be a map')
  if (Object.keys(m).length > MAX_MAP_KEYS) throw new ProtocolError(`announcement has more than ${MAX_MAP_KEYS} keys`)
  textField(m, 'node_id', { max: 128 })
  uintField(m, 'seq')
  textField(m, 'mesh_id', { max: 128 })
  textItems(listField(m, 'addrs', 32), 'addrs', 256)
  textField(m, 'role', { max: 32 })
  textItems(listField(m, 'models_served', 64), 'models_served', 256)
  for (const entry of listField(m, 'models_on_disk', 128)) {
    if (!isPlainMap(entry)) throw new ProtocolError("announcement field 'models_on_disk' holds an item that is not a map")
    if (Object.keys(entry).length > MAX_MAP_KEYS) throw new ProtocolError('models_on_disk entry has too many keys')
    textField(entry, 'name', { max: 256 })
    uintField(entry, 'size')
    if (!SHA256_HEX.test(textField(entry, 'sha256', { min: 64, max: 64 }))) {
      throw new ProtocolError("models_on_disk entry field 'sha256' must be 64 lowercase hex digits")
    }
  }
  const rates = mapField(m, 'request_rates', 64)
  for (const [k, v] of Object.entries(rates)) {
    textItems([k], 'request_rates', 256)
    const ok = (typeof v === 'number' && v >= 0) || (typeof v === 'bigint' && v >= 0n) || (v instanceof CborFloat && v.value >= 0)
    if (!ok) throw new ProtocolError("announcement field 'request_rates' values must be numbers >= 0")
  }
  uintField(m, 'memory_free')
  uintField(m, 'memory_total')
  textField(m, 'version', { min: 0, max: 64 })
  bytesField(m, 'public_key', { max: 1024 })
  bytesField(m, 'signature', { max: 1024 })
  return m
}

function withoutSignature (m) {
  const out = {}
  for (const key of Object.keys(m)) if (key !== 'signature') out[key] = m[key]
  return out
}

export function signedPayload (domain, m) {
  return concat([domain, encodeCbor(withoutSignature(m))])
}

/** Does `signature` verify over the payload, with `node_id` the peer id of `public_key`? */
export async function verifySigned (domain, m) {
  try {
    const key = publicKeyFromProtobuf(m.public_key)
    const derived = peerIdFromPublicKey(key).toString()
    if (derived !== m.node_id) return { ok: false, reason: `node_id ${m.node_id} is not the peer id of public_key (${derived})` }
    const ok = await key.verify(signedPayload(domain, m), m.signature)
    return ok ? { ok: true, reason: null } : { ok: false, reason: 'signature does not verify' }
  } catch (err) {
    return { ok: false, reason: `public key or signature unreadable: ${err.message}` }
  }
}

export async function verifyAnnouncement (m) {
  return verifySigned(ANNOUNCEMENT_DOMAIN, m)
}

/** Build and sign an announcement map: fields plus node_id, public_key and signature. */
export async function signAnnouncement (fields, privateKey, nodeId) {
  if (!ROLES.includes(fields.role)) throw new Error(`role must be one of ${ROLES.join(', ')}`)
  const unsigned = { ...fields, node_id: nodeId, public_key: publicKeyToProtobuf(privateKey.publicKey) }
  const signature = await privateKey.sign(signedPayload(ANNOUNCEMENT_DOMAIN, unsigned))
  const signed = { ...unsigned, signature: new Uint8Array(signature) }
  parseAnnouncement(signed)
  return signed
}

export async function signLeaving ({ seq, meshId }, privateKey, nodeId) {
  const unsigned = { t: 'leaving', node_id: nodeId, seq, mesh_id: meshId, public_key: publicKeyToProtobuf(privateKey.publicKey) }
  const signature = await privateKey.sign(signedPayload(LEAVING_DOMAIN, unsigned))
  return { ...unsigned, signature: new Uint8Array(signature) }
}

/** A decoded gossip message with its fields checked; null for an unknown `t` (ignored). */
export function parseGossipMessage (m) {
  const t = messageType(m)
  if (t === 'announce') {
    return { t, announcement: parseAnnouncement(mapField(m, 'announcement', MAX_MAP_KEYS)) }
  }
  if (t === 'digest') {
    const entries = mapField(m, 'entries', 512)
    for (const [k, v] of Object.entries(entries)) {
      textItems([k], 'entries', 128)
      uintField(entries, k)
      void v
    }
    return { t, entries }
  }
  if (t === 'want') {
    const ids = listField(m, 'node_ids', 512)
    textItems(ids, 'node_ids', 128)
    return { t, node_ids: ids }
  }
  if (t === 'leaving') {
    textField(m, 'node_id', { max: 128 })
    uintField(m, 'seq')
    textField(m, 'mesh_id', { max: 128 })
    bytesField(m, 'public_key', { max: 1024 })
    bytesField(m, 'signature', { max: 1024 })
    return { t, leaving: m }
  }
  if (t === 'dead') {
    return { t, node_id: textField(m, 'node_id', { max: 128 }), seq: uintField(m, 'seq') }
  }
  return null
}

/** The next seq: a clock, strictly increasing across restarts (gossip.md). */
export function nextSeq (previous) {
  const now = BigInt(Date.now())
  const prev = BigInt(previous ?? 0)
  const next = prev + 1n > now ? prev + 1n : now
  return Number(next)
}

export function big (n) {
  return typeof n === 'bigint' ? n : BigInt(n)
}
