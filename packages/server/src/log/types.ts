/**
 * The replicated log as its users see it: what a single member's LocalLog and a Raft group's RaftLog
 * both offer, and the hook they call for every applied entry.
 */
import type { Command, Outcome } from '../core/commands.js';
import type { StateMachine } from '../core/state-machine.js';
import type { LogStats } from '../stats.js';

/** Called once for every entry the log applies, in log order. */
export type ApplyListener = (index: number, cmd: Command, outcome: Outcome) => void;

export interface ReplicatedLog {
  /** Appends `cmd`; resolves with its outcome once it is applied (and durable, for data changes). */
  propose(cmd: Command): Promise<Outcome>;
  close(): Promise<void>;
}

/** The replicated log as the node uses it: a single member's LocalLog or a Raft group's RaftLog. */
export interface NodeLog extends ReplicatedLog {
  /** The state machine the log applies to (a Raft follower may replace it when it installs a snapshot). */
  readonly stateMachine: StateMachine;
  /** Whether this member may serve clients now. */
  isLeader(): boolean;
  /** The leader as far as this member knows, for redirects. */
  leaderHint(): { id: string; address: string | null } | null;
  /** Resolves once the applied state includes everything committed before the call. */
  readBarrier(): Promise<void>;
  /**
   * Resolves once grants answered before the call can be relied on for a lease (see KEEPALIVE `lease`): a Raft
   * leader confirmed it still leads (a heartbeat round with a majority, so no other leader was elected before
   * the call), a single member has everything it logged on disk (so a restart knows every lock it granted).
   */
  leaseBarrier(): Promise<void>;
  /** Before a clean shutdown: let another member lead (Raft groups; a single member has nobody to hand to). */
  handOff?(): Promise<void>;
  /** The log index (and Raft term; 0 for a single member) the applied state stands at. */
  appliedPosition(): { index: number; term: number };
  /** Where the log stands, for metrics and health. */
  stats(): LogStats;
  /** Bytes the log itself holds in memory beside the state (a Raft member's entries and snapshot), if any. */
  heldBytes?(): number;
  /** Raft groups: members with their addresses, and single-server membership changes. */
  membersWithAddresses?(): [string, string | null][];
  proposeConfChange?(cc: { op: 'add' | 'remove'; id: string; address?: string }): Promise<void>;
}
