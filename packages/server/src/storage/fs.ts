/**
 * The file system a server's storage runs on, as one seam: every file operation of a data directory (the
 * WAL's writes and its recovery, snapshots, the vote file, `peers.json`, `meta.json`) and the directory's
 * exclusive lock go through a {@link StorageFs}. {@link nodeFs} is the real one, built on `files.ts`, so
 * every {@link FaultStep} named here keeps stopping or failing the step it names; the simulator passes an
 * in-memory disk that can crash (`sim/fs.ts`).
 *
 * The composed operations (durable mkdir, atomic file replacement, truncation) are written once here, over
 * the seam.
 *
 * @module
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fsp, read as readFd, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import { type AtomicFileKind, type FaultStep, faultDone, faultPoint } from './faults.js';
import {
  cloneFile,
  closeFd,
  errnoCode,
  errorMessage,
  fdatasyncFd,
  fsyncDir,
  fsyncFd,
  ftruncateFd,
  openFd,
  renameFile,
  unlinkFile,
  writeAll,
  writeAllSync,
  writevFd,
} from './files.js';

/** How a file is opened: read only, read-write (it must exist), or created (it must not exist). */
export type OpenFlags = 'r' | 'r+' | 'wx';

export interface FileStat {
  size: number;
  isDirectory: boolean;
  isFile: boolean;
  /** Bytes the file takes on the medium (holes excluded). */
  allocatedBytes: number;
}

/** What a `LOCK` file says about its holder. */
export interface LockHolder {
  pid: number;
  hostname: string;
  createdAt?: string;
}

/** A data directory's exclusive lock, held until `release`. */
export interface DirLock {
  /** Set if the lock was taken over from a process that had died without releasing it. */
  readonly stale: LockHolder | undefined;
  /** Releases the lock. */
  release(): Promise<void>;
}

/**
 * The file operations a server's storage uses. Errors carry Node's `code` (`'ENOENT'`, `'EEXIST'`,
 * `'EBADF'`, `'EIO'`, `'ENOSPC'`, ...). `step` names the operation for fault injection (`faults.ts`).
 * @internal
 */
export interface StorageFs {
  /** Resolves with a descriptor. */
  open(path: string, flags: OpenFlags, step?: FaultStep): Promise<number>;
  /** One positional gather write; resolves with the number of bytes written (possibly fewer). */
  writev(fd: number, buffers: Uint8Array[], position: number, step?: FaultStep): Promise<number>;
  /** All of `buffers` at `position`, on the calling thread (optional: small writes use it when present). */
  writeAllSync?(fd: number, buffers: readonly Uint8Array[], position: number, step?: FaultStep): number;
  /** Reads up to `length` bytes at `position` into `into` at `offset`; resolves with the bytes read. */
  read(fd: number, into: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  fdatasync(fd: number, step?: FaultStep): Promise<void>;
  /** The file's data and all its metadata (a clone's shared extents included). */
  fsync(fd: number, step?: FaultStep): Promise<void>;
  /** Sets the file's length (a longer file reads zeros past the old end). */
  ftruncate(fd: number, length: number, step?: FaultStep): Promise<void>;
  close(fd: number, step?: FaultStep): Promise<void>;
  readFile(path: string, step?: FaultStep): Promise<Buffer>;
  /** Names in `dir`, in no particular order. */
  readdir(dir: string): Promise<string[]>;
  stat(path: string): Promise<FileStat>;
  /** Creates `dir` and missing parents; resolves with the first directory created (undefined: none). */
  mkdir(dir: string): Promise<string | undefined>;
  /** Renames `from` to `to`, replacing `to`. */
  rename(from: string, to: string, step?: FaultStep): Promise<void>;
  /** Removes a file; a file already gone is not an error. */
  rm(path: string, step?: FaultStep): Promise<void>;
  /** Makes the creation, removal and renaming of `dir`'s entries durable. */
  fsyncDir(dir: string, step?: FaultStep): Promise<void>;
  /** Makes `to` (which must not exist) a reflink clone of `from`; fails `ENOTSUP` where it cannot. */
  cloneFile(from: string, to: string, step?: FaultStep): Promise<void>;
  /** The canonical path of an existing file or directory. */
  realpath(path: string): Promise<string>;
  /**
   * Takes `dir`'s exclusive lock; throws `SegmemError('UNAVAILABLE')` naming the holder while another
   * live process (or this one) holds it.
   */
  lock(dir: string): Promise<DirLock>;
  /** A unique suffix for a temporary file's name: `<digits>-<8 hex digits>` (see `isAtomicTempName`). */
  tempSuffix(): string;
}

// --- the real file system ---

export const LOCK_FILE = 'LOCK';

/** A LOCK file that cannot be parsed is taken to be mid-write by its creator for this long. */
const UNREADABLE_LOCK_GRACE_MS = 5000;

interface LockContent extends LockHolder {
  nonce: string;
}

/** Directories locked by this process (resolved paths), so a second open in the same process fails. */
const heldLocks = new Map<string, string>();

export function notWritable(dir: string, err: unknown): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `data directory ${dir} is not writable: ${errorMessage(err)}`, {
    dir,
    errno: errnoCode(err),
  });
}

