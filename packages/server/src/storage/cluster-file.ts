/**
 * The cluster snapshot file: one file holding every shard group's consolidated snapshot, taken at one
 * consistent cut (docs/consistency.md), that `segmem restore --config` rebuilds a sharded cluster from.
 *
 *   "SGMCLUS1"                         8 bytes
 *   u32 LE length | msgpack header     format, cluster id, time, page and segment size, the fencing token
 *                                      of the agent that took it (0: taken on demand), the slot table, and
 *                                      the group table: per group its id, range, members ([id, address]),
 *                                      the Raft index and term of its part and the part's length
 *   u32 LE crc32c                      of the header's bytes
 *   per group, in the header's order:
 *     the part                         that group's consolidated snapshot, byte for byte (consolidated.ts)
 *     u32 LE crc32c                    of the part
 *   "SGMCLUSE"                         8 bytes
 *
 * Each part is checked on its own: a damaged file is refused naming the part (group) that is wrong.
 */
import { describeValue, SegmemError, type SlotTable, validateSlotTable } from '@segmem/protocol';
import { Packr } from 'msgpackr';
import { type Consolidated, decodeConsolidated } from './consolidated.js';
import { crc32c } from './crc32c.js';

const MAGIC = 'SGMCLUS1';
const END_MAGIC = 'SGMCLUSE';
const FORMAT = 1;
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

/** One group of a cluster file's table. */
export interface ClusterFileGroup {
  id: number;
  start: number;
  bytes: number;
  /** [server id, host:port] of its members. */
  members: [string, string][];
  /** The Raft index and term its part was taken at. */
  index: number;
  term: number;
  /** Bytes of its part. */
  partBytes: number;
}

export interface ClusterFileHeader {
  format: number;
  clusterId: string;
  /** ISO 8601 time the cut was taken. */
  createdAt: string;
  pageBytes: number;
  segmentBytes: number;
  /** The fencing token of the snapshot agent's lease that took it; 0: taken on demand (`snapshot --out`). */
  fence: number;
  slots: SlotTable;
  groups: ClusterFileGroup[];
}

/** A decoded cluster file: its header and each group's part, decoded and checked. */
export interface ClusterFile {
  header: ClusterFileHeader;
  parts: Consolidated[];
}

/** True when `bytes` starts like a cluster file (and not like a single group's consolidated snapshot). */
export function isClusterFile(bytes: Buffer): boolean {
  return bytes.length >= 8 && bytes.toString('latin1', 0, 8) === MAGIC;
}

/** The bytes that come before the first part: the magic, the header and its checksum. */
export function encodeClusterFileHead(header: ClusterFileHeader): Buffer {
  const body = packr.pack({ ...header, format: FORMAT });
  const out = Buffer.alloc(8 + 4 + body.length + 4);
  out.write(MAGIC, 0, 'latin1');
  out.writeUInt32LE(body.length, 8);
  body.copy(out, 12);
  out.writeUInt32LE(crc32c(body), 12 + body.length);
  return out;
}

/** What follows a part's bytes: its checksum. */
export function encodePartTrailer(crc: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32LE(crc >>> 0, 0);
  return out;
}

/** The end marker. */
export function encodeClusterFileEnd(): Buffer {
  return Buffer.from(END_MAGIC, 'latin1');
}

