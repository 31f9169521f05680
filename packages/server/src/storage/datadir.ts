/**
 * The server's data directory: identity (`meta.json`), an exclusive lock (`LOCK`) and the location of
 * the write-ahead log (`wal/`).
 *
 * @module
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import {
  errnoCode,
  errorMessage,
  fsyncDir,
  isAtomicTempName,
  mkdirDurable,
  writeFileAtomic,
} from './files.js';
import { PEERS_FILE } from './peer-addresses.js';
import { isSnapshotName, SNAPSHOT_DIR } from './snapshot-file.js';
import { VOTE_FILE } from './vote-file.js';
import { isSegmentFileName } from './wal.js';

/** The identity and geometry of a data directory, stored in `<dir>/meta.json`. */
export interface DataDirMeta {
  formatVersion: 1;
  clusterId: string;
  serverId: string;
  /** ISO 8601 time the directory was initialised. */
  createdAt: string;
  pageBytes: number;
  segmentBytes: number;
}

export interface DataDirOptions {
  dir: string;
  serverId: string;
  /** The cluster this server belongs to. A fresh directory gets a random UUID when omitted. */
  clusterId?: string;
  pageBytes: number;
  segmentBytes: number;
  /** Create and initialise the directory if it is missing or uninitialised (default true). */
  create?: boolean;
}

/** What a `LOCK` file says about its holder. */
export interface LockHolder {
  pid: number;
  hostname: string;
  createdAt?: string;
}

interface LockContent extends LockHolder {
  nonce: string;
}

export const META_FILE = 'meta.json';
export const LOCK_FILE = 'LOCK';
export const WAL_DIR = 'wal';

/** A LOCK file that cannot be parsed is taken to be mid-write by its creator for this long. */
const UNREADABLE_LOCK_GRACE_MS = 5000;

/** Directories locked by this process (resolved paths), so a second open in the same process fails. */
const heldLocks = new Map<string, string>();

function notWritable(dir: string, err: unknown): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `data directory ${dir} is not writable: ${errorMessage(err)}`, {
    dir,
    errno: errnoCode(err),
  });
}

