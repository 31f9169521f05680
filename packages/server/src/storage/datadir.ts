/**
 * The server's data directory: identity (`meta.json`), an exclusive lock (`LOCK`) and the location of
 * the write-ahead log (`wal/`).
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { join, resolve } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import {
  describeGroupRange,
  type GroupRange,
  groupRangeProblem,
  sameGroupRange,
  wholeSegment,
} from '../core/group-range.js';
import { errnoCode, errorMessage, isAtomicTempName, writeAll } from './files.js';
import {
  cannotWrite,
  type DirLock,
  type FileStat,
  LOCK_FILE,
  type LockHolder,
  mkdirDurable,
  nodeFs,
  notWritable,
  type StorageFs,
  writeFileAtomic,
} from './fs.js';
import { PEERS_FILE } from './peer-addresses.js';
import { isSnapshotName, SNAPSHOT_DIR } from './snapshot-file.js';
import { VOTE_FILE } from './vote-file.js';
import { isSegmentFileName, WAL_STARTED_FILE } from './wal.js';

/** The identity and geometry of a data directory, stored in `<dir>/meta.json`. */
export interface DataDirMeta {
  formatVersion: 1;
  clusterId: string;
  serverId: string;
  /** ISO 8601 time the directory was initialised. */
  createdAt: string;
  pageBytes: number;
  segmentBytes: number;
  /** The shard group this server is a member of and its range; absent: group 0, the whole segment. */
  group?: GroupRange;
  /** HMAC of the cluster secret (shell/peer-auth.ts), recorded at the first start with one. */
  secretFingerprint?: string;
  /**
   * When the WAL-started marker (`wal-started`) was first known to exist (recorded as soon as the WAL's
   * first record is durable): from then on this directory is known to have held acknowledged records, even
   * if `wal/` and the marker are both lost.
   */
  walStartedAt?: string;
}

export interface DataDirOptions {
  dir: string;
  serverId: string;
  /** The cluster this server belongs to. A fresh directory gets a random UUID when omitted. */
  clusterId?: string;
  /**
   * Without `clusterId`: the id a fresh directory gets (instead of a random one); an existing directory
   * keeps the one its meta records.
   */
  newClusterId?: string;
  /**
   * The cluster secret's fingerprint: recorded in the meta if it has none yet, else it must match (a
   * member started with another secret is refused).
   */
  secretFingerprint?: string;
  /** Record `secretFingerprint` in place of another one the meta holds (the secret was rotated). */
  replaceSecretFingerprint?: boolean;
  pageBytes: number;
  segmentBytes: number;
  /** The server's group and range (default: group 0, the whole segment); an existing directory must match. */
  group?: GroupRange;
  /** Create and initialise the directory if it is missing or uninitialised (default true). */
  create?: boolean;
  /** @internal The file system it lives on (default: the real one). */
  fs?: StorageFs;
}

export { LOCK_FILE, type LockHolder };

export const META_FILE = 'meta.json';
export const WAL_DIR = 'wal';

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

  /** @internal The file system the directory lives on. */
  readonly fs: StorageFs;
  private readonly lock: DirLock;
  private closed = false;
  /** The meta.json rewrite that records `walStartedAt`, while one runs. */
  private recording: Promise<void> | null = null;

  private constructor(dir: string, meta: DataDirMeta, created: boolean, lock: DirLock, fs: StorageFs) {
    this.dir = dir;
    this.meta = meta;
    this.walDir = join(dir, WAL_DIR);
    this.created = created;
    this.lock = lock;
    this.staleLock = lock.stale;
    this.fs = fs;
  }

  /**
   * Opens (by default creating and initialising) a data directory and takes its exclusive lock.
   *
   * Errors (all `SegmemError`):
   * - `INVALID_ARGUMENT`: the directory cannot be created or written; it belongs to another cluster or
   *   server or was created with different `pageBytes`/`segmentBytes`; `meta.json` is not valid.
   * - `UNAVAILABLE`: `meta.json`, `LOCK` or `wal-started` cannot be read (an I/O error: `details.errno`), or
   *   a file stands where `wal/` belongs.
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
    const fs = opts.fs ?? nodeFs;

    if (create) {
      try {
        await mkdirDurable(fs, dir);
      } catch (err) {
        const errno = errnoCode(err);
        if (errno === 'EEXIST') {
          throw new SegmemError('INVALID_ARGUMENT', `data directory ${dir} is not a directory`, { dir });
        }
        throw notWritable(dir, err);
      }
    }
    let st: FileStat;
    try {
      st = await fs.stat(dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT')
        throw new SegmemError('NOT_FOUND', `data directory ${dir} does not exist`, { dir });
      throw notWritable(dir, err);
    }
    if (!st.isDirectory)
      throw new SegmemError('INVALID_ARGUMENT', `data directory ${dir} is not a directory`, { dir });
    await checkWritable(fs, dir);

    const lock = await fs.lock(dir);
    try {
      const { meta, created } = await loadOrCreateMeta(fs, dir, opts, create);
      await mkdirDurable(fs, join(dir, WAL_DIR));
      const walStarted = await restoreWalStartedMarker(fs, dir, meta);
      const dataDir = new DataDir(dir, meta, created, lock, fs);
      if (walStarted) dataDir.warnings.push(walStarted);
      dataDir.warnings.push(...(await tidy(fs, dir)));
      return dataDir;
    } catch (err) {
      await lock.release().catch(() => {});
      throw err;
    }
  }

  /**
   * The WAL's started marker exists (WalOptions.onStarted): meta.json records when, once, in the
   * background (an atomic rewrite the WAL does not wait for). Best effort: a failed write is tried again
   * at the next call, the clean stop or the next start.
   */
  walStarted(): void {
    if (this.closed || this.meta.walStartedAt !== undefined || this.recording) return;
    this.recording = recordWalStarted(this.fs, this.dir, this.meta)
      .catch(() => {})
      .finally(() => {
        this.recording = null;
      });
  }

  /** Releases the lock. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.recording;
    // The WAL created its marker: meta.json remembers it from now on, if walStarted has not recorded it.
    // Best effort (a failing disk must not fail the stop): the next start or stop tries again.
    await recordWalStarted(this.fs, this.dir, this.meta).catch(() => {});
    await this.lock.release();
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
      n === VOTE_FILE ||
      n === WAL_STARTED_FILE,
  },
  { sub: WAL_DIR, expected: isSegmentFileName },
  { sub: SNAPSHOT_DIR, expected: isSnapshotName },
];

/**
 * Deletes the temporary files a crash left behind (an interrupted `meta.json` or snapshot write, a write
 * probe) and lists files the server does not know: they are ignored, not deleted, since they may be the
 * operator's. Resolves with one line for each.
 */
