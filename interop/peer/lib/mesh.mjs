// One member of a meshp2p mesh, on a js-libp2p node: /mesh/auth (both roles), gossip
// links (one outbound stream per member, messages read on every stream), heartbeats,
// and a members-only gate on every /mesh/* stream it accepts.

import { peerIdFromString } from '@libp2p/peer-id'
import { AUTH_MAX_FRAME, AUTH_PROTOCOL, authInitiator, authResponder } from './auth.mjs'
import { FrameChannel } from './channel.mjs'
import {
  big, GOSSIP_MAX_FRAME, GOSSIP_PROTOCOL, nextSeq, parseGossipMessage, signAnnouncement, signLeaving,
  verifyAnnouncement, verifySigned, LEAVING_DOMAIN
} from './gossip.mjs'
import { ProtocolError } from './wire.mjs'

const MEMBERSHIP_GRACE = 5_000

export class MeshPeer {
  constructor ({ libp2p, privateKey, meshId, secret, heartbeatMs = 1000, version = 'meshp2p-interop-js/0.1.0', onEvent = () => {} }) {
    this.libp2p = libp2p
    this.privateKey = privateKey
    this.meshId = meshId
    this.secret = secret
    this.heartbeatMs = heartbeatMs
    this.version = version
    this.onEvent = onEvent
    this.nodeId = libp2p.peerId.toString()
    this.peerIdBytes = libp2p.peerId.toMultihash().bytes
    this.members = new Set()
    this.memberWaiters = new Set()
    this.view = new Map() // node id -> { ann, seq: bigint, from }
    this.buried = new Map() // node id -> seq (bigint)
    this.links = new Map() // peer id -> FrameChannel (our outbound gossip stream)
    this.linking = new Map()
    this.seq = 0
    this.own = null
    this.seenNonces = new Set()
    this.timer = null
    this.stopping = false
  }

  async start () {
    await this.libp2p.handle(AUTH_PROTOCOL, ({ stream, connection }) => {
      this.handleAuth(stream, connection).catch(err => this.onEvent({ event: 'error', where: 'auth handler', error: err.message }))
    })
    await this.libp2p.handle(GOSSIP_PROTOCOL, ({ stream, connection }) => {
      this.handleGossip(stream, connection).catch(err => this.onEvent({ event: 'error', where: 'gossip handler', error: err.message }))
    })
    await this.refreshOwn()
    this.timer = setInterval(() => this.heartbeat(), this.heartbeatMs)
  }

  isMember (peer) {
    return this.members.has(peer.toString())
  }

  admit (peer) {
    this.members.add(peer.toString())
    for (const wake of this.memberWaiters) wake()
  }

  /** Like meshp2p's members_only: a stream may arrive a moment before its sender is admitted. */
  async waitMember (peer, ms = MEMBERSHIP_GRACE) {
    const id = peer.toString()
    const deadline = Date.now() + ms
    while (!this.members.has(id) && Date.now() < deadline) {
      await new Promise(resolve => {
        const wake = () => { this.memberWaiters.delete(wake); clearTimeout(t); resolve() }
        const t = setTimeout(wake, Math.max(1, deadline - Date.now()))
        this.memberWaiters.add(wake)
      })
    }
    return this.members.has(id)
  }

  membersOnly (protocol, handler) {
    return ({ stream, connection }) => {
      this.waitMember(connection.remotePeer).then(ok => {
        if (!ok) {
          this.onEvent({ event: 'refused-stream', protocol, from: connection.remotePeer.toString(), reason: 'not a member' })
          stream.abort(new Error('not a mesh member'))
          return
        }
        return handler({ stream, connection })
      }).catch(err => this.onEvent({ event: 'error', where: protocol, error: err.message }))
    }
  }

  handshakeParams (remotePeer) {
    return {
      secret: this.secret,
      meshId: this.meshId,
      localPeerId: this.peerIdBytes,
      remotePeerId: remotePeer.toMultihash().bytes,
      seenNonces: this.seenNonces
    }
  }

