/**
 * The log of a single-member group: commands are appended to the WAL and applied to the state
 * machine in log order. This is the seam where consensus slots in: a Raft group offers the same
 * `propose()` and calls the same `apply` hook once an entry is committed on a majority.
 *
 * Ordering rule: entry i is applied only after every data-changing entry at or before i is durable
 * under the fsync policy (see `mustSync`). Lock and session entries do not wait for the disk when
 * nothing durable is pending before them, which keeps uncontended lock traffic off the fsync path;
 * they are safe to lose in a crash because recovery ends every session (the `restart` command).
 *
 * Snapshots: every `snapshotEveryEntries` applied entries, and every `snapshotIntervalMs` if anything was
 * applied since the last one, the state machine is frozen at its applied index (copy-on-write) and, once
 * the WAL holds that index durably, handed to the storage, which writes the frozen view as a page file
 * (the changed pages into a clone of the previous one, or every page: see storage/page-file.ts) with
 * asynchronous file I/O and checksums in slices while commands keep applying, then cuts the WAL behind the
 * previous snapshot. The whole state is never serialised into one buffer.
 */
import { type Env, type EnvTimer, SegmemError, type SlotTable, systemEnv } from '@segmem/protocol';
import { type Command, decodeCommand, encodeCommand, mustSync, type Outcome } from '../core/commands.js';
import { checkRestoredGroup, type GroupRange, wholeSegment } from '../core/group-range.js';
import { StateMachine } from '../core/state-machine.js';
import { type LogStats, type MetricsSink, walStats } from '../stats.js';
import { errorMessage } from '../storage/files.js';
import {
  type LocalRecoveryReport,
  LocalStorage,
  type LocalStorageOptions,
} from '../storage/local-storage.js';
import { describeSnapshotWrite, type SnapshotWrite } from '../storage/page-file.js';
import type { Wal } from '../storage/wal.js';
import type { ApplyListener, ReplicatedLog } from './types.js';

interface Pending {
  index: number;
  cmd: Command;
  sync: boolean;
  resolve: (outcome: Outcome) => void;
  reject: (err: Error) => void;
}

export interface SnapshotPolicy {
  /** Take a snapshot once this many entries were applied since the last one (0: never by count). */
  snapshotEveryEntries: number;
  /** Take a snapshot this often if anything was applied since the last one (0: never by time). */
  snapshotIntervalMs: number;
}

export interface OpenLocalLogOptions extends LocalStorageOptions, Partial<SnapshotPolicy> {
  pageBytes: number;
  segmentBytes: number;
  /** The group and range a new state serves (default: group 0, the whole segment); a snapshot's must match. */
  group?: GroupRange;
  /** Where to report snapshots and their failures. */
  log?: (line: string) => void;
  metrics?: MetricsSink;
  /**
   * A deliberately broken variant for the crash-point harness only: apply and acknowledge data changes
   * without waiting for the disk. Never set in a server; it exists so a test can prove the harness catches it.
   * @internal
   */
  unsafeAckBeforeDurable?: boolean;
  /** The first slot table of a new state (one restored from a snapshot keeps its own). */
  slotTable?: SlotTable;
}

/** Defaults of the single-member log's snapshot policy. */
export const DEFAULT_SNAPSHOT_POLICY: SnapshotPolicy = {
  snapshotEveryEntries: 10_000,
  snapshotIntervalMs: 600_000,
};

/**
 * Recovers a single-member group's state from its data directory: the newest good snapshot, then the WAL
 * rolled forward from it. Resolves with the recovery report and a function that makes the log (once the
 * caller has its apply listener).
 */
export async function openLocalLog(
  opts: OpenLocalLogOptions,
): Promise<{ report: LocalRecoveryReport; create(onApply: ApplyListener): LocalLog }> {
  // Each WAL record is applied as recovery reads it (the state copies what it keeps), so a restart holds
  // the state plus a window of the WAL, not the state plus the whole log.
  let sm: StateMachine | undefined;
  const { storage, report } = await LocalStorage.open(opts, (state) => {
    const group = opts.group ?? wholeSegment(opts.segmentBytes);
    if (state) checkRestoredGroup(state.group, group, opts.dir);
    const replayTo =
      state ??
      new StateMachine({
        pageBytes: opts.pageBytes,
        segmentBytes: opts.segmentBytes,
        group,
        ...(opts.slotTable ? { slotTable: opts.slotTable } : {}),
      });
    sm = replayTo;
    return (rec) => replayTo.apply(rec.index, decodeLocalRecord(rec.payload, rec.index, opts.dir));
  });
  if (!sm) throw new Error('local log invariant: recovery opened the WAL without a state to replay into');
  const state = sm;
  const policy: SnapshotPolicy = {
    snapshotEveryEntries: opts.snapshotEveryEntries ?? DEFAULT_SNAPSHOT_POLICY.snapshotEveryEntries,
    snapshotIntervalMs: opts.snapshotIntervalMs ?? DEFAULT_SNAPSHOT_POLICY.snapshotIntervalMs,
  };
  return {
    report,
    create: (onApply) =>
      new LocalLog(storage, state, onApply, {
        policy,
        replayed: report.wal.records,
        env: opts.env ?? systemEnv,
        ...(opts.log ? { log: opts.log } : {}),
        ...(opts.metrics ? { metrics: opts.metrics } : {}),
        ...(opts.unsafeAckBeforeDurable ? { unsafeAckBeforeDurable: true } : {}),
      }),
  };
}

