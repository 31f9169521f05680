/**
 * The consolidated snapshot file (seed 003): one file holding a whole segment's durable content at a
 * consistent point, that `segmem restore` rebuilds a fresh cluster from.
 *
 *   "SGMCONS1"                         8 bytes
 *   u32 LE length | msgpack header     format, cluster id, time, page and segment size, the groups with
 *                                      their Raft index and term, id counters, counts; `users` (with their
 *                                      password hashes and rules) when the group has any: an optional
 *                                      field, so files without users read as before; `group`
 *                                      ([id, start, bytes]) and `slots` (the slot table) of a shard group's
 *                                      snapshot, optional too: a file without them is group 0 over the whole
 *                                      segment, its table the one in which that group owns every slot
 *   u32 LE length | msgpack directory  per object: [id, name, size, firstPage, version, pageVersions
 *                                      (f64 LE bytes), lastToken, pages present]
 *   pages                              the present pages' bytes, object by object, page by page (a page is
 *                                      pageBytes, an object's last page only up to its size); all-zero and
 *                                      never-written pages are left out
 *   u32 LE length | msgpack logs       the shared logs (name, retention, bounds, record sizes, records)
 *   u32 LE crc32c                      of everything before
 *   "SGMCONSE"                         8 bytes
 *
 * The directory, pages and logs sections are the *content*: two snapshots of the same content have the
 * same content digest (SHA-256 over those sections), whatever cluster or time they came from.
 */
import { createHash } from 'node:crypto';
import { describeValue, SegmemError, type SlotTable } from '@segmem/protocol';
import { Packr } from 'msgpackr';
import { badSnapshot, checkGeometry, checkGroup, checkObjectSize, nameLabel } from '../core/content-check.js';
import type { GroupRange } from '../core/group-range.js';
import { pageVersionBytes, pageVersionsFrom, type StateContent } from '../core/state-machine.js';
import { crc32c } from './crc32c.js';
import { isZeroPage } from './page-table.js';
import { crc32cInSlices, nextTurn } from './snapshot-serialise.js';

const MAGIC = 'SGMCONS1';
const END_MAGIC = 'SGMCONSE';
const FORMAT = 1;
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

export interface ConsolidatedHeader {
  format: number;
  clusterId: string;
  /** ISO 8601 time the snapshot was taken. */
  createdAt: string;
  pageBytes: number;
  segmentBytes: number;
  /** [group id, Raft index, Raft term] of each group at the snapshot's point (term 0: a single server). */
  groups: [number, number, number][];
  objectCount: number;
  logCount: number;
  /** [group id, start, bytes] of a shard group's snapshot; absent: group 0 over the whole segment. */
  group?: [number, number, number];
  /** The group's slot table; absent: the one in which the group owns every slot. */
  slots?: SlotTable;
}

export interface Consolidated {
  header: ConsolidatedHeader;
  content: StateContent;
  /** SHA-256 (hex) of the directory, pages and logs sections. */
  contentDigest: string;
}

/** A consolidated snapshot ready to be read or written: the file's bytes as parts over a frozen view. */
export interface ConsolidatedExport {
  parts: Buffer[];
  bytes: number;
  /** The group's Raft index and term at the snapshot's point (term 0: a single server). */
  index: number;
  term: number;
  createdAt: string;
  /** Lets the frozen view go; the parts must not be used after it. */
  release(): void;
}

function lengthPrefixed(body: Buffer): Buffer[] {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(body.length, 0);
  return [len, body];
}

/** Bytes scanned or checksummed between two turns of the event loop. */
const SLICE_BYTES = 4 * 1024 * 1024;

/**
 * The file's bytes as parts (object pages are views, not copies: the caller keeps the objects' buffers
 * unchanged until the parts are written, e.g. with a frozen view). Scanning for zero pages and the checksum
 * go in slices with a turn of the event loop between them, so a large segment does not hold up the server.
 */
