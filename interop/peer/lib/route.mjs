// /mesh/route/1.0.0 (protocols/route.md), the client side: one request per stream,
// then head data* (end | error), or unavailable.

import { bytesField, mapField, messageType, ProtocolError, textField, uintField } from './wire.mjs'

export const ROUTE_PROTOCOL = '/mesh/route/1.0.0'
export const ROUTE_MAX_FRAME = 128 * 1024
export const ROUTE_MAX_TABLE_FRAME = 1024 * 1024
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]{1,64}$/
const HEADER_VALUE = /^[\t\x20-\x7e]{0,1024}$/

export function parseServerMessage (m) {
  const t = messageType(m)
  if (t === 'head') {
    const status = uintField(m, 'status')
    if (status < 200 || status > 599) throw new ProtocolError("field 'status' must be 200..599")
    const headers = mapField(m, 'headers', 32)
    for (const [k, v] of Object.entries(headers)) {
      if (!HEADER_NAME.test(k)) throw new ProtocolError(`header name ${JSON.stringify(k)} is not a lower-case token`)
      if (typeof v !== 'string' || !HEADER_VALUE.test(v)) throw new ProtocolError(`header ${k} has a value that is not visible ASCII`)
    }
    return { t, status: Number(status), headers }
  }
  if (t === 'data') return { t, data: bytesField(m, 'data', { max: 65536 }) }
  if (t === 'end') return { t }
  if (t === 'unavailable' || t === 'error') {
    return { t, code: textField(m, 'code', { max: 64 }), message: textField(m, 'message', { min: 0, max: 1024 }) }
  }
  if (t === 'table' || t === 'unchanged') return { t, version: uintField(m, 'version') }
  throw new ProtocolError(`unknown route answer type '${t}'`)
}

/**
 * Send one request on `ch` and read the whole answer, checking its order.
 * Resolves { kind: 'answer', status, headers, body } | { kind: 'unavailable', code, message }
 * | { kind: 'error', code, message, status, body }; throws on a protocol error or timeout.
 */
export async function routeRequest (ch, { id, endpoint, body }, { firstByteMs = 60_000, frameMs = 60_000, halfClose = false } = {}) {
  ch.send({ t: 'request', v: 1, id, endpoint, body })
  // route.md lets a client close its write side after the request. meshp2p's server
  // (_route_service._watch_reset) takes that end of stream for a reset and cancels the
  // answer, so by default the write side stays open until the answer is complete.
  if (halfClose) ch.closeWrite()
  let head = null
  const chunks = []
  for (;;) {
    const raw = await ch.recv(head === null ? firstByteMs : frameMs, head === null ? 'route head' : 'route data')
    if (raw === null) throw new ProtocolError(`the stream ended ${head === null ? 'before any answer' : 'before end'}`)
    const msg = parseServerMessage(raw)
    if (head === null) {
      if (msg.t === 'unavailable') return await finish(ch, { kind: 'unavailable', code: msg.code, message: msg.message })
      if (msg.t !== 'head') throw new ProtocolError(`unexpected ${msg.t} before head`)
      head = msg
      continue
    }
    if (msg.t === 'data') {
      chunks.push(msg.data)
    } else if (msg.t === 'end') {
      return await finish(ch, { kind: 'answer', status: head.status, headers: head.headers, body: Buffer.concat(chunks) })
    } else if (msg.t === 'error') {
      return await finish(ch, { kind: 'error', code: msg.code, message: msg.message, status: head.status, body: Buffer.concat(chunks) })
    } else {
      throw new ProtocolError(`unexpected ${msg.t} after head`)
    }
  }
}

async function finish (ch, result) {
  // After the last message the server closes: anything more is a protocol error.
  const extra = await ch.recv(5_000, 'route close').catch(err => { result.closeWarning = err.message; return null })
  if (extra !== null) throw new ProtocolError(`message ${extra.t} after the answer ended`)
  ch.closeWrite()
  return result
}