/**
 * A single server's WAL record as its command. A cluster member's directory started without --peers holds
 * Raft records instead: say so in one typed line rather than with a decoder's error.
 */
function decodeLocalRecord(payload: Buffer, index: number, dir: string): Command {
  try {
    return decodeCommand(payload);
  } catch (err) {
    const why = `WAL record ${index}: ${errorMessage(err)}`;
    throw new SegmemError(
      'INVALID_ARGUMENT',
      looksLikeRaftRecord(payload)
        ? `data directory ${dir} belongs to a cluster member (its WAL holds Raft records; ${why}): start it with --peers (or --config) naming its group, as before`
        : `data directory ${dir}: ${why}, which is not a command this server can read`,
      { reason: 'NOT_A_SINGLE_SERVER', dir, index },
    );
  }
}

/** The shape of a member's WAL record (raft-storage.ts): a kind byte 1..4, then a msgpack array of 3. */
function looksLikeRaftRecord(p: Buffer): boolean {
  const MSGPACK_ARRAY_OF_3 = 0x93;
  if (p[0] === 1) return p.length >= 6 && p[5] === MSGPACK_ARRAY_OF_3;
  return p[0] !== undefined && p[0] >= 2 && p[0] <= 4 && p[1] === MSGPACK_ARRAY_OF_3;
}

export class LocalLog implements ReplicatedLog {
  private readonly pending: Pending[] = [];
  private head = 0; // index into `pending` of the next entry to apply
  private failure: SegmemError | null = null;
  private closed = false;
  private readonly waitForDisk: boolean;
  private readonly wal: Wal;
  private readonly policy: SnapshotPolicy;
  private readonly log: ((line: string) => void) | undefined;
  private readonly metrics: MetricsSink | undefined;
  /** Entries applied since the last snapshot was taken. */
  private sinceSnapshot: number;
  private snapshotting: Promise<SnapshotWrite | null> | null = null;
  private readonly timer: EnvTimer | null = null;
  private readonly env: Env;

  constructor(
    private readonly storage: LocalStorage,
    private readonly sm: StateMachine,
    private readonly onApply: ApplyListener,
    opts: {
      policy?: SnapshotPolicy;
      log?: (line: string) => void;
      /** WAL records replayed at recovery, which count towards the next snapshot. */
      replayed?: number;
      unsafeAckBeforeDurable?: boolean;
      metrics?: MetricsSink;
      /** Clock and timers (default: the process's own). */
      env?: Env;
    } = {},
  ) {
    const policy = opts.policy ?? { snapshotEveryEntries: 0, snapshotIntervalMs: 0 };
    this.policy = policy;
    this.log = opts.log;
    this.metrics = opts.metrics;
    this.env = opts.env ?? systemEnv;
    this.wal = storage.wal;
    this.sinceSnapshot = opts.replayed ?? 0;
    this.waitForDisk = this.wal.policy !== 'none' && opts.unsafeAckBeforeDurable !== true;
    this.wal.onDurable(() => this.drain());
    if (policy.snapshotIntervalMs > 0) {
      this.timer = this.env.setInterval(() => {
        if (this.sinceSnapshot > 0) this.snapshot().catch(() => {});
      }, policy.snapshotIntervalMs);
      this.timer.unref();
    }
  }

