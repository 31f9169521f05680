/**
 * A consistent cut of a sharded cluster into one cluster snapshot file (storage/cluster-file.ts): hold
 * every group's writes (BARRIER hold), and once every hold is acknowledged export each group (SNAPSHOT)
 * and release it; a group whose hold had ended before its release (it lapsed, or its leader changed) spoils
 * the cut, which is then refused. The parts are then read from the leaders' memory in pieces into FILE.tmp,
 * synced, and renamed to FILE. Why the cut is consistent: docs/consistency.md.
 */
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { type OkBodies, SegmemError } from '@segmem/protocol';
import type { GroupConfig } from '../config.js';
import {
  type ClusterFileGroup,
  encodeClusterFileEnd,
  encodeClusterFileHead,
  encodePartTrailer,
} from '../storage/cluster-file.js';
import { ConsolidatedVerifier, consolidatedHeaderOf } from '../storage/consolidated.js';
import { crc32c } from '../storage/crc32c.js';
import { nodeFs } from '../storage/fs.js';
import { type AdminOptions, AdminSession } from './admin-client.js';
import { readExport, SNAPSHOT_BUILD_MS } from './export-reader.js';

/** How long each group's hold may last by default: the hold, the export's freeze, and the release. */
export const DEFAULT_HOLD_MS = 5000;
/** The file is fdatasynced every this many bytes written. */
const SYNC_EVERY_BYTES = 32 * 1024 * 1024;

export interface ClusterCutOptions {
  groups: GroupConfig[];
  /** How to reach a group, given its members' addresses. */
  connection: (servers: string[]) => AdminOptions;
  /** Where the file goes (written as `${file}.tmp-<pid>` first). */
  file: string;
  /** The snapshot agent's fencing token (0: on demand). */
  fence: number;
  holdMs?: number;
  onProgress?: (step: string) => void;
}

export interface ClusterCut {
  clusterId: string;
  bytes: number;
  groups: ClusterFileGroup[];
}

type Made = OkBodies['SNAPSHOT'];

/** Takes a consistent cut of every group in `opts.groups` into `opts.file`. */
export async function takeClusterCut(opts: ClusterCutOptions): Promise<ClusterCut> {
  const groups = [...opts.groups].sort((a, b) => a.id - b.id);
  const holdMs = opts.holdMs ?? DEFAULT_HOLD_MS;
  const sessions = groups.map((g) => new AdminSession(opts.connection(Object.values(g.members))));
  try {
    const made = await cut(groups, sessions, holdMs, opts.onProgress);
    const clusterIds = new Set(sessions.map((s) => s.clusterId));
    if (clusterIds.size !== 1)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `the groups answer for different clusters (${[...clusterIds].join(', ')}): not one cluster's config`,
      );
    return await writeFile(opts, groups, sessions, made);
  } finally {
    await Promise.all(sessions.map((s) => s.close()));
  }
}

/** The hold, the exports and the releases; every hold is released, whatever fails. */
async function cut(
  groups: GroupConfig[],
  sessions: AdminSession[],
  holdMs: number,
  onProgress?: (step: string) => void,
): Promise<Made[]> {
  const releaseAll = () =>
    Promise.all(sessions.map((s) => s.call({ type: 'BARRIER', op: 'release', holdMs: 0 }).catch(() => null)));
  try {
    onProgress?.(`holding writes in ${groups.length} groups`);
    await Promise.all(sessions.map((s) => s.call({ type: 'BARRIER', op: 'hold', holdMs })));
    onProgress?.('every group holds; exporting each');
    return await Promise.all(
      sessions.map(async (s, i) => {
        const made = await s.call({ type: 'SNAPSHOT' }, SNAPSHOT_BUILD_MS);
        // Released as soon as its export is taken: the cut needs each export inside its group's hold, and
        // every hold on before any export (see docs/consistency.md), nothing more.
        const r = await s.call({ type: 'BARRIER', op: 'release', holdMs: 0 });
        if (!r.held) {
          throw new SegmemError(
            'UNAVAILABLE',
            `group ${groups[i]!.id}'s hold ended before its snapshot was taken (it lasted over ${holdMs} ms, or its leader changed): the cut is not consistent; try again`,
          );
        }
        return made;
      }),
    );
  } catch (err) {
    await releaseAll();
    throw err;
  }
}