async function tidy(fs: StorageFs, dir: string): Promise<string[]> {
  const lines: string[] = [];
  for (const { sub, expected } of EXPECTED) {
    const where = join(dir, sub);
    const names = await fs.readdir(where).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (expected(name)) continue;
      const path = join(where, name);
      if (isAtomicTempName(name) || name.startsWith('.write-test-')) {
        await fs.rm(path);
        lines.push(`data directory: removed ${path}, left by a write that a crash interrupted`);
      } else {
        lines.push(`data directory: ignoring unexpected file ${path}`);
      }
    }
  }
  return lines;
}

async function checkWritable(fs: StorageFs, dir: string): Promise<void> {
  const probe = join(dir, `.write-test-${fs.tempSuffix()}`);
  try {
    const fd = await fs.open(probe, 'wx');
    try {
      await writeAll((f, b, p) => fs.writev(f, b, p), fd, [Buffer.from('segmem')], 0);
      await fs.fsync(fd);
    } finally {
      await fs.close(fd);
    }
  } catch (err) {
    await fs.rm(probe).catch(() => {});
    throw notWritable(dir, err);
  }
  await fs.rm(probe);
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
  if (
    m.secretFingerprint !== undefined &&
    (typeof m.secretFingerprint !== 'string' || m.secretFingerprint === '')
  )
    throw invalidMeta(path, 'secretFingerprint must be a non-empty string');
  let group: GroupRange | undefined;
  if (m.group !== undefined) {
    const g = m.group as Record<string, unknown> | null;
    group = { id: g?.id as number, start: g?.start as number, bytes: g?.bytes as number };
    const problem =
      typeof g === 'object' && g !== null
        ? groupRangeProblem(group, m.pageBytes as number, m.segmentBytes as number)
        : 'not an object';
    if (problem) throw invalidMeta(path, `group: ${problem}`);
  }
  return {
    formatVersion: 1,
    clusterId: m.clusterId as string,
    serverId: m.serverId as string,
    createdAt: m.createdAt as string,
    pageBytes: m.pageBytes as number,
    segmentBytes: m.segmentBytes as number,
    ...(group ? { group } : {}),
    ...(m.secretFingerprint !== undefined ? { secretFingerprint: m.secretFingerprint as string } : {}),
    ...(typeof m.walStartedAt === 'string' ? { walStartedAt: m.walStartedAt } : {}),
  };
}

