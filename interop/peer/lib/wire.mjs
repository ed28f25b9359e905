// The framing shared by every /mesh/* protocol (protocols/README.md), written from the
// spec: uvarint(length) || body, body = one deterministic CBOR map with a text key "t".
//
// CBOR goes through cborg: encoding with its defaults is RFC 8949 §4.2.1 core
// deterministic encoding for our data model (shortest integers, lengths and floats,
// definite lengths, map keys sorted length-first then bytewise, which for text keys is
// the bytewise order of their encodings). Decoding is strict about the data model
// (no tags, indefinite lengths, undefined or other simple values, NaN/Infinity,
// non-text or duplicate map keys, invalid UTF-8, trailing bytes, nesting > 16).
//
// JavaScript has one number type, so a float with an integral value (CBOR f9 4000, 2.0)
// would come back out of a plain decode as the integer 2 and re-encode differently,
// breaking signatures over received maps. Such floats decode to CborFloat, which
// encodes back as a float.

import { decode as cborDecode, encode as cborEncode, Token, Tokenizer, Type } from 'cborg'

export const MAX_VARINT_LEN = 9
export const MAX_DEPTH = 16

export class ProtocolError extends Error {}

/** A CBOR float whose value happens to be integral (kept a float on re-encoding). */
export class CborFloat {
  constructor (value) { this.value = value }
  valueOf () { return this.value }
  toJSON () { return this.value }
}

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true })

class StrictTokenizer {
  constructor (data, options) {
    this.inner = new Tokenizer(data, options)
  }

  pos () { return this.inner.pos() }
  done () { return this.inner.done() }

  next () {
    const token = this.inner.next()
    if (token.type === Type.tag) throw new ProtocolError('CBOR tags are not allowed')
    if (token.type === Type.undefined) throw new ProtocolError('CBOR undefined is not allowed')
    if (token.type === Type.break) throw new ProtocolError('unexpected CBOR break')
    if (token.type === Type.string && token.byteValue !== undefined) {
      try {
        fatalUtf8.decode(token.byteValue)
      } catch {
        throw new ProtocolError('CBOR text string is not valid UTF-8')
      }
    }
    if (token.type === Type.float) {
      if (!Number.isFinite(token.value)) throw new ProtocolError('NaN and infinities are not allowed')
      if (Number.isInteger(token.value)) {
        return new Token(Type.float, new CborFloat(token.value), token.encodedLength)
      }
    }
    return token
  }
}

const DECODE_OPTIONS = {
  strict: false, // receivers accept any well-formed encoding
  allowIndefinite: false,
  allowUndefined: false,
  allowNaN: false,
  allowInfinity: false,
  allowBigInt: true,
  useMaps: false, // so non-text keys are refused
  rejectDuplicateMapKeys: true,
  retainStringBytes: true
}

function checkDepth (value, depth) {
  if (depth > MAX_DEPTH) throw new ProtocolError('CBOR nests too deeply')
  if (Array.isArray(value)) {
    for (const item of value) checkDepth(item, depth + 1)
  } else if (isPlainMap(value)) {
    for (const key of Object.keys(value)) checkDepth(value[key], depth + 1)
  }
}

export function isPlainMap (value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) &&
    !(value instanceof Uint8Array) && !(value instanceof CborFloat)
}

/** Decode exactly one CBOR item, refusing anything outside the /mesh/* data model. */
export function decodeCbor (bytes) {
  let value
  try {
    value = cborDecode(bytes, { ...DECODE_OPTIONS, tokenizer: new StrictTokenizer(bytes, DECODE_OPTIONS) })
  } catch (err) {
    if (err instanceof ProtocolError) throw err
    throw new ProtocolError(`bad CBOR: ${err.message}`)
  }
  checkDepth(value, 0)
  return value
}

