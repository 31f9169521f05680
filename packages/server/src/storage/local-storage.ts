/**
 * Durable storage for a single-member group (one `segmem-server`, or an embedded store): the WAL of
 * state machine commands, and snapshots of the state machine in `snap/` that let the WAL be cut.
 *
 * WAL index and state machine index are the same number. A snapshot at index `s` holds the state after
 * command `s`. The two newest snapshots that verified are kept, and the WAL keeps every record after the
 * older of them: if the newest one is damaged, recovery falls back to the one before and rolls the WAL
 * forward from there.
 *
 * Taking a snapshot (see {@link LocalStorage.saveSnapshot}): the file is written under a temporary name,
 * fsynced, renamed into place and the directory fsynced; only then are older snapshots deleted and the WAL
 * segment files before the older kept snapshot removed. A crash at any point leaves the previous
 * snapshots and the WAL they need.
 *
 * @module
 */
import { join } from 'node:path';
import { type Env, SegmemError } from '@segmem/protocol';
import { type Command, decodeCommand } from '../core/commands.js';
import type { FrozenSnapshot, StateMachine } from '../core/state-machine.js';
import { mkdirDurable, nodeFs } from './fs.js';
import type { SnapshotWrite } from './page-file.js';
import { SNAPSHOT_DIR, snapshotFileName } from './snapshot-file.js';
import { SnapshotDir } from './snapshots.js';
import {
  describeRecovery,
  type FsyncPolicy,
  type RecoveryReport,
  WAL_STARTED_FILE,
  Wal,
  type WalIo,
  type WalOptions,
  type WalRecord,
} from './wal.js';

export interface LocalStorageOptions {
  /** The data directory (`wal/` and `snap/` live under it). */
  dir: string;
  walDir: string;
  fsync: FsyncPolicy;
  repair?: boolean;
  /** Size at which the WAL starts a new segment file (default 64 MiB). Small values are for tests. */
  walFileBytes?: number;
  /** @internal Replaces the WAL's file operations (for fault-injection tests). */
  walIo?: Partial<WalIo>;
  /** See {@link WalOptions.onStall}. */
  onStall?: WalOptions['onStall'];
  /** See {@link WalOptions.onStarted}. */
  onWalStarted?: () => void;
  /** Clock and timers of the WAL and the log (default: the process's own, systemEnv). */
  env?: Env;
}

/** What recovery found: the WAL's report, the snapshot it started from and what it had to skip. */
export interface LocalRecoveryReport {
  wal: RecoveryReport;
  /** The snapshot the state was restored from, if any (`bytes`: read from the file). */
  snapshot: { file: string; index: number; bytes: number } | null;
  /** Newer snapshot files that did not verify (recovery fell back past them), with the reason. */
  damagedSnapshots: { file: string; problem: string }[];
}

/** What a local recovery report says, as lines for the server's log. */
export function describeLocalRecovery(report: LocalRecoveryReport): string[] {
  const lines: string[] = [];
  for (const d of report.damagedSnapshots) {
    lines.push(`recovery: skipped a damaged snapshot (${d.problem}); falling back to an older one`);
  }
  if (report.snapshot) {
    const s = report.snapshot;
    lines.push(
      `recovery: restored the snapshot at index ${s.index} (${s.bytes} bytes), then ${report.wal.records} WAL record(s)`,
    );
  }
  const out = [...lines, ...describeRecovery(report.wal)];
  const dropped = report.wal.repaired ? describeDropped(report.wal.repaired.dropped) : null;
  if (dropped) out.push(dropped);
  return out;
}

const MAX_NAMES = 20;

function nameList(kind: string, names: Set<string>): string {
  const all = [...names].sort();
  const shown = all.slice(0, MAX_NAMES).map((n) => JSON.stringify(n));
  return `${kind} ${shown.join(', ')}${all.length > MAX_NAMES ? ` and ${all.length - MAX_NAMES} more` : ''}`;
}