  /** Prove membership to the peer on `connection` (we are the initiator). */
  async authenticate (connection) {
    const stream = await connection.newStream(AUTH_PROTOCOL)
    const ch = new FrameChannel(stream, AUTH_MAX_FRAME)
    let result
    try {
      result = await authInitiator(ch, this.handshakeParams(connection.remotePeer))
    } catch (err) {
      result = { ok: false, reason: err.message }
    }
    if (result.ok) {
      await ch.close()
      this.admit(connection.remotePeer)
    } else {
      ch.abort(result.reason)
    }
    return result
  }

  async handleAuth (stream, connection) {
    const ch = new FrameChannel(stream, AUTH_MAX_FRAME)
    let result
    try {
      result = await authResponder(ch, this.handshakeParams(connection.remotePeer))
    } catch (err) {
      result = { ok: false, reason: err.message }
    }
    await ch.close()
    if (result.ok) this.admit(connection.remotePeer)
    this.onEvent({ event: 'auth-in', from: connection.remotePeer.toString(), ok: result.ok, reason: result.reason, remote_addr: connection.remoteAddr.toString() })
  }

  // -- gossip ---------------------------------------------------------------

  async refreshOwn () {
    this.seq = nextSeq(this.seq)
    this.own = await signAnnouncement({
      seq: this.seq,
      mesh_id: this.meshId,
      addrs: this.libp2p.getMultiaddrs().map(String),
      role: 'standby',
      models_served: [],
      models_on_disk: [],
      // Offers no memory: a host must not plan to put model layers on this peer.
      memory_free: 0,
      memory_total: 0,
      request_rates: {},
      version: this.version
    }, this.privateKey, this.nodeId)
  }

  digest () {
    const entries = { [this.nodeId]: this.own.seq }
    for (const [id, held] of this.view) entries[id] = held.ann.seq
    return { t: 'digest', entries }
  }

  /** Open our outbound gossip stream to a member: our announcement, then our view. */
  async linkUp (peer) {
    const id = peer.toString()
    if (this.links.has(id)) return this.links.get(id)
    if (this.linking.has(id)) return this.linking.get(id)
    const opening = (async () => {
      const stream = await this.libp2p.dialProtocol(peer, GOSSIP_PROTOCOL)
      const ch = new FrameChannel(stream, GOSSIP_MAX_FRAME)
      this.links.set(id, ch)
      ch.send({ t: 'announce', announcement: this.own })
      ch.send(this.digest())
      this.onEvent({ event: 'gossip-link', to: id })
      this.readLoop(peer, ch, 'outbound').catch(() => {})
      return ch
    })()
    this.linking.set(id, opening)
    try {
      return await opening
    } finally {
      this.linking.delete(id)
    }
  }

  async handleGossip (stream, connection) {
    const peer = connection.remotePeer
    if (!(await this.waitMember(peer))) {
      this.onEvent({ event: 'refused-stream', protocol: GOSSIP_PROTOCOL, from: peer.toString(), reason: 'not a member' })
      stream.abort(new Error('not a mesh member'))
      return
    }
    const ch = new FrameChannel(stream, GOSSIP_MAX_FRAME)
    this.linkUp(peer).catch(err => this.onEvent({ event: 'error', where: 'gossip link', error: err.message }))
    await this.readLoop(peer, ch, 'inbound')
  }

  async readLoop (peer, ch, direction) {
    try {
      for (;;) {
        const raw = await ch.recv(3_600_000, 'gossip')
        if (raw === null) break
        await this.onMessage(peer, raw)
      }
    } catch (err) {
      if (err instanceof ProtocolError) {
        this.onEvent({ event: 'gossip-protocol-error', from: peer.toString(), error: err.message })
        ch.abort(err.message)
        return
      }
    }
    if (direction === 'outbound' && this.links.get(peer.toString()) === ch) this.links.delete(peer.toString())
  }

  send (peer, msg) {
    const ch = this.links.get(peer.toString())
    if (ch) ch.send(msg)
  }

  broadcast (msg, skip = null) {
    for (const [id, ch] of this.links) if (id !== skip) ch.send(msg)
  }