function bad(file: string, why: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `${file} is not a usable cluster snapshot: ${why}`, {
    reason: 'SNAPSHOT_CORRUPT',
    file,
  });
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function checkHeader(h: ClusterFileHeader, file: string): void {
  if (h.format !== FORMAT)
    throw bad(file, `format ${describeValue(h.format)} is not supported (this is ${FORMAT})`);
  for (const field of ['clusterId', 'createdAt'] as const) {
    if (typeof h[field] !== 'string' || h[field].length === 0)
      throw bad(file, `header: ${field} must be a non-empty string`);
  }
  for (const field of ['pageBytes', 'segmentBytes', 'fence'] as const) {
    if (!isCount(h[field])) throw bad(file, `header: ${field} must be an integer >= 0`);
  }
  try {
    h.slots = validateSlotTable(h.slots);
  } catch (err) {
    throw bad(file, `header: slot table: ${(err as Error).message}`);
  }
  if (!Array.isArray(h.groups) || h.groups.length === 0)
    throw bad(file, 'header: groups must be a non-empty list');
  const seen = new Set<number>();
  for (const [i, g] of h.groups.entries()) {
    const ok =
      g !== null &&
      typeof g === 'object' &&
      ['id', 'start', 'bytes', 'index', 'term', 'partBytes'].every((k) =>
        isCount((g as unknown as Record<string, unknown>)[k]),
      ) &&
      Array.isArray(g.members) &&
      g.members.every((m) => Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string'));
    if (!ok)
      throw bad(file, `header: groups[${i}] must be { id, start, bytes, members, index, term, partBytes }`);
    if (seen.has(g.id)) throw bad(file, `header: group ${g.id} is listed twice`);
    seen.add(g.id);
  }
}

/**
 * Decodes and checks a whole cluster file: markers, header checksum, each part's checksum and content
 * (decodeConsolidated), and that each part is the group the table says. INVALID_ARGUMENT naming `file`
 * and what is wrong (a cut-short file says so, with the group whose part is missing).
 */
export function decodeClusterFile(bytes: Buffer, file: string, what = 'restore'): ClusterFile {
  if (bytes.length < 8 || bytes.toString('latin1', 0, 8) !== MAGIC) throw bad(file, 'bad magic');
  if (bytes.length < 12) throw bad(file, `cut short in the header (${bytes.length} bytes)`);
  const headerBytes = bytes.readUInt32LE(8);
  if (12 + headerBytes + 4 > bytes.length) throw bad(file, `cut short in the header (${bytes.length} bytes)`);
  const body = bytes.subarray(12, 12 + headerBytes);
  if (crc32c(body) !== bytes.readUInt32LE(12 + headerBytes)) throw bad(file, 'header checksum mismatch');
  let header: ClusterFileHeader;
  try {
    header = packr.unpack(body) as ClusterFileHeader;
  } catch (err) {
    throw bad(file, `header: ${(err as Error).message}`);
  }
  if (header === null || typeof header !== 'object') throw bad(file, 'header is not a map');
  checkHeader(header, file);
  let at = 12 + headerBytes + 4;
  const parts: Consolidated[] = [];
  for (const g of header.groups) {
    if (at + g.partBytes + 4 > bytes.length)
      throw bad(file, `cut short in the part of group ${g.id} (${bytes.length} bytes)`);
    const part = bytes.subarray(at, at + g.partBytes);
    if (crc32c(part) !== bytes.readUInt32LE(at + g.partBytes))
      throw bad(file, `the part of group ${g.id} fails its checksum`);
    const snap = decodeConsolidated(part, `${file} (group ${g.id})`, what);
    const range = snap.content.group;
    if (!range || range.id !== g.id || range.start !== g.start || range.bytes !== g.bytes)
      throw bad(
        file,
        `the part of group ${g.id} holds ${range ? `group ${range.id}'s range` : 'no group range'}, not the one the header lists`,
      );
    if (snap.header.pageBytes !== header.pageBytes || snap.header.segmentBytes !== header.segmentBytes)
      throw bad(file, `the part of group ${g.id} has another page or segment size than the header`);
    parts.push(snap);
    at += g.partBytes + 4;
  }
  if (at + 8 > bytes.length) throw bad(file, 'cut short (no end marker)');
  if (bytes.toString('latin1', at, at + 8) !== END_MAGIC) throw bad(file, 'bad end marker');
  if (at + 8 !== bytes.length)
    throw bad(file, `${bytes.length - at - 8} unexpected bytes after the end marker`);
  return { header, parts };
}
