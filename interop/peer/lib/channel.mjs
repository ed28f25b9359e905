// A libp2p 2.x stream (stream.source / stream.sink) as a channel of /mesh/* frames.

import { pushable } from 'it-pushable'
import { encodeFrame, FrameDecoder } from './wire.mjs'

export class TimeoutError extends Error {}

export function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export class FrameChannel {
  /**
   * @param stream a libp2p 2.x Stream
   * @param maxFrame the receive limit (body bytes)
   */
  constructor (stream, maxFrame) {
    this.stream = stream
    this.decoder = new FrameDecoder(maxFrame)
    this.pending = []
    this.out = pushable()
    this.ended = false
    this.sinkError = null
    this.sinkDone = stream.sink(this.out).catch(err => { this.sinkError = err })
    this.source = stream.source[Symbol.asyncIterator]()
    this.nextChunk = null
  }

  send (msg) {
    this.out.push(encodeFrame(msg))
  }

  sendRaw (bytes) {
    this.out.push(bytes)
  }

  /** Close our write side; what was queued still goes out. */
  closeWrite () {
    this.out.end()
  }

  /** The next frame's map, or null when the remote closed its side first. */
  async recv (timeoutMs = 10_000, what = 'frame') {
    while (this.pending.length === 0) {
      if (this.ended) return null
      if (this.nextChunk === null) this.nextChunk = this.source.next()
      const result = await withTimeout(this.nextChunk, timeoutMs, what)
      this.nextChunk = null
      if (result.done) {
        this.ended = true
        if (this.decoder.header.length > 0 || this.decoder.length !== null) {
          throw new Error('stream ended inside a frame')
        }
        return null
      }
      const chunk = result.value
      const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
      this.pending.push(...this.decoder.feed(bytes))
    }
    return this.pending.shift()
  }

  async close () {
    // End the pushable and let the sink drain it: stream.close() right away would abort
    // the sink's source and drop frames it has not pulled yet.
    this.out.end()
    try {
      await withTimeout(this.sinkDone, 2000, 'stream write')
      await withTimeout(this.stream.close(), 2000, 'stream close')
    } catch {
      this.abort()
    }
  }

  abort (reason = 'protocol error') {
    this.out.end()
    try {
      this.stream.abort(new Error(reason))
    } catch {}
  }
}
