/**
 * The write-ahead log: an append-only sequence of opaque byte records with consecutive indexes.
 *
 * ## On-disk format
 *
 * The log lives in one directory of segment files, each named after the index of its first record,
 * zero-padded to 20 digits (`00000000000000000001.wal`). A segment starts with a 16-byte file header
 *
 * | bytes | field                                                    |
 * |-------|----------------------------------------------------------|
 * | 0-7   | magic `SGMWAL01`                                         |
 * | 8-11  | u32 format version (2; version 1 is still read)          |
 * | 12-15 | u32 CRC-32C of bytes 0-11                                |
 *
 * followed by records, each a 20-byte record header and the payload (all integers little-endian):
 *
 * | bytes | field                                                    |
 * |-------|----------------------------------------------------------|
 * | 0-3   | u32 payload length                                       |
 * | 4-7   | u32 CRC-32C of the payload                               |
 * | 8-15  | u64 index                                                |
 * | 16-19 | u32 CRC-32C of bytes 0-15 (the header's own checksum)    |
 * | 20-   | payload                                                  |
 *
 * Version 1 records have a 16-byte header without the header checksum (bytes 4-7: CRC-32C of bytes 0-3,
 * bytes 8-15 and the payload). Segments of version 1 are read and never appended to: the first append
 * after opening such a log starts a version 2 segment.
 *
 * A new segment is started before a record that would make the current one larger than `segmentBytes`
 * (a segment holds at least one record, so a single record larger than `segmentBytes` gets a segment of
 * its own).
 *
 * ## Recovery
 *
 * {@link Wal.open} reads and verifies every record and stops at the first bad one. If a valid record
 * exists after it, the damage is not a torn write but corruption of data that may have been
 * acknowledged, and `open` refuses to start unless `repair` is set. If none does, the bad record is the
 * last one, and its header checksum tells a torn write from damage: a crash in the middle of a write
 * leaves its end missing (the file ends early) or zeroed from a sector boundary on, so a record that
 * runs past the end of the file or into such a zero tail (or has no complete header) is a "torn tail",
 * truncated and reported; a record whose header verifies and whose bytes are all present, but whose
 * payload checksum fails (or whose header checksum fails with all its bytes present), is damage to a
 * record that may have been acknowledged, refused like damage in the middle (version 1 segments, with no
 * header checksum, keep treating every bad last record as torn). Records are self-delimiting and each carries its index, so the records after
 * the damage can be found and put in order ({@link inspectWal}), but a repair still cuts the log at the
 * damage: the log's users need an unbroken sequence (a command log applies changes relative to the
 * state before them; a Raft log must not have holes).
 *
 * @module
 */
import { dirname, join } from 'node:path';
import { type Env, type EnvTimer, SegmemError, systemEnv } from '@segmem/protocol';
import { crc32c } from './crc32c.js';
import { errnoCode, errorMessage, writeAll } from './files.js';
import { mkdirDurable, nodeFs, type StorageFs, truncateFile } from './fs.js';

/**
 * When the write-ahead log forces records to stable storage.
 *
 * - `'batch'` (the default): group commit. Appended records are written and made durable in flushes;
 *   only one flush runs at a time, and every record appended while a flush is running goes into the
 *   next one, which starts as soon as the previous one completes: one write (`writev`) plus one
 *   `fdatasync` for all of its records. There is no artificial delay, so a lone record is as fast as
 *   under `'always'`, and under load many records share one sync. A record counts as durable (and
 *   `durableIndex` advances) after the `fdatasync` that covers it has completed. A flush holding only
 *   records nobody waits for (`waitDurable`) writes them without a sync; they become durable with the
 *   next sync somebody waits for, at a segment roll, or at close. (The log above waits only for data
 *   changes, so lock and session records cost no fdatasync of their own.)
 * - `'always'`: every record gets its own write and its own `fdatasync`, in index order; no two records
 *   share a sync. The strictest and slowest policy: throughput is bounded by the disk's sync latency.
 * - `'none'`: records are handed to the operating system (the `write` system call) in background
 *   flushes, grouped like `'batch'`, and never fsynced. `durableIndex` advances once a record is written
 *   to the OS; from then on it survives a crash of the process, but not of the operating system or a
 *   power loss. The log above this one acknowledges commands under 'none' without waiting even for that
 *   write, so the last moments before a process crash (typically well under a millisecond of commands)
 *   can be lost too.
 */
export type FsyncPolicy = 'always' | 'batch' | 'none';

export const FSYNC_POLICIES: readonly FsyncPolicy[] = ['always', 'batch', 'none'];

/**
 * The file, in the data directory beside the log's directory, whose existence says the log has held a
 * durable record (see {@link WalOptions.startedMarker}).
 */
export const WAL_STARTED_FILE = 'wal-started';

/** Magic bytes at the start of every segment file. */
export const WAL_MAGIC = 'SGMWAL01';
/** The segment format version written by this code. */
export const WAL_FORMAT_VERSION = 2;
/** Size of the segment file header. */
export const WAL_FILE_HEADER_BYTES = 16;
/** Size of the header in front of every record's payload (in the current format version). */
export const WAL_RECORD_HEADER_BYTES = 20;
/** Size of a record header in format version 1. */
const V1_RECORD_HEADER_BYTES = 16;
/** Torn writes lose whole sectors: a zero tail of a torn file starts at a multiple of this. */
const SECTOR_BYTES = 512;
export const DEFAULT_WAL_FILE_BYTES = 64 * 1024 * 1024;
export const DEFAULT_MAX_RECORD_BYTES = 128 * 1024 * 1024;
/** Record lengths are stored in 32 bits. */
const MAX_RECORD_BYTES_LIMIT = 0xffff_ffff;
const MIN_SEGMENT_BYTES = WAL_FILE_HEADER_BYTES + WAL_RECORD_HEADER_BYTES;
const TWO_32 = 0x1_0000_0000;
const SEGMENT_NAME = /^(\d{20})\.wal$/;
/** After a failed write, the flush is retried after this long, doubling up to the maximum. */
const STALL_RETRY_MIN_MS = 50;
const STALL_RETRY_MAX_MS = 2000;

/**
 * Errors of writes and file creations, which a retry may get past (a full disk that gets space back);
 * anything else (a failed fdatasync above all: the kernel may have dropped the unsynced pages) fails
 * the log for good.
 */
const retryableWrites = new WeakSet<object>();

function retryable(err: unknown): unknown {
  if (typeof err === 'object' && err !== null) retryableWrites.add(err);
  return err;
}

/**
 * The file operations the log uses while running. Tests replace some of them to inject I/O errors.
 * @internal
 */
export interface WalIo {
  /** Opens a segment file for writing: `'wx'` creates a new file, `'r+'` reopens the last one. */
  open(path: string, flags: 'wx' | 'r+'): Promise<number>;
  /** Positional gather write; resolves with the number of bytes written. */
  writev(fd: number, buffers: Uint8Array[], position: number): Promise<number>;
  /** Optional: all of a small write at once, on the calling thread (see {@link SYNC_WRITE_MAX_BYTES}). */
  writeAllSync?(fd: number, buffers: readonly Uint8Array[], position: number): number;
  fdatasync(fd: number): Promise<void>;
  close(fd: number): Promise<void>;
  fsyncDir(dir: string): Promise<void>;
}

/** The log's file operations on `fs`, each naming its fault step. */
export function walIoOf(fs: StorageFs): WalIo {
  const writeAllSync = fs.writeAllSync?.bind(fs);
  return {
    open: (path, flags) => fs.open(path, flags, flags === 'wx' ? 'wal.create' : 'wal.open'),
    writev: (fd, buffers, position) => fs.writev(fd, buffers, position, 'wal.write'),
    ...(writeAllSync
      ? { writeAllSync: (fd, buffers, position) => writeAllSync(fd, buffers, position, 'wal.write') }
      : {}),
    fdatasync: (fd) => fs.fdatasync(fd, 'wal.sync'),
    close: (fd) => fs.close(fd, 'wal.close'),
    fsyncDir: (dir) => fs.fsyncDir(dir, 'wal.dirsync'),
  };
}