const ENCODE_OPTIONS = {
  float64: false, // shortest float that is exact
  typeEncoders: {
    Object (obj) {
      if (obj instanceof CborFloat) return [new Token(Type.float, obj.value)]
      return null
    },
    undefined () { throw new Error('undefined cannot be sent in a /mesh/* message') }
  }
}

/** Deterministic CBOR (RFC 8949 §4.2.1) of a value of the /mesh/* data model. */
export function encodeCbor (value) {
  checkEncodable(value, 0)
  return cborEncode(value, ENCODE_OPTIONS)
}

function checkEncodable (value, depth) {
  if (depth > MAX_DEPTH) throw new Error('value nests too deeply to encode')
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error('NaN and infinities are not allowed on the wire')
    if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
      throw new Error(`integer ${value} is not exact in a JS number: use a BigInt`)
    }
    return
  }
  if (typeof value === 'bigint') {
    if (value > 2n ** 64n - 1n || value < -(2n ** 64n)) throw new Error(`integer out of CBOR range: ${value}`)
    return
  }
  if (value instanceof Uint8Array || value instanceof CborFloat) return
  if (Array.isArray(value)) {
    for (const item of value) checkEncodable(item, depth + 1)
    return
  }
  if (isPlainMap(value)) {
    for (const key of Object.keys(value)) checkEncodable(value[key], depth + 1)
    return
  }
  throw new Error(`cannot encode ${typeof value} in a /mesh/* message`)
}

export function encodeVarint (value) {
  if (typeof value === 'number') value = BigInt(value)
  if (value < 0n || value >= 2n ** 63n) throw new Error(`varint out of range: ${value}`)
  const out = []
  for (;;) {
    const byte = Number(value & 0x7fn)
    value >>= 7n
    if (value !== 0n) {
      out.push(byte | 0x80)
    } else {
      out.push(byte)
      return Uint8Array.from(out)
    }
  }
}

export function concat (parts) {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let pos = 0
  for (const p of parts) { out.set(p, pos); pos += p.length }
  return out
}

/** One frame: varint length prefix, then the deterministic CBOR of the map. */
export function encodeFrame (msg) {
  if (!isPlainMap(msg)) throw new Error('a frame carries a CBOR map')
  const body = encodeCbor(msg)
  return concat([encodeVarint(body.length), body])
}

/**
 * Turns a byte stream into frames, holding at most max_frame + 9 bytes; a mirror of
 * meshp2p's FrameDecoder. After a ProtocolError every later feed() throws again.
 */
export class FrameDecoder {
  constructor (maxFrame) {
    this.maxFrame = maxFrame
    this.header = []
    this.length = null
    this.body = null
    this.filled = 0
    this.error = null
  }

  feed (data) {
    if (this.error !== null) throw new ProtocolError(this.error)
    try {
      return this._feed(data)
    } catch (err) {
      this.error = err.message
      throw err instanceof ProtocolError ? err : new ProtocolError(err.message)
    }
  }

  _feed (data) {
    const frames = []
    let pos = 0
    while (pos < data.length) {
      if (this.length === null) {
        this.header.push(data[pos])
        pos += 1
        this.length = this._parseHeader()
        if (this.length === null) continue
        this.body = new Uint8Array(this.length)
        this.filled = 0
      }
      const want = this.length - this.filled
      const take = Math.min(want, data.length - pos)
      this.body.set(data.subarray(pos, pos + take), this.filled)
      this.filled += take
      pos += take
      if (this.filled === this.length) frames.push(this._finish())
    }
    return frames
  }

  _parseHeader () {
    let value = 0
    for (let i = 0; i < this.header.length; i++) value += (this.header[i] & 0x7f) * 2 ** (7 * i)
    if (value > this.maxFrame) {
      throw new ProtocolError(`frame declares ${value}+ bytes, over the ${this.maxFrame}-byte limit`)
    }
    const last = this.header[this.header.length - 1]
    if (last & 0x80) {
      if (this.header.length >= MAX_VARINT_LEN) throw new ProtocolError('frame length varint is longer than 9 bytes')
      return null
    }
    if (last === 0 && this.header.length > 1) throw new ProtocolError('frame length varint is not minimally encoded')
    this.header = []
    return value
  }

