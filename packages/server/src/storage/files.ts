/**
 * The real file system's primitives under the storage layer's seam (`fs.ts`, `nodeFs`): open, write, sync,
 * rename, unlink and truncate, each naming its {@link FaultStep} when given one, so crash and I/O-error
 * tests can stop or fail any one of them (see `faults.ts`).
 *
 * @module
 */
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { SegmemError } from '@segmem/protocol';
import { type FaultStep, faultDone, faultPoint } from './faults.js';

/** A Node.js callback that settles a promise, marking the end of `step` on success. */
function settle<T>(
  step: FaultStep | undefined,
  res: (value: T) => void,
  rej: (err: Error) => void,
): (err: NodeJS.ErrnoException | null, value?: T) => void {
  return (err, value) => {
    if (err) return rej(err);
    if (step) faultDone(step);
    res(value as T);
  };
}

/** Opens a file and resolves with its descriptor. */
export function openFd(path: string, flags: string, step?: FaultStep): Promise<number> {
  return new Promise((res, rej) => {
    if (step) faultPoint(step);
    fs.open(path, flags, 0o644, settle(step, res, rej));
  });
}

/** One positional gather write; resolves with the number of bytes written (possibly fewer than given). */
export function writevFd(
  fd: number,
  buffers: Uint8Array[],
  position: number,
  step?: FaultStep,
): Promise<number> {
  return new Promise((res, rej) => {
    if (step) faultPoint(step, { fd, buffers, position });
    fs.writev(fd, buffers, position, settle(step, res, rej));
  });
}

/**
 * The same write on the calling thread, all of `buffers` (retrying short writes): for a small write to the
 * page cache this is cheaper than a round trip through the thread pool, whose wake-ups cost most on a busy
 * machine. Returns the bytes written.
 */
export function writeAllSync(
  fd: number,
  buffers: readonly Uint8Array[],
  position: number,
  step?: FaultStep,
): number {
  if (step) faultPoint(step, { fd, buffers: [...buffers], position });
  let total = 0;
  for (const b of buffers) total += b.length;
  let done = 0;
  let bufs = buffers.filter((b) => b.length > 0);
  while (done < total) {
    const n = fs.writevSync(fd, bufs, position + done);
    if (n <= 0)
      throw Object.assign(new Error('short write: the file accepted no more bytes'), { code: 'EIO' });
    done += n;
    let skip = n;
    let i = 0;
    while (i < bufs.length && skip >= bufs[i]!.length) skip -= bufs[i++]!.length;
    bufs = bufs.slice(i);
    if (skip > 0) bufs[0] = bufs[0]!.subarray(skip);
  }
  if (step) faultDone(step);
  return total;
}

export function fdatasyncFd(fd: number, step?: FaultStep): Promise<void> {
  return new Promise((res, rej) => {
    if (step) faultPoint(step);
    fs.fdatasync(fd, settle(step, res, rej));
  });
}

/** fsync: the file's data and all its metadata (a clone's shared extents included). */
export function fsyncFd(fd: number, step?: FaultStep): Promise<void> {
  return new Promise((res, rej) => {
    if (step) faultPoint(step);
    fs.fsync(fd, settle(step, res, rej));
  });
}

/** Sets a file's length: a longer file reads zeros past the old end without any block written (a hole). */
export function ftruncateFd(fd: number, length: number, step?: FaultStep): Promise<void> {
  return new Promise((res, rej) => {
    if (step) faultPoint(step);
    fs.ftruncate(fd, length, settle(step, res, rej));
  });
}

/**
 * Makes `to` (which must not exist) a reflink clone of `from`: libuv does this with the FICLONE ioctl,
 * in O(1), sharing every block until one of the two files is written. Fails where the file system cannot
 * (`ENOTSUP` on ext4 or tmpfs, `EXDEV` across file systems), leaving no `to` behind.
 */
export async function cloneFile(from: string, to: string, step?: FaultStep): Promise<void> {
  if (step) faultPoint(step);
  await fsp.copyFile(from, to, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE_FORCE);
  if (step) faultDone(step);
}

export function closeFd(fd: number, step?: FaultStep): Promise<void> {
  return new Promise((res, rej) => {
    if (step) faultPoint(step);
    fs.close(fd, settle(step, res, rej));
  });
}

/**
 * Writes all of `buffers` at `position` with `writev`, continuing after short writes. Resolves with the
 * number of bytes written.
 */
export async function writeAll(
  writev: (fd: number, buffers: Uint8Array[], position: number) => Promise<number>,
  fd: number,
  buffers: readonly Uint8Array[],
  position: number,
): Promise<number> {
  let total = 0;
  for (const b of buffers) total += b.length;
  let done = 0;
  let bufs = buffers.filter((b) => b.length > 0);
  while (done < total) {
    const n = await writev(fd, bufs, position + done);
    if (n <= 0)
      throw Object.assign(new Error('short write: the file accepted no more bytes'), { code: 'EIO' });
    done += n;
    // Drop what was written and continue with the rest.
    let skip = n;
    let i = 0;
    while (i < bufs.length && skip >= bufs[i]!.length) skip -= bufs[i++]!.length;
    bufs = bufs.slice(i);
    if (skip > 0) bufs[0] = bufs[0]!.subarray(skip);
  }
  return total;
}

/** fsyncs a directory, making the creation, removal or renaming of its entries durable. */
export async function fsyncDir(dir: string, step?: FaultStep): Promise<void> {
  if (step) faultPoint(step);
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  if (step) faultDone(step);
}

/** Renames `from` to `to` (replacing `to`). */
export async function renameFile(from: string, to: string, step?: FaultStep): Promise<void> {
  if (step) faultPoint(step);
  await fsp.rename(from, to);
  if (step) faultDone(step);
}

/** Removes a file; a file already gone is not an error. */
export async function unlinkFile(path: string, step?: FaultStep): Promise<void> {
  if (step) faultPoint(step);
  await fsp.rm(path, { force: true });
  if (step) faultDone(step);
}

/** Whether `name` is a temporary file `writeFileAtomic` (fs.ts) left behind (a crash before its rename). */
export function isAtomicTempName(name: string): boolean {
  return /^\..+\.tmp-\d+-[0-9a-f]{8}$/.test(name);
}

/**
 * The errno of a failed system call (`'ENOENT'`, ...), or undefined: a Node.js system error's `code`, or
 * the `details.errno` of a SegmemError made from one (its own `code` is segmem's, never an errno).
 */
export function errnoCode(err: unknown): string | undefined {
  const code = SegmemError.is(err) ? err.details?.errno : (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** A short human-readable reason for an error, for messages. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