/**
 * Which objects and logs the intact commands a repair dropped wrote to (the damaged record itself cannot be
 * read), as a line for the server's log: what the operator should check. Null when they wrote nothing.
 */
export function describeDropped(dropped: readonly WalRecord[]): string | null {
  const objects = new Set<string>();
  const logs = new Set<string>();
  let unreadable = 0;
  for (const r of dropped) {
    let cmd: Command;
    try {
      cmd = decodeCommand(r.payload);
    } catch {
      unreadable++;
      continue;
    }
    if (cmd.op === 'create' || cmd.op === 'delete' || (cmd.op === 'release' && cmd.mode === 'write'))
      objects.add(cmd.name);
    else if (cmd.op === 'append' || cmd.op === 'truncate') logs.add(cmd.name);
  }
  const parts: string[] = [];
  if (objects.size > 0) parts.push(nameList(objects.size === 1 ? 'object' : 'objects', objects));
  if (logs.size > 0) parts.push(nameList(logs.size === 1 ? 'log' : 'logs', logs));
  if (parts.length === 0 && unreadable === 0) return null;
  return (
    `recovery: the changes the repair dropped wrote to ${parts.length > 0 ? parts.join(' and ') : 'nothing readable'}` +
    `${unreadable > 0 ? ` (${unreadable} record(s) did not decode)` : ''}, besides whatever the damaged record held`
  );
}

export class LocalStorage {
  /** Snapshot files known good (verified at recovery or written by this process), oldest first; at most 2 kept. */
  private readonly good: { name: string; index: number }[];
  private closed = false;

  private constructor(
    readonly wal: Wal,
    private readonly snaps: SnapshotDir,
    good: { name: string; index: number }[],
  ) {
    this.good = good;
  }

  /**
   * Loads the newest snapshot that verifies and opens the WAL after it. Resolves with the state machine
   * the snapshot holds (null without a snapshot), the WAL records to apply after it, in order, and a report.
   *
   * Refuses to start (`SegmemError('UNAVAILABLE')`) when the WAL does not reach back to the snapshot
   * recovery could use: `details.reason` is `'SNAPSHOT_CORRUPT'` if newer snapshots were damaged,
   * `'SNAPSHOT_MISSING'` if there is none, and the WAL's own reasons (`'WAL_CORRUPT'`) otherwise.
   */
  static async open(
    opts: LocalStorageOptions,
    /**
     * Given the state the snapshot holds (null without one) before the WAL is read, returns what applies
     * each WAL record as recovery reads it; `records` is then empty. Recovery so holds a window of the
     * WAL at a time beside the state, never the whole log (see {@link WalOptions.onRecord}).
     */
    replay?: (state: StateMachine | null) => (record: WalRecord) => void,
  ): Promise<{
    storage: LocalStorage;
    state: StateMachine | null;
    records: WalRecord[];
    report: LocalRecoveryReport;
  }> {
    const snapDir = join(opts.dir, SNAPSHOT_DIR);
    await mkdirDurable(nodeFs, snapDir, opts.fsync !== 'none');
    const snaps = new SnapshotDir(snapDir);
    const { newest, damaged } = await snaps.loadNewest();
    const covered = newest?.meta.index ?? 0;
    let opened: Awaited<ReturnType<typeof Wal.open>>;
    try {
      opened = await Wal.open({
        dir: opts.walDir,
        fsync: opts.fsync,
        coveredIndex: covered,
        startedMarker: join(opts.dir, WAL_STARTED_FILE),
        ...(opts.walFileBytes !== undefined ? { segmentBytes: opts.walFileBytes } : {}),
        ...(opts.repair ? { repair: true } : {}),
        ...(opts.walIo ? { io: opts.walIo } : {}),
        ...(opts.onStall ? { onStall: opts.onStall } : {}),
        ...(opts.onWalStarted ? { onStarted: opts.onWalStarted } : {}),
        ...(opts.env ? { env: opts.env } : {}),
        ...(replay ? { onRecord: replay(newest?.state ?? null) } : {}),
      });
    } catch (err) {
      throw explainGap(err, snapDir, damaged, newest?.file);
    }
    const good = newest ? [{ name: snapshotFileName(newest.meta), index: newest.meta.index }] : [];
    const storage = new LocalStorage(opened.wal, snaps, good);
    return {
      storage,
      state: newest?.state ?? null,
      records: opened.records,
      report: {
        wal: opened.report,
        snapshot: newest ? { file: newest.file, index: newest.meta.index, bytes: newest.bytes } : null,
        damagedSnapshots: damaged.map(({ file, problem }) => ({ file, problem })),
      },
    };
  }