  /**
   * Takes a snapshot of the state machine now (unless one is being written: then resolves when that one
   * is done) and resolves once it is on disk and the WAL was cut behind the previous one, with what writing
   * it did (null: nothing applied since the last one). Rejects if writing it failed; the log itself
   * carries on either way.
   */
  snapshot(): Promise<SnapshotWrite | null> {
    if (this.snapshotting) return this.snapshotting;
    if (this.closed) return Promise.reject(new SegmemError('CLOSED', 'the server is shutting down'));
    if (this.failure) return Promise.reject(this.failure);
    const index = this.sm.appliedIndex;
    if (index <= this.storage.snapshotIndex) return Promise.resolve(null);
    const started = this.env.now();
    // Frozen at once (metadata only); the pages are read from the view while commands keep applying.
    const view = this.sm.freeze();
    const freezeMs = this.env.now() - started;
    this.sinceSnapshot = 0;
    const run = async () => {
      // A snapshot never runs ahead of the log it continues: what it holds is durable in the WAL first.
      try {
        await this.wal.waitDurable(index);
      } catch (err) {
        view.release();
        throw err;
      }
      const written = await this.storage.saveSnapshot(index, view);
      if (written) {
        this.metrics?.snapshotWritten('compact', written.bytes, written.ms);
        this.log?.(
          `snapshot at index ${index}: ${describeSnapshotWrite(written)}, frozen in ${freezeMs.toFixed(0)} ms, ` +
            `written in ${written.ms.toFixed(0)} ms; WAL now starts at index ${this.wal.firstIndex}`,
        );
      }
      return written;
    };
    const done = run()
      .catch((err: unknown) => {
        this.log?.(`snapshot at index ${index} failed: ${errorMessage(err)}`);
        throw err;
      })
      .finally(() => {
        this.snapshotting = null;
      });
    this.snapshotting = done;
    return done;
  }

  private maybeSnapshot(): void {
    const every = this.policy.snapshotEveryEntries;
    if (every > 0 && this.sinceSnapshot >= every && !this.snapshotting && !this.closed) {
      this.snapshot().catch(() => {});
    }
  }

  propose(cmd: Command): Promise<Outcome> {
    if (this.closed) return Promise.reject(new SegmemError('CLOSED', 'the server is shutting down'));
    if (this.failure) return Promise.reject(this.failure);
    let index: number;
    try {
      index = this.wal.append(encodeCommand(cmd));
    } catch (err) {
      // A full disk refuses this change only; the log carries on once the WAL's retry succeeds.
      if (err === this.wal.stalled) return Promise.reject(err);
      return Promise.reject(this.fail(err));
    }
    const sync = this.waitForDisk && mustSync(cmd);
    const promise = new Promise<Outcome>((resolve, reject) => {
      this.pending.push({ index, cmd, sync, resolve, reject });
    });
    if (sync) {
      this.wal.waitDurable(index).catch((err: unknown) => this.fail(err));
    }
    this.drain();
    return promise;
  }

  private drain(): void {
    const durable = this.wal.durableIndex;
    while (this.head < this.pending.length) {
      const entry = this.pending[this.head]!;
      if (entry.sync && entry.index > durable) break;
      this.pending[this.head++] = undefined as unknown as Pending;
      let outcome: Outcome;
      try {
        outcome = this.sm.apply(entry.index, entry.cmd);
      } catch (err) {
        // An invariant broke inside the state machine: stop rather than diverge.
        entry.reject(this.fail(err));
        return;
      }
      this.sinceSnapshot++;
      this.onApply(entry.index, entry.cmd, outcome);
      entry.resolve(outcome);
    }
    this.maybeSnapshot();
    if (this.head === this.pending.length) {
      this.pending.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending.splice(0, this.head);
      this.head = 0;
    }
  }

  private fail(err: unknown): SegmemError {
    if (!this.failure) {
      this.failure = SegmemError.is(err)
        ? err
        : new SegmemError('UNAVAILABLE', `log failed: ${(err as Error)?.message ?? String(err)}`, undefined, {
            cause: err,
          });
      for (let i = this.head; i < this.pending.length; i++) this.pending[i]!.reject(this.failure);
      this.pending.length = 0;
      this.head = 0;
    }
    return this.failure;
  }

  get stateMachine(): StateMachine {
    return this.sm;
  }

  /** A single member is always its own leader. */
  isLeader(): boolean {
    return true;
  }

  leaderHint(): null {
    return null;
  }

  /** Everything committed is applied already: one member, applying in order. */
  readBarrier(): Promise<void> {
    return Promise.resolve();
  }

  /** Everything logged so far on disk (lock entries do not wait for it by themselves). */
  leaseBarrier(): Promise<void> {
    if (this.closed) return Promise.reject(new SegmemError('CLOSED', 'the server is shutting down'));
    if (this.failure) return Promise.reject(this.failure);
    return this.wal.waitDurable(this.wal.lastIndex);
  }

  /** Where the applied state stands: a single member's log has indexes but no terms. */
  appliedPosition(): { index: number; term: number } {
    return { index: this.sm.appliedIndex, term: 0 };
  }

  /** Where this log stands, for metrics and health: a single member leads itself, with no terms. */
  stats(): LogStats {
    const applied = this.sm.appliedIndex;
    return {
      role: 'leader',
      term: 0,
      leader: null,
      commitIndex: applied,
      appliedIndex: applied,
      lastIndex: this.wal.lastIndex,
      leaderCommitIndex: applied,
      peers: [],
      peerLinks: { sentBytes: 0, droppedMessages: 0 },
      ...walStats(this.wal, this.failure),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.env.clearInterval(this.timer);
    await this.snapshotting?.catch(() => {});
    await this.storage.close();
  }
}
