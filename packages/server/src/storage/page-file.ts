/**
 * Page-file snapshots (format `SGMSNAP2`): the state machine at one log index, with the objects' bytes
 * in a sparse *page image* (page p of the segment at a fixed offset plus p × pageBytes) and everything
 * else in a metadata block after it. Because every page has a fixed place, a snapshot can be taken as a
 * reflink clone of the previous file (FICLONE: O(1), sharing every block) into which only the pages that
 * changed since, the metadata and the header are written: the *clone* path. Where the file system cannot
 * clone (ext4, tmpfs) or there is no previous page file, the file is created empty and every non-zero page
 * written: the *copy* path.
 *
 * File layout (integers little-endian):
 *
 * | offset                 | bytes | field                                                                |
 * |------------------------|-------|----------------------------------------------------------------------|
 * | 0                      | 8     | magic `SGMSNAP2`                                                     |
 * | 8                      | 4     | u32 pageBytes                                                        |
 * | 12                     | 4     | u32 imageOffset: pageBytes rounded up to at least 4096               |
 * | 16                     | 8     | u64 segmentBytes                                                     |
 * | 24                     | 8     | u64 metaOffset = imageOffset + segmentBytes                          |
 * | 32                     | 4     | u32 metaLength                                                       |
 * | 36                     | 4     | u32 CRC-32C of the metadata block                                    |
 * | 40                     | 4     | u32 CRC-32C of bytes 0-39                                            |
 * | imageOffset            | segmentBytes | the page image: object pages, all-zero pages left as holes    |
 * | metaOffset             | 4     | u32 length H of the head                                             |
 * | metaOffset + 4         | H     | head: msgpack `[index, term, members, pageTable]` (see page-table.ts) |
 * | metaOffset + 4 + H     | rest  | the state machine's snapshot bytes with every object's data nil      |
 *
 * The file is exactly metaOffset + metaLength bytes long. Loading checks the header's CRC, the metadata's
 * CRC and the CRC of every present page it reads, and reads nothing else: bytes of the page image that no
 * present page covers (holes, freed pages, the tail of an object's last page) may hold anything.
 *
 * @module
 */
import { performance } from 'node:perf_hooks';
import { Packr } from 'msgpackr';
import { type FrozenSnapshot, StateMachine } from '../core/state-machine.js';
import { crc32c } from './crc32c.js';
import { errnoCode, errorMessage, writeAll } from './files.js';
import { nodeFs, replaceFileAtomic, type StorageFs } from './fs.js';
import {
  decodePageTable,
  encodePageTable,
  type PageEntry,
  type PagePlan,
  type PageTable,
  pageCountOf,
  pageRuns,
  planPages,
} from './page-table.js';
import { type SnapshotMeta, snapshotDamaged } from './snapshot-file.js';
import { crc32cInSlices } from './snapshot-serialise.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

export const PAGE_FILE_MAGIC = 'SGMSNAP2';
const HEADER_BYTES = 44;
/** At most this many bytes of pages go in one read or write call. */
const RUN_BYTES = 4 * 1024 * 1024;

/**
 * Error codes with which a clone fails because this file system (or this pair of files) cannot share
 * blocks, or the file to clone is gone: the copy path runs instead, and says why. Any other error fails
 * the snapshot.
 */
const CLONE_UNSUPPORTED = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOENT']);

/** A page file on disk that the next snapshot may be a clone of. */
export interface PageFileState {
  file: string;
  pageBytes: number;
  segmentBytes: number;
  table: PageTable;
}

export type SnapshotPath = 'clone' | 'copy';

/** What writing a snapshot did. */
export interface SnapshotWrite {
  file: string;
  path: SnapshotPath;
  /** The copy path ran although a clone was tried: the clone's error code (`ENOTSUP`, `EXDEV`, ...). */
  cloneError?: string;
  /** Pages written into the page image, and their bytes. */
  pages: number;
  pageBytes: number;
  /** Every byte written: pages, metadata and header. */
  bytes: number;
  ms: number;
  /** The new file, for the next snapshot to clone. */
  state: PageFileState;
}

/** Where the page image starts: page-aligned, and at least 4 KiB in so that file system blocks line up. */
export function imageOffsetFor(pageBytes: number): number {
  return Math.ceil(4096 / pageBytes) * pageBytes;
}

function fmtBytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

/** What a snapshot write did, for the server's log: `clone, 12 pages written (48 KiB), 2.1 KiB of metadata`. */
export function describeSnapshotWrite(w: SnapshotWrite): string {
  const path = w.cloneError ? `copy (clone failed: ${w.cloneError})` : w.path;
  return `${path}, ${w.pages} pages written (${fmtBytes(w.pageBytes)}), ${fmtBytes(w.bytes - w.pageBytes)} of metadata`;
}