  async onMessage (peer, raw) {
    const sender = peer.toString()
    const msg = parseGossipMessage(raw)
    if (msg === null) return // unknown t: ignored
    if (msg.t === 'announce') {
      const ann = msg.announcement
      if (ann.node_id === this.nodeId) return
      const base = { event: 'announcement', from: sender, node_id: ann.node_id, seq: String(ann.seq), role: ann.role, mesh_id: ann.mesh_id }
      if (ann.mesh_id !== this.meshId) return this.onEvent({ ...base, stored: false, reason: 'another mesh' })
      const held = this.view.get(ann.node_id)
      if (held && big(ann.seq) <= big(held.ann.seq)) return
      if (this.buried.has(ann.node_id) && big(ann.seq) <= this.buried.get(ann.node_id)) return
      const verdict = await verifyAnnouncement(ann)
      if (!verdict.ok) return this.onEvent({ ...base, stored: false, reason: verdict.reason })
      this.view.set(ann.node_id, { ann, from: sender })
      this.buried.delete(ann.node_id)
      this.onEvent({ ...base, stored: true, verified: true, models_served: ann.models_served, addrs: ann.addrs, version: ann.version })
      this.broadcast({ t: 'announce', announcement: ann }, sender)
    } else if (msg.t === 'digest') {
      const entries = msg.entries
      const mine = entries[this.nodeId]
      this.onEvent({ event: 'digest', from: sender, holds_us_at: mine === undefined ? null : String(mine), own_seq: String(this.seq), entries: Object.keys(entries).length })
      const want = []
      for (const [id, seq] of Object.entries(entries)) {
        if (id === this.nodeId) continue
        const held = this.view.get(id)
        const buried = this.buried.get(id)
        if ((!held || big(held.ann.seq) < big(seq)) && (buried === undefined || buried < big(seq))) want.push(id)
      }
      if (want.length) this.send(peer, { t: 'want', node_ids: want })
      if (mine === undefined || big(mine) < big(this.own.seq)) this.send(peer, { t: 'announce', announcement: this.own })
      if (mine !== undefined && big(mine) > big(this.own.seq)) {
        this.seq = Number(big(mine))
        await this.refreshOwn()
        this.broadcast({ t: 'announce', announcement: this.own })
      }
      for (const [id, held] of this.view) {
        if (entries[id] === undefined || big(entries[id]) < big(held.ann.seq)) this.send(peer, { t: 'announce', announcement: held.ann })
      }
    } else if (msg.t === 'want') {
      for (const id of msg.node_ids) {
        if (id === this.nodeId) this.send(peer, { t: 'announce', announcement: this.own })
        else if (this.view.has(id)) this.send(peer, { t: 'announce', announcement: this.view.get(id).ann })
      }
    } else if (msg.t === 'leaving') {
      const leaving = msg.leaving
      if (leaving.mesh_id !== this.meshId) return
      const verdict = await verifySigned(LEAVING_DOMAIN, leaving)
      this.onEvent({ event: 'leaving', from: sender, node_id: leaving.node_id, verified: verdict.ok, reason: verdict.reason })
      if (!verdict.ok) return
      this.view.delete(leaving.node_id)
      this.buried.set(leaving.node_id, big(leaving.seq))
    } else if (msg.t === 'dead') {
      if (msg.node_id === this.nodeId) {
        await this.refreshOwn()
        this.broadcast({ t: 'announce', announcement: this.own })
      }
    }
  }

  heartbeat () {
    if (this.stopping || this.own === null) return
    const digest = this.digest()
    for (const ch of this.links.values()) ch.send(digest)
  }

  /** Say goodbye with a signed leaving (seq above our last announcement), then stop gossiping. */
  async leave () {
    this.stopping = true
    clearInterval(this.timer)
    if (this.own === null) return
    this.seq = nextSeq(this.seq)
    const leaving = await signLeaving({ seq: this.seq, meshId: this.meshId }, this.privateKey, this.nodeId)
    for (const ch of this.links.values()) {
      ch.send(leaving)
      ch.closeWrite()
    }
  }

  stop () {
    this.stopping = true
    clearInterval(this.timer)
  }
}

export { peerIdFromString }