export async function encodeConsolidated(
  content: StateContent,
  meta: { clusterId: string; createdAt: string; groups: [number, number, number][] },
): Promise<Buffer[]> {
  let sinceYield = 0;
  const progress = async (n: number) => {
    sinceYield += n;
    if (sinceYield >= SLICE_BYTES) {
      sinceYield = 0;
      await nextTurn();
    }
  };
  const pb = content.pageBytes;
  const directory: unknown[] = [];
  const pages: Buffer[] = [];
  for (const o of content.objects) {
    const present: number[] = [];
    if (o.data) {
      for (let p = 0; p * pb < o.size; p++) {
        const page = o.data.subarray(p * pb, Math.min(o.size, (p + 1) * pb));
        await progress(page.length);
        if (isZeroPage(page)) continue;
        present.push(p);
        pages.push(page);
      }
    }
    const pv = pageVersionBytes(o.pageVersions);
    directory.push([o.id, o.name, o.size, o.firstPage, o.version, pv, o.lastToken, present]);
  }
  const header: ConsolidatedHeader & { nextObjectId: number; nextSessionId: number } = {
    format: FORMAT,
    clusterId: meta.clusterId,
    createdAt: meta.createdAt,
    pageBytes: pb,
    segmentBytes: content.segmentBytes,
    groups: meta.groups,
    objectCount: content.objects.length,
    logCount: content.logs.length,
    nextObjectId: content.nextObjectId,
    nextSessionId: content.nextSessionId,
    ...(content.users && content.users.length > 0 ? { users: content.users } : {}),
    ...(content.group ? { group: [content.group.id, content.group.start, content.group.bytes] } : {}),
    ...(content.slotTable ? { slots: content.slotTable } : {}),
  };
  const parts = [
    Buffer.from(MAGIC, 'latin1'),
    ...lengthPrefixed(packr.pack(header)),
    ...lengthPrefixed(packr.pack(directory)),
    ...pages,
    ...lengthPrefixed(packr.pack(content.logs)),
  ];
  const crc = await crc32cInSlices(parts);
  const tail = Buffer.alloc(12);
  tail.writeUInt32LE(crc, 0);
  tail.write(END_MAGIC, 4, 'latin1');
  parts.push(tail);
  return parts;
}

/** The header's own fields (the content's are checked by core/content-check.ts). */
function checkHeader(what: string, h: ConsolidatedHeader): void {
  // Any non-empty string: a server accepts any cluster id, and a backup of it must stay restorable.
  for (const field of ['clusterId', 'createdAt'] as const) {
    const v: unknown = h[field];
    if (typeof v !== 'string' || v.length === 0)
      throw badSnapshot(what, '', field, `${field} must be a non-empty string; got ${describeValue(v)}`);
  }
  const groups: unknown = h.groups;
  const isCount = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (
    !Array.isArray(groups) ||
    !groups.every((g) => Array.isArray(g) && g.length === 3 && g.every(isCount))
  ) {
    throw badSnapshot(
      what,
      '',
      'groups',
      'groups must be a list of [group id, Raft index, Raft term] integers >= 0',
    );
  }
}

/** The header's [id, start, bytes] as a range (its numbers are checked with the content). */
function headerGroup(entry: unknown, file: string): GroupRange {
  if (!Array.isArray(entry) || entry.length !== 3)
    throw bad(file, `group must be [group id, start, bytes]; got ${describeValue(entry)}`);
  const [id, start, bytes] = entry as number[];
  return { id: id!, start: start!, bytes: bytes! };
}

function bad(file: string, why: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `${file} is not a usable consolidated snapshot: ${why}`, {
    reason: 'SNAPSHOT_CORRUPT',
    file,
  });
}

/**
 * The header of a consolidated snapshot from the file's first bytes (`prefix`, at least through the
 * header), before the rest arrives; not checked against the checksum, which covers the whole file.
 * INVALID_ARGUMENT naming `file` when the prefix holds no header.
 */
export function consolidatedHeaderOf(prefix: Buffer, file: string): ConsolidatedHeader {
  if (prefix.length < 12 || prefix.toString('latin1', 0, 8) !== MAGIC) throw bad(file, 'bad magic');
  const len = prefix.readUInt32LE(8);
  if (12 + len > prefix.length) throw bad(file, 'the header runs past the first piece');
  const h = packr.unpack(prefix.subarray(12, 12 + len)) as ConsolidatedHeader;
  if (h === null || typeof h !== 'object') throw bad(file, 'the header is not a map');
  return h;
}

/** Checks the markers and the checksum only (no decoding); INVALID_ARGUMENT naming `file` otherwise. */
export function verifyConsolidated(bytes: Buffer, file: string): void {
  const verifier = new ConsolidatedVerifier(bytes.length, file);
  verifier.push(bytes);
  verifier.finish();
}

/**
 * {@link verifyConsolidated} for a file that arrives in pieces, in order: the checksum is computed as
 * they come, so a large file need not be held or read back to be checked.
 */
export class ConsolidatedVerifier {
  private crc = 0;
  private seen = 0;
  private readonly head = Buffer.alloc(8);
  private readonly tail = Buffer.alloc(12);

  constructor(
    private readonly total: number,
    private readonly file: string,
  ) {}

  push(chunk: Buffer): void {
    const at = this.seen;
    const bodyEnd = this.total - 12;
    if (at < 8) chunk.copy(this.head, at, 0, Math.min(chunk.length, 8 - at));
    if (at < bodyEnd) this.crc = crc32c(chunk, this.crc, 0, Math.min(chunk.length, bodyEnd - at));
    const tailFrom = Math.max(0, bodyEnd - at);
    if (tailFrom < chunk.length) chunk.copy(this.tail, at + tailFrom - bodyEnd, tailFrom);
    this.seen += chunk.length;
  }