  /** Index of the newest snapshot on disk (0 if none). */
  get snapshotIndex(): number {
    return this.good[this.good.length - 1]?.index ?? 0;
  }

  /**
   * Stores `view`, the state machine frozen after command `index`, as the newest snapshot (a clone of the
   * previous one where the file system can clone: see `page-file.ts`); then deletes every snapshot file but
   * it and the previous good one, and the WAL segment files that only hold records up to the previous
   * one. Resolves with what writing it did (null: not newer than the newest snapshot). Releases the view.
   * The caller makes sure the WAL holds `index` durably first, so a snapshot is never ahead of the log it
   * continues.
   */
  async saveSnapshot(index: number, view: FrozenSnapshot): Promise<SnapshotWrite | null> {
    let written: SnapshotWrite;
    try {
      if (this.closed) throw new SegmemError('CLOSED', 'storage is closed');
      if (index <= this.snapshotIndex) return null;
      if (index > this.wal.lastIndex) {
        throw new RangeError(`snapshot index ${index} is past the last logged index ${this.wal.lastIndex}`);
      }
      written = await this.snaps.write({ index, term: 0, members: [] }, view);
    } finally {
      view.release();
    }
    this.good.push({ name: snapshotFileName({ index, term: 0 }), index });
    if (this.good.length > 2) this.good.splice(0, this.good.length - 2);
    const keep = new Set(this.good.map((g) => g.name));
    await this.snaps.removeAllBut((n) => keep.has(n));
    // With two snapshots, the WAL only needs the records after the older one.
    if (this.good.length === 2) await this.wal.truncatePrefix(this.good[0]!.index + 1);
    return written;
  }

  close(): Promise<void> {
    this.closed = true;
    return this.wal.close();
  }
}

/** A WAL that starts after the snapshot recovery could use, explained in terms of snapshots. */
function explainGap(
  err: unknown,
  snapDir: string,
  damaged: { file: string; problem: string }[],
  used: string | undefined,
): unknown {
  if (!SegmemError.is(err) || err.details?.reason !== 'WAL_GAP') return err;
  const firstIndex = err.details.firstIndex as number;
  const details = { ...err.details, snapDir };
  if (damaged.length > 0) {
    return new SegmemError(
      'UNAVAILABLE',
      `cannot recover: ${damaged.map((d) => d.problem).join('; ')}; and the write-ahead log starts at index ` +
        `${firstIndex}, after ${used ? `the older snapshot ${used}` : 'every usable snapshot'} ends, so the ` +
        'state in between is lost. Restore the data directory from a backup.',
      { ...details, reason: 'SNAPSHOT_CORRUPT', files: damaged.map((d) => d.file) },
      { cause: err },
    );
  }
  return new SegmemError(
    'UNAVAILABLE',
    `cannot recover: the write-ahead log starts at index ${firstIndex}, but ${
      used
        ? `the newest snapshot ${used} ends at index ${err.details.coveredIndex}`
        : `${snapDir} holds no snapshot`
    }: the snapshot covering the records before it is missing. Restore the data directory from a backup.`,
    { ...details, reason: 'SNAPSHOT_MISSING' },
    { cause: err },
  );
}