/**
 * A failed write of one of the data directory's files (meta.json, the vote file) as one typed line naming
 * the file and the errno, the error kept as the cause (a retry on ENOSPC still sees it).
 */
export function cannotWrite(file: string, err: unknown): SegmemError {
  if (SegmemError.is(err)) return err;
  const errno = errnoCode(err) ?? 'EIO';
  return new SegmemError('UNAVAILABLE', `cannot write ${file}: ${errno}`, { file, errno }, { cause: err });
}

export function dirInUse(dir: string, holder: LockHolder): SegmemError {
  return new SegmemError(
    'UNAVAILABLE',
    `data directory ${dir} is in use by process ${holder.pid} (${holder.hostname})`,
    { dir, pid: holder.pid, hostname: holder.hostname },
  );
}

function parseLock(text: string): LockContent | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockContent> | null;
    if (
      v &&
      typeof v === 'object' &&
      Number.isSafeInteger(v.pid) &&
      (v.pid as number) > 0 &&
      typeof v.hostname === 'string' &&
      typeof v.nonce === 'string'
    ) {
      return v as LockContent;
    }
  } catch {
    // fall through
  }
  return undefined;
}

/** Whether `pid` names a live (non-zombie) process on this host. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if (errnoCode(err) !== 'EPERM') return false;
  }
  // A killed child that has not been reaped yet still answers signal 0; it holds nothing.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
  } catch {
    // no procfs: trust kill()
  }
  return true;
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/** Takes `<dir>/LOCK`: a file naming this process, checked for liveness by whoever finds it. */
async function lockDir(dir: string): Promise<DirLock> {
  const key = await fsp.realpath(dir);
  // Reserve the directory within this process first (synchronously), so that concurrent opens in
  // one process cannot both get past this point.
  if (heldLocks.has(key)) throw dirInUse(dir, { pid: process.pid, hostname: hostname() });
  heldLocks.set(key, '');
  let taken: { nonce: string; stale: LockHolder | undefined };
  try {
    taken = await acquireLock(dir);
  } catch (err) {
    heldLocks.delete(key);
    throw err;
  }
  heldLocks.set(key, taken.nonce);
  let released = false;
  return {
    stale: taken.stale,
    release: async () => {
      if (released) return;
      released = true;
      await releaseLock(dir, key, taken.nonce);
    },
  };
}

