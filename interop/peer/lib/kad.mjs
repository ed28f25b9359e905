// The mesh-scoped Kademlia protocol id (protocols/README.md, meshp2p/_kad.py):
// /mesh/kad/1.0.0/<hex of the first 16 bytes of sha256("meshp2p/kad/v1" 0x00 mesh_id)>.

import { createHash } from 'node:crypto'

export const KAD_PREFIX = '/mesh/kad/1.0.0/'

export function kadProtocolFor (meshId) {
  const digest = createHash('sha256').update(Buffer.concat([Buffer.from('meshp2p/kad/v1\x00'), Buffer.from(meshId, 'utf8')])).digest()
  return KAD_PREFIX + digest.subarray(0, 16).toString('hex')
}

/** Provider keys meshp2p uses (raw UTF-8 strings, not CIDs). */
export const servedKey = (model) => `/mesh-model/served/${model}`