export const nodeIo: WalIo = walIoOf(nodeFs);

/**
 * Writes up to this size go to the file on the event loop's thread (the page cache takes them in
 * microseconds) instead of through the thread pool: a commit then costs each member one thread-pool round
 * trip (its fdatasync) instead of two, and fewer wake-ups on a busy machine. Larger writes (big object
 * releases, catch-up batches) still go through the pool, so the loop never copies much at once.
 */
export const SYNC_WRITE_MAX_BYTES = 64 * 1024;

export interface WalOptions {
  /** The directory holding the segment files (created if missing). */
  dir: string;
  /** See {@link FsyncPolicy}. */
  fsync: FsyncPolicy;
  /** Start a new segment file before a record that would grow the current one past this. Default 64 MiB. */
  segmentBytes?: number;
  /** Largest payload accepted by `append` and believed during recovery. Default 128 MiB. */
  maxRecordBytes?: number;
  /**
   * Start even if the log is corrupt (a bad record followed by valid ones): truncate it at the bad
   * record, dropping everything after it, and report what was dropped in `report.repaired`.
   */
  repair?: boolean;
  /** @internal The file system the log lives on (default: the real one). */
  fs?: StorageFs;
  /** @internal Replaces file operations on top of `fs` (for fault-injection tests, timing). */
  io?: Partial<WalIo>;
  /**
   * The caller's state already holds every record up to this index (it was restored from a snapshot
   * taken there). Recovery then reads only the segments that hold later records and returns only those;
   * refuses (`UNAVAILABLE`, `details.reason === 'WAL_GAP'`) if the log starts after `coveredIndex + 1`;
   * and, if the log ends before `coveredIndex`, deletes it and continues at `coveredIndex + 1`
   * (`report.discarded`).
   */
  coveredIndex?: number;
  /**
   * A file outside `dir` (it must survive the loss of `dir`) that says this log has held a durable record.
   * The log creates it, durably, before it first reports a record durable (or at open, for a log that
   * already holds records). While it exists, a log found with no record at all (its files deleted or cut
   * to nothing) and no snapshot covering it (`coveredIndex` 0 or unset) is refused as lost, not started
   * empty: `UNAVAILABLE`, `details.reason === 'WAL_MISSING'` (unless `repair` is set).
   */
  startedMarker?: string;
  /**
   * Told once `startedMarker` exists: at open when it did (or was created for a log holding records),
   * else right after the first record made it. Not awaited: what it does (the data directory records the
   * time in meta.json) stays off the write path. Must not throw.
   */
  onStarted?: () => void;
  /**
   * Called when writes start failing for a reason a retry may get past (a full disk: `ENOSPC`), with the
   * error appends now throw, and with null once a retry succeeded. Meanwhile the log keeps what was
   * queued, retries every 50 ms doubling to 2 s, and refuses new appends; nothing is lost or reordered.
   */
  onStall?: (stall: SegmemError | null) => void;
  /** Timers of the stall retries (default: the process's own, systemEnv). */
  env?: Env;
  /**
   * Recovery hands each record to this as soon as it is read and verified, in index order, instead of
   * returning them all (`open` then returns no records): the files are then read in windows of 4 MiB (a
   * longer record whole, a file with a bad record whole), so a caller that applies records as they come
   * holds a window at a time, not the whole log. Records before a bad one may have been handed
   * over by the time `open` refuses to start; the caller then discards what it built from them.
   */
  onRecord?: (record: WalRecord) => void;
}

export interface WalRecord {
  index: number;
  /** The payload. Records returned by {@link Wal.open} share memory with the segment file they came from. */
  payload: Buffer;
}

export interface RecoveryReport {
  /** Number of records recovered (and returned for replay). */
  records: number;
  /** Index of the first recovered record; `lastIndex + 1` when there are none. */
  firstIndex: number;
  /** Index of the last recovered record (0 for an empty log); appends continue at `lastIndex + 1`. */
  lastIndex: number;
  /** Number of segment files left after recovery. */
  segments: number;
  /** Set when a torn tail (an interrupted last write) was cut off. */
  truncated?: { file: string; offset: number; droppedBytes: number; reason: string };
  /** Set when `repair` was given and the log was cut at a corrupt record with valid records after it. */
  repaired?: {
    file: string;
    offset: number;
    /** Records after the damaged one that verified, dropped with it. */
    droppedRecords: number;
    droppedBytes: number;
    reason: string;
    /** The index the damaged record had: the log now ends just before it. */
    firstDroppedIndex: number;
    /** The highest index among the records dropped. */
    lastDroppedIndex: number;
    /** The records dropped that verified, in the order found (for a caller that wants to say what they held). */
    dropped: WalRecord[];
  };
  /**
   * Set when the log ended before `coveredIndex` (its tail was lost): its files were deleted and the log
   * continues at `coveredIndex + 1`. `lastIndex` is where the old log ended.
   */
  discarded?: { segments: number; lastIndex: number; coveredIndex: number };
}

export interface WalStats {
  /** Records appended since open. */
  appends: number;
  /** Write batches completed (each one write, plus one `fdatasync` unless the policy is `'none'`). */
  flushes: number;
  /** `fdatasync` calls on segment files. */
  syncs: number;
  /** fsync calls on the log directory (after creating segment files or deleting them). */
  dirSyncs: number;
  /** Bytes written to segment files (headers included). */
  bytes: number;
}

interface Segment {
  firstIndex: number;
  path: string;
}

