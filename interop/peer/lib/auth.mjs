// /mesh/auth/1.0.0 (protocols/auth.md): both sides prove they hold the 32-byte mesh
// secret with HMACs bound to the mesh id, both binary peer ids and both nonces.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { bytesField, boolField, messageType, ProtocolError, textField, uintField, utf8 } from './wire.mjs'

export const AUTH_PROTOCOL = '/mesh/auth/1.0.0'
export const AUTH_MAX_FRAME = 1024
export const RESPONDER_LABEL = 'meshp2p/auth/v1 responder'
export const INITIATOR_LABEL = 'meshp2p/auth/v1 initiator'
const NONCE_LEN = 32
const MAC_LEN = 32
const STEP_TIMEOUT = 10_000

function lp (part) {
  const out = new Uint8Array(4 + part.length)
  new DataView(out.buffer).setUint32(0, part.length)
  out.set(part, 4)
  return out
}

/** T(label) = lp(label) || lp(mesh_id) || lp(initiator id) || lp(responder id) || lp(nonce_i) || lp(nonce_r) */
export function transcript (label, meshId, initiatorPeerId, responderPeerId, nonceI, nonceR) {
  const parts = [utf8(label), utf8(meshId), initiatorPeerId, responderPeerId, nonceI, nonceR].map(lp)
  return Buffer.concat(parts)
}

export function computeMac (secret, message) {
  return new Uint8Array(createHmac('sha256', secret).update(message).digest())
}

function macEqual (a, b) {
  return a.length === b.length && timingSafeEqual(a, b)
}

/** Parse one auth message, ignoring unknown keys; ProtocolError if malformed. */
export function parseAuthMessage (msg) {
  const t = messageType(msg)
  if (t === 'hello') {
    return { t, v: uintField(msg, 'v'), mesh_id: textField(msg, 'mesh_id', { max: 128 }), nonce: bytesField(msg, 'nonce', { min: NONCE_LEN, max: NONCE_LEN }) }
  }
  if (t === 'challenge') {
    return { t, nonce: bytesField(msg, 'nonce', { min: NONCE_LEN, max: NONCE_LEN }), mac: bytesField(msg, 'mac', { min: MAC_LEN, max: MAC_LEN }) }
  }
  if (t === 'proof') return { t, mac: bytesField(msg, 'mac', { min: MAC_LEN, max: MAC_LEN }) }
  if (t === 'result') {
    const out = { t, ok: boolField(msg, 'ok') }
    if (msg.reason !== undefined && msg.reason !== null) out.reason = textField(msg, 'reason', { max: 128 })
    return out
  }
  throw new ProtocolError(`unknown auth message type '${t}'`)
}

/**
 * Run the handshake as the initiator over `ch` (a FrameChannel on a fresh stream).
 * Resolves { ok, reason }; never sends a proof to a responder whose MAC is wrong.
 */
