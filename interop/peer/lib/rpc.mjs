// The llama.cpp RPC commands of /mesh/rpc-tensor/1.0.0's test vectors (protocols/rpc-tensor.md):
// HELLO (14), SET_TENSOR (6) and the gguf-ref extension's SET_TENSOR_GGUF (0x80).
// Little-endian packed structs; rpc_tensor is 296 bytes.

import { createHash } from 'node:crypto'
import { concat, hex } from './wire.mjs'

export const CMD_SET_TENSOR = 6
export const CMD_HELLO = 14
export const CMD_SET_TENSOR_GGUF = 0x80
const TENSOR_SIZE = 296
const SET_TENSOR_HEADER = 305
const NAME_LEN = 64

function u64 (view, pos) {
  const v = view.getBigUint64(pos, true)
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v
}

function decodeTensor (bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const u32s = (pos, n) => Array.from({ length: n }, (_, i) => view.getUint32(pos + 4 * i, true))
  const nameBytes = bytes.subarray(228, 228 + NAME_LEN)
  const nul = nameBytes.indexOf(0)
  return {
    id: u64(view, 0),
    type: view.getUint32(8, true),
    buffer: u64(view, 12),
    ne: u32s(20, 4),
    nb: u32s(36, 4),
    op: view.getUint32(52, true),
    op_params: Array.from({ length: 16 }, (_, i) => view.getInt32(56 + 4 * i, true)),
    flags: view.getInt32(120, true),
    src: Array.from({ length: 10 }, (_, i) => u64(view, 124 + 8 * i)),
    view_src: u64(view, 204),
    view_offs: u64(view, 212),
    data: u64(view, 220),
    name: Buffer.from(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)).toString('utf8'),
    use_count: view.getInt32(292, true)
  }
}

function encodeTensor (t) {
  const out = new Uint8Array(TENSOR_SIZE)
  const view = new DataView(out.buffer)
  const setU64 = (pos, v) => view.setBigUint64(pos, BigInt(v), true)
  setU64(0, t.id)
  view.setUint32(8, t.type, true)
  setU64(12, t.buffer)
  t.ne.forEach((v, i) => view.setUint32(20 + 4 * i, v, true))
  t.nb.forEach((v, i) => view.setUint32(36 + 4 * i, v, true))
  view.setUint32(52, t.op, true)
  t.op_params.forEach((v, i) => view.setInt32(56 + 4 * i, v, true))
  view.setInt32(120, t.flags, true)
  t.src.forEach((v, i) => setU64(124 + 8 * i, v))
  setU64(204, t.view_src)
  setU64(212, t.view_offs)
  setU64(220, t.data)
  const name = Buffer.from(t.name, 'utf8')
  if (name.length >= NAME_LEN) throw new Error('tensor name too long')
  out.set(name, 228)
  view.setInt32(292, t.use_count, true)
  return out
}

function header (cmd, size) {
  const out = new Uint8Array(9)
  out[0] = cmd
  new DataView(out.buffer).setBigUint64(1, BigInt(size), true)
  return out
}

/** One RPC command's bytes into the vectors' `decoded` form. */
export function decodeCommand (bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const cmd = bytes[0]
  const size = u64(view, 1)
  const payload = bytes.subarray(9)
  if (cmd === CMD_HELLO) {
    if (size !== 24 || payload.length !== 24) throw new Error('HELLO must carry 24 bytes')
    return { cmd, size, conn_caps: payload }
  }
  if (cmd !== CMD_SET_TENSOR && cmd !== CMD_SET_TENSOR_GGUF) throw new Error(`command ${cmd} is not in the vectors`)
  const pv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
  const out = {
    cmd,
    size,
    tensor: decodeTensor(payload.subarray(0, TENSOR_SIZE)),
    cache_flag: payload[TENSOR_SIZE],
    offset: u64(pv, TENSOR_SIZE + 1)
  }
  const rest = payload.subarray(SET_TENSOR_HEADER)
  if (cmd === CMD_SET_TENSOR) {
    if (rest.length !== size - SET_TENSOR_HEADER) throw new Error('SET_TENSOR size does not match its data')
    out.data = rest
    return out
  }
  const segments = []
  let pos = 0
  let total = 0
  const rv = new DataView(rest.buffer, rest.byteOffset, rest.byteLength)
  while (pos < rest.length) {
    const kind = rest[pos]
    if (kind === 0) {
      const length = rv.getUint32(pos + 1, true)
      if (length < 1 || length > 1048576) throw new Error(`RAW segment of ${length} bytes`)
      segments.push({ kind, data: rest.subarray(pos + 5, pos + 5 + length) })
      pos += 5 + length
      total += length
    } else if (kind === 1) {
      const length = u64(rv, pos + 41)
      if (length < 1) throw new Error('REF segment of 0 bytes')
      segments.push({ kind, sha256: rest.subarray(pos + 1, pos + 33), file_offset: u64(rv, pos + 33), length })
      pos += 49
      total += Number(length)
    } else {
      throw new Error(`segment kind ${kind}`)
    }
  }
  if (pos !== rest.length) throw new Error('segments run past the command')
  if (total !== size - SET_TENSOR_HEADER) throw new Error(`segments carry ${total} bytes, the upload ${size - SET_TENSOR_HEADER}`)
  out.segments = segments
  return out
}

