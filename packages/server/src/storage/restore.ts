/**
 * `segmem restore`: builds the data directories of a fresh cluster (or of one server) from a consolidated
 * snapshot. Each directory gets its identity (meta.json: server id, cluster id, page and segment size, and
 * the shard group and range of a group's snapshot) and one state-machine snapshot holding the file's
 * content and nothing else (no sessions, no locks); a server started on it rolls forward from there like
 * after any snapshot.
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import { type StateContent, StateMachine } from '../core/state-machine.js';
import { isClusterFile } from './cluster-file.js';
import { type Consolidated, decodeConsolidated } from './consolidated.js';
import { DataDir } from './datadir.js';
import { mkdirDurable, nodeFs } from './fs.js';
import { SNAPSHOT_DIR } from './snapshot-file.js';
import { SnapshotDir } from './snapshots.js';

const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

export interface RestoreOptions {
  /** One directory per server; one directory restores a single server. */
  dirs: string[];
  /** The servers' ids, one per directory (default s1, s2, ...). */
  ids?: string[];
  /** The restored cluster's id (default: a new one, so it cannot be mistaken for the original). */
  clusterId?: string;
  /** Told as each step starts (reading the file, writing each directory): for a progress line. */
  onProgress?: (step: string) => void;
}

async function isEmptyOrMissing(dir: string): Promise<boolean> {
  try {
    return (await fsp.readdir(dir)).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

/** Restores `file` into `opts.dirs`; resolves with what it restored. */
export async function restoreConsolidated(
  file: string,
  opts: RestoreOptions,
): Promise<{ snapshot: Consolidated; clusterId: string; ids: string[] }> {
  const dirs = opts.dirs;
  if (dirs.length === 0)
    throw new SegmemError('INVALID_ARGUMENT', 'restore needs at least one --data directory');
  const ids = opts.ids ?? dirs.map((_, i) => `s${i + 1}`);
  if (ids.length !== dirs.length) {
    throw new SegmemError('INVALID_ARGUMENT', `${dirs.length} directories but ${ids.length} server ids`);
  }
  for (const id of ids) {
    if (!SERVER_ID.test(id))
      throw new SegmemError('INVALID_ARGUMENT', `bad server id "${id}": 1..64 characters of [A-Za-z0-9._-]`);
  }
  if (new Set(ids).size !== ids.length) throw new SegmemError('INVALID_ARGUMENT', 'server ids must differ');
  for (const dir of dirs) await requireFreshDir(dir);
  let bytes: Buffer;
  try {
    opts.onProgress?.(`reading ${file}`);
    bytes = await fsp.readFile(file);
  } catch (err) {
    throw new SegmemError('NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`);
  }
  if (isClusterFile(bytes))
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `${file} is a cluster snapshot of several shard groups: restore each server with --config FILE --id ID --dir DIR`,
    );
  const snapshot = decodeConsolidated(bytes, file);
  const { content } = snapshot;
  // A fresh log starts after the snapshot at index 1 (term 1 for a group: its first leader's term is higher).
  const clusterId = opts.clusterId ?? randomUUID();
  const members = dirs.length > 1 ? [...ids].sort() : [];
  await writeDataDirs(content, dirs, ids, clusterId, members, opts.onProgress);
  return { snapshot, clusterId, ids };
}

/**
 * Builds each of `dirs` (server `ids[i]`) holding `content` and nothing else, as members `members` of one
 * group (empty: a single server).
 */
export async function writeDataDirs(
  content: StateContent,
  dirs: string[],
  ids: string[],
  clusterId: string,
  members: string[],
  onProgress?: (step: string) => void,
): Promise<void> {
  // A fresh log starts after the snapshot at index 1 (term 1 for a group: its first leader's term is higher).
  const sm = StateMachine.fromContent(content, 1);
  for (let i = 0; i < dirs.length; i++) {
    onProgress?.(`writing ${dirs[i]} (${i + 1} of ${dirs.length})`);
    const dataDir = await DataDir.open({
      dir: dirs[i]!,
      serverId: ids[i]!,
      clusterId,
      pageBytes: content.pageBytes,
      segmentBytes: content.segmentBytes,
      // A shard group's snapshot restores as that group: its servers start with the config it came from.
      ...(content.group ? { group: content.group } : {}),
    });
    try {
      const snapDir = join(dataDir.dir, SNAPSHOT_DIR);
      await mkdirDurable(nodeFs, snapDir);
      // Nothing applies to `sm` meanwhile: the view only spares a copy of its bytes.
      const view = sm.freeze();
      try {
        await new SnapshotDir(snapDir).write({ index: 1, term: members.length > 0 ? 1 : 0, members }, view);
      } finally {
        view.release();
      }
    } finally {
      await dataDir.close();
    }
  }
}

/** Throws unless `dir` is missing or empty. */
export async function requireFreshDir(dir: string): Promise<void> {
  if (!(await isEmptyOrMissing(dir)))
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `${dir} is not empty: restore only builds fresh data directories`,
    );
}