  _finish () {
    const body = this.body
    this.length = null
    this.body = null
    if (body.length === 0) throw new ProtocolError('empty frame')
    const msg = decodeCbor(body)
    if (!isPlainMap(msg)) throw new ProtocolError('a frame must carry a CBOR map')
    return msg
  }
}

export function messageType (msg) {
  const t = msg.t
  if (typeof t !== 'string' || t.length === 0) throw new ProtocolError("message has no text 't' (type) field")
  return t
}

// Field readers, like meshp2p/transport/_wire.py's: each names the field that is wrong.

export function textField (msg, key, { max, min = 1 } = {}) {
  const v = msg[key]
  if (typeof v !== 'string') throw new ProtocolError(`field '${key}' must be a text string`)
  const n = [...v].length
  if (n < min || n > max) throw new ProtocolError(`field '${key}' must be ${min}..${max} characters`)
  return v
}

export function bytesField (msg, key, { max, min = 1 } = {}) {
  const v = msg[key]
  if (!(v instanceof Uint8Array)) throw new ProtocolError(`field '${key}' must be a byte string`)
  if (v.length < min || v.length > max) throw new ProtocolError(`field '${key}' must be ${min}..${max} bytes`)
  return v
}

export function uintField (msg, key) {
  const v = msg[key]
  if (typeof v === 'bigint' && v >= 0n) return v
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new ProtocolError(`field '${key}' must be an unsigned integer`)
  return v
}

export function boolField (msg, key) {
  const v = msg[key]
  if (typeof v !== 'boolean') throw new ProtocolError(`field '${key}' must be a boolean`)
  return v
}

export function listField (msg, key, max) {
  const v = msg[key]
  if (!Array.isArray(v)) throw new ProtocolError(`field '${key}' must be an array`)
  if (v.length > max) throw new ProtocolError(`field '${key}' has more than ${max} items`)
  return v
}

export function mapField (msg, key, max) {
  const v = msg[key]
  if (!isPlainMap(v)) throw new ProtocolError(`field '${key}' must be a map`)
  if (Object.keys(v).length > max) throw new ProtocolError(`field '${key}' has more than ${max} entries`)
  return v
}

// Bytes helpers.

export function hex (bytes) { return Buffer.from(bytes).toString('hex') }
export function fromHex (text) { return new Uint8Array(Buffer.from(text, 'hex')) }
export function bytesEqual (a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
export function utf8 (text) { return new TextEncoder().encode(text) }

// The JSON form the vectors use: byte strings as {"hex": ...}.

export function toJsonForm (value) {
  if (value instanceof Uint8Array) return { hex: hex(value) }
  if (value instanceof CborFloat) return value.value
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString()
  if (Array.isArray(value)) return value.map(toJsonForm)
  if (isPlainMap(value)) {
    const out = {}
    for (const key of Object.keys(value)) out[key] = toJsonForm(value[key])
    return out
  }
  return value
}

export function fromJsonForm (value) {
  if (Array.isArray(value)) return value.map(fromJsonForm)
  if (isPlainMap(value)) {
    const keys = Object.keys(value)
    if (keys.length === 1 && keys[0] === 'hex') return fromHex(value.hex)
    const out = {}
    for (const key of keys) out[key] = fromJsonForm(value[key])
    return out
  }
  return value
}

export function deepEqual (a, b) {
  if (a === b) return true
  if (typeof a !== typeof b) return false
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]))
  }
  if (a && b && typeof a === 'object') {
    const ka = Object.keys(a).sort()
    const kb = Object.keys(b).sort()
    return deepEqual(ka, kb) && ka.every(k => deepEqual(a[k], b[k]))
  }
  return false
}
