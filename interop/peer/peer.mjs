#!/usr/bin/env node
// A js-libp2p peer that speaks meshp2p's /mesh/* protocols (see ../README.md).
//
//   node peer.mjs vectors [--dir ../../protocols/vectors]
//   node peer.mjs join --invite TOKEN --transport tcp|quic [--secret HEX] [--model ID]
//   node peer.mjs found --transport tcp|quic [--timeout S]
//
// Prints one JSON object per line: check results {"check", "transport", "ok", "detail"}
// (and sometimes "data"), and events {"event": ...}. `join` and `found` print
// {"event": "ready"} once every check has run, then keep gossiping until stdin closes.

import { randomBytes } from 'node:crypto'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { AUTH_PROTOCOL } from './lib/auth.mjs'
import { FrameChannel, withTimeout } from './lib/channel.mjs'
import { GOSSIP_MAX_FRAME, GOSSIP_PROTOCOL } from './lib/gossip.mjs'
import { decodeToken, encodeToken, newCredentials } from './lib/invite.mjs'
import { kadProtocolFor, servedKey } from './lib/kad.mjs'
import { instrumentKad } from './lib/kadhook.mjs'
import { MeshPeer } from './lib/mesh.mjs'
import { createNode, usesTransport } from './lib/node.mjs'
import { ROUTE_MAX_FRAME, ROUTE_PROTOCOL, routeRequest } from './lib/route.mjs'
import { checkVectors } from './lib/vectors.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))
const DEFAULT_MODEL = 'gemma-3-270m-Q4_K_M'

