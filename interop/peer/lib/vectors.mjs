// Load protocols/vectors/*.json and check every vector with this peer's own code:
// decode, compare with `decoded`, re-encode byte for byte, and recompute every
// MAC, signature and digest in `check`.

import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { chacha20poly1305 } from '@noble/ciphers/chacha'
import { schnorr } from '@noble/curves/secp256k1'
import { hkdf } from '@noble/hashes/hkdf'
import { hmac } from '@noble/hashes/hmac'
import { sha256 as nobleSha256 } from '@noble/hashes/sha2'
import { generateKeyPairFromSeed, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { computeMac, parseAuthMessage, transcript } from './auth.mjs'
import { ANNOUNCEMENT_DOMAIN, LEAVING_DOMAIN, parseGossipMessage, signedPayload, verifySigned } from './gossip.mjs'
import { parseServerMessage } from './route.mjs'
import { decodeCommand, encodeCommand, expandGguf, rewriteToGguf, sha256 } from './rpc.mjs'
import {
  bytesEqual, concat, deepEqual, encodeCbor, encodeFrame, FrameDecoder, fromHex, fromJsonForm, hex,
  toJsonForm, utf8
} from './wire.mjs'

const MAX_FRAME = {
  'auth.json': 1024,
  'gossip.json': 64 * 1024,
  'route.json': 8_458_240,
  'rpc-tensor.json': 4096
}

function expectBytes (what, actual, expected) {
  if (!bytesEqual(actual, expected)) throw new Error(`${what}: got ${hex(actual).slice(0, 80)}…, expected ${hex(expected).slice(0, 80)}…`)
}

function decodeFrameVector (vector, maxFrame) {
  const frame = fromHex(vector.hex)
  const frames = new FrameDecoder(maxFrame).feed(frame)
  if (frames.length !== 1) throw new Error(`decoded ${frames.length} frames, expected 1`)
  const decoded = frames[0]
  if (!deepEqual(toJsonForm(decoded), vector.decoded)) {
    throw new Error(`decoded ${JSON.stringify(toJsonForm(decoded)).slice(0, 200)} differs from the vector's`)
  }
  expectBytes('re-encoded frame', encodeFrame(decoded), frame)
  // Building the frame from the vector's JSON form must give the same bytes too.
  expectBytes('frame built from the JSON form', encodeFrame(fromJsonForm(vector.decoded)), frame)
  return decoded
}

function checkAuth (vector, decoded) {
  parseAuthMessage(decoded)
  const c = vector.check
  if (!c) return
  const f = fromJsonForm(c)
  for (const side of ['initiator', 'responder']) {
    expectBytes(`${side} peer id`, peerIdFromString(c[`${side}_peer_id_base58`]).toMultihash().bytes, f[`${side}_peer_id`])
  }
  const t = transcript(c.label, c.mesh_id, f.initiator_peer_id, f.responder_peer_id, f.nonce_i, f.nonce_r)
  expectBytes('transcript', t, f.transcript)
  const mac = computeMac(f.secret, t)
  expectBytes('mac', mac, f.mac)
  expectBytes('mac in the frame', decoded.mac, mac)
}

async function checkGossip (vector, decoded) {
  parseGossipMessage(decoded)
  const c = vector.check
  if (!c) return
  const f = fromJsonForm(c)
  const key = await generateKeyPairFromSeed('Ed25519', f.private_key_seed)
  expectBytes('public key', publicKeyToProtobuf(key.publicKey), f.public_key)
  const nodeId = peerIdFromPrivateKey(key).toString()
  if (nodeId !== c.node_id) throw new Error(`node id ${nodeId}, expected ${c.node_id}`)
  const leaving = decoded.t === 'leaving'
  const map = leaving ? decoded : decoded.announcement
  const domain = leaving ? LEAVING_DOMAIN : ANNOUNCEMENT_DOMAIN
  expectBytes('signed payload', signedPayload(domain, map), f.signed_payload)
  expectBytes('signature (Ed25519 is deterministic)', await key.sign(f.signed_payload), f.signature)
  const verdict = await verifySigned(domain, map)
  if (!verdict.ok) throw new Error(`signature check: ${verdict.reason}`)
}

function checkRoute (vector, decoded) {
  if (vector.name.startsWith('server:')) parseServerMessage(decoded)
  const c = vector.check
  if (!c) return
  const f = fromJsonForm(c)
  const hostsCbor = encodeCbor(decoded.hosts)
  expectBytes('hosts_cbor', hostsCbor, f.hosts_cbor)
  const hashed = concat([utf8(c.domain), Uint8Array.of(0), hostsCbor])
  expectBytes('hashed', hashed, f.hashed)
  const digest = new Uint8Array(createHash('sha256').update(hashed).digest())
  expectBytes('sha256', digest, f.sha256)
  let version = Buffer.from(digest.subarray(0, 8)).readBigUInt64BE() >> 11n
  if (version === 0n) version = 1n
  if (version !== BigInt(c.version) || BigInt(decoded.version) !== version) {
    throw new Error(`table version ${version}, vector ${c.version}, frame ${decoded.version}`)
  }
}

function checkRpcCommand (vector, byName) {
  const bytes = fromHex(vector.hex)
  const decoded = decodeCommand(bytes)
  if (!deepEqual(toJsonForm(decoded), vector.decoded)) {
    throw new Error(`decoded ${JSON.stringify(toJsonForm(decoded)).slice(0, 200)} differs from the vector's`)
  }
  expectBytes('re-encoded command', encodeCommand(decoded), bytes)
  expectBytes('command built from the JSON form', encodeCommand(fromJsonForm(vector.decoded)), bytes)
  const c = vector.check
  if (!c || decoded.cmd !== 0x80) return
  const f = fromJsonForm(c)
  expectBytes('file sha256', sha256(f.file), f.file_sha256)
  const target = byName.get(c.expands_to)
  if (!target) throw new Error(`expands_to names no vector: ${c.expands_to}`)
  // Worker side: the REFs read from the file give back the plain SET_TENSOR.
  expectBytes(`expansion (worker tunnel) vs "${c.expands_to}"`, expandGguf(decoded, new Map([[hex(f.file_sha256), f.file]])), fromHex(target.hex))
  // Host side: rewriting that SET_TENSOR against the file gives this command.
  const plain = decodeCommand(fromHex(target.hex))
  const rewritten = rewriteToGguf(plain, f.file, f.file_sha256, c.tensors, c.host_piece)
  if (rewritten === null) throw new Error('host index does not hold the tensor')
  expectBytes('rewrite (host tunnel)', rewritten, bytes)
}

/**
 * discovery.json: Nostr events (protocols/discovery.md), checked with @noble's
 * secp256k1, hashes and ciphers: the id, the BIP-340 signature (and, with the vector's
 * key and auxiliary randomness, the very same signature), the listing, and the
 * rendezvous record's key, tag and sealed content.
 */
function checkDiscovery (vector) {
  const e = vector.event
  const serial = JSON.stringify([0, e.pubkey, e.created_at, e.kind, e.tags, e.content])
  const id = hex(nobleSha256(utf8(serial)))
  if (id !== e.id) throw new Error(`event id ${e.id}, computed ${id}`)
  if (!schnorr.verify(fromHex(e.sig), fromHex(e.id), fromHex(e.pubkey))) {
    throw new Error('signature does not verify')
  }
  const check = vector.check
  if (vector.name === 'signed-event') {
    const secret = fromHex(check.secret_key)
    if (hex(schnorr.getPublicKey(secret)) !== e.pubkey) throw new Error('pubkey of the key differs')
    const again = hex(schnorr.sign(fromHex(e.id), secret, fromHex(check.aux)))
    if (again !== e.sig) throw new Error('signing again gives another signature')
  } else if (vector.name === 'mesh-listing') {
    if (!deepEqual(JSON.parse(e.content), check.listing)) throw new Error('listing content differs')
  } else if (vector.name === 'rendezvous-record') {
    const secret = fromHex(check.mesh_secret)
    const key = hkdf(nobleSha256, secret, undefined, utf8('meshp2p/rendezvous/v1 key'), 32)
    if (hex(key) !== check.key) throw new Error('rendezvous key differs')
    const day = new Uint8Array(8)
    new DataView(day.buffer).setBigUint64(0, BigInt(Math.floor(e.created_at / 86400)))
    const tag = hex(hmac(nobleSha256, secret, concat([utf8('meshp2p/rendezvous/v1 tag'), day])))
    const d = e.tags.find(t => t[0] === 'd')?.[1]
    if (tag !== check.tag || d !== tag) throw new Error(`rendezvous tag ${d}, computed ${tag}`)
    const sealed = Buffer.from(e.content, 'base64url')
    const plain = chacha20poly1305(key, sealed.subarray(0, 12), utf8(tag)).decrypt(sealed.subarray(12))
    if (!deepEqual(JSON.parse(Buffer.from(plain).toString('utf8')), check.record)) {
      throw new Error('rendezvous record differs')
    }
  } else {
    throw new Error(`no check for discovery vector ${vector.name}`)
  }
}

/** One result per vector file: { file, ok, passed, total, failures: [..] }. */
export async function checkVectors (dir) {
  const results = []
  const files = readdirSync(dir).filter(f => f.endsWith('.json')).sort()
  for (const file of files) {
    const vectors = JSON.parse(readFileSync(join(dir, file), 'utf8'))
    const byName = new Map(vectors.map(v => [v.name, v]))
    const failures = []
    let passed = 0
    let rpcSegments = 0
    for (const vector of vectors) {
      try {
        if (file === 'discovery.json') {
          checkDiscovery(vector)
        } else if (file === 'rpc-tensor.json' && vector.name.startsWith('rpc:')) {
          checkRpcCommand(vector, byName)
          if (vector.check) rpcSegments += 1
        } else {
          const decoded = decodeFrameVector(vector, MAX_FRAME[file] ?? 8_458_240)
          if (file === 'auth.json') checkAuth(vector, decoded)
          else if (file === 'gossip.json') await checkGossip(vector, decoded)
          else if (file === 'route.json') checkRoute(vector, decoded)
        }
        passed += 1
      } catch (err) {
        failures.push(`${vector.name}: ${err.message}`)
      }
    }
    results.push({ file, ok: failures.length === 0 && vectors.length > 0, passed, total: vectors.length, failures, rpcSegments })
  }
  return results
}