async function writeFile(
  opts: ClusterCutOptions,
  groups: GroupConfig[],
  sessions: AdminSession[],
  made: Made[],
): Promise<ClusterCut> {
  // Each part's own header (its length prefix first, then the header): page and segment size are the
  // servers' (not the config's), and the newest of the groups' slot tables is the cut's (a slot move's
  // switch may have reached one group of the two).
  const headers = await Promise.all(
    groups.map(async (g, i) => {
      const readHead = async (to: number) => {
        const pieces: Buffer[] = [];
        await readExport(sessions[i]!, made[i]!.id, Math.min(made[i]!.bytes, to), (c) => {
          pieces.push(Buffer.from(c));
        });
        return Buffer.concat(pieces);
      };
      const prefix = await readHead(12);
      const headBytes = prefix.length === 12 ? await readHead(12 + prefix.readUInt32LE(8)) : prefix;
      return consolidatedHeaderOf(headBytes, `group ${g.id}'s snapshot`);
    }),
  );
  const partHeader = headers[0]!;
  const tables = headers.flatMap((h) => (h.slots ? [h.slots] : []));
  if (tables.length === 0)
    throw new SegmemError('INVALID_ARGUMENT', 'no group snapshot holds a slot table: not a sharded cluster');
  const slots = tables.reduce((a, b) => (b.version > a.version ? b : a));
  const table: ClusterFileGroup[] = groups.map((g, i) => ({
    id: g.id,
    start: g.start,
    bytes: g.bytes,
    members: Object.entries(g.members),
    index: made[i]!.index,
    term: made[i]!.term,
    partBytes: made[i]!.bytes,
  }));
  const clusterId = sessions[0]!.clusterId;
  const head = encodeClusterFileHead({
    format: 1,
    clusterId,
    createdAt: new Date().toISOString(),
    pageBytes: partHeader.pageBytes,
    segmentBytes: partHeader.segmentBytes,
    fence: opts.fence,
    slots,
    groups: table,
  });
  const tmp = `${opts.file}.tmp-${process.pid}`;
  const handle = await open(tmp, 'wx', 0o644).catch((err: Error) => {
    throw new SegmemError('INVALID_ARGUMENT', `cannot create ${tmp}: ${err.message}`);
  });
  let bytes = 0;
  try {
    try {
      let unsynced = 0;
      const write = async (b: Buffer) => {
        await handle.write(b);
        bytes += b.length;
        unsynced += b.length;
        // Synced as it goes, so a large file does not stall the disk's other fsyncs at the end.
        if (unsynced >= SYNC_EVERY_BYTES) {
          await handle.datasync();
          unsynced = 0;
        }
      };
      await write(head);
      for (const [i, g] of groups.entries()) {
        opts.onProgress?.(`reading group ${g.id}'s snapshot (${made[i]!.bytes} bytes)`);
        const verifier = new ConsolidatedVerifier(made[i]!.bytes, `group ${g.id}'s snapshot`);
        let crc = 0;
        await readExport(sessions[i]!, made[i]!.id, made[i]!.bytes, async (chunk) => {
          verifier.push(chunk);
          crc = crc32c(chunk, crc);
          await write(chunk);
        });
        verifier.finish();
        await write(encodePartTrailer(crc));
      }
      await write(encodeClusterFileEnd());
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, opts.file);
    await nodeFs.fsyncDir(dirname(opts.file)).catch(() => {});
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return { clusterId, bytes, groups: table };
}