function emit (obj) {
  process.stdout.write(JSON.stringify(obj, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n')
}

function check (name, transport, ok, detail, data) {
  emit({ check: name, transport, ok: Boolean(ok), detail: String(detail), ...(data === undefined ? {} : { data }) })
}

function errText (err) {
  return err?.message || String(err)
}

/** Resolves when stdin closes (the runner's way of saying "stop"). */
function stdinClosed () {
  return new Promise(resolve => {
    process.stdin.on('end', resolve)
    process.stdin.on('close', resolve)
    process.stdin.on('error', resolve)
    process.stdin.resume()
  })
}

/** Resolves with the first event (passed to `record`) that `predicate` accepts. */
class Waiters {
  constructor () { this.events = []; this.waiters = [] }
  record (event) {
    this.events.push(event)
    for (const w of [...this.waiters]) {
      if (w.predicate(event)) { this.waiters.splice(this.waiters.indexOf(w), 1); w.resolve(event) }
    }
  }

  wait (predicate, ms, what) {
    const found = this.events.find(predicate)
    if (found) return Promise.resolve(found)
    return withTimeout(new Promise(resolve => this.waiters.push({ predicate, resolve })), ms, what)
  }
}

// -- vectors ------------------------------------------------------------------

async function cmdVectors (opts) {
  const dir = opts.dir ?? join(HERE, '..', '..', 'protocols', 'vectors')
  const results = await checkVectors(dir)
  if (results.length === 0) check('vectors', '-', false, `no vector files in ${dir}`)
  for (const r of results) {
    const extra = r.rpcSegments ? `; ${r.rpcSegments} SET_TENSOR_GGUF expanded and rewritten` : ''
    check(`vectors:${r.file.replace(/\.json$/, '')}`, '-', r.ok,
      r.ok ? `${r.passed}/${r.total} vectors decode, re-encode byte for byte and check${extra}` : `${r.passed}/${r.total} passed; ${r.failures.join(' | ')}`)
  }
}

// -- join ---------------------------------------------------------------------

function describeSecurity (conn, transport) {
  if (transport === 'quic') return `QUIC v1 (TLS 1.3 and streams built in; encryption ${conn.encryption}, muxer ${conn.multiplexer})`
  return `encryption ${conn.encryption}, muxer ${conn.multiplexer}`
}

function pickAddr (addrs, transport) {
  const usable = addrs.filter(a => usesTransport(a, transport))
  return usable.find(a => a.startsWith('/ip4/127.')) ?? usable[0]
}

async function streamRefused (conn, protocol, frame) {
  // A non-member's stream must be reset (meshp2p waits up to 5 s for a handshake first).
  const started = Date.now()
  let stream
  try {
    stream = await conn.newStream(protocol)
  } catch (err) {
    return { refused: true, how: `could not open: ${errText(err)}`, ms: Date.now() - started }
  }
  const ch = new FrameChannel(stream, GOSSIP_MAX_FRAME)
  if (frame) ch.send(frame)
  try {
    const msg = await ch.recv(12_000, `${protocol} answer`)
    if (msg === null) return { refused: true, how: 'closed without answering', ms: Date.now() - started }
    return { refused: false, how: `answered ${msg.t}`, ms: Date.now() - started }
  } catch (err) {
    const how = /timed|within/.test(errText(err)) ? null : `reset (${errText(err)})`
    if (how === null) return { refused: false, how: 'stream stayed open and silent', ms: Date.now() - started }
    return { refused: true, how, ms: Date.now() - started }
  } finally {
    ch.abort('done')
  }
}

async function cmdJoin (opts) {
  const transport = opts.transport
  const T = transport
  const token = decodeToken(opts.invite)
  const wrongSecret = opts.secret !== undefined
  const secret = wrongSecret ? new Uint8Array(Buffer.from(opts.secret, 'hex')) : token.secret
  if (secret.length !== 32) throw new Error('--secret must be 64 hex digits')
  const addr = pickAddr(token.addrs, transport)
  const kadProtocol = kadProtocolFor(token.meshId)
  const privateKey = await generateKeyPair('Ed25519')
  const node = await createNode({ privateKey, transport, kadProtocol })
  const events = new Waiters()
  const onEvent = (event) => { emit(event); events.record(event) }
  const mesh = new MeshPeer({ libp2p: node, privateKey, meshId: token.meshId, secret, onEvent })
  const kad = instrumentKad(node.services.dht, { isMember: p => mesh.isMember(p), onEvent })
  await mesh.start()
  // A provider record only this peer holds (kad-dht's own store, never announced): the
  // node's lookup of the probe model can only find it by asking this peer. kad-dht answers
  // GET_PROVIDERS with the addresses the peer store holds for each provider, and libp2p
  // stores our own only about a second after listening (debounced), so store them now.
  const probeModel = `interop-probe-${randomBytes(4).toString('hex')}`
  const probeKey = servedKey(probeModel)
  await node.peerStore.merge(node.peerId, { multiaddrs: node.getMultiaddrs().map(ma => ma.decapsulateCode(421)) })
  await kad.provideLocally(probeKey, node.peerId)
  emit({ event: 'started', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String), kad_protocol: kadProtocol, mesh_id: token.meshId })

  const ready = (extra = {}) => emit({ event: 'ready', peer_id: node.peerId.toString(), probe_model: probeModel, probe_key_hex: Buffer.from(probeKey.multihash.bytes).toString('hex'), probe_cid: probeKey.toString(), ...extra })
  if (!addr) {
    check('dial', T, false, `the invite lists no ${transport} address: ${token.addrs.join(' ')}`)
    ready()
    return { node, mesh }
  }

  // dial
  const expectedPeer = addr.split('/p2p/')[1]
  const identified = withTimeout(new Promise(resolve => {
    const listener = (evt) => {
      if (evt.detail.peerId.toString() === expectedPeer) {
        node.removeEventListener('peer:identify', listener)
        resolve(evt)
      }
    }
    node.addEventListener('peer:identify', listener)
  }), 15_000, 'identify')
  identified.catch(() => {})
  let conn
  const t0 = Date.now()
  try {
    conn = await withTimeout(node.dial(multiaddr(addr)), 15_000, `dial ${addr}`)
    const remote = conn.remoteAddr.toString()
    const ok = usesTransport(remote, transport) && conn.remotePeer.toString() === expectedPeer
    check('dial', T, ok, `${remote} in ${Date.now() - t0} ms; ${describeSecurity(conn, transport)}`,
      { remote_addr: remote, remote_peer: conn.remotePeer.toString() })
  } catch (err) {
    check('dial', T, false, `could not dial ${addr}: ${errText(err)}`)
    ready()
    return { node, mesh }
  }
  const nodePeer = conn.remotePeer
  const nodeId = nodePeer.toString()

  // identify: the result of the identify libp2p runs on every new connection (calling
  // identify again while that one runs would exceed its one-outbound-stream limit).
  try {
    let id
    try {
      id = (await identified).detail
    } catch {
      id = await withTimeout(node.services.identify.identify(conn), 10_000, 'identify')
    }
    const protocols = id.protocols ?? []
    const wanted = [AUTH_PROTOCOL, GOSSIP_PROTOCOL, ROUTE_PROTOCOL, kadProtocol]
    const missing = wanted.filter(p => !protocols.includes(p))
    check('identify', T, missing.length === 0 && id.peerId.equals(nodePeer),
      missing.length
        ? `node's identify lacks ${missing.join(', ')} (it lists ${protocols.join(', ')})`
        : `agent ${id.agentVersion ?? '?'}; ${protocols.length} protocols incl. the /mesh/* ones and ${kadProtocol}; listen addrs ${(id.listenAddrs ?? []).map(String).join(' ')}`,
      { protocols, agent: id.agentVersion, listen_addrs: (id.listenAddrs ?? []).map(String) })
  } catch (err) {
    check('identify', T, false, `identify failed: ${errText(err)}`)
  }

  // ping
  try {
    const rtts = []
    for (let i = 0; i < 3; i++) rtts.push(await withTimeout(node.services.ping.ping(nodePeer), 10_000, 'ping'))
    check('ping', T, true, `rtt ${rtts.map(r => r.toFixed(1)).join(', ')} ms`, { rtt_ms: rtts })
  } catch (err) {
    check('ping', T, false, `ping failed: ${errText(err)}`)
  }

  // auth
  let auth
  try {
    auth = await withTimeout(mesh.authenticate(conn), 15_000, 'auth')
  } catch (err) {
    auth = { ok: false, reason: errText(err) }
  }
  check('auth', T, auth.ok, auth.ok ? `membership proved both ways (mesh ${token.meshId})` : `handshake failed: ${auth.reason}`,
    { ok: auth.ok, reason: auth.reason })

  if (!auth.ok) {
    // A non-member must not get any other /mesh/* protocol served.
    const [gossip, route, kadStream] = await Promise.all([
      streamRefused(conn, GOSSIP_PROTOCOL, { t: 'announce', announcement: mesh.own }),
      streamRefused(conn, ROUTE_PROTOCOL, { t: 'table', v: 1, since: 0 }),
      streamRefused(conn, kadProtocol, null)
    ])
    check('gated', T, gossip.refused && route.refused && kadStream.refused,
      `gossip stream: ${gossip.how} after ${gossip.ms} ms; route stream: ${route.how} after ${route.ms} ms; kad stream: ${kadStream.how} after ${kadStream.ms} ms`)
    ready({ node_id: nodeId })
    return { node, mesh }
  }

  // gossip: our announcement out, the node's announcement in and verified, and the
  // node's digest holding us at our seq (so it stored what we signed).
  try {
    await withTimeout(mesh.linkUp(nodePeer), 10_000, 'gossip stream')
    const [theirs, digest] = await Promise.all([
      events.wait(e => e.event === 'announcement' && e.node_id === nodeId && e.stored, 15_000, "the node's announcement"),
      events.wait(e => e.event === 'digest' && e.from === nodeId && e.holds_us_at !== null && BigInt(e.holds_us_at) >= BigInt(mesh.own.seq), 15_000, 'a digest holding our announcement')
    ])
    check('gossip', T, true, `node's announcement verified (role ${theirs.role}, serves ${JSON.stringify(theirs.models_served)}); node's digest holds us at seq ${digest.holds_us_at}`,
      { node_role: theirs.role, node_models: theirs.models_served, own_seq: String(mesh.own.seq) })
  } catch (err) {
    const seen = events.events.filter(e => e.event === 'announcement' || e.event === 'digest').slice(-3)
    check('gossip', T, false, `${errText(err)}; last gossip events: ${JSON.stringify(seen)}`)
  }

  // route
  const served = mesh.view.get(nodeId)?.ann.models_served ?? []
  const model = opts.model ?? served[0] ?? DEFAULT_MODEL
  const params = { messages: [{ role: 'user', content: 'Say hello in one short sentence.' }], max_tokens: 8, temperature: 0 }
  try {
    // route.md: the body is the OpenAI request JSON as a client sends it; the client may
    // close its write side after the request (we do, to exercise it).
    const body = Buffer.from(JSON.stringify({ model, ...params }))
    const stream = await conn.newStream(ROUTE_PROTOCOL)
    const answer = await routeRequest(new FrameChannel(stream, ROUTE_MAX_FRAME), { id: `js-${randomBytes(4).toString('hex')}`, endpoint: 'chat', body }, { halfClose: true })
    if (answer.kind !== 'answer') {
      check('route', T, false, `${answer.kind} ${answer.code}: ${answer.message}`, { model })
    } else {
      let text = null
      let parsed = null
      try {
        parsed = JSON.parse(answer.body.toString('utf8'))
        text = parsed?.choices?.[0]?.message?.content ?? null
      } catch {}
      const ok = answer.status === 200 && typeof text === 'string'
      check('route', T, ok, ok ? `status 200 after a half-close, ${answer.body.length} bytes, text ${JSON.stringify(text)}` : `status ${answer.status}: ${answer.body.toString('utf8').slice(0, 300)}`,
        { model, text, status: answer.status, finish_reason: parsed?.choices?.[0]?.finish_reason ?? null, params })
    }
    // The server validates the body as its own API would: a bad one gets a 400 answer.
    const s2 = await conn.newStream(ROUTE_PROTOCOL)
    const bad = Buffer.from(JSON.stringify({ model, messages: [], max_tokens: 8 }))
    const a2 = await routeRequest(new FrameChannel(s2, ROUTE_MAX_FRAME), { id: `js-${randomBytes(4).toString('hex')}`, endpoint: 'chat', body: bad }, { firstByteMs: 30_000 })
    let error = null
    try { error = JSON.parse(a2.body?.toString('utf8') ?? '')?.error ?? null } catch {}
    const refused = a2.kind === 'answer' && a2.status === 400 && typeof error?.message === 'string'
    check('route-validation', T, refused, refused ? `an empty messages list got 400: ${error.message}` : `expected a 400 answer, got ${a2.kind} ${a2.status ?? a2.code ?? ''} ${a2.message ?? ''}`)
    await routeApis(conn, model, T)
  } catch (err) {
    check('route', T, false, `route exchange failed: ${errText(err)}`, { model })
  }

  // Kademlia, our direction: FIND_NODE for the node's own id, answered on the mesh protocol.
  try {
    let answer = null
    const signal = AbortSignal.timeout(10_000)
    for await (const ev of node.services.dht.network.sendRequest(nodePeer, { type: 'FIND_NODE', key: nodePeer.toMultihash().bytes, closer: [], providers: [] }, { signal })) {
      if (ev.name === 'PEER_RESPONSE') answer = { ok: true, closer: ev.closer.map(p => p.id.toString()) }
      if (ev.name === 'QUERY_ERROR') answer = { ok: false, error: errText(ev.error) }
    }
    emit({ event: 'kad-out', type: 'FIND_NODE', to: nodeId, ...(answer ?? { ok: false, error: 'no answer' }) })
  } catch (err) {
    emit({ event: 'kad-out', type: 'FIND_NODE', to: nodeId, ok: false, error: errText(err) })
  }

  ready({ node_id: nodeId })
  return { node, mesh }
}

// The agent APIs ride /mesh/route as chat does (route.md's endpoint table): Anthropic
// Messages (and its error shape), embeddings, and a streamed OpenAI Responses answer.
async function routeApis (conn, model, T) {
  const seen = []
  const ask = async (endpoint, payload) => {
    const stream = await conn.newStream(ROUTE_PROTOCOL)
    const body = Buffer.from(JSON.stringify({ model, ...payload }))
    const answer = await routeRequest(new FrameChannel(stream, ROUTE_MAX_FRAME), { id: `js-${randomBytes(4).toString('hex')}`, endpoint, body }, { firstByteMs: 60_000 })
    if (answer.kind !== 'answer') throw new Error(`${endpoint}: ${answer.kind} ${answer.code}: ${answer.message}`)
    const text = answer.body.toString('utf8')
    let parsed = null
    try { parsed = JSON.parse(text) } catch {}
    return { status: answer.status, parsed, text }
  }
  try {
    const m = await ask('messages', { max_tokens: 8, messages: [{ role: 'user', content: 'Say hello.' }] })
    const said = m.parsed?.content?.[0]?.text
    const messagesOk = m.status === 200 && m.parsed?.type === 'message' && typeof said === 'string'
    seen.push(`messages ${m.status} ${messagesOk ? JSON.stringify(said) : m.text.slice(0, 200)}`)
    const e = await ask('embeddings', { input: ['a', 'b'] })
    const lengths = (e.parsed?.data ?? []).map(d => d?.embedding?.length ?? null)
    const embeddingsOk = e.status === 200 && lengths.length === 2 && lengths[0] > 0 && lengths[0] === lengths[1]
    seen.push(`embeddings ${e.status} lengths ${JSON.stringify(lengths)}`)
    const r = await ask('responses', { input: 'Say hello.', max_output_tokens: 8, stream: true })
    const events = [...r.text.matchAll(/^event: (\S+)$/gm)].map(x => x[1])
    const last = events[events.length - 1]
    const responsesOk = r.status === 200 && events[0] === 'response.created' && (last === 'response.completed' || last === 'response.incomplete')
    seen.push(`responses stream ${r.status}: ${events.length} events, ${events[0]} .. ${last}`)
    const bad = await ask('messages', { messages: [] })
    const badOk = bad.status === 400 && bad.parsed?.type === 'error' && bad.parsed?.error?.type === 'invalid_request_error'
    seen.push(`bad messages ${bad.status} ${bad.parsed?.error?.type}`)
    check('route-apis', T, messagesOk && embeddingsOk && responsesOk && badOk, seen.join('; '))
  } catch (err) {
    check('route-apis', T, false, `${seen.join('; ')}${seen.length ? '; ' : ''}${errText(err)}`)
  }
}

// -- found --------------------------------------------------------------------

async function cmdFound (opts) {
  const transport = opts.transport
  const T = transport
  const timeoutMs = Number(opts.timeout ?? 60) * 1000
  const { meshId, secret } = newCredentials()
  const kadProtocol = kadProtocolFor(meshId)
  const privateKey = await generateKeyPair('Ed25519')
  const node = await createNode({ privateKey, transport, kadProtocol })
  const events = new Waiters()
  const onEvent = (event) => { emit(event); events.record(event) }
  const mesh = new MeshPeer({ libp2p: node, privateKey, meshId, secret, onEvent })
  instrumentKad(node.services.dht, { isMember: p => mesh.isMember(p), onEvent })
  node.addEventListener('connection:open', (evt) => {
    const c = evt.detail
    onEvent({ event: 'connection', direction: c.direction, remote_peer: c.remotePeer.toString(), remote_addr: c.remoteAddr.toString(), encryption: c.encryption ?? null, multiplexer: c.multiplexer ?? null })
  })
  await mesh.start()
  const addrs = node.getMultiaddrs().map(String).filter(a => usesTransport(a, transport))
  const token = encodeToken({ meshId, secret, addrs })
  emit({ event: 'invite', token, peer_id: node.peerId.toString(), addrs, mesh_id: meshId, kad_protocol: kadProtocol })

  const deadline = Date.now() + timeoutMs
  const left = () => Math.max(1, deadline - Date.now())
  let dialer = null
  try {
    const c = await events.wait(e => e.event === 'connection' && e.direction === 'inbound', left(), 'an inbound connection')
    dialer = c.remote_peer
    const ok = usesTransport(c.remote_addr, transport)
    check('reverse-dial', T, ok, `${c.remote_peer} dialled us from ${c.remote_addr} (${describeSecurity({ encryption: c.encryption, multiplexer: c.multiplexer }, transport)})`, { node_id: c.remote_peer, remote_addr: c.remote_addr })
  } catch (err) {
    check('reverse-dial', T, false, `nobody dialled us: ${errText(err)}`)
  }
  try {
    const a = await events.wait(e => e.event === 'auth-in' && (dialer === null || e.from === dialer) && e.ok, left(), 'a successful handshake as responder')
    check('reverse-auth', T, true, `${a.from} proved membership to us (we were the responder) over ${a.remote_addr}`, { node_id: a.from })
  } catch (err) {
    const failures = events.events.filter(e => e.event === 'auth-in' && !e.ok).map(e => e.reason)
    check('reverse-auth', T, false, `${errText(err)}${failures.length ? `; failed handshakes: ${failures.join(' | ')}` : ''}`)
  }
  try {
    const ann = await events.wait(e => e.event === 'announcement' && (dialer === null || e.node_id === dialer) && e.stored, left(), "the joiner's signed announcement")
    const digest = await events.wait(e => e.event === 'digest' && e.from === ann.node_id && e.holds_us_at !== null, left(), 'a digest holding our announcement')
    check('reverse-gossip', T, true, `verified ${ann.node_id}'s announcement (role ${ann.role}, seq ${ann.seq}); its digest holds us at seq ${digest.holds_us_at}`,
      { node_id: ann.node_id, role: ann.role })
  } catch (err) {
    check('reverse-gossip', T, false, errText(err))
  }
  emit({ event: 'ready', peer_id: node.peerId.toString() })
  return { node, mesh }
}

// -- main ---------------------------------------------------------------------

async function main () {
  const [command, ...rest] = process.argv.slice(2)
  const { values } = parseArgs({
    args: rest,
    options: {
      invite: { type: 'string' },
      transport: { type: 'string', default: 'tcp' },
      secret: { type: 'string' },
      model: { type: 'string' },
      dir: { type: 'string' },
      timeout: { type: 'string' },
      'linger-ms': { type: 'string' }
    }
  })
  if (command === 'vectors') {
    await cmdVectors(values)
    return
  }
  if (command !== 'join' && command !== 'found') {
    process.stderr.write('usage: peer.mjs vectors | join --invite TOKEN --transport tcp|quic [--secret HEX] | found --transport tcp|quic\n')
    process.exitCode = 2
    return
  }
  if (!['tcp', 'quic'].includes(values.transport)) throw new Error('--transport must be tcp or quic')
  if (command === 'join' && !values.invite) throw new Error('join needs --invite TOKEN')
  const closed = stdinClosed()
  const { node, mesh } = command === 'join' ? await cmdJoin(values) : await cmdFound(values)
  await closed
  try {
    // A signed leaving, then a moment with the connection still up, so the runner can
    // tell the node dropped us for the leaving and not because the connection broke.
    await mesh.leave()
    emit({ event: 'left', peer_id: node.peerId.toString() })
    await new Promise(resolve => setTimeout(resolve, Number(values['linger-ms'] ?? 1500)))
  } catch (err) {
    emit({ event: 'error', where: 'leave', error: errText(err) })
  }
  mesh.stop()
  await withTimeout(node.stop(), 5_000, 'libp2p stop').catch(() => {})
  emit({ event: 'stopped' })
}

main().then(
  () => setTimeout(() => process.exit(process.exitCode ?? 0), 50),
  (err) => {
    emit({ event: 'fatal', error: errText(err), stack: err?.stack })
    setTimeout(() => process.exit(1), 50)
  }
)