interface Waiter {
  index: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/** Whether `name` is the name of a WAL segment file. */
export function isSegmentFileName(name: string): boolean {
  return SEGMENT_NAME.test(name);
}

/** The file name of the segment whose first record has index `firstIndex`. */
export function segmentFileName(firstIndex: number): string {
  return `${String(firstIndex).padStart(20, '0')}.wal`;
}

function fileHeader(): Buffer {
  const h = Buffer.alloc(WAL_FILE_HEADER_BYTES);
  h.write(WAL_MAGIC, 0, 'latin1');
  h.writeUInt32LE(WAL_FORMAT_VERSION, 8);
  h.writeUInt32LE(crc32c(h, 0, 0, 12), 12);
  return h;
}

function putU32(b: Buffer, off: number, v: number): void {
  b[off] = v;
  b[off + 1] = v >>> 8;
  b[off + 2] = v >>> 16;
  b[off + 3] = v >>> 24;
}

function readU32(b: Uint8Array, off: number): number {
  return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
}

function readIndex(b: Uint8Array, off: number): number {
  return readU32(b, off + 12) * TWO_32 + readU32(b, off + 8);
}

/** Size of the record headers in a segment of format `version`. */
function headerBytesOf(version: number): number {
  return version === 1 ? V1_RECORD_HEADER_BYTES : WAL_RECORD_HEADER_BYTES;
}

/** Whether the header of the record at `off` (all of it in `b`) verifies; version 1 headers have no checksum. */
function headerOk(b: Uint8Array, off: number, version: number): boolean {
  return version === 1 || crc32c(b, 0, off, off + 16) === readU32(b, off + 16);
}

/** Whether the payload of `len` bytes of the record at `off` (all of it in `b`) verifies. */
function payloadOk(b: Uint8Array, off: number, len: number, version: number): boolean {
  if (version === 1) {
    let crc = crc32c(b, 0, off, off + 4);
    crc = crc32c(b, crc, off + 8, off + 16);
    return crc32c(b, crc, off + 16, off + 16 + len) === readU32(b, off + 4);
  }
  const start = off + WAL_RECORD_HEADER_BYTES;
  return crc32c(b, 0, start, start + len) === readU32(b, off + 4);
}

/**
 * Where the records of segment file `b` are, from the first up to the first that does not verify
 * (length and checksum; indexes are not checked). @internal For the simulator, which damages records.
 */
export function verifiedRecordSpans(b: Buffer): { start: number; end: number }[] {
  const spans: { start: number; end: number }[] = [];
  const version = checkFileHeader(b);
  if (typeof version === 'string') return spans;
  const headerBytes = headerBytesOf(version);
  for (let off = WAL_FILE_HEADER_BYTES; b.length - off >= headerBytes; ) {
    if (!headerOk(b, off, version)) break;
    const len = readU32(b, off);
    const end = off + headerBytes + len;
    if (end > b.length || !payloadOk(b, off, len, version)) break;
    spans.push({ start: off, end });
    off = end;
  }
  return spans;
}

/** The format version of the segment whose file header starts `b`, or why that header is invalid. */
function checkFileHeader(b: Buffer): number | string {
  if (b.length < WAL_FILE_HEADER_BYTES) return 'incomplete segment header';
  if (b.toString('latin1', 0, 8) !== WAL_MAGIC) return 'bad segment header (wrong magic)';
  if (readU32(b, 12) !== crc32c(b, 0, 0, 12)) return 'bad segment header (bad checksum)';
  const version = readU32(b, 8);
  if (version !== 1 && version !== WAL_FORMAT_VERSION) return `unsupported segment format version ${version}`;
  return version;
}

/** Verifies the record at `off`: returns its payload length, or why it is invalid. */
function checkRecord(
  b: Buffer,
  off: number,
  expected: number,
  maxRecordBytes: number,
  version: number,
): number | string {
  const headerBytes = headerBytesOf(version);
  if (b.length - off < headerBytes) return 'incomplete record header';
  if (!headerOk(b, off, version)) return 'bad record header checksum';
  const len = readU32(b, off);
  if (len > maxRecordBytes) return `record length ${len} exceeds the maximum ${maxRecordBytes}`;
  if (off + headerBytes + len > b.length) return 'incomplete record (runs past the end of the file)';
  if (!payloadOk(b, off, len, version)) return 'bad checksum';
  const index = readIndex(b, off);
  if (index !== expected) return `unexpected index ${index}, expected ${expected}`;
  return len;
}

/** Whether two indexes differ in at most one bit (a bit flip in a stored index). */
function withinOneBit(a: number, b: number): boolean {
  const bits = (x: number): number => {
    let n = 0;
    for (let v = x >>> 0; v !== 0; v &= v - 1) n++;
    return n;
  };
  return bits((a >>> 0) ^ (b >>> 0)) + bits(Math.floor(a / TWO_32) ^ Math.floor(b / TWO_32)) <= 1;
}

/**
 * Whether the bad record at `off` in segment `b`, with no valid record after it and `expected` its index,
 * can be a write cut short by a crash: one that loses the write's end, so the file ends early or is zero
 * from a sector boundary on (or holds whatever the file system left there: bytes that do not even look
 * like this record's header). A record whose bytes are all there and whose header verifies but whose
 * payload does not, or whose header fails but still names its index (give or take one flipped bit), is
 * damage instead. Version 1 records have no header checksum, so their length cannot be trusted: every
 * bad last record counts as torn there.
 */
function tornWrite(b: Buffer, off: number, version: number, expected: number): boolean {
  if (version === 1) return true;
  let lastNonZero = b.length - 1;
  while (lastNonZero >= off && b[lastNonZero] === 0) lastNonZero--;
  if (lastNonZero < off) return true;
  const zeroFrom = Math.min(b.length, Math.ceil((lastNonZero + 1) / SECTOR_BYTES) * SECTOR_BYTES);
  if (off + WAL_RECORD_HEADER_BYTES > zeroFrom) return true;
  if (!headerOk(b, off, version)) {
    if (isAllZero(b.subarray(off, off + WAL_RECORD_HEADER_BYTES), 0)) return true;
    return !withinOneBit(readIndex(b, off), expected);
  }
  return off + WAL_RECORD_HEADER_BYTES + readU32(b, off) > zeroFrom;
}

/**
 * Scans `b` (a segment of format `version`) from byte `from` for records that verify (bounded length,
 * checksums) and carry an index in `(afterIndex, maxIndex]`, at any byte offset. Returns how many were
 * found (stopping at `limit`); found records are skipped over as a whole, and pushed to `collect` if given.
 */
function scanForRecords(
  b: Buffer,
  from: number,
  afterIndex: number,
  maxIndex: number,
  maxRecordBytes: number,
  limit: number,
  version: number,
  collect?: WalRecord[],
): number {
  let found = 0;
  const headerBytes = headerBytesOf(version);
  const end = b.length - headerBytes;
  for (let p = from; p <= end; p++) {
    const hi = readU32(b, p + 12);
    if (hi > maxIndex / TWO_32) continue;
    const index = hi * TWO_32 + readU32(b, p + 8);
    if (index <= afterIndex || index > maxIndex) continue;
    const len = readU32(b, p);
    if (len > maxRecordBytes || p + headerBytes + len > b.length) continue;
    if (!headerOk(b, p, version) || !payloadOk(b, p, len, version)) continue;
    collect?.push({ index, payload: b.subarray(p + headerBytes, p + headerBytes + len) });
    if (++found >= limit) return found;
    p += headerBytes + len - 1;
  }
  return found;
}

function isAllZero(b: Uint8Array, from: number): boolean {
  for (let i = from; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** A file of the log could not be read or opened (permissions, I/O error): one line naming it and the errno. */
function unreadable(path: string, err: unknown, what: string): SegmemError {
  if (SegmemError.is(err)) return err;
  const errno = errnoCode(err) ?? 'EIO';
  return new SegmemError(
    'UNAVAILABLE',
    `cannot ${what} write-ahead log file ${path}: ${errno}` +
      (errno === 'EACCES' || errno === 'EPERM' ? ' (permission denied: check its owner and mode)' : ''),
    { reason: 'WAL_UNREADABLE', file: path, errno },
    { cause: err },
  );
}

async function readWalFile(fs: StorageFs, path: string): Promise<Buffer> {
  try {
    return await fs.readFile(path, 'recovery.read-wal');
  } catch (err) {
    throw unreadable(path, err, 'read');
  }
}

async function fileExists(fs: StorageFs, path: string): Promise<boolean> {
  try {
    await fs.stat(path);
    return true;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw unreadable(path, err, 'check the marker of the');
  }
}

/** Creates the (empty) started marker file, durably unless `sync` is false. */
async function writeStartedMarker(fs: StorageFs, path: string, sync: boolean): Promise<void> {
  try {
    await fs.close(await fs.open(path, 'wx', 'wal.mark'));
  } catch (err) {
    // Created before a crash, perhaps not durably: the directory sync below settles it.
    if (errnoCode(err) !== 'EEXIST') throw err;
  }
  if (sync) await fs.fsyncDir(dirname(path), 'wal.mark');
}

function walFailed(err: unknown): SegmemError {
  if (SegmemError.is(err)) return err;
  return new SegmemError(
    'UNAVAILABLE',
    `write-ahead log failed: ${errorMessage(err)}`,
    { reason: 'WAL_FAILED', errno: errnoCode(err) },
    { cause: err },
  );
}

function closedError(): SegmemError {
  return new SegmemError('CLOSED', 'write-ahead log is closed');
}

interface Recovered {
  /** The records to replay (none when they went to `onRecord`). */
  records: WalRecord[];
  /** How many records were recovered. */
  count: number;
  segments: Segment[];
  /** Size of the last segment after recovery (0 if there is none). */
  lastSize: number;
  /** Whether the last segment was read and verified, so appends may continue in it (else a new one starts). */
  appendable: boolean;
  lastIndex: number;
  report: RecoveryReport;
}

function firstIndexOf(name: string): number {
  return Number(SEGMENT_NAME.exec(name)![1]);
}

/** What reading the segment files in order found, before anything on disk is changed. */
interface Scan {
  names: string[];
  /** The records read (none when they went to `onRecord` instead). */
  records: WalRecord[];
  /** How many records were recovered, and the index of the first (0: none). */
  count: number;
  firstRecordIndex: number;
  segments: Segment[];
  sizes: number[];
  /** The format version of each segment read (parallel to `sizes`). */
  versions: number[];
  /** Index of the last record that verified (0: none). */
  lastIndex: number;
  /** The first bad record (or file), if any, and the format version of its file. */
  bad?: { file: number; offset: number; reason: string; buf: Buffer; version: number };
}

async function scanSegments(
  fs: StorageFs,
  dir: string,
  maxRecordBytes: number,
  covered: number | undefined,
  onRecord?: (record: WalRecord) => void,
): Promise<Scan> {
  let listed: string[];
  try {
    listed = await fs.readdir(dir);
  } catch (err) {
    throw unreadable(dir, err, 'list the directory of the');
  }
  let names = listed.filter((n) => SEGMENT_NAME.test(n)).sort();
  const records: WalRecord[] = [];
  const segments: Segment[] = [];
  const sizes: number[] = [];
  const versions: number[] = [];
  let count = 0;
  let firstRecordIndex = 0;
  if (covered !== undefined) {
    // Segments all of whose records the caller's snapshot holds are not read; they stay listed, and the
    // next truncation behind a snapshot deletes them. Whatever happened to them (a deletion interrupted by
    // a crash, in any order) does not matter.
    let skip = 0;
    while (skip + 1 < names.length && firstIndexOf(names[skip + 1]!) <= covered + 1) skip++;
    for (const n of names.slice(0, skip)) segments.push({ firstIndex: firstIndexOf(n), path: join(dir, n) });
    names = names.slice(skip);
    const start = names.length > 0 ? firstIndexOf(names[0]!) : covered + 1;
    if (start > covered + 1) {
      throw new SegmemError(
        'UNAVAILABLE',
        `write-ahead log in ${dir} starts at index ${start}, but the snapshot it continues ends at index ${covered}: ` +
          `records ${covered + 1}..${start - 1} are missing`,
        { reason: 'WAL_GAP', dir, firstIndex: start, coveredIndex: covered },
      );
    }
  }
  let expected = names.length > 0 ? firstIndexOf(names[0]!) : 1;
  if (!Number.isSafeInteger(expected) || expected < 1) expected = 1;
  let bad: Scan['bad'];

  for (let f = 0; f < names.length && !bad; f++) {
    const path = join(dir, names[f]!);
    const first = firstIndexOf(names[f]!);
    const fileExpected = expected;
    let off = WAL_FILE_HEADER_BYTES;
    if (onRecord && first === expected) {
      // Records that verify are handed over as windows of the file are read; the whole file is read only
      // from a record that does not (what the damage and torn-write checks below examine).
      const streamed = await streamRecords(fs, path, expected, maxRecordBytes, (index, payload) => {
        if (covered !== undefined && index <= covered) return;
        onRecord({ index, payload });
        if (count++ === 0) firstRecordIndex = index;
      });
      expected = streamed.expected;
      if (streamed.complete) {
        segments.push({ firstIndex: first, path });
        sizes.push(streamed.size);
        versions.push(streamed.version);
        continue;
      }
      off = streamed.offset;
    }
    const buf = await readWalFile(fs, path);
    segments.push({ firstIndex: first, path });
    sizes.push(0);
    versions.push(WAL_FORMAT_VERSION);
    if (first !== fileExpected) {
      bad = {
        file: f,
        offset: 0,
        reason: `segment file name says first index ${first}, expected ${fileExpected}`,
        buf,
        version: WAL_FORMAT_VERSION,
      };
      break;
    }
    const version = checkFileHeader(buf);
    if (typeof version === 'string') {
      bad = { file: f, offset: 0, reason: version, buf, version: WAL_FORMAT_VERSION };
      break;
    }
    versions[f] = version;
    const headerBytes = headerBytesOf(version);
    while (off < buf.length) {
      const r = checkRecord(buf, off, expected, maxRecordBytes, version);
      if (typeof r === 'string') {
        bad = { file: f, offset: off, reason: r, buf, version };
        break;
      }
      if (covered === undefined || expected > covered) {
        const record = { index: expected, payload: buf.subarray(off + headerBytes, off + headerBytes + r) };
        if (onRecord) onRecord(record);
        else records.push(record);
        if (count++ === 0) firstRecordIndex = expected;
      }
      expected++;
      off += headerBytes + r;
    }
    sizes[f] = bad ? bad.offset : buf.length;
  }
  return {
    names,
    records,
    count,
    firstRecordIndex,
    segments,
    sizes,
    versions,
    lastIndex: expected - 1,
    ...(bad ? { bad } : {}),
  };
}

/** How much of a segment file {@link streamRecords} reads at once (a longer record is read whole). */
const STREAM_WINDOW_BYTES = 4 * 1024 * 1024;

/**
 * Verifies the records of segment file `path` (whose first record must be `expected`) in windows of
 * {@link STREAM_WINDOW_BYTES}, handing each to `deliver` (its payload a view of its window, never reused).
 * Stops at the first record that does not verify, or that the file cuts short, and says where:
 * `complete: false` and its `offset` (the file's header: offset 16), for the caller to examine with the
 * whole file; `expected` is the index the next record should carry.
 */
async function streamRecords(
  fs: StorageFs,
  path: string,
  expected: number,
  maxRecordBytes: number,
  deliver: (index: number, payload: Buffer) => void,
): Promise<{ complete: boolean; offset: number; expected: number; size: number; version: number }> {
  let fd: number;
  let size: number;
  try {
    // The same fault step as a whole-file read: a test's read error hits either path.
    fd = await fs.open(path, 'r', 'recovery.read-wal');
  } catch (err) {
    throw unreadable(path, err, 'read');
  }
  try {
    try {
      size = (await fs.stat(path)).size;
    } catch (err) {
      throw unreadable(path, err, 'read');
    }
    let win: Buffer = Buffer.alloc(0);
    let winStart = 0;
    /** Makes the window cover [from, to) as far as the file does. */
    const cover = async (from: number, to: number): Promise<boolean> => {
      if (from >= winStart && to <= winStart + win.length) return true;
      const length = Math.min(size - from, Math.max(to - from, STREAM_WINDOW_BYTES));
      const next = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        let n: number;
        try {
          n = await fs.read(fd, next, got, length - got, from + got);
        } catch (err) {
          throw unreadable(path, err, 'read');
        }
        if (n === 0) break;
        got += n;
      }
      win = next.subarray(0, got);
      winStart = from;
      return to <= winStart + win.length;
    };
    let version = WAL_FORMAT_VERSION;
    const stop = (offset: number) => ({ complete: false, offset, expected, size, version });
    if (!(await cover(0, WAL_FILE_HEADER_BYTES))) return stop(WAL_FILE_HEADER_BYTES);
    const header = checkFileHeader(win);
    if (typeof header === 'string') return stop(WAL_FILE_HEADER_BYTES);
    version = header;
    const headerBytes = headerBytesOf(version);
    let off = WAL_FILE_HEADER_BYTES;
    while (off < size) {
      if (!(await cover(off, off + headerBytes))) return stop(off);
      const len = readU32(win, off - winStart);
      if (len > maxRecordBytes || !(await cover(off, off + headerBytes + len))) return stop(off);
      const at = off - winStart;
      const r = checkRecord(win, at, expected, maxRecordBytes, version);
      if (typeof r === 'string') return stop(off);
      deliver(expected, win.subarray(at + headerBytes, at + headerBytes + r));
      expected++;
      off += headerBytes + r;
    }
    return { complete: true, offset: off, expected, size, version };
  } finally {
    await fs.close(fd).catch(() => {});
  }
}

/** The bytes from the bad record on (the rest of its file, and every later file). */
interface Beyond {
  laterPaths: string[];
  laterBufs: Buffer[];
  laterBytes: number;
  droppedBytes: number;
  /** Records that verify in those bytes, found by {@link scanBeyond}: counted, and collected if asked. */
  found: number;
}

/**
 * Looks for records that verify after the bad one, at any offset: `limit` of them at most, pushed to
 * `collect` if given. Only indexes a genuine later record could carry are believed (which keeps random
 * bytes from passing for a record): every record takes at least 16 bytes, and a later segment starts at
 * its name's index.
 */
async function scanBeyond(
  fs: StorageFs,
  dir: string,
  scan: Scan,
  bad: NonNullable<Scan['bad']>,
  maxRecordBytes: number,
  limit: number,
  collect?: WalRecord[],
): Promise<Beyond> {
  const laterPaths = scan.names.slice(bad.file + 1).map((n) => join(dir, n));
  const laterBufs: Buffer[] = [];
  let laterBytes = 0;
  for (const p of laterPaths) {
    const b = await readWalFile(fs, p);
    laterBufs.push(b);
    laterBytes += b.length;
  }
  const droppedBytes = bad.buf.length - bad.offset + laterBytes;
  let base = scan.lastIndex + 1;
  for (const n of scan.names.slice(bad.file)) base = Math.max(base, firstIndexOf(n));
  const maxIndex = Math.min(Number.MAX_SAFE_INTEGER, base + Math.ceil(droppedBytes / V1_RECORD_HEADER_BYTES));
  const after = scan.lastIndex;
  let found = scanForRecords(
    bad.buf,
    bad.offset + 1,
    after,
    maxIndex,
    maxRecordBytes,
    limit,
    bad.version,
    collect,
  );
  for (const b of laterBufs) {
    if (found >= limit) break;
    const version = checkFileHeader(b);
    const v = typeof version === 'number' ? version : WAL_FORMAT_VERSION;
    found += scanForRecords(b, 0, after, maxIndex, maxRecordBytes, limit - found, v, collect);
  }
  return { laterPaths, laterBufs, laterBytes, droppedBytes, found };
}

async function recover(
  fs: StorageFs,
  dir: string,
  maxRecordBytes: number,
  repair: boolean,
  covered: number | undefined,
  started: string | undefined,
  onRecord?: (record: WalRecord) => void,
): Promise<Recovered> {
  const scan = await scanSegments(fs, dir, maxRecordBytes, covered, onRecord);
  const { records, count, segments, sizes, versions, lastIndex, bad } = scan;
  // Checked before anything is cut (after damage, which is the better explanation), so a refused start
  // changes nothing on disk.
  const refuseIfMissing = (): void => {
    if (started === undefined || repair || (covered ?? 0) > 0 || count > 0) return;
    const what =
      scan.names.length === 0 ? 'holds no segment file' : `holds no valid record (${scan.names.join(', ')})`;
    throw new SegmemError(
      'UNAVAILABLE',
      `write-ahead log is missing: ${dir} ${what}, but ${started} says it held acknowledged records and no ` +
        'snapshot covers them; refusing to start empty (restore the WAL files, or start with repair to start empty)',
      { reason: 'WAL_MISSING', dir, marker: started, segments: scan.names.length },
    );
  };
  if (!bad) refuseIfMissing();
  const report: RecoveryReport = {
    records: count,
    firstIndex: count > 0 ? scan.firstRecordIndex : lastIndex + 1,
    lastIndex,
    segments: 0,
  };

  if (bad) {
    const badPath = join(dir, scan.names[bad.file]!);
    const dropped: WalRecord[] = [];
    const beyond = await scanBeyond(
      fs,
      dir,
      scan,
      bad,
      maxRecordBytes,
      repair ? Number.POSITIVE_INFINITY : 1,
      repair ? dropped : undefined,
    );
    const { laterPaths, laterBufs, laterBytes, droppedBytes } = beyond;
    const validAfter = beyond.found;
    const damagedLast =
      validAfter === 0 &&
      bad.offset >= WAL_FILE_HEADER_BYTES &&
      !tornWrite(bad.buf, bad.offset, bad.version, lastIndex + 1);
    if ((validAfter > 0 || damagedLast) && !repair) {
      const why =
        validAfter > 0
          ? `bad record at ${badPath} offset ${bad.offset} is followed by valid records`
          : `the last record, at ${badPath} offset ${bad.offset}, is damaged (${bad.reason}) with all its bytes ` +
            'present: not a write cut short by a crash, and it may have been acknowledged';
      throw new SegmemError(
        'UNAVAILABLE',
        `write-ahead log is corrupt: ${why}; ` +
          'refusing to start so acknowledged data is not dropped silently (start with repair to truncate there)',
        {
          reason: 'WAL_CORRUPT',
          file: badPath,
          offset: bad.offset,
          problem: bad.reason,
          firstBadIndex: lastIndex + 1,
          lastRecord: damagedLast,
        },
      );
    }
    refuseIfMissing();
    // Cut the log at the bad record: truncate its file (or remove it, if the damage is in its header)
    // and remove every later file.
    if (bad.offset < WAL_FILE_HEADER_BYTES) {
      await fs.rm(badPath, 'recovery.unlink');
      segments.pop();
      sizes.pop();
      versions.pop();
    } else {
      await truncateFile(fs, badPath, bad.offset, 'recovery.truncate');
    }
    for (const p of laterPaths) await fs.rm(p, 'recovery.unlink');
    if (bad.offset < WAL_FILE_HEADER_BYTES || laterPaths.length > 0)
      await fs.fsyncDir(dir, 'recovery.dirsync');

    if (validAfter > 0 || damagedLast) {
      let lastDropped = lastIndex + 1;
      for (const r of dropped) lastDropped = Math.max(lastDropped, r.index);
      report.repaired = {
        file: badPath,
        offset: bad.offset,
        droppedRecords: validAfter,
        droppedBytes,
        reason: bad.reason,
        firstDroppedIndex: lastIndex + 1,
        lastDroppedIndex: lastDropped,
        dropped,
      };
    } else {
      let reason: string;
      if (bad.buf.length === 0 && laterBytes === 0) reason = 'empty segment file';
      else if (isAllZero(bad.buf, bad.offset) && laterBufs.every((b) => isAllZero(b, 0)))
        reason = 'zero-filled tail';
      else if (bad.offset < WAL_FILE_HEADER_BYTES) reason = `torn segment file (${bad.reason})`;
      else reason = `torn record (${bad.reason})`;
      report.truncated = { file: badPath, offset: bad.offset, droppedBytes, reason };
    }
  }
  if (covered !== undefined && lastIndex < covered) {
    // The log ends before the snapshot it continues (its tail was lost: fsync "none" and an OS crash, or
    // files removed by hand). Every record it holds is in the snapshot: start a new log after it.
    for (const seg of segments) await fs.rm(seg.path, 'recovery.unlink');
    if (segments.length > 0) await fs.fsyncDir(dir, 'recovery.dirsync');
    report.discarded = { segments: segments.length, lastIndex, coveredIndex: covered };
    report.lastIndex = covered;
    report.firstIndex = covered + 1;
    report.segments = 0;
    return {
      records: [],
      count: 0,
      segments: [],
      lastSize: 0,
      appendable: false,
      lastIndex: covered,
      report,
    };
  }
  report.segments = segments.length;
  // Only a segment that was read may be appended to (the last one may be a skipped one, when every
  // segment read was torn and removed), and only one in the current format.
  const appendable = sizes.length > 0 && versions[versions.length - 1] === WAL_FORMAT_VERSION;
  const lastSize = appendable ? sizes[sizes.length - 1]! : 0;
  return { records, count, segments, lastSize, appendable, lastIndex, report };
}

/** What {@link inspectWal} found. */
export interface WalInspection {
  /** The records before the first bad one, in index order: what a repair keeps (none when streamed). */
  records: WalRecord[];
  /** The first bad record: in which file, at which offset, why, and the index it should have had. */
  damage: {
    file: string;
    offset: number;
    reason: string;
    index: number;
    /** Set when the log was lost as a whole (`file` is then its directory): see {@link WalOptions.startedMarker}. */
    missing?: boolean;
  } | null;
  /**
   * Records after the damage that verify (length, checksum, a plausible index), in index order: what a
   * repair drops. Their order is proven by the index each carries, not by where they were found.
   */
  after: WalRecord[];
}

/**
 * Reads the log in `dir` as {@link Wal.open} would, changing nothing on disk, and returns what it holds
 * before and after its first bad record. For a caller that must decide what to do about damage before
 * anything is cut (a cluster member learns from the records after the damage which term it reached).
 * With `onRecord`, the records before the bad one are handed to it as they are read, in windows, and not
 * returned (see {@link WalOptions.onRecord}); those after it are returned either way.
 */
export async function inspectWal(
  dir: string,
  maxRecordBytes = DEFAULT_MAX_RECORD_BYTES,
  fs: StorageFs = nodeFs,
  onRecord?: (record: WalRecord) => void,
): Promise<WalInspection> {
  const scan = await scanSegments(fs, dir, maxRecordBytes, undefined, onRecord);
  if (!scan.bad) return { records: scan.records, damage: null, after: [] };
  const bad = scan.bad;
  const found: WalRecord[] = [];
  await scanBeyond(fs, dir, scan, bad, maxRecordBytes, Number.POSITIVE_INFINITY, found);
  // Where a record was found twice (a replayed write), the first one counts.
  found.sort((a, b) => a.index - b.index);
  const after = found.filter((r, i) => i === 0 || found[i - 1]!.index !== r.index);
  return {
    records: scan.records,
    damage: {
      file: join(dir, scan.names[bad.file]!),
      offset: bad.offset,
      reason: bad.reason,
      index: scan.lastIndex + 1,
    },
    after,
  };
}

/** What a recovery report says, as lines for the server's log (none when the WAL was intact). */
export function describeRecovery(report: RecoveryReport): string[] {
  const lines: string[] = [];
  const t = report.truncated;
  if (t) {
    lines.push(
      `recovery: truncated torn WAL tail in ${t.file} at offset ${t.offset} (${t.droppedBytes} bytes: ${t.reason})`,
    );
  }
  const r = report.repaired;
  if (r) {
    lines.push(
      `recovery: repaired WAL: cut ${r.file} at offset ${r.offset} (${r.reason}), dropping WAL records ` +
        `${r.firstDroppedIndex}..${r.lastDroppedIndex}: the damaged one and ${r.droppedRecords} intact after it ` +
        `(${r.droppedBytes} bytes)`,
    );
  }
  const d = report.discarded;
  if (d) {
    lines.push(
      `recovery: the WAL ended at index ${d.lastIndex}, before the snapshot at index ${d.coveredIndex}; ` +
        `its ${d.segments} file(s) were deleted and it continues at index ${d.coveredIndex + 1}`,
    );
  }
  return lines;
}

/**
 * The write-ahead log. Open it with {@link Wal.open}; append with {@link Wal.append}; learn about
 * durability through {@link Wal.waitDurable}, {@link Wal.onDurable} and {@link Wal.durableIndex}.
 */
export class Wal {
  readonly policy: FsyncPolicy;
  readonly dir: string;
  private last: number;
  private durable: number;
  readonly stats: WalStats = { appends: 0, flushes: 0, syncs: 0, dirSyncs: 0, bytes: 0 };

  private readonly segmentBytes: number;
  private readonly maxRecordBytes: number;
  private readonly io: WalIo;
  private readonly fs: StorageFs;
  /** Segment files on disk, oldest first; the last one is the one being written. */
  private readonly segments: Segment[];

  // The segment file being written.
  private fd: number | null = null;
  private fdPos = 0;
  private fdDirty = false;

  // Segment accounting including queued records, to place segment boundaries at append time.
  private vFirst: number;
  private vBytes: number;
  private vRecords: number;

  // Queued records: their buffers (header, payload parts) in `iov`; `recEnds[k]` is the position in
  // `iov` after the k-th queued record; records before `recHead` have been written.
  private iov: Uint8Array[] = [];
  private iovHead = 0;
  private recEnds: number[] = [];
  private recHead = 0;
  /** Index of the last record handed to the OS. */
  private writtenIndex: number;
  /** Segment boundaries among the queued records: a new file starts with each of these indexes. */
  private rolls: number[] = [];
  /** A segment file was created and the directory not yet fsynced. */
  private dirDirty = false;
  /** Set while writes fail for lack of space (or another retryable write error); cleared by a retry that succeeds. */
  private stall: SegmemError | null = null;
  private stallRetryMs = STALL_RETRY_MIN_MS;
  private stallTimer: EnvTimer | null = null;
  private readonly env: Env;
  private readonly onStall: ((stall: SegmemError | null) => void) | undefined;

  private flushPromise: Promise<void> | null = null;
  private readonly runFlushesBound = () => this.runFlushes();
  private failure: SegmemError | null = null;
  private closing = false;
  private closed = false;
  private closePromise: Promise<void> | null = null;
  private waiters: Waiter[] = [];
  private listeners: ((durableIndex: number) => void)[] = [];
  private prefixChain: Promise<unknown> = Promise.resolve();
  /** The started marker still to be created before a record is first reported durable (null: none). */
  private markerPath: string | null = null;
  private onStarted: (() => void) | undefined;

  private constructor(
    opts: Required<
      Omit<
        WalOptions,
        'repair' | 'io' | 'coveredIndex' | 'onStall' | 'env' | 'startedMarker' | 'onRecord' | 'onStarted'
      >
    > &
      Pick<WalOptions, 'onStall' | 'env'>,
    io: WalIo,
    rec: Recovered,
  ) {
    this.dir = opts.dir;
    this.policy = opts.fsync;
    this.segmentBytes = opts.segmentBytes;
    this.maxRecordBytes = opts.maxRecordBytes;
    this.io = io;
    this.fs = opts.fs;
    this.onStall = opts.onStall;
    this.env = opts.env ?? systemEnv;
    this.segments = rec.segments;
    this.last = rec.lastIndex;
    this.durable = rec.lastIndex;
    this.writtenIndex = rec.lastIndex;
    const last = rec.appendable ? rec.segments[rec.segments.length - 1] : undefined;
    this.vFirst = last ? last.firstIndex : 0;
    this.vBytes = last ? rec.lastSize : 0;
    this.vRecords = last ? rec.lastIndex + 1 - last.firstIndex : 0;
    this.fdPos = rec.lastSize;
  }

  /**
   * Opens (creating if needed) the log in `opts.dir`, recovers it and returns the records to replay,
   * in index order, with a report of what recovery found. Throws `SegmemError('UNAVAILABLE')` with
   * `details.reason === 'WAL_CORRUPT'` (and `details.file`, `details.offset`) if the log is corrupt and
   * `repair` is not set.
   */
  static async open(opts: WalOptions): Promise<{ wal: Wal; records: WalRecord[]; report: RecoveryReport }> {
    if (!FSYNC_POLICIES.includes(opts.fsync)) {
      throw new SegmemError('INVALID_ARGUMENT', `unknown fsync policy ${JSON.stringify(opts.fsync)}`);
    }
    const segmentBytes = opts.segmentBytes ?? DEFAULT_WAL_FILE_BYTES;
    if (!Number.isSafeInteger(segmentBytes) || segmentBytes < MIN_SEGMENT_BYTES) {
      throw new SegmemError('INVALID_ARGUMENT', `segmentBytes must be an integer >= ${MIN_SEGMENT_BYTES}`);
    }
    const maxRecordBytes = opts.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    if (
      !Number.isSafeInteger(maxRecordBytes) ||
      maxRecordBytes < 0 ||
      maxRecordBytes > MAX_RECORD_BYTES_LIMIT
    ) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `maxRecordBytes must be an integer in [0, ${MAX_RECORD_BYTES_LIMIT}]`,
      );
    }
    const dir = opts.dir;
    const fs = opts.fs ?? nodeFs;
    await mkdirDurable(fs, dir, opts.fsync !== 'none');
    const marker = opts.startedMarker;
    const markerExists = marker !== undefined && (await fileExists(fs, marker));
    const rec = await recover(
      fs,
      dir,
      maxRecordBytes,
      opts.repair === true,
      opts.coveredIndex,
      markerExists ? marker : undefined,
      opts.onRecord,
    );
    const io: WalIo = { ...walIoOf(fs), ...opts.io };
    // A replaced writev (a test's injected fault) replaces the write on the calling thread too.
    if (opts.io?.writev && !opts.io.writeAllSync) delete io.writeAllSync;
    const wal = new Wal(
      {
        dir,
        fs,
        fsync: opts.fsync,
        segmentBytes,
        maxRecordBytes,
        ...(opts.onStall ? { onStall: opts.onStall } : {}),
        ...(opts.env ? { env: opts.env } : {}),
      },
      io,
      rec,
    );
    let markerKept = markerExists;
    if (markerExists && opts.repair && rec.count === 0 && (opts.coveredIndex ?? 0) === 0) {
      // Started empty on request: the log is a new one, which the marker would refuse until it holds a record.
      await fs.rm(marker!, 'wal.mark');
      if (opts.fsync !== 'none') await fs.fsyncDir(dirname(marker!), 'wal.mark');
      markerKept = false;
    }
    if (marker !== undefined && !markerKept) {
      // A log written before the marker existed gets it now; a new one when its first record is durable.
      if (rec.lastIndex > 0) await writeStartedMarker(fs, marker, opts.fsync !== 'none');
      else wal.markerPath = marker;
    }
    if (marker !== undefined && wal.markerPath === null) opts.onStarted?.();
    else wal.onStarted = opts.onStarted;
    const last = rec.segments[rec.segments.length - 1];
    if (rec.appendable && last) {
      try {
        wal.fd = await io.open(last.path, 'r+');
      } catch (err) {
        throw unreadable(last.path, err, 'open for writing the');
      }
    }
    return { wal, records: rec.records, report: rec.report };
  }

