/** What the node's parts share: its identity, clock, log and options. */
import type { Env, SlotTable } from '@segmem/protocol';
import type { Command, Outcome } from '../core/commands.js';
import type { GroupRange } from '../core/group-range.js';
import type { StateMachine } from '../core/state-machine.js';
import type { NodeLog } from '../log/types.js';
import type { MetricsSink } from '../stats.js';
import type { FsyncPolicy } from '../storage/wal.js';
import type { MemoryBudget } from './budget.js';

export interface NodeOptions {
  id: string;
  dataDir: string;
  fsync?: FsyncPolicy;
  segmentBytes?: number;
  /** The shard group this server is a member of and the range it allocates in; default: group 0, the whole segment. */
  group?: GroupRange;
  clusterId?: string;
  /** Credential clients must present in HELLO; none when unset. */
  token?: string;
  /**
   * The cluster secret members of a replicated group prove to each other before any consensus message
   * (shell/peer-auth.ts). startServer refuses a group without one; only the simulator runs without.
   */
  clusterSecret?: Buffer;
  /** Truncate the WAL at a corrupt record instead of refusing to start. */
  repair?: boolean;
  /** Clock, timers and randomness (default: the process's own, systemEnv). */
  env?: Env;
  /** Where to report recovery and warnings; default: nowhere. */
  log?: (line: string) => void;
  /** Snapshot the state every this many log entries (default 10000; 0: never by count). */
  snapshotEveryEntries?: number;
  /** Snapshot the state this often if it changed (default 600000; 0: never by time). One server only. */
  snapshotIntervalMs?: number;
  /** @internal WAL segment file size (default 64 MiB); small values let tests exercise file rolls. */
  walFileBytes?: number;
  /** Scheduled consolidated snapshots: where the leader writes them (none when unset). */
  consolidatedDir?: string;
  /** How often the leader writes one (default 3600000). */
  consolidatedIntervalMs?: number;
  /** How many of them to keep, the newest (default 3). */
  consolidatedKeep?: number;
  /** Where to report events for the metrics endpoint; default: nowhere. */
  metrics?: MetricsSink;
  /** The memory budget (node/budget.ts) in bytes; none when unset or null (counted, never refused). */
  maxMemoryBytes?: number | null;
  /**
   * The cluster's first slot table (default: this server's group owning every slot). A data directory that
   * already holds a state keeps the table in it.
   */
  slotTable?: SlotTable;
  /**
   * @internal Deliberately broken variants, only for proving the real-code simulator's checkers. Never set
   * in a server.
   */
  unsafe?: {
    /** READ_PAGES answers at once with this member's current bytes, even before it applied the version asked for. */
    servePagesUnapplied?: boolean;
    /** A peer's PEER_PROOF is not checked: whoever answers the challenge is taken for the member it named. */
    acceptUnprovenPeer?: boolean;
  };
}

/** Handed by SegmemNode to each of its parts. `log` and `sm` are read when used: a Raft follower may swap `sm`. */
export interface NodeContext {
  readonly id: string;
  readonly clusterId: string;
  readonly env: Env;
  readonly opts: NodeOptions;
  readonly metrics: MetricsSink;
  readonly log: NodeLog;
  readonly sm: StateMachine;
  /** What admission control checks before growing the state or holding an export (node/budget.ts). */
  readonly budget: MemoryBudget;
  /** Throws the redirect a client follows when this member is not the leader. */
  requireLeader(): void;
  /** Proposes a command through the BARRIER hold: a change to content waits while a hold is on (write-hold.ts). */
  propose(cmd: Command): Promise<Outcome>;
}