/** Takes `<dir>/LOCK`; the caller has reserved `dir` in `heldLocks`, so no other open in this process races. */
async function acquireLock(dir: string): Promise<{ nonce: string; stale: LockHolder | undefined }> {
  const lockPath = join(dir, LOCK_FILE);
  const host = hostname();
  const mine: LockContent = {
    pid: process.pid,
    hostname: host,
    nonce: randomUUID(),
    createdAt: new Date().toISOString(),
  };
  let stale: LockHolder | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const handle = await fsp.open(lockPath, 'wx', 0o644);
      try {
        await handle.writeFile(`${JSON.stringify(mine)}\n`);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fsyncDir(dir);
      return { nonce: mine.nonce, stale };
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw notWritable(dir, err);
    }
    // Someone holds (or held) the lock.
    let text: string | undefined;
    try {
      text = await readText(lockPath);
    } catch (err) {
      const errno = errnoCode(err) ?? 'EIO';
      throw new SegmemError('UNAVAILABLE', `cannot read the lock file ${lockPath}: ${errno}`, {
        file: lockPath,
        errno,
      });
    }
    if (text === undefined) continue; // released meanwhile
    const holder = parseLock(text);
    if (holder) {
      if (holder.hostname !== host) throw dirInUse(dir, holder); // cannot check a process on another host
      // A LOCK naming our own pid is not held by this process (we reserved the directory, and every open
      // in this process does that first), so it is a leftover of a dead predecessor that had the same pid,
      // as happens with pid 1 in containers.
      if (holder.pid !== process.pid && isAlive(holder.pid)) throw dirInUse(dir, holder);
    } else {
      const age = await fsp
        .stat(lockPath)
        .then((s) => Date.now() - s.mtimeMs)
        .catch(() => Number.POSITIVE_INFINITY);
      if (age < UNREADABLE_LOCK_GRACE_MS) {
        throw new SegmemError(
          'UNAVAILABLE',
          `data directory ${dir} is in use (its ${LOCK_FILE} file is being written by another process)`,
          { dir },
        );
      }
    }
    // Stale: the holder is gone. Remove the file only if it is still the one we examined.
    if ((await readText(lockPath)) === text) {
      await fsp.rm(lockPath, { force: true });
      stale = holder
        ? { pid: holder.pid, hostname: holder.hostname, createdAt: holder.createdAt }
        : { pid: 0, hostname: '' };
    }
  }
  throw new SegmemError(
    'UNAVAILABLE',
    `data directory ${dir} is in use: could not take its ${LOCK_FILE} file`,
    { dir },
  );
}

async function releaseLock(dir: string, key: string, nonce: string): Promise<void> {
  if (heldLocks.get(key) === nonce) heldLocks.delete(key);
  const lockPath = join(dir, LOCK_FILE);
  const text = await readText(lockPath);
  if (text !== undefined && parseLock(text)?.nonce === nonce) {
    await fsp.rm(lockPath, { force: true });
    await fsyncDir(dir).catch(() => {});
  }
}

/** The real file system (libuv's thread pool), with the fault points of `files.ts`. */
export const nodeFs: StorageFs = {
  open: (path, flags, step) => openFd(path, flags, step),
  writev: (fd, buffers, position, step) => writevFd(fd, buffers, position, step),
  writeAllSync: (fd, buffers, position, step) => writeAllSync(fd, buffers, position, step),
  read: (fd, into, offset, length, position) =>
    new Promise((res, rej) =>
      readFd(fd, into, offset, length, position, (err, n) => (err ? rej(err) : res(n))),
    ),
  fdatasync: (fd, step) => fdatasyncFd(fd, step),
  fsync: (fd, step) => fsyncFd(fd, step),
  ftruncate: (fd, length, step) => ftruncateFd(fd, length, step),
  close: (fd, step) => closeFd(fd, step),
  readFile: async (path, step) => {
    if (step) faultPoint(step);
    return fsp.readFile(path);
  },
  readdir: (dir) => fsp.readdir(dir),
  stat: async (path) => {
    const st = await fsp.stat(path);
    return {
      size: st.size,
      isDirectory: st.isDirectory(),
      isFile: st.isFile(),
      allocatedBytes: st.blocks * 512,
    };
  },
  mkdir: (dir) => fsp.mkdir(dir, { recursive: true }),
  rename: (from, to, step) => renameFile(from, to, step),
  rm: (path, step) => unlinkFile(path, step),
  fsyncDir: (dir, step) => fsyncDir(dir, step),
  cloneFile: (from, to, step) => cloneFile(from, to, step),
  realpath: (path) => fsp.realpath(path),
  lock: lockDir,
  tempSuffix: () => `${process.pid}-${randomBytes(4).toString('hex')}`,
};