/** The metadata block as parts (the state's by reference), its length and CRC. */
async function encodeMetadata(
  meta: SnapshotMeta,
  table: PageTable,
  stateParts: readonly Buffer[],
): Promise<{ parts: Buffer[]; length: number; crc: number }> {
  const head = packr.pack([meta.index, meta.term, meta.members, encodePageTable(table)]);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(head.length, 0);
  const parts = [len, head, ...stateParts];
  let length = 0;
  for (const p of parts) length += p.length;
  return { parts, length, crc: await crc32cInSlices(parts) };
}

function encodeHeader(pageBytes: number, segmentBytes: number, metaLength: number, metaCrc: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  const imageOffset = imageOffsetFor(pageBytes);
  h.write(PAGE_FILE_MAGIC, 0, 'latin1');
  h.writeUInt32LE(pageBytes, 8);
  h.writeUInt32LE(imageOffset, 12);
  h.writeBigUInt64LE(BigInt(segmentBytes), 16);
  h.writeBigUInt64LE(BigInt(imageOffset + segmentBytes), 24);
  h.writeUInt32LE(metaLength, 32);
  h.writeUInt32LE(metaCrc, 36);
  h.writeUInt32LE(crc32c(h, 0, 0, 40), 40);
  return h;
}

/** Writes the planned pages at their places in the page image. */
async function writePages(fs: StorageFs, fd: number, plan: PagePlan, pageBytes: number): Promise<void> {
  const imageOffset = imageOffsetFor(pageBytes);
  const write = (f: number, b: Uint8Array[], p: number) => fs.writev(f, b, p, 'snapshot.write');
  for (const w of plan.writes) {
    for (const [first, end] of pageRuns(w.bits, w.count, RUN_BYTES / pageBytes)) {
      const bytes = w.data.subarray(first * pageBytes, Math.min(w.size, end * pageBytes));
      await writeAll(write, fd, [bytes], imageOffset + (w.firstPage + first) * pageBytes);
    }
  }
}

/**
 * Writes `view` (the state at `meta.index`) to `file` as a page file, atomically (temporary file, fsync,
 * rename, directory fsync), cloning `base` where the file system can. Does not release the view.
 */
export async function writePageFile(
  file: string,
  meta: SnapshotMeta,
  view: FrozenSnapshot,
  base: PageFileState | null,
  fs: StorageFs = nodeFs,
  nowMs: () => number = () => performance.now(),
): Promise<SnapshotWrite> {
  const started = nowMs();
  const { pageBytes, segmentBytes } = view;
  const from = base && base.pageBytes === pageBytes && base.segmentBytes === segmentBytes ? base : null;
  let path: SnapshotPath = 'copy';
  let cloneError: string | undefined;
  let done: Omit<SnapshotWrite, 'ms'> | undefined;
  const create = async (tmp: string): Promise<number> => {
    if (from) {
      try {
        await fs.cloneFile(from.file, tmp, 'snapshot.clone');
        path = 'clone';
      } catch (err) {
        const code = errnoCode(err);
        if (!code || !CLONE_UNSUPPORTED.has(code)) throw err;
        cloneError = code;
      }
    }
    return path === 'clone' ? fs.open(tmp, 'r+', 'snapshot.open') : fs.open(tmp, 'wx', 'snapshot.create');
  };
  const fill = async (fd: number): Promise<void> => {
    const plan = await planPages(view.objects, path === 'clone' ? from!.table : null, pageBytes);
    const metadata = await encodeMetadata(meta, plan.table, view.metaParts);
    const metaOffset = imageOffsetFor(pageBytes) + segmentBytes;
    // The final length: a fresh file's page image becomes one hole; a clone loses the old metadata's tail.
    await fs.ftruncate(fd, metaOffset + metadata.length, 'snapshot.truncate');
    await writePages(fs, fd, plan, pageBytes);
    const header = encodeHeader(pageBytes, segmentBytes, metadata.length, metadata.crc);
    const write = (f: number, b: Uint8Array[], p: number) => fs.writev(f, b, p, 'snapshot.write');
    await writeAll(write, fd, metadata.parts, metaOffset);
    await writeAll(write, fd, [header], 0);
    done = {
      file,
      path,
      ...(cloneError ? { cloneError } : {}),
      pages: plan.pages,
      pageBytes: plan.bytes,
      bytes: plan.bytes + metadata.length + HEADER_BYTES,
      state: { file, pageBytes, segmentBytes, table: plan.table },
    };
  };
  // fsync, not fdatasync: a clone's shared extents are metadata of the file.
  await replaceFileAtomic(fs, file, 'snapshot', create, fill, 'fsync');
  return { ...done!, ms: nowMs() - started };
}

/** A page file loaded and verified. */
export interface LoadedPageFile {
  meta: SnapshotMeta;
  state: StateMachine;
  /** Bytes read: header, metadata and present pages. */
  bytes: number;
  pages: PageFileState;
}

