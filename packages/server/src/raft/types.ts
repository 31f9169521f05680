/**
 * The consensus core's vocabulary. The core (raft/node.ts) is a pure value driven by `step()`,
 * `tick()` and `propose()`; `ready()` says what to persist, send and apply; `advance()` says it was done.
 * Storage, network, clock and randomness come in from outside, so the simulator can drive all of them.
 */

/** A server id: 1..64 characters of [A-Za-z0-9._-]. */
export type NodeId = string;

export type EntryType = 'normal' | 'conf';

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  /**
   * 'normal': an encoded state-machine command (opaque to the core; empty for the no-op a new leader
   * appends). 'conf': an encoded {@link ConfChange}.
   */
  data: Buffer;
  /**
   * Bytes that follow `data` in the entry's encoding, held apart so that a command's page bytes reach the
   * WAL and the peers as they came from the client, without being copied into one buffer: the entry's
   * bytes are `data` then `payload`. Only entries made by a proposal on this member have one; an entry read
   * back from the WAL or received from a peer holds all its bytes in `data`.
   */
  payload?: Buffer;
}

/** An entry's encoded size in bytes: `data` and `payload`. */
export function entryBytes(e: Entry): number {
  return e.data.length + (e.payload?.length ?? 0);
}

/** An entry's bytes as the parts to write in order (no copy). */
export function entryParts(e: Entry): Buffer[] {
  return e.payload && e.payload.length > 0 ? [e.data, e.payload] : [e.data];
}

/** One membership change at a time (single-server changes). */
export interface ConfChange {
  op: 'add' | 'remove';
  id: NodeId;
  /** host:port of an added member, so every member (and any later leader) can reach it. */
  address?: string;
}

/** What must be on stable storage before any message of the same Ready is sent. */
export interface HardState {
  term: number;
  vote: NodeId | null;
  commit: number;
}

export interface SnapshotMeta {
  index: number;
  term: number;
  /** Voting members as of `index`. */
  members: NodeId[];
}

export interface Snapshot {
  meta: SnapshotMeta;
  /** The state machine's state at meta.index, opaque to the core. */
  data: Buffer;
  /** The length of `data` where reading `data` would first serialise it (storage's restored snapshot). */
  readonly dataBytes?: number;
}

export type MessageType =
  | 'preVote'
  | 'preVoteResp'
  | 'vote'
  | 'voteResp'
  | 'append'
  | 'appendResp'
  | 'heartbeat'
  | 'heartbeatResp'
  | 'snapshot'
  | 'timeoutNow';

export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  /**
   * append: index/term of the entry before `entries`; vote/preVote: the candidate's last index/term;
   * appendResp with `reject`: the logIndex of the append it rejects (so the leader can ignore stale rejects).
   */
  logIndex?: number;
  logTerm?: number;
  entries?: Entry[];
  /** append/heartbeat: the leader's commit index (capped for the follower's log). */
  commit?: number;
  /** Responses: rejected (vote refused, append did not match). */
  reject?: boolean;
  /** appendResp: the follower's last matching index (accepted), or a hint where to retry (rejected). */
  hintIndex?: number;
  hintTerm?: number;
  snapshot?: Snapshot;
  /**
   * heartbeat/heartbeatResp: carries a ReadIndex round's context. vote/preVote: CAMPAIGN_TRANSFER (1, see
   * raft/node.ts) marks a campaign started by a leadership transfer, which voters grant despite leader
   * stickiness.
   */
  context?: number;
}

export interface ReadState {
  /** The context passed to readIndex(). */
  context: number;
  /** Reads that wait until the applied index reaches this are linearizable. */
  index: number;
}

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

export interface Ready {
  /** Persist if present (term/vote changes must be durable before messages go out). */
  hardState?: HardState;
  /** Append to stable storage; an entry whose index is already stored replaces it and everything after. */
  entries: Entry[];
  /** A snapshot received from the leader: persist it and restore the state machine from it. */
  snapshot?: Snapshot;
  /** Send only after hardState, entries and snapshot above are durable. */
  messages: Message[];
  /**
   * Committed entries to apply, in order (after the snapshot, if any). They are durable on a majority, so
   * they may be applied before this Ready's own entries are persisted (the drivers do, to save an fsync).
   */
  committed: Entry[];
  readStates: ReadState[];
  /** True when hardState (term or vote), entries or snapshot must be fsynced before messages are sent. */
  mustSync: boolean;
}

/** Read-only access to what is on stable storage; the core never writes through it. */
export interface RaftStorage {
  /**
   * `members`: the membership after every conf entry stored. (The core itself rebuilds the membership
   * from snapshot().meta.members and the conf entries after it, so it can roll back an uncommitted change.)
   */
  initialState(): { hardState: HardState; members: NodeId[] };
  /** Entries [lo, hi). Throws {@link CompactedError} below firstIndex. */
  entries(lo: number, hi: number): Entry[];
  /** Term of entry i; for i = firstIndex - 1 the snapshot's term. */
  term(i: number): number;
  firstIndex(): number;
  lastIndex(): number;
  snapshot(): Snapshot;
}

export class CompactedError extends Error {
  constructor(index: number) {
    super(`entry ${index} was compacted into a snapshot`);
    this.name = 'CompactedError';
  }
}

export class NotLeaderError extends Error {
  constructor(readonly leader: NodeId | null) {
    super(leader ? `not the leader; the leader is ${leader}` : 'not the leader; no leader is known');
    this.name = 'NotLeaderError';
  }
}