// --- operations composed over the seam ---

/** Cuts a file to `length` bytes and fsyncs it. */
export async function truncateFile(
  fs: StorageFs,
  path: string,
  length: number,
  step: FaultStep,
): Promise<void> {
  faultPoint(step);
  const fd = await fs.open(path, 'r+');
  try {
    await fs.ftruncate(fd, length);
    await fs.fsync(fd);
  } finally {
    await fs.close(fd);
  }
  faultDone(step);
}

/**
 * Creates `dir` and any missing parents. With `sync`, each new directory's entry is made durable by
 * fsyncing its parent. Resolves with whether anything was created.
 */
export async function mkdirDurable(fs: StorageFs, dir: string, sync = true): Promise<boolean> {
  const target = resolve(dir);
  let first: string | undefined;
  try {
    first = await fs.mkdir(target);
  } catch (err) {
    // A file where the directory belongs: say which, in one line, instead of mkdir's EEXIST.
    if (errnoCode(err) !== 'EEXIST') throw err;
    throw new SegmemError('UNAVAILABLE', `${target} is not a directory (EEXIST): a file is in its place`, {
      file: target,
      errno: 'EEXIST',
    });
  }
  if (first === undefined) return false;
  if (sync) {
    for (let d = target; ; d = dirname(d)) {
      await fs.fsyncDir(dirname(d));
      if (d === resolve(first) || dirname(d) === d) break;
    }
  }
  return true;
}

/**
 * Replaces `file` atomically: `create` makes a temporary file in the same directory and opens it
 * (resolving with its descriptor), `fill` writes it, then it is synced (`sync`), renamed over `file`, and
 * the directory is fsynced. A crash leaves either the old or the new content (and possibly a stray
 * `.<name>.tmp-<pid>-<hex>` file: see `isAtomicTempName`); a failure removes the temporary file.
 * `kind` names the fault steps of the sync, rename and directory sync (`<kind>.sync`, ...).
 */
export async function replaceFileAtomic(
  fs: StorageFs,
  file: string,
  kind: AtomicFileKind,
  create: (tmp: string) => Promise<number>,
  fill: (fd: number) => Promise<void>,
  sync: 'fdatasync' | 'fsync' = 'fdatasync',
): Promise<void> {
  const tmp = join(dirname(file), `.${basename(file)}.tmp-${fs.tempSuffix()}`);
  let fd: number;
  try {
    fd = await create(tmp);
  } catch (err) {
    await fs.rm(tmp).catch(() => {});
    throw err;
  }
  try {
    await fill(fd);
    await (sync === 'fsync' ? fs.fsync(fd, `${kind}.sync`) : fs.fdatasync(fd, `${kind}.sync`));
  } catch (err) {
    await fs.close(fd).catch(() => {});
    await fs.rm(tmp).catch(() => {});
    throw err;
  }
  await fs.close(fd);
  try {
    await fs.rename(tmp, file, `${kind}.rename`);
  } catch (err) {
    await fs.rm(tmp).catch(() => {});
    throw err;
  }
  await fs.fsyncDir(dirname(file), `${kind}.dirsync`);
}

/**
 * Replaces `file` with `data` atomically (see {@link replaceFileAtomic}). Fault steps `<kind>.create`,
 * `.write`, `.sync`, `.rename`, `.dirsync`.
 */
export async function writeFileAtomic(
  fs: StorageFs,
  file: string,
  data: string | Uint8Array | readonly Uint8Array[],
  kind: AtomicFileKind,
): Promise<void> {
  const parts = typeof data === 'string' ? [Buffer.from(data)] : data instanceof Uint8Array ? [data] : data;
  await replaceFileAtomic(
    fs,
    file,
    kind,
    (tmp) => fs.open(tmp, 'wx', `${kind}.create`),
    async (fd) => {
      await writeAll((f, b, p) => fs.writev(f, b, p, `${kind}.write`), fd, parts, 0);
    },
  );
}
