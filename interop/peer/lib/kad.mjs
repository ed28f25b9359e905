// The mesh-scoped Kademlia protocol id (protocols/README.md, meshp2p/mesh/_kad.py):
// /mesh/kad/1.0.0/<hex of the first 16 bytes of sha256("meshp2p/kad/v1" 0x00 mesh_id)>.
//
// Provider-record keys are sha2-256 multihashes of the names meshp2p uses
// ("/mesh-model/served/<model>", "/mesh-model/disk/<sha256>"), which kad-dht takes as it
// takes any content key: as a CID (v1, raw codec 0x55, that multihash).

import { createHash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'

export const KAD_PREFIX = '/mesh/kad/1.0.0/'
const SHA2_256 = 0x12
const RAW = 0x55

export function kadProtocolFor (meshId) {
  const digest = createHash('sha256').update(Buffer.concat([Buffer.from('meshp2p/kad/v1\x00'), Buffer.from(meshId, 'utf8')])).digest()
  return KAD_PREFIX + digest.subarray(0, 16).toString('hex')
}

/** The provider key of the name `name`: a CID v1 (raw) whose multihash is sha2-256(name). */
export function providerKey (name) {
  const digest = createHash('sha256').update(Buffer.from(name, 'utf8')).digest()
  return CID.createV1(RAW, Digest.create(SHA2_256, new Uint8Array(digest)))
}

/** The provider key under which nodes serving `model` announce themselves. */
export const servedKey = (model) => providerKey(`/mesh-model/served/${model}`)
/** The provider key under which nodes holding the model file `sha256` announce it. */
export const onDiskKey = (sha256) => providerKey(`/mesh-model/disk/${sha256}`)