  /** Index of the last appended record (0 for an empty log). */
  get lastIndex(): number {
    return this.last;
  }

  /** Highest index known durable under the policy (for `'none'`: written to the OS). */
  get durableIndex(): number {
    return this.durable;
  }

  /** Index of the oldest record still stored (`lastIndex + 1` if none is). */
  get firstIndex(): number {
    const first = this.segments[0];
    return first ? Math.min(first.firstIndex, this.last + 1) : this.last + 1;
  }

  /** Number of segment files. */
  get segmentCount(): number {
    return this.segments.length;
  }

  /** The error that stopped the log, if it failed. */
  get failed(): SegmemError | null {
    return this.failure;
  }

  /** While writes fail and are being retried (a full disk): the error `append` throws. */
  get stalled(): SegmemError | null {
    return this.stall;
  }

  /**
   * Appends one record and returns its index (`lastIndex + 1`). Synchronous and cheap: the payload is
   * not copied (do not modify it until it is durable), only a 16-byte record header is allocated, and
   * no I/O happens in the call; a flush is started (on the microtask queue) if none is running, so all
   * records appended in one synchronous run share a flush.
   *
   * An array is one record made of the concatenation of its parts (written with a gather write).
   *
   * Throws `SegmemError('UNAVAILABLE')` once the log has failed, `'CLOSED'` once `close` was called,
   * and `'INVALID_ARGUMENT'` for a payload larger than `maxRecordBytes`.
   */
  append(payload: Uint8Array | readonly Uint8Array[]): number {
    if (this.failure) throw this.failure;
    if (this.closing) throw closedError();
    if (this.stall) throw this.stall;
    const parts = Array.isArray(payload) ? (payload as readonly Uint8Array[]) : null;
    let len: number;
    if (parts) {
      len = 0;
      for (let i = 0; i < parts.length; i++) len += parts[i]!.length;
    } else {
      len = (payload as Uint8Array).length;
    }
    if (len > this.maxRecordBytes) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `WAL record of ${len} bytes exceeds the maximum of ${this.maxRecordBytes}`,
      );
    }
    const index = this.last + 1;
    const h = Buffer.allocUnsafe(WAL_RECORD_HEADER_BYTES);
    putU32(h, 0, len);
    putU32(h, 8, index >>> 0);
    putU32(h, 12, Math.floor(index / TWO_32));
    let crc = 0;
    const iov = this.iov;
    const recordBytes = WAL_RECORD_HEADER_BYTES + len;
    if (this.vFirst === 0 || (this.vRecords > 0 && this.vBytes + recordBytes > this.segmentBytes)) {
      this.rolls.push(index);
      this.vFirst = index;
      this.vBytes = WAL_FILE_HEADER_BYTES;
      this.vRecords = 0;
    }
    iov.push(h);
    if (parts) {
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i]!;
        if (p.length === 0) continue;
        crc = crc32c(p, crc);
        iov.push(p);
      }
    } else if (len > 0) {
      crc = crc32c(payload as Uint8Array, crc);
      iov.push(payload as Uint8Array);
    }
    putU32(h, 4, crc);
    putU32(h, 16, crc32c(h, 0, 0, 16));
    this.recEnds.push(iov.length);
    this.vBytes += recordBytes;
    this.vRecords++;
    this.last = index;
    this.stats.appends++;
    if (this.flushPromise === null) this.flushPromise = Promise.resolve().then(this.runFlushesBound);
    return index;
  }

  /**
   * Resolves once `durableIndex >= index`. Rejects with the log's `SegmemError('UNAVAILABLE')` if it
   * failed before that, and with `SegmemError('CLOSED')` if it was closed without `index` being durable.
   */
  waitDurable(index: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (index <= this.durable) return Promise.resolve();
    if (this.closed || (this.closing && index > this.last)) return Promise.reject(closedError());
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { index, resolve, reject };
      const ws = this.waiters;
      let i = ws.length;
      while (i > 0 && ws[i - 1]!.index > index) i--;
      if (i === ws.length) ws.push(w);
      else ws.splice(i, 0, w);
      // Already written but not synced (a flush nobody waited for): sync it now.
      if (this.flushPromise === null && this.stall === null && index <= this.writtenIndex) {
        this.flushPromise = Promise.resolve().then(this.runFlushesBound);
      }
    });
  }

  /**
   * Calls `listener(durableIndex)` after each flush completes (after `durableIndex` advanced and the
   * matching `waitDurable` promises were resolved). Returns a function that removes the listener.
   * An exception thrown by a listener is rethrown asynchronously (an uncaught exception); it does not
   * affect the log.
   */
  onDurable(listener: (durableIndex: number) => void): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /**
   * Deletes the segment files all of whose records have indexes below `beforeIndex` (for use once a
   * snapshot covers them). The segment being written is never deleted. Resolves with the number of
   * files deleted.
   */
  truncatePrefix(beforeIndex: number): Promise<number> {
    const run = async (): Promise<number> => {
      let deleted = 0;
      // Segment i holds indexes [segments[i].firstIndex, segments[i + 1].firstIndex - 1].
      while (this.segments.length > 1 && this.segments[1]!.firstIndex <= beforeIndex) {
        const seg = this.segments[0]!;
        await this.fs.rm(seg.path, 'wal.unlink');
        this.segments.shift();
        deleted++;
        // Oldest first, each deletion durable before the next: a crash can only leave a shorter prefix
        // deleted, never a missing file in the middle (which recovery refuses).
        if (this.policy !== 'none') {
          await this.io.fsyncDir(this.dir);
          this.stats.dirSyncs++;
        }
      }
      return deleted;
    };
    const result = this.prefixChain.then(run, run);
    this.prefixChain = result.catch(() => {});
    return result;
  }

  /**
   * Flushes every queued record, makes it durable (unless the policy is `'none'`) and closes the files.
   * Idempotent. Rejects if the log failed with records not durable; any later `append` throws
   * `SegmemError('CLOSED')`.
   */
  close(): Promise<void> {
    if (!this.closePromise) {
      this.closing = true;
      this.closePromise = this.doClose();
    }
    return this.closePromise;
  }

  private async doClose(): Promise<void> {
    if (this.stallTimer) {
      this.env.clearTimeout(this.stallTimer);
      this.stallTimer = null;
      // One last try to write what is queued; if the disk is still full, the log fails.
      this.flushPromise ??= Promise.resolve().then(this.runFlushesBound);
    }
    while (this.flushPromise) await this.flushPromise;
    await this.prefixChain;
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      try {
        if (!this.failure && this.fdDirty && this.policy !== 'none') {
          await this.io.fdatasync(fd);
          this.stats.syncs++;
          this.fdDirty = false;
        }
      } catch (err) {
        this.fail(err);
      } finally {
        await this.io.close(fd).catch(() => {});
      }
    }
    this.closed = true;
    const err = this.failure ?? closedError();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(err);
    if (this.failure && this.durable < this.last) throw this.failure;
  }

  private async runFlushes(): Promise<void> {
    try {
      while (!this.failure) {
        if (this.recHead < this.recEnds.length) {
          const count = this.policy === 'always' ? 1 : this.recEnds.length - this.recHead;
          await this.flush(count);
        } else if (this.syncWanted(this.writtenIndex)) {
          await this.syncWritten();
        } else break;
      }
    } catch (err) {
      if (retryableWrites.has(err as object) && !this.closing) this.startStall(err);
      else this.fail(err);
    } finally {
      this.flushPromise = null;
    }
  }

  /**
   * Writes the next `count` queued records, syncs them (policy permitting) and reports them durable.
   * Progress is kept after each completed step (records written, segment created), so after a failed
   * write the same call can be made again and continues where it stopped, rewriting the same bytes at
   * the same offsets.
   */
  private async flush(count: number): Promise<void> {
    const lastIndex = this.writtenIndex + count;
    while (this.rolls.length > 0 && this.rolls[0]! <= lastIndex) {
      const roll = this.rolls[0]!;
      if (roll - 1 > this.writtenIndex) await this.writeQueued(roll - 1);
      await this.startSegment(roll);
      this.rolls.shift();
    }
    if (lastIndex > this.writtenIndex) await this.writeQueued(lastIndex);
    if (this.stall) this.endStall(); // writes get through again
    this.compactQueue();
    if (this.dirDirty && this.policy !== 'none') {
      await this.io.fsyncDir(this.dir);
      this.stats.dirSyncs++;
    }
    this.dirDirty = false;
    this.stats.flushes++;
    if (this.policy === 'none') {
      if (this.markerPath !== null) await this.markStarted();
      this.durable = lastIndex;
      this.notify();
    } else if (this.syncWanted(lastIndex)) {
      await this.syncWritten();
    }
    // else ('batch', nobody waits for these records yet): written to the OS, synced with the next flush
    // somebody waits for (or at a segment roll or close). Records that need no durability of their own,
    // such as lock grants, then cost no fdatasync.
  }

  /** Writes the queued records up to index `upTo` into the current segment and counts them written. */
  private async writeQueued(upTo: number): Promise<void> {
    const n = upTo - this.writtenIndex;
    const iovEnd = this.recEnds[this.recHead + n - 1]!;
    await this.write(this.iov.slice(this.iovHead, iovEnd));
    this.writtenIndex = upTo;
    this.iovHead = iovEnd;
    this.recHead += n;
  }

  /** Writes failed for a reason a later retry may not meet (a full disk): refuse appends, retry later. */
  private startStall(err: unknown): void {
    const code = errnoCode(err) ?? 'EIO';
    const first = this.stall === null;
    this.stall = new SegmemError(
      'UNAVAILABLE',
      `cannot write the write-ahead log in ${this.dir}: ${errorMessage(err)}; ` +
        'changes are refused until a retry succeeds (free space on that file system)',
      {
        reason: code === 'ENOSPC' || code === 'EDQUOT' ? 'NO_SPACE' : 'WAL_WRITE_FAILED',
        dir: this.dir,
        errno: code,
      },
      { cause: err },
    );
    if (first) this.onStall?.(this.stall);
    this.stallTimer = this.env.setTimeout(() => {
      this.stallTimer = null;
      if (this.flushPromise === null && !this.failure) {
        this.flushPromise = Promise.resolve().then(this.runFlushesBound);
      }
    }, this.stallRetryMs);
    this.stallRetryMs = Math.min(STALL_RETRY_MAX_MS, this.stallRetryMs * 2);
  }

  private endStall(): void {
    this.stall = null;
    this.stallRetryMs = STALL_RETRY_MIN_MS;
    this.onStall?.(null);
    this.wakeUnstallWaiters();
  }

  private unstallWaiters: (() => void)[] = [];

  /**
   * While appends are refused for a stall (see {@link stalled}): calls `retry` once they may be tried again
   * (the stall ended, or the log failed for good: the retry then meets that failure) and returns true.
   * Returns false, and never calls `retry`, when appends are not stalled.
   */
  onceWritable(retry: () => void): boolean {
    if (this.stall === null) return false;
    this.unstallWaiters.push(retry);
    return true;
  }

  private wakeUnstallWaiters(): void {
    for (const retry of this.unstallWaiters.splice(0)) retry();
  }

  /**
   * Whether a sync is due for records up to `upTo`: always under 'always'; under 'batch' when a caller
   * waits for one of them (waiters are sorted, so the first is the lowest) or the log is closing.
   */
  private syncWanted(upTo: number): boolean {
    if (this.policy === 'none' || this.durable >= upTo) return false;
    if (this.policy === 'always' || this.closing) return true;
    const first = this.waiters[0];
    return first !== undefined && first.index <= upTo;
  }

  /** fdatasync of everything written so far; then it counts as durable. */
  private async syncWritten(): Promise<void> {
    const upTo = this.writtenIndex;
    await this.io.fdatasync(this.fd!);
    this.stats.syncs++;
    this.fdDirty = false;
    if (this.markerPath !== null) await this.markStarted();
    this.durable = upTo;
    this.notify();
  }

  /** Creates the started marker (once, before the first record is reported durable). */
  private async markStarted(): Promise<void> {
    try {
      await writeStartedMarker(this.fs, this.markerPath!, this.policy !== 'none');
    } catch (err) {
      throw retryable(err);
    }
    this.markerPath = null;
    this.onStarted?.();
    this.onStarted = undefined;
  }

  private compactQueue(): void {
    if (this.recHead === this.recEnds.length) {
      this.iov.length = 0;
      this.recEnds.length = 0;
      this.iovHead = 0;
      this.recHead = 0;
      return;
    }
    if (this.recHead < 1024 || this.recHead * 2 < this.recEnds.length) return;
    const shift = this.iovHead;
    this.iov.splice(0, shift);
    this.recEnds.splice(0, this.recHead);
    for (let i = 0; i < this.recEnds.length; i++) this.recEnds[i]! -= shift;
    this.iovHead = 0;
    this.recHead = 0;
  }

  /** Writes `buffers` at the end of the current segment file, retrying short writes. */
  private async write(buffers: Uint8Array[]): Promise<void> {
    let total: number;
    try {
      let bytes = 0;
      for (let i = 0; i < buffers.length; i++) bytes += buffers[i]!.length;
      total =
        this.io.writeAllSync && bytes <= SYNC_WRITE_MAX_BYTES
          ? this.io.writeAllSync(this.fd!, buffers, this.fdPos)
          : await writeAll(this.io.writev, this.fd!, buffers, this.fdPos);
    } catch (err) {
      throw retryable(err);
    }
    if (total === 0) return;
    this.fdPos += total;
    this.fdDirty = true;
    this.stats.bytes += total;
  }

  /**
   * Closes the current segment (synced, policy permitting) and creates the one starting at `firstIndex`.
   * Called again after a failed creation or header write, it continues where it stopped.
   */
  private async startSegment(firstIndex: number): Promise<void> {
    const current = this.segments[this.segments.length - 1];
    if (this.fd === null || current?.firstIndex !== firstIndex) {
      if (this.fd !== null) {
        const fd = this.fd;
        if (this.fdDirty && this.policy !== 'none') {
          await this.io.fdatasync(fd);
          this.stats.syncs++;
        }
        this.fdDirty = false;
        this.fd = null;
        await this.io.close(fd);
      }
      const path = join(this.dir, segmentFileName(firstIndex));
      try {
        this.fd = await this.io.open(path, 'wx');
      } catch (err) {
        throw retryable(err);
      }
      this.fdPos = 0;
      this.segments.push({ firstIndex, path });
      this.dirDirty = true;
    }
    if (this.fdPos === 0) await this.write([fileHeader()]);
  }

  private notify(): void {
    const durable = this.durable;
    const ws = this.waiters;
    let n = 0;
    while (n < ws.length && ws[n]!.index <= durable) n++;
    if (n > 0) {
      const done = n === ws.length ? ws : ws.slice(0, n);
      this.waiters = n === ws.length ? [] : ws.slice(n);
      for (const w of done) w.resolve();
    }
    for (const listener of this.listeners) {
      try {
        listener(durable);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  private fail(err: unknown): void {
    if (this.failure) return;
    this.failure = walFailed(err);
    this.stall = null;
    this.env.clearTimeout(this.stallTimer);
    this.iov = [];
    this.recEnds = [];
    this.rolls = [];
    this.iovHead = 0;
    this.recHead = 0;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(this.failure);
    this.wakeUnstallWaiters();
  }
}