async function loadOrCreateMeta(
  fs: StorageFs,
  dir: string,
  opts: DataDirOptions,
  create: boolean,
): Promise<{ meta: DataDirMeta; created: boolean }> {
  const path = join(dir, META_FILE);
  let text: string | undefined;
  try {
    const st = await fs.stat(path);
    if (!st.isFile)
      throw new SegmemError('INVALID_ARGUMENT', `${path} is not a regular file`, { file: path });
    text = (await fs.readFile(path, 'recovery.read-meta')).toString('utf8');
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') {
      if (SegmemError.is(err)) throw err;
      // An I/O error (EIO, EACCES, ...), not a bad argument: the file may be fine once the disk is.
      const errno = errnoCode(err) ?? 'EIO';
      throw new SegmemError('UNAVAILABLE', `cannot read ${path}: ${errno}`, { file: path, errno });
    }
  }

  if (text === undefined) {
    if (!create) {
      throw new SegmemError('NOT_FOUND', `data directory ${dir} is not initialised (no ${META_FILE})`, {
        dir,
      });
    }
    // Refuse to adopt a log of unknown origin.
    const walFiles = await fs.readdir(join(dir, WAL_DIR)).catch(() => [] as string[]);
    if (walFiles.some((n) => n.endsWith('.wal'))) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `data directory ${dir} holds write-ahead log files but no ${META_FILE}; refusing to guess which cluster they belong to`,
        { dir },
      );
    }
    const meta: DataDirMeta = {
      formatVersion: 1,
      clusterId: opts.clusterId ?? opts.newClusterId ?? randomUUID(),
      serverId: opts.serverId,
      createdAt: new Date().toISOString(),
      pageBytes: opts.pageBytes,
      segmentBytes: opts.segmentBytes,
      // Only a server of a grouped cluster records it: a directory without one is group 0.
      ...(opts.group && opts.group.id !== 0 ? { group: opts.group } : {}),
      ...(opts.secretFingerprint !== undefined ? { secretFingerprint: opts.secretFingerprint } : {}),
    };
    await writeMeta(fs, path, meta);
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
  const holds = meta.group ?? wholeSegment(meta.segmentBytes);
  const wanted = opts.group ?? wholeSegment(opts.segmentBytes);
  if (!sameGroupRange(holds, wanted)) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `data directory ${dir} holds ${describeGroupRange(holds)}, but this server is configured as ${describeGroupRange(wanted)}; a server keeps its group and range (start it with the config it was created with)`,
      { dir, group: holds, configured: wanted },
    );
  }
  if (opts.secretFingerprint !== undefined && meta.secretFingerprint !== opts.secretFingerprint) {
    if (meta.secretFingerprint !== undefined && !opts.replaceSecretFingerprint) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `data directory ${dir} was started with another cluster secret (its fingerprint differs); give this member the group's secret file, or --rotate-cluster-secret after replacing it on every member`,
        { dir },
      );
    }
    // The first start with a secret, or a rotated one: remember which.
    meta.secretFingerprint = opts.secretFingerprint;
    await writeMeta(fs, path, meta);
  }
  return { meta, created: false };
}

/** Whether the WAL-started marker exists (an I/O error other than ENOENT is one typed line). */
async function walStartedMarkerExists(fs: StorageFs, marker: string): Promise<boolean> {
  try {
    await fs.stat(marker);
    return true;
  } catch (err) {
    const errno = errnoCode(err) ?? 'EIO';
    if (errno === 'ENOENT') return false;
    throw new SegmemError('UNAVAILABLE', `cannot read ${marker}: ${errno}`, { file: marker, errno });
  }
}

/**
 * At a start: a WAL-started marker (`wal-started`, see WalOptions.startedMarker) lost while meta.json says
 * the log held records (`walStartedAt`) is created again, so that losing `wal/` together with the marker
 * (`rm -rf wal*`) is still refused as a lost log (by the WAL's recovery) rather than taken for a new one.
 * Resolves with a warning line when it did.
 */
async function restoreWalStartedMarker(
  fs: StorageFs,
  dir: string,
  meta: DataDirMeta,
): Promise<string | undefined> {
  const marker = join(dir, WAL_STARTED_FILE);
  if (meta.walStartedAt === undefined || (await walStartedMarkerExists(fs, marker))) return undefined;
  await fs.close(await fs.open(marker, 'wx'));
  await fs.fsyncDir(dir);
  return (
    `data directory: ${marker} was missing, but ${join(dir, META_FILE)} says the write-ahead log has held ` +
    `acknowledged records since ${meta.walStartedAt}: created it again`
  );
}

/**
 * A marker meta.json does not know yet is recorded in it (`walStartedAt`, rewritten atomically): once,
 * since the stamp stays, so a crash loop does not keep rewriting the directory's identity file.
 */
async function recordWalStarted(fs: StorageFs, dir: string, meta: DataDirMeta): Promise<void> {
  if (meta.walStartedAt !== undefined || !(await walStartedMarkerExists(fs, join(dir, WAL_STARTED_FILE))))
    return;
  const stamp = new Date().toISOString();
  await writeMeta(fs, join(dir, META_FILE), { ...meta, walStartedAt: stamp });
  meta.walStartedAt = stamp;
}

/** Writes meta.json atomically; an I/O error is one typed line naming the file and the errno. */
async function writeMeta(fs: StorageFs, path: string, meta: DataDirMeta): Promise<void> {
  try {
    await writeFileAtomic(fs, path, `${JSON.stringify(meta, null, 2)}\n`, 'meta');
  } catch (err) {
    throw cannotWrite(path, err);
  }
}
