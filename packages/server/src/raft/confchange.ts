/**
 * Encoding of a 'conf' entry's data, and how a change applies to a member list. The format, msgpack
 * `[op, id]`, is the one storage/raft-storage.ts replays when it rebuilds the membership from its WAL.
 */
import { Packr } from 'msgpackr';
import type { ConfChange, NodeId } from './types.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

export function encodeConfChange(cc: ConfChange): Buffer {
  return packr.pack(cc.address ? [cc.op, cc.id, cc.address] : [cc.op, cc.id]);
}

export function decodeConfChange(data: Buffer): ConfChange {
  const decoded = packr.unpack(data) as unknown;
  if (!Array.isArray(decoded) || (decoded.length !== 2 && decoded.length !== 3)) {
    throw new Error('conf entry is not [op, id] or [op, id, address]');
  }
  const [op, id, address] = decoded as [unknown, unknown, unknown];
  if ((op !== 'add' && op !== 'remove') || typeof id !== 'string') {
    throw new Error(`conf entry has a bad op or id: ${JSON.stringify(decoded)}`);
  }
  if (address !== undefined && typeof address !== 'string') throw new Error('conf entry has a bad address');
  return address ? { op, id, address } : { op, id };
}

/** The member list after `data` (a conf entry) applies to `members`; order is kept, additions go last. */
export function applyConfChange(members: readonly NodeId[], data: Buffer): NodeId[] {
  const cc = decodeConfChange(data);
  if (cc.op === 'add') return members.includes(cc.id) ? [...members] : [...members, cc.id];
  return members.filter((m) => m !== cc.id);
}
