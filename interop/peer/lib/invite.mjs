// Invite tokens (meshp2p/mesh/_invite.py): "mp1." + unpadded base64url of the CBOR map
// {"v": 1, "m": mesh id (8 bytes), "s": secret (32 bytes), "a": [binary multiaddrs with /p2p/]}.

import { randomBytes } from 'node:crypto'
import { multiaddr } from '@multiformats/multiaddr'
import { decodeCbor, encodeCbor, hex, isPlainMap } from './wire.mjs'

export const TOKEN_PREFIX = 'mp1.'

export function decodeToken (token) {
  token = token.trim()
  if (!token.startsWith(TOKEN_PREFIX)) throw new Error(`invite token must start with ${TOKEN_PREFIX}`)
  const body = decodeCbor(new Uint8Array(Buffer.from(token.slice(TOKEN_PREFIX.length), 'base64url')))
  if (!isPlainMap(body) || Number(body.v) !== 1) throw new Error('invite token is not a version 1 map')
  if (!(body.m instanceof Uint8Array) || body.m.length !== 8) throw new Error('invite token has no valid mesh id')
  if (!(body.s instanceof Uint8Array) || body.s.length !== 32) throw new Error('invite token has no valid secret')
  if (!Array.isArray(body.a) || body.a.length === 0) throw new Error('invite token lists no addresses')
  const addrs = body.a.map(a => multiaddr(a).toString())
  for (const a of addrs) if (!a.includes('/p2p/')) throw new Error(`invite address ${a} has no /p2p/ peer id`)
  return { meshId: hex(body.m), secret: body.s, addrs }
}

export function encodeToken ({ meshId, secret, addrs }) {
  const body = {
    v: 1,
    m: new Uint8Array(Buffer.from(meshId, 'hex')),
    s: secret,
    a: addrs.map(a => multiaddr(a).bytes)
  }
  return TOKEN_PREFIX + Buffer.from(encodeCbor(body)).toString('base64url')
}

/** A new mesh the way meshp2p makes one: 8 random bytes of id (16 hex digits), 32 of secret. */
export function newCredentials () {
  return { meshId: randomBytes(8).toString('hex'), secret: new Uint8Array(randomBytes(32)) }
}