/** Reads `length` bytes at `position`; a file that ends first is damaged. */
async function readExactly(
  fs: StorageFs,
  fd: number,
  into: Buffer,
  offset: number,
  length: number,
  position: number,
  file: string,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const bytesRead = await fs.read(fd, into, offset + done, length - done, position + done);
    if (bytesRead === 0) throw snapshotDamaged(file, 'cut short');
    done += bytesRead;
  }
}

/**
 * Reads and verifies the page file `file` (header, metadata and every present page against its CRC) and
 * rebuilds the state machine it holds; throws `UNAVAILABLE` (`SNAPSHOT_CORRUPT`) naming `file` and what
 * is wrong.
 */
export async function readPageFile(file: string, fs: StorageFs = nodeFs): Promise<LoadedPageFile> {
  const fd = await fs.open(file, 'r');
  try {
    const size = (await fs.stat(file)).size;
    const h = Buffer.alloc(HEADER_BYTES);
    await readExactly(fs, fd, h, 0, HEADER_BYTES, 0, file);
    if (h.toString('latin1', 0, 8) !== PAGE_FILE_MAGIC) throw snapshotDamaged(file, 'bad magic');
    if (crc32c(h, 0, 0, 40) !== h.readUInt32LE(40)) throw snapshotDamaged(file, 'header checksum mismatch');
    const pageBytes = h.readUInt32LE(8);
    const imageOffset = h.readUInt32LE(12);
    const segmentBytes = Number(h.readBigUInt64LE(16));
    const metaOffset = Number(h.readBigUInt64LE(24));
    const metaLength = h.readUInt32LE(32);
    if (
      pageBytes === 0 ||
      imageOffset !== imageOffsetFor(pageBytes) ||
      segmentBytes % pageBytes !== 0 ||
      metaOffset !== imageOffset + segmentBytes
    )
      throw snapshotDamaged(file, 'bad geometry in the header');
    if (size !== metaOffset + metaLength)
      throw snapshotDamaged(file, `${size} bytes long, the header says ${metaOffset + metaLength}`);
    const metadata = Buffer.allocUnsafe(metaLength);
    await readExactly(fs, fd, metadata, 0, metaLength, metaOffset, file);
    if ((await crc32cInSlices([metadata])) !== h.readUInt32LE(36))
      throw snapshotDamaged(file, 'metadata checksum mismatch');
    let meta: SnapshotMeta;
    let table: PageTable;
    let stateBytes: Buffer;
    try {
      const headLength = metadata.readUInt32LE(0);
      const [index, term, members, rawTable] = packr.unpack(metadata.subarray(4, 4 + headLength)) as [
        number,
        number,
        string[],
        unknown,
      ];
      meta = { index, term, members };
      table = decodePageTable(rawTable, pageBytes, segmentBytes);
      stateBytes = metadata.subarray(4 + headLength);
    } catch (err) {
      throw snapshotDamaged(file, `bad metadata: ${errorMessage(err)}`);
    }
    let bytes = HEADER_BYTES + metaLength;
    const objectBytes = new Map<number, Buffer>();
    for (const e of table.values()) {
      const read = await readObject(fs, fd, e, pageBytes, file);
      objectBytes.set(e.id, read.data);
      bytes += read.bytes;
    }
    let state: StateMachine;
    try {
      state = StateMachine.restore(stateBytes, {}, objectBytes);
    } catch (err) {
      throw snapshotDamaged(file, `the state does not restore: ${errorMessage(err)}`);
    }
    return { meta, state, bytes, pages: { file, pageBytes, segmentBytes, table } };
  } finally {
    await fs.close(fd);
  }
}

/** An object's bytes from the page image: its present pages read and checked, the rest zero. */
async function readObject(
  fs: StorageFs,
  fd: number,
  e: PageEntry,
  pageBytes: number,
  file: string,
): Promise<{ data: Buffer; bytes: number }> {
  const data = Buffer.alloc(e.size);
  let bytes = 0;
  const image = imageOffsetFor(pageBytes) + e.firstPage * pageBytes;
  for (const [first, end] of pageRuns(e.present, pageCountOf(e.size, pageBytes), RUN_BYTES / pageBytes)) {
    const from = first * pageBytes;
    const to = Math.min(e.size, end * pageBytes);
    await readExactly(fs, fd, data, from, to - from, image + from, file);
    bytes += to - from;
    for (let p = first; p < end; p++) {
      if (crc32c(data, 0, p * pageBytes, Math.min(e.size, (p + 1) * pageBytes)) !== e.crcs[p]) {
        throw snapshotDamaged(
          file,
          `checksum mismatch in page ${p} of object ${e.id} (segment page ${e.firstPage + p})`,
        );
      }
    }
  }
  return { data, bytes };
}