function setTensorHeader (d) {
  const h = new Uint8Array(SET_TENSOR_HEADER)
  h.set(encodeTensor(d.tensor), 0)
  h[TENSOR_SIZE] = d.cache_flag
  new DataView(h.buffer).setBigUint64(TENSOR_SIZE + 1, BigInt(d.offset), true)
  return h
}

/** The `decoded` form back into bytes. */
export function encodeCommand (d) {
  if (d.cmd === CMD_HELLO) return concat([header(d.cmd, d.size), d.conn_caps])
  const parts = [header(d.cmd, d.size), setTensorHeader(d)]
  if (d.cmd === CMD_SET_TENSOR) {
    parts.push(d.data)
  } else {
    for (const s of d.segments) {
      if (s.kind === 0) {
        const h = new Uint8Array(5)
        h[0] = 0
        new DataView(h.buffer).setUint32(1, s.data.length, true)
        parts.push(h, s.data)
      } else {
        const h = new Uint8Array(49)
        h[0] = 1
        h.set(s.sha256, 1)
        const v = new DataView(h.buffer)
        v.setBigUint64(33, BigInt(s.file_offset), true)
        v.setBigUint64(41, BigInt(s.length), true)
        parts.push(h)
      }
    }
  }
  return concat(parts)
}

/** What a worker tunnel writes into its RPC server for a SET_TENSOR_GGUF: a plain SET_TENSOR. */
export function expandGguf (d, files) {
  const pieces = []
  for (const s of d.segments) {
    if (s.kind === 0) {
      pieces.push(s.data)
    } else {
      const file = files.get(hex(s.sha256))
      if (!file) throw new Error(`REF to a file not held: ${hex(s.sha256)}`)
      const end = s.file_offset + Number(s.length)
      if (end > file.length) throw new Error('REF runs past the end of the file')
      pieces.push(file.subarray(s.file_offset, end))
    }
  }
  return encodeCommand({ ...d, cmd: CMD_SET_TENSOR, data: concat(pieces), segments: undefined })
}

/**
 * What a host tunnel sends for a SET_TENSOR of an indexed tensor (rpc-tensor.md, host
 * tunnel): chunks of `piece` bytes equal to the file extend one REF; others go as RAW.
 */
export function rewriteToGguf (d, file, fileSha, index, piece) {
  const entry = index.find(t => t.name === d.tensor.name)
  if (!entry) return null
  const data = d.data
  const base = entry.offset + d.offset
  const segments = []
  for (let pos = 0; pos < data.length; pos += piece) {
    const chunk = data.subarray(pos, Math.min(pos + piece, data.length))
    const same = Buffer.from(chunk).equals(Buffer.from(file.subarray(base + pos, base + pos + chunk.length)))
    const last = segments[segments.length - 1]
    if (same && last && last.kind === 1 && last.file_offset + last.length === base + pos) {
      last.length += chunk.length
    } else if (same) {
      segments.push({ kind: 1, sha256: fileSha, file_offset: base + pos, length: chunk.length })
    } else {
      segments.push({ kind: 0, data: chunk })
    }
  }
  return encodeCommand({ ...d, cmd: CMD_SET_TENSOR_GGUF, segments, data: undefined })
}

export function sha256 (bytes) {
  return new Uint8Array(createHash('sha256').update(bytes).digest())
}