function inUse(dir: string, holder: LockHolder): SegmemError {
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

/**
 * An open data directory. Holding one means holding the directory's exclusive lock until `close`.
 */
export class DataDir {
  /** Absolute path of the directory. */
  readonly dir: string;
  readonly meta: DataDirMeta;
  /** Where the write-ahead log lives (`<dir>/wal`). */
  readonly walDir: string;
  /** True if this open initialised the directory (wrote a fresh `meta.json`). */
  readonly created: boolean;
  /** Set if the lock was taken over from a process that had died without releasing it. */
  readonly staleLock: LockHolder | undefined;
  /**
   * What the open noticed and the server should report: temporary files of interrupted writes it deleted,
   * and files it does not know, which it leaves alone and ignores.
   */
  readonly warnings: string[] = [];

  private readonly nonce: string;
  private closed = false;

  private constructor(
    dir: string,
    meta: DataDirMeta,
    created: boolean,
    nonce: string,
    staleLock: LockHolder | undefined,
  ) {
    this.dir = dir;
    this.meta = meta;
    this.walDir = join(dir, WAL_DIR);
    this.created = created;
    this.nonce = nonce;
    this.staleLock = staleLock;
  }

  /**
   * Opens (by default creating and initialising) a data directory and takes its exclusive lock.
   *
   * Errors (all `SegmemError`):
   * - `INVALID_ARGUMENT`: the directory cannot be created or written; it belongs to another cluster or
   *   server or was created with different `pageBytes`/`segmentBytes`; `meta.json` is unreadable.
   * - `UNAVAILABLE`: another live process (or this one) holds the lock; `details.pid` names it.
   * - `NOT_FOUND`: `create: false` and the directory is missing or uninitialised.
   */
  static async open(opts: DataDirOptions): Promise<DataDir> {
    if (typeof opts.dir !== 'string' || opts.dir === '') {
      throw new SegmemError('INVALID_ARGUMENT', 'data directory path must be a non-empty string');
    }
    if (typeof opts.serverId !== 'string' || opts.serverId === '') {
      throw new SegmemError('INVALID_ARGUMENT', 'serverId must be a non-empty string');
    }
    if (opts.clusterId !== undefined && (typeof opts.clusterId !== 'string' || opts.clusterId === '')) {
      throw new SegmemError('INVALID_ARGUMENT', 'clusterId must be a non-empty string');
    }
    for (const key of ['pageBytes', 'segmentBytes'] as const) {
      if (!Number.isSafeInteger(opts[key]) || opts[key] <= 0) {
        throw new SegmemError('INVALID_ARGUMENT', `${key} must be a positive integer`);
      }
    }
    const dir = resolve(opts.dir);
    const create = opts.create !== false;

    if (create) {
      try {
        await mkdirDurable(dir);
      } catch (err) {
        if (errnoCode(err) === 'EEXIST') {
          throw new SegmemError('INVALID_ARGUMENT', `data directory ${dir} is not a directory`, { dir });
        }
        throw notWritable(dir, err);
      }
    }
    let st: import('node:fs').Stats;
    try {
      st = await fsp.stat(dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT')
        throw new SegmemError('NOT_FOUND', `data directory ${dir} does not exist`, { dir });
      throw notWritable(dir, err);
    }
    if (!st.isDirectory())
      throw new SegmemError('INVALID_ARGUMENT', `data directory ${dir} is not a directory`, { dir });
    await checkWritable(dir);

    const key = await fsp.realpath(dir);
    // Reserve the directory within this process first (synchronously), so that concurrent opens in
    // one process cannot both get past this point.
    if (heldLocks.has(key)) throw inUse(dir, { pid: process.pid, hostname: hostname() });
    heldLocks.set(key, '');
    let nonce: string;
    let stale: LockHolder | undefined;
    try {
      ({ nonce, stale } = await acquireLock(dir));
    } catch (err) {
      heldLocks.delete(key);
      throw err;
    }
    heldLocks.set(key, nonce);
    try {
      const { meta, created } = await loadOrCreateMeta(dir, opts, create);
      await mkdirDurable(join(dir, WAL_DIR));
      const dataDir = new DataDir(dir, meta, created, nonce, stale);
      dataDir.warnings.push(...(await tidy(dir)));
      return dataDir;
    } catch (err) {
      await releaseLock(dir, key, nonce).catch(() => {});
      throw err;
    }
  }

  /** Releases the lock. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const key = await fsp.realpath(this.dir).catch(() => this.dir);
    await releaseLock(this.dir, key, this.nonce);
  }
}

/** Which names each part of a data directory expects; anything else is reported and ignored. */
const EXPECTED: { sub: string; expected: (name: string) => boolean }[] = [
  {
    sub: '',
    expected: (n) =>
      n === META_FILE ||
      n === LOCK_FILE ||
      n === WAL_DIR ||
      n === SNAPSHOT_DIR ||
      n === PEERS_FILE ||
      n === VOTE_FILE,
  },
  { sub: WAL_DIR, expected: isSegmentFileName },
  { sub: SNAPSHOT_DIR, expected: isSnapshotName },
];

/**
 * Deletes the temporary files a crash left behind (an interrupted `meta.json` or snapshot write, a write
 * probe) and lists files the server does not know: they are ignored, not deleted, since they may be the
 * operator's. Resolves with one line for each.
 */
async function tidy(dir: string): Promise<string[]> {
  const lines: string[] = [];
  for (const { sub, expected } of EXPECTED) {
    const where = join(dir, sub);
    const names = await fsp.readdir(where).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (expected(name)) continue;
      const path = join(where, name);
      if (isAtomicTempName(name) || name.startsWith('.write-test-')) {
        await fsp.rm(path, { force: true });
        lines.push(`data directory: removed ${path}, left by a write that a crash interrupted`);
      } else {
        lines.push(`data directory: ignoring unexpected file ${path}`);
      }
    }
  }
  return lines;
}

async function checkWritable(dir: string): Promise<void> {
  const probe = join(dir, `.write-test-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const handle = await fsp.open(probe, 'wx', 0o600);
    try {
      await handle.writeFile('segmem');
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (err) {
    await fsp.rm(probe, { force: true }).catch(() => {});
    throw notWritable(dir, err);
  }
  await fsp.rm(probe, { force: true });
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
    const text = await readText(lockPath);
    if (text === undefined) continue; // released meanwhile
    const holder = parseLock(text);
    if (holder) {
      if (holder.hostname !== host) throw inUse(dir, holder); // cannot check a process on another host
      // A LOCK naming our own pid is not held by this process (we reserved the directory, and every open
      // in this process does that first), so it is a leftover of a dead predecessor that had the same pid,
      // as happens with pid 1 in containers.
      if (holder.pid !== process.pid && isAlive(holder.pid)) throw inUse(dir, holder);
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

function invalidMeta(path: string, problem: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `${path} is not a valid segmem meta file: ${problem}`, {
    file: path,
  });
}

function validateMeta(path: string, v: unknown): DataDirMeta {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw invalidMeta(path, 'not a JSON object');
  const m = v as Record<string, unknown>;
  if (m.formatVersion !== 1) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `${path} has unsupported format version ${JSON.stringify(m.formatVersion)} (this server reads version 1)`,
      { file: path },
    );
  }
  for (const k of ['clusterId', 'serverId', 'createdAt'] as const) {
    if (typeof m[k] !== 'string' || m[k] === '') throw invalidMeta(path, `${k} must be a non-empty string`);
  }
  for (const k of ['pageBytes', 'segmentBytes'] as const) {
    if (!Number.isSafeInteger(m[k]) || (m[k] as number) <= 0)
      throw invalidMeta(path, `${k} must be a positive integer`);
  }
  return {
    formatVersion: 1,
    clusterId: m.clusterId as string,
    serverId: m.serverId as string,
    createdAt: m.createdAt as string,
    pageBytes: m.pageBytes as number,
    segmentBytes: m.segmentBytes as number,
  };
}

async function loadOrCreateMeta(
  dir: string,
  opts: DataDirOptions,
  create: boolean,
): Promise<{ meta: DataDirMeta; created: boolean }> {
  const path = join(dir, META_FILE);
  let text: string | undefined;
  try {
    const st = await fsp.stat(path);
    if (!st.isFile())
      throw new SegmemError('INVALID_ARGUMENT', `${path} is not a regular file`, { file: path });
    text = await fsp.readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') {
      if (SegmemError.is(err)) throw err;
      throw new SegmemError('INVALID_ARGUMENT', `cannot read ${path}: ${errorMessage(err)}`, { file: path });
    }
  }

  if (text === undefined) {
    if (!create) {
      throw new SegmemError('NOT_FOUND', `data directory ${dir} is not initialised (no ${META_FILE})`, {
        dir,
      });
    }
    // Refuse to adopt a log of unknown origin.
    const walFiles = await fsp.readdir(join(dir, WAL_DIR)).catch(() => [] as string[]);
    if (walFiles.some((n) => n.endsWith('.wal'))) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `data directory ${dir} holds write-ahead log files but no ${META_FILE}; refusing to guess which cluster they belong to`,
        { dir },
      );
    }
    const meta: DataDirMeta = {
      formatVersion: 1,
      clusterId: opts.clusterId ?? randomUUID(),
      serverId: opts.serverId,
      createdAt: new Date().toISOString(),
      pageBytes: opts.pageBytes,
      segmentBytes: opts.segmentBytes,
    };
    await writeFileAtomic(path, `${JSON.stringify(meta, null, 2)}\n`, 'meta');
    return { meta, created: true };
  }

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SegmemError('INVALID_ARGUMENT', `cannot parse ${path}: ${errorMessage(err)}`, { file: path });
  }
  const meta = validateMeta(path, parsed);
  if (opts.clusterId !== undefined && meta.clusterId !== opts.clusterId) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `data directory ${dir} belongs to cluster ${meta.clusterId}, not ${opts.clusterId}`,
      { dir, clusterId: meta.clusterId },
    );
  }
  if (meta.serverId !== opts.serverId) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `data directory ${dir} belongs to server ${meta.serverId}, not ${opts.serverId}`,
      {
        dir,
        serverId: meta.serverId,
      },
    );
  }
  for (const k of ['pageBytes', 'segmentBytes'] as const) {
    if (meta[k] !== opts[k]) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `data directory ${dir} was created with ${k} ${meta[k]}, not ${opts[k]}`,
        {
          dir,
          [k]: meta[k],
        },
      );
    }
  }
  return { meta, created: false };
}
