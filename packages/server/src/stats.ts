/**
 * What a server tells its metrics endpoint (shell/metrics.ts), in two halves:
 * - {@link MetricsSink}: events reported where they happen (a command applied, a lock granted, an fsync
 *   done). Each call does O(1) work; a server without metrics gets {@link NO_METRICS}, whose calls do nothing.
 * - {@link NodeStats}: the state read when a scrape asks (role, indexes, sessions, locks), so gauges cost
 *   nothing between scrapes.
 */
import type { Env, ErrorCode } from '@segmem/protocol';
import type { Command, LockMode } from './core/commands.js';
import type { CountedBytes } from './node/budget.js';
import type { NodeId, Role } from './raft/types.js';
import { nodeFs, type StorageFs } from './storage/fs.js';
import { type Wal, type WalIo, walIoOf } from './storage/wal.js';

/** Where a snapshot write came from. */
export type SnapshotKind =
  /** a member (or a single server) snapshotted its own state and cut its log behind it */
  | 'compact'
  /** a follower installed a snapshot its leader sent */
  | 'install';

export interface MetricsSink {
  /** A command was applied to this member's state machine (it is committed). */
  applied(op: Command['op']): void;
  /** A lock was handed to a client, `waitMs` after its ACQUIRE arrived. */
  granted(mode: LockMode, waitMs: number): void;
  /** A request was answered with an error. */
  failed(code: ErrorCode): void;
  /** A write of WAL records to their file took `ms`. */
  walWritten(ms: number): void;
  /** A WAL `fdatasync` took `ms`. */
  walSynced(ms: number): void;
  /** A snapshot file of `bytes` was written in `ms`. */
  snapshotWritten(kind: SnapshotKind, bytes: number, ms: number): void;
}

const nothing = () => {};

/** The sink of a server without metrics. */
export const NO_METRICS: MetricsSink = {
  applied: nothing,
  granted: nothing,
  failed: nothing,
  walWritten: nothing,
  walSynced: nothing,
  snapshotWritten: nothing,
};

/** Why this member's log refuses changes, if it does. */
export interface LogProblem {
  /** `LOG_FAILED`: stopped for good (an fsync failed, an invariant broke); `WAL_STALLED`: writes fail for now (a full disk). */
  reason: 'LOG_FAILED' | 'WAL_STALLED';
  message: string;
}

/** Where a member's log stands: a Raft group's view, or a single server's (always its own leader, term 0). */
export interface LogStats {
  role: Role;
  term: number;
  leader: NodeId | null;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
  /**
   * The leader's commit index as this member last heard it in this term (a leader: its own); null when it
   * has heard none yet. `leaderCommitIndex - appliedIndex` is how far this member's state is behind.
   */
  leaderCommitIndex: number | null;
  /** A leader's view of each other member: the highest log index known to be replicated on it. */
  peers: { id: NodeId; matchIndex: number }[];
  /** Bytes this member sent to the others on its peer links, and Raft messages dropped there (link down or backed up). */
  peerLinks: { sentBytes: number; droppedMessages: number; authFailures?: number };
  wal: { appends: number; bytes: number; syncs: number; firstIndex: number; lastIndex: number };
  problem: LogProblem | null;
}

/** Where the whole node stands, read at scrape time. */
export interface NodeStats {
  id: string;
  clusterId: string;
  log: LogStats;
  sessions: number;
  objects: number;
  logs: number;
  locks: LockStats;
  pagesServed: number;
  /** The memory budget (node/budget.ts): what it counts now, and its limit (null: none). */
  memory?: {
    usedBytes: number;
    limitBytes: number | null;
    /** What it counts, part by part. */
    counted: CountedBytes;
    /** Client connections not read until the count is back under the limit. */
    waitingForRoom: number;
  };
}

export interface LockStats {
  /** Read grants outstanding, over all objects. */
  readHolds: number;
  /** Objects held for writing. */
  writeHolds: number;
  /** Acquires queued behind a holder. */
  waiters: number;
}

/** The WAL's file operations on `fs`, with its writes and fdatasyncs timed into `sink`. */
export function timedWalIo(sink: MetricsSink, env: Env, fs: StorageFs = nodeFs): Partial<WalIo> {
  const nodeIo = walIoOf(fs);
  return {
    async writev(fd, buffers, position) {
      const started = env.now();
      const n = await nodeIo.writev(fd, buffers, position);
      sink.walWritten(env.now() - started);
      return n;
    },
    async fdatasync(fd) {
      const started = env.now();
      await nodeIo.fdatasync(fd);
      sink.walSynced(env.now() - started);
    },
  };
}

/** The WAL half of a log's stats: its counters, and the problem that stops it taking changes, if any. */
export function walStats(wal: Wal, logFailure: Error | null): Pick<LogStats, 'wal' | 'problem'> {
  const failure = logFailure ?? wal.failed;
  const stall = wal.stalled;
  return {
    wal: {
      appends: wal.stats.appends,
      bytes: wal.stats.bytes,
      syncs: wal.stats.syncs,
      firstIndex: wal.firstIndex,
      lastIndex: wal.lastIndex,
    },
    problem: failure
      ? { reason: 'LOG_FAILED', message: failure.message }
      : stall
        ? { reason: 'WAL_STALLED', message: stall.message }
        : null,
  };
}
