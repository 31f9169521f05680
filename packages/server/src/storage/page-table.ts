/**
 * The page table of a page-file snapshot (see `page-file.ts`): for every object with bytes, which of its
 * pages the file's page image holds and the CRC-32C of each, and the object version they are as of. And
 * the plan of a snapshot: which pages it must write, given the table of the snapshot it was cloned from.
 *
 * A page is *present* when the image holds its bytes; an absent page is all zero and its place in the
 * file is never read (it is a hole, or, in a clone, whatever an earlier snapshot left there). A page's CRC
 * covers the object's bytes in it: `pageBytes`, or up to the object's size on its last page.
 *
 * @module
 */
import type { FrozenObject } from '../core/state-machine.js';
import { crc32c } from './crc32c.js';
import { nextTurn, SERIALISE_SLICE_BYTES } from './snapshot-serialise.js';

export interface PageEntry {
  readonly id: number;
  readonly firstPage: number;
  readonly size: number;
  /** The object's version the pages are as of: a page whose version is higher has changed since. */
  readonly version: number;
  /** CRC-32C of each present page (0 for an absent one). */
  readonly crcs: Uint32Array;
  /** Bit p (byte p >> 3, bit p & 7) set: page p is present. */
  readonly present: Uint8Array;
}

/** Page entries by object id; objects without bytes (never written) have none. */
export type PageTable = ReadonlyMap<number, PageEntry>;

const ZERO_PAGE = Buffer.alloc(64 * 1024);

/** Whether `buf` (at most 64 KiB, a page) is all zero: one native comparison. */
export function isZeroPage(buf: Buffer): boolean {
  return buf.equals(ZERO_PAGE.subarray(0, buf.length));
}

export function pageCountOf(size: number, pageBytes: number): number {
  return Math.ceil(size / pageBytes);
}

/** The object's bytes in page `p`. */
export function pageOf(data: Buffer, size: number, p: number, pageBytes: number): Buffer {
  return data.subarray(p * pageBytes, Math.min(size, (p + 1) * pageBytes));
}

/**
 * Runs of consecutive pages whose bit is set in `bits`, as [first, end) page numbers, each at most
 * `maxPages` long: what is read or written with one call.
 */
export function* pageRuns(bits: Uint8Array, count: number, maxPages: number): Generator<[number, number]> {
  let p = 0;
  while (p < count) {
    if ((bits[p >> 3]! & (1 << (p & 7))) === 0) {
      p++;
      continue;
    }
    const first = p;
    while (p < count && p - first < maxPages && (bits[p >> 3]! & (1 << (p & 7))) !== 0) p++;
    yield [first, p];
  }
}

/** The table as the metadata stores it: `[id, firstPage, size, version, crcs, present]` (CRCs as u32 LE bytes). */
export function encodePageTable(table: PageTable): unknown[] {
  return [...table.values()].map((e) => [
    e.id,
    e.firstPage,
    e.size,
    e.version,
    Buffer.from(e.crcs.buffer, e.crcs.byteOffset, e.crcs.byteLength),
    Buffer.from(e.present.buffer, e.present.byteOffset, e.present.byteLength),
  ]);
}

/** Decodes {@link encodePageTable}'s form; throws an Error saying what is wrong (pages past the segment, ...). */
export function decodePageTable(raw: unknown, pageBytes: number, segmentBytes: number): PageTable {
  if (!Array.isArray(raw)) throw new Error('the page table is not a list');
  const table = new Map<number, PageEntry>();
  const totalPages = segmentBytes / pageBytes;
  for (const item of raw) {
    const [id, firstPage, size, version, crcBytes, presentBytes] = item as [
      number,
      number,
      number,
      number,
      Buffer,
      Buffer,
    ];
    const count = pageCountOf(size, pageBytes);
    const sane =
      Number.isSafeInteger(id) &&
      Number.isSafeInteger(firstPage) &&
      Number.isSafeInteger(size) &&
      size >= 0 &&
      firstPage >= 0 &&
      firstPage + count <= totalPages &&
      Buffer.isBuffer(crcBytes) &&
      crcBytes.length === count * 4 &&
      Buffer.isBuffer(presentBytes) &&
      presentBytes.length === (count + 7) >> 3;
    if (!sane || table.has(id)) throw new Error(`bad page table entry for object ${id}`);
    // Copies: the decoded buffers are views at any alignment into the metadata.
    const crcs = new Uint32Array(count);
    Buffer.from(crcs.buffer).set(crcBytes);
    table.set(id, { id, firstPage, size, version, crcs, present: Uint8Array.from(presentBytes) });
  }
  return table;
}

/** What a snapshot writes into its page image, and the table of the result. */
export interface PagePlan {
  table: Map<number, PageEntry>;
  /** Per object with pages to write: its bytes, where its pages start, and the pages (bits) to write. */
  writes: { data: Buffer; size: number; firstPage: number; bits: Uint8Array; count: number }[];
  pages: number;
  bytes: number;
}

/**
 * Plans a snapshot of `objects` (a frozen view's). With `base`, the table of the snapshot file the new one
 * is a clone of, only what changed since is examined: the pages of an object in `base` whose version is
 * higher than the object's version there, and every page of an object `base` lacks (created or first
 * written since). Without, every page. An examined page is written and checksummed if it holds a
 * non-zero byte, and marked absent otherwise; any other page keeps its entry from `base`. Pages of objects
 * deleted since are not touched: no entry names them, so loading never reads them.
 *
 * The CPU work (zero checks and checksums) goes in slices with a turn of the event loop between them.
 */
export async function planPages(
  objects: readonly FrozenObject[],
  base: PageTable | null,
  pageBytes: number,
): Promise<PagePlan> {
  const plan: PagePlan = { table: new Map(), writes: [], pages: 0, bytes: 0 };
  let sinceYield = 0;
  for (const o of objects) {
    if (!o.data) continue;
    const count = pageCountOf(o.size, pageBytes);
    const old = base?.get(o.id);
    // An entry for the same id always has the same place and size (ids are never reused); checked anyway.
    const prev = old && old.firstPage === o.firstPage && old.size === o.size ? old : undefined;
    const crcs = prev ? Uint32Array.from(prev.crcs) : new Uint32Array(count);
    const present = prev ? Uint8Array.from(prev.present) : new Uint8Array((count + 7) >> 3);
    const bits = new Uint8Array((count + 7) >> 3);
    let writes = 0;
    for (let p = 0; p < count; p++) {
      if (prev && o.pageVersions[p]! <= prev.version) continue;
      const page = pageOf(o.data, o.size, p, pageBytes);
      const bit = 1 << (p & 7);
      if (isZeroPage(page)) {
        present[p >> 3]! &= ~bit;
        crcs[p] = 0;
      } else {
        present[p >> 3]! |= bit;
        crcs[p] = crc32c(page);
        bits[p >> 3]! |= bit;
        writes++;
        plan.bytes += page.length;
      }
      sinceYield += page.length;
      if (sinceYield >= SERIALISE_SLICE_BYTES) {
        sinceYield = 0;
        await nextTurn();
      }
    }
    plan.table.set(o.id, {
      id: o.id,
      firstPage: o.firstPage,
      size: o.size,
      version: o.version,
      crcs,
      present,
    });
    if (writes > 0) {
      plan.writes.push({ data: o.data, size: o.size, firstPage: o.firstPage, bits, count });
      plan.pages += writes;
    }
  }
  return plan;
}