  /** Throws what {@link verifyConsolidated} would for the whole file. */
  finish(): void {
    const file = this.file;
    if (this.seen !== this.total) throw bad(file, `cut short (${this.seen} of ${this.total} bytes)`);
    if (this.total < 32 || this.head.toString('latin1') !== MAGIC) throw bad(file, 'bad magic');
    if (this.tail.toString('latin1', 4) !== END_MAGIC) throw bad(file, 'cut short (no end marker)');
    if (this.crc !== this.tail.readUInt32LE(0)) throw bad(file, 'checksum mismatch');
  }
}

/**
 * Verifies the checksum and decodes; INVALID_ARGUMENT naming `file` and the problem otherwise. The content
 * is checked only as far as decoding needs (geometry, object sizes before their bytes are allocated), and
 * the group and slot table (a file restored as the wrong group would be refused far from it):
 * {@link StateMachine.fromContent} checks the rest before it becomes a state. `what` starts the messages of
 * those checks (see core/content-check.ts).
 */
export function decodeConsolidated(bytes: Buffer, file: string, what = 'restore'): Consolidated {
  verifyConsolidated(bytes, file);
  const bodyEnd = bytes.length - 12;
  let at = 8;
  const section = (what: string): Buffer => {
    if (at + 4 > bodyEnd) throw bad(file, `${what} runs past the end`);
    const len = bytes.readUInt32LE(at);
    if (at + 4 + len > bodyEnd) throw bad(file, `${what} runs past the end`);
    const out = bytes.subarray(at + 4, at + 4 + len);
    at += 4 + len;
    return out;
  };
  try {
    const header = packr.unpack(section('header')) as ConsolidatedHeader & {
      nextObjectId: number;
      nextSessionId: number;
      users?: unknown;
    };
    if (header.format !== FORMAT)
      throw bad(file, `format ${header.format} is not supported (this is ${FORMAT})`);
    checkHeader(what, header);
    const contentStart = at;
    const directory = packr.unpack(section('directory')) as [
      number,
      string,
      number,
      number,
      number,
      Buffer,
      number,
      number[],
    ][];
    checkGeometry(what, header.pageBytes, header.segmentBytes);
    const pb = header.pageBytes;
    const objects: StateContent['objects'] = [];
    for (const [id, name, size, firstPage, version, pv, lastToken, present] of directory) {
      checkObjectSize(what, id, name, size);
      const pageCount = Math.ceil(size / pb);
      if (!Buffer.isBuffer(pv) || pv.length !== pageCount * 8)
        throw bad(file, `object ${nameLabel(name)} has a bad page version table`);
      const pageVersions = pageVersionsFrom(pv, pageCount);
      let data: Buffer | null = null;
      let previous = -1;
      for (const p of present) {
        // Ascending and once each: otherwise two stored pages could claim one page of the object.
        if (!Number.isInteger(p) || p <= previous || p >= pageCount) {
          throw badSnapshot(
            what,
            `object ${nameLabel(name)} (id ${id})`,
            'pages',
            `stored page ${p} must be in 0..${pageCount - 1} and after ${previous}`,
          );
        }
        previous = p;
        const n = Math.min(pb, size - p * pb);
        if (at + n > bodyEnd) throw bad(file, `pages of ${nameLabel(name)} run past the end`);
        data ??= Buffer.alloc(size);
        bytes.copy(data, p * pb, at, at + n);
        at += n;
      }
      objects.push({ id, name, size, firstPage, version, pageVersions, lastToken, data });
    }
    const logs = packr.unpack(section('logs')) as unknown[];
    if (!Array.isArray(logs)) throw bad(file, 'the logs section is not a list');
    for (const [field, count, listed] of [
      ['objectCount', header.objectCount, directory.length],
      ['logCount', header.logCount, logs.length],
    ] as const) {
      if (count !== listed)
        throw badSnapshot(what, '', field, `${field} ${String(count)} must be the ${listed} the file lists`);
    }
    if (at !== bodyEnd) throw bad(file, `${bodyEnd - at} unexpected bytes before the checksum`);
    const contentDigest = createHash('sha256').update(bytes.subarray(contentStart, bodyEnd)).digest('hex');
    const content: StateContent = {
      pageBytes: pb,
      segmentBytes: header.segmentBytes,
      nextObjectId: header.nextObjectId,
      nextSessionId: header.nextSessionId,
      objects,
      logs,
      // Checked with the rest of the content when it becomes a state machine (core/content-check.ts).
      ...(header.users !== undefined ? { users: header.users as unknown[] } : {}),
      ...(header.group !== undefined ? { group: headerGroup(header.group, file) } : {}),
      ...(header.slots !== undefined ? { slotTable: header.slots } : {}),
    };
    // Checked here as well, so a file restored as the wrong group or range is refused naming the file.
    try {
      checkGroup(content, 'header');
    } catch (err) {
      throw bad(file, (err as Error).message);
    }
    return { header, content, contentDigest };
  } catch (err) {
    if (SegmemError.is(err)) throw err;
    throw bad(file, (err as Error).message);
  }
}