export async function authInitiator (ch, { secret, meshId, localPeerId, remotePeerId, seenNonces }) {
  const nonceI = new Uint8Array(randomBytes(NONCE_LEN))
  seenNonces?.add(Buffer.from(nonceI).toString('hex'))
  ch.send({ t: 'hello', v: 1, mesh_id: meshId, nonce: nonceI })
  let msg
  try {
    const raw = await ch.recv(STEP_TIMEOUT, 'auth challenge')
    if (raw === null) return { ok: false, reason: 'responder closed the stream before its challenge' }
    msg = parseAuthMessage(raw)
  } catch (err) {
    return { ok: false, reason: `no valid challenge: ${err.message}` }
  }
  if (msg.t === 'result' && !msg.ok) return { ok: false, reason: `responder refused: ${msg.reason ?? 'no reason given'}` }
  if (msg.t !== 'challenge') return { ok: false, reason: `unexpected ${msg.t} instead of challenge` }
  const nonceHex = Buffer.from(msg.nonce).toString('hex')
  if (Buffer.from(msg.nonce).equals(Buffer.from(nonceI)) || (seenNonces && seenNonces.has(nonceHex))) {
    return { ok: false, reason: 'responder reused a nonce' }
  }
  seenNonces?.add(nonceHex)
  const expected = computeMac(secret, transcript(RESPONDER_LABEL, meshId, localPeerId, remotePeerId, nonceI, msg.nonce))
  if (!macEqual(expected, msg.mac)) {
    return { ok: false, reason: 'responder does not hold the mesh secret (bad MAC)' }
  }
  ch.send({ t: 'proof', mac: computeMac(secret, transcript(INITIATOR_LABEL, meshId, localPeerId, remotePeerId, nonceI, msg.nonce)) })
  let result
  try {
    const raw = await ch.recv(STEP_TIMEOUT, 'auth result')
    if (raw === null) return { ok: false, reason: 'responder closed the stream before its result' }
    result = parseAuthMessage(raw)
  } catch (err) {
    return { ok: false, reason: `no valid result: ${err.message}` }
  }
  if (result.t !== 'result') return { ok: false, reason: `unexpected ${result.t} instead of result` }
  if (!result.ok) return { ok: false, reason: `responder refused: ${result.reason ?? 'no reason given'}` }
  return { ok: true, reason: null }
}

/** Run the handshake as the responder; answers result {ok:false, reason} on refusal. */
export async function authResponder (ch, { secret, meshId, localPeerId, remotePeerId, seenNonces }) {
  const refuse = (code, reason) => {
    ch.send({ t: 'result', ok: false, reason: code })
    return { ok: false, reason: `${code}: ${reason}` }
  }
  let hello
  try {
    const raw = await ch.recv(STEP_TIMEOUT, 'auth hello')
    if (raw === null) return { ok: false, reason: 'initiator closed the stream before its hello' }
    hello = parseAuthMessage(raw)
  } catch (err) {
    if (err instanceof ProtocolError) return refuse('malformed', err.message)
    return { ok: false, reason: `no hello: ${err.message}` }
  }
  if (hello.t !== 'hello') return refuse('order', `unexpected ${hello.t} instead of hello`)
  if (Number(hello.v) !== 1) return refuse('version', `initiator offers auth version ${hello.v}`)
  if (hello.mesh_id !== meshId) return refuse('mesh_id', `initiator wants mesh ${hello.mesh_id}, this is ${meshId}`)
  const nonceR = new Uint8Array(randomBytes(NONCE_LEN))
  const nonceIHex = Buffer.from(hello.nonce).toString('hex')
  if (Buffer.from(hello.nonce).equals(Buffer.from(nonceR)) || (seenNonces && seenNonces.has(nonceIHex))) {
    return refuse('nonce', 'initiator reused a nonce')
  }
  seenNonces?.add(nonceIHex)
  seenNonces?.add(Buffer.from(nonceR).toString('hex'))
  ch.send({ t: 'challenge', nonce: nonceR, mac: computeMac(secret, transcript(RESPONDER_LABEL, meshId, remotePeerId, localPeerId, hello.nonce, nonceR)) })
  let proof
  try {
    const raw = await ch.recv(STEP_TIMEOUT, 'auth proof')
    if (raw === null) return { ok: false, reason: 'initiator closed the stream before its proof (it did not accept our MAC)' }
    proof = parseAuthMessage(raw)
  } catch (err) {
    if (err instanceof ProtocolError) return refuse('malformed', err.message)
    return { ok: false, reason: `no proof: ${err.message}` }
  }
  if (proof.t !== 'proof') return refuse('order', `unexpected ${proof.t} instead of proof`)
  const expected = computeMac(secret, transcript(INITIATOR_LABEL, meshId, remotePeerId, localPeerId, hello.nonce, nonceR))
  if (!macEqual(expected, proof.mac)) return refuse('mac', 'initiator does not hold the mesh secret (bad MAC)')
  ch.send({ t: 'result', ok: true })
  return { ok: true, reason: null }
}
