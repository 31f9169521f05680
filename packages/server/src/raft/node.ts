/**
 * The consensus core: one Raft member as a pure value, in the style of etcd-io/raft's RawNode.
 *
 * The driver (the I/O shell, or the simulator) owns time, storage, network and randomness:
 * - `tick()` is the only clock; `rand` the only source of randomness;
 * - `step(msg)` hands in a message from a peer; `propose()`, `proposeConfChange()`, `readIndex()`,
 *   `transferLeadership()` are the local requests;
 * - `ready()` returns what to do next, `advance()` says it was done. The rules for handling a Ready, in
 *   order (they are also on the {@link Ready} fields):
 *     1. persist `snapshot` (if any), then `entries`, then `hardState` (in that order, so a crash that keeps
 *        a prefix of the writes never keeps a commit index beyond the entries), and fsync if `mustSync`;
 *     2. only then send `messages`: a vote, or an acknowledgement of entries, must never outrun the disk.
 *        The exception: a leader's own messages ({@link mayLeaveBeforePersist}: appends, heartbeats,
 *        snapshots, timeoutNow) may be sent at once, in parallel with its fsync (Raft thesis 10.2.1): a
 *        leader counts its own entries toward a majority only after advance() says they are durable;
 *     3. restore the state machine from `snapshot` (if any), then apply `committed` in order;
 *     4. call `advance()`. `ready()` may not be called again before that; `step()` and `tick()` may.
 *
 * Design choices:
 * - A member that lost part of its storage rejoins without a say in elections until it has caught up
 *   (RaftConfig.rejoinTerm): a vote from a log missing entries it once acknowledged could elect a leader
 *   that lacks committed entries.
 * - Pre-vote (Raft thesis §9.6) and check-quorum, with leader stickiness: a member that heard from a leader
 *   within the election timeout ignores (pre-)vote requests, unless they come from a leadership transfer.
 * - Single-server membership changes (thesis §4.1). A configuration takes effect as soon as its entry is
 *   APPENDED to a log (leader or follower), whether committed or not, and is rolled back if that entry is
 *   truncated. A leader accepts a new change only once the previous one is committed and once it has
 *   committed an entry of its own term (the fix to the single-server change bug Ongaro described in 2015).
 *   A leader that removes itself keeps leading (without counting itself) until the change commits, then
 *   steps down. A member not in its own configuration never campaigns.
 * - The leader counts its own log as replicated before its Ready is persisted: it acts on a follower's
 *   acknowledgement only after sending the entries, which happens after persisting them (rule 2).
 */
import { applyConfChange, encodeConfChange } from './confchange.js';
import { invariant } from './invariant.js';
import { RaftLogView } from './log.js';
import { Progress } from './progress.js';
import { committedIndex, majority } from './quorum.js';
import {
  CompactedError,
  type ConfChange,
  type Entry,
  entryBytes,
  type HardState,
  type Message,
  type NodeId,
  NotLeaderError,
  type RaftStorage,
  type ReadState,
  type Ready,
  type Role,
  type Snapshot,
} from './types.js';

/** `context` of a vote request sent by a leadership transfer: voters grant it even within a leader's lease. */
export const CAMPAIGN_TRANSFER = 1;

/**
 * Messages a driver may send before persisting the Ready they came in: what a leader sends to replicate
 * (never a vote, a vote answer or an acknowledgement, which must not outrun the disk).
 */
export function mayLeaveBeforePersist(m: Message): boolean {
  return m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot' || m.type === 'timeoutNow';
}

/**
 * Successful append answers are cumulative (the leader frees every in-flight append up to the index): of
 * several to one leader in one term within one Ready, only the highest need go. Rejections all go.
 */
export function coalesceAppendAcks(msgs: Message[]): Message[] {
  let acks = 0;
  for (const m of msgs) if (m.type === 'appendResp' && !m.reject) acks++;
  if (acks < 2) return msgs;
  const best = new Map<string, Message>();
  for (const m of msgs) {
    if (m.type !== 'appendResp' || m.reject) continue;
    const key = `${m.to}\u0000${m.term}`;
    const b = best.get(key);
    if (!b || (m.hintIndex ?? 0) >= (b.hintIndex ?? 0)) best.set(key, m);
  }
  return msgs.filter((m) => m.type !== 'appendResp' || m.reject || best.get(`${m.to}\u0000${m.term}`) === m);
}

export interface RaftConfig {
  id: NodeId;
  /** Initial state and stable log; read-only to the core. */
  storage: RaftStorage;
  /** Randomized election timeout in [electionTicks, 2 * electionTicks). */
  electionTicks: number;
  /** A leader sends heartbeats every this many ticks. Must be below electionTicks. */
  heartbeatTicks: number;
  /** Uniform in [0, 1): the core's only randomness. */
  rand: () => number;
  /** Pre-vote before incrementing the term. Default true. */
  preVote?: boolean;
  /** A leader that has not heard from a majority within an election timeout steps down. Default true. */
  checkQuorum?: boolean;
  /** Entries per append message. Default 256. */
  maxEntriesPerMessage?: number;
  /** Entry bytes per append message (at least one entry is always sent). Default 16 MiB: frames stay under 64 MiB. */
  maxBytesPerMessage?: number;
  /** Unanswered (pipelined) appends per follower. Default 64. */
  maxInflightMessages?: number;
  /** Committed entries per Ready. Default 1024. */
  maxCommittedPerReady?: number;
  /**
   * A follower that has not acknowledged a snapshot after this many ticks is probed again (and sent a new
   * snapshot if it still needs one). The driver can end the wait sooner with reportSnapshot().
   * Default 20 * electionTicks.
   */
  snapshotRetryTicks?: number;
  /**
   * The member lost records it may have acted on (its storage healed damage by cutting them) and restarts
   * in this term: it follows a leader and acknowledges what it really stores, but neither campaigns, nor
   * grants a vote or pre-vote, nor takes over by a leadership transfer, until its log holds an entry (or
   * snapshot) of this term or later. Such an entry comes from a leader elected without this member, whose
   * log holds every committed entry; once this log matches it there, it holds every committed entry it may
   * once have acknowledged and lost. Default 0: not rejoining. (The storage side and the reasoning:
   * storage/raft-storage.ts, docs/consistency.md.)
   */
  rejoinTerm?: number;
  /**
   * The index the application has already applied (its state machine is durable up to there); committed
   * entries after it are delivered again. Default: the storage's snapshot index.
   */
  applied?: number;
  /** Deliberately broken variants, only for proving the simulator's checkers. Never set in a server. */
  unsafe?: {
    /** The leader commits an entry as soon as it has it locally. */
    commitWithoutMajority?: boolean;
  };
}

interface ReadRequest {
  context: number;
  /** The commit index when the request arrived. */
  index: number;
  acks: Set<NodeId>;
}

const EMPTY = Buffer.alloc(0);

export class RaftNode {
  readonly id: NodeId;
  private readonly storage: RaftStorage;
  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly rand: () => number;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly maxEntriesPerMessage: number;
  private readonly maxBytesPerMessage: number;
  /** A leader owes its followers an append (new entries or a new commit index), sent at the next ready(). */
  private bcastPending = false;
  private readonly maxInflight: number;
  private readonly maxCommittedPerReady: number;
  private readonly snapshotRetryTicks: number;
  private readonly commitWithoutMajority: boolean;
  /** See RaftConfig.rejoinTerm; 0 once the log reached it. */
  private rejoinTerm: number;

  private currentTerm: number;
  private vote: NodeId | null;
  private currentRole: Role = 'follower';
  private currentLeader: NodeId | null = null;
  private readonly log: RaftLogView;

  /** Members as of the snapshot (or the last conf entry known committed and pruned). */
  private baseMembers: NodeId[];
  /** The membership after each conf entry in the log above the base, ascending by index. */
  private confLog: { index: number; members: NodeId[] }[] = [];
  private memberSet = new Set<NodeId>();
  private memberList: NodeId[] = [];

  /** Leader: one per other member. */
  private readonly prs = new Map<NodeId, Progress>();
  /** (Pre-)candidate: the answers so far. */
  private readonly votes = new Map<NodeId, boolean>();
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  private leadTransferee: NodeId | null = null;
  /** Leader: no new conf change until the commit index reaches this. */
  private pendingConfIndex = 0;
  private readOnly: ReadRequest[] = [];
  /** Leader: readIndex() requests waiting for the first commit of this term. */
  private readsBeforeCommit: number[] = [];

  private msgs: Message[] = [];
  private readStates: ReadState[] = [];
  private prevHardState: HardState;
  private outstanding: Ready | null = null;

  constructor(cfg: RaftConfig) {
    invariant(
      cfg.electionTicks > cfg.heartbeatTicks && cfg.heartbeatTicks > 0,
      'heartbeatTicks < electionTicks',
    );
    this.id = cfg.id;
    this.storage = cfg.storage;
    this.electionTicks = cfg.electionTicks;
    this.heartbeatTicks = cfg.heartbeatTicks;
    this.rand = cfg.rand;
    this.preVote = cfg.preVote ?? true;
    this.checkQuorum = cfg.checkQuorum ?? true;
    this.maxEntriesPerMessage = cfg.maxEntriesPerMessage ?? 256;
    this.maxBytesPerMessage = cfg.maxBytesPerMessage ?? 16 * 1024 * 1024;
    this.maxInflight = cfg.maxInflightMessages ?? 64;
    this.maxCommittedPerReady = cfg.maxCommittedPerReady ?? 1024;
    this.snapshotRetryTicks = cfg.snapshotRetryTicks ?? 20 * cfg.electionTicks;
    this.commitWithoutMajority = cfg.unsafe?.commitWithoutMajority === true;
    this.rejoinTerm = cfg.rejoinTerm ?? 0;

    const storage = cfg.storage;
    const { hardState } = storage.initialState();
    const snap = storage.snapshot();
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    invariant(snap.meta.index === first - 1, 'the storage snapshot is just before its first entry');
    // A lost commit-only hard state write can leave the commit index below a snapshot installed after it.
    const committed = Math.max(hardState.commit, first - 1);
    invariant(
      committed <= last,
      () => `stored commit index ${committed} is beyond the last stored entry ${last} (was the log lost?)`,
    );
    const applied = cfg.applied ?? first - 1;
    invariant(applied >= first - 1 && applied <= committed, 'applied index within [snapshot, commit]');
    this.currentTerm = hardState.term;
    this.vote = hardState.vote;
    this.prevHardState = { ...hardState };
    this.log = new RaftLogView(storage, committed, applied);

    // The membership is the snapshot's, changed by every conf entry in the log after it.
    this.baseMembers = [...snap.meta.members];
    for (let lo = first; lo <= last; lo += 1024) {
      for (const e of storage.entries(lo, Math.min(last + 1, lo + 1024))) {
        if (e.type === 'conf') {
          this.confLog.push({ index: e.index, members: applyConfChange(this.currentMembers(), e.data) });
        }
      }
    }
    this.membershipChanged();
    this.pruneConfLog();
    this.becomeFollower(this.currentTerm, null);
  }

  // --- read-only state ---

  get role(): Role {
    return this.currentRole;
  }

  get term(): number {
    return this.currentTerm;
  }

  get leader(): NodeId | null {
    return this.currentLeader;
  }

  get votedFor(): NodeId | null {
    return this.vote;
  }

  get commitIndex(): number {
    return this.log.committed;
  }

  /** Highest index applied by the application (advanced by advance()). */
  get appliedIndex(): number {
    return this.log.applied;
  }

  get lastIndex(): number {
    return this.log.lastIndex();
  }

  get firstIndex(): number {
    return this.log.firstIndex();
  }

  /** The voting members, as of the latest conf entry in this node's log; sorted. */
  get members(): NodeId[] {
    return this.memberList.slice();
  }

  /**
   * Out of elections after lost storage, until the log holds an entry of RaftConfig.rejoinTerm or later.
   * Once over, it stays over: entries of that term came with a log that holds every committed entry, and a
   * later conflict only ever replaces entries above the commit index.
   */
  get rejoining(): boolean {
    if (this.rejoinTerm > 0 && this.log.lastTerm() >= this.rejoinTerm) this.rejoinTerm = 0;
    return this.rejoinTerm > 0;
  }

  /** The node a leadership transfer is handing over to, if one is in progress (leader only). */
  get transferee(): NodeId | null {
    return this.leadTransferee;
  }

  /** Term of entry i in this node's log (persisted or not); undefined if compacted or beyond the end. */
  termAt(i: number): number | undefined {
    return this.log.term(i);
  }

  /** Leader: its view of a follower's replication, for tests and diagnostics. */
  progress(id: NodeId): { match: number; next: number; state: string } | undefined {
    const pr = this.prs.get(id);
    return pr && { match: pr.match, next: pr.next, state: pr.state };
  }

  // --- the driver's interface ---

  /** One unit of logical time. */
  tick(): void {
    if (this.currentRole === 'leader') this.tickLeader();
    else this.tickElection();
    this.afterEvent();
  }

  /** Starts an election now (a pre-vote first, if enabled), as if the election timeout had elapsed. */
  campaign(): void {
    this.hup(false);
    this.afterEvent();
  }

  /**
   * Proposes a command. Returns where it was appended; it is committed if and when an entry with that index
   * and term is delivered in Ready.committed (another leader's entry may take the index instead).
   * Throws {@link NotLeaderError} unless this node is the leader and no leadership transfer is in progress.
   */
  propose(data: Buffer, payload?: Buffer): { index: number; term: number } {
    this.checkCanPropose();
    const e = this.appendEntry('normal', data, payload);
    // Sent with the next ready(): the proposals made until then travel in one append per follower.
    this.bcastPending = true;
    this.afterEvent();
    return { index: e.index, term: e.term };
  }

  /**
   * Proposes a single-server membership change. It takes effect on this leader at once (and on each follower
   * when appended there). Throws {@link NotLeaderError} as propose() does, and an Error if another change is
   * not committed yet, if this leader has not yet committed an entry of its term, or if the change is
   * not meaningful (adding a member, removing a non-member or the last member).
   */
  proposeConfChange(cc: ConfChange): { index: number; term: number } {
    this.checkCanPropose();
    if (this.log.committed < this.pendingConfIndex) {
      throw new Error(
        `a membership change is still in progress (entry ${this.pendingConfIndex} is not committed)`,
      );
    }
    if (cc.op === 'add' && this.memberSet.has(cc.id)) throw new Error(`${cc.id} is already a member`);
    if (cc.op === 'remove' && !this.memberSet.has(cc.id)) throw new Error(`${cc.id} is not a member`);
    if (cc.op === 'remove' && this.memberList.length === 1) throw new Error('cannot remove the last member');
    const e = this.appendEntry('conf', encodeConfChange(cc));
    this.pendingConfIndex = e.index;
    this.bcastAppend();
    this.afterEvent();
    return { index: e.index, term: e.term };
  }

  /**
   * Requests a linearizable read point (Raft §6.4). The leader records its commit index, confirms it is
   * still the leader with a heartbeat round answered by a majority, then emits ReadState { context, index }
   * in a Ready: a read served once the applied index reaches `index` is linearizable. A new leader first
   * commits an entry of its own term (its no-op) before it answers. `context` must be unique among the
   * reads in flight. Throws {@link NotLeaderError} on a non-leader. If leadership is lost the request is
   * dropped silently (the caller times out or watches the role).
   */
  readIndex(context: number): void {
    if (this.currentRole !== 'leader') throw new NotLeaderError(this.currentLeader);
    if (this.log.term(this.log.committed) !== this.currentTerm) {
      this.readsBeforeCommit.push(context);
      return;
    }
    this.startRead(context);
    this.afterEvent();
  }

  /**
   * Hands leadership to `to` (thesis §3.10): new proposals are refused, the target is caught up, then told
   * to campaign at once (skipping pre-vote and other members' leader stickiness). Abandoned if it does not
   * complete within an election timeout.
   */
  transferLeadership(to: NodeId): void {
    if (this.currentRole !== 'leader') throw new NotLeaderError(this.currentLeader);
    if (to === this.id || this.leadTransferee === to) return;
    if (!this.memberSet.has(to)) throw new Error(`cannot transfer leadership to ${to}: not a member`);
    this.leadTransferee = to;
    this.electionElapsed = 0;
    const pr = this.prs.get(to)!;
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(to);
    else this.sendAppend(to);
    this.afterEvent();
  }

  /**
   * The driver's report on a snapshot it was asked to send to `to`: delivered (ok) or failed. Either way the
   * leader probes the follower again rather than waiting for snapshotRetryTicks.
   */
  reportSnapshot(to: NodeId, ok: boolean): void {
    const pr = this.prs.get(to);
    if (this.currentRole !== 'leader' || !pr || pr.state !== 'snapshot') return;
    if (!ok) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    // Resume probing on the next heartbeat answer, as etcd does.
    pr.probeSent = true;
  }

  /** Hands in a message from a peer. Messages for another node, or from this one, are ignored. */
  step(m: Message): void {
    if (m.to !== this.id || m.from === this.id) return;
    this.stepMessage(m);
    this.afterEvent();
  }

  hasReady(): boolean {
    if (this.outstanding) return false;
    return (
      this.msgs.length > 0 ||
      (this.bcastPending && this.currentRole === 'leader') ||
      this.log.hasUnstable() ||
      this.log.pendingSnapshot !== null ||
      this.log.hasNextCommitted() ||
      this.readStates.length > 0 ||
      !sameHardState(this.hardState(), this.prevHardState)
    );
  }

  /** What to persist, send and apply next (see the rules at the top of this file). */
  ready(): Ready {
    invariant(this.outstanding === null, 'ready() is called again only after advance()');
    if (this.bcastPending) {
      this.bcastPending = false;
      if (this.currentRole === 'leader') this.bcastAppend();
    }
    const hs = this.hardState();
    const prev = this.prevHardState;
    const snap = this.log.pendingSnapshot;
    if (snap) this.log.applying = Math.max(this.log.applying, snap.meta.index);
    const entries = this.log.unstableEntries();
    const rd: Ready = {
      entries,
      messages: coalesceAppendAcks(this.msgs),
      committed: this.log.takeCommitted(this.maxCommittedPerReady),
      readStates: this.readStates,
      mustSync: entries.length > 0 || snap !== null || hs.term !== prev.term || hs.vote !== prev.vote,
    };
    if (!sameHardState(hs, prev)) {
      rd.hardState = hs;
      this.prevHardState = hs;
    }
    if (snap) rd.snapshot = snap;
    this.msgs = [];
    this.readStates = [];
    this.outstanding = rd;
    return rd;
  }

  /**
   * While the outstanding Ready is being persisted: entries committed since (durable on a majority, so
   * they may be applied now; the caller applies them at once, in order) and the messages that may leave
   * before persistence (a leader's appends for entries proposed meanwhile). Without this, a commit or a
   * new proposal would wait for the outstanding Ready's fsync. Nothing while a snapshot is outstanding.
   */
  early(): { committed: Entry[]; messages: Message[] } {
    const rd = this.outstanding;
    // A snapshot on its way to the state machine (outstanding, or received since) goes first, by ready().
    if (rd === null || rd.snapshot || this.log.pendingSnapshot !== null)
      return { committed: [], messages: [] };
    if (this.bcastPending && this.currentRole === 'leader') {
      this.bcastPending = false;
      this.bcastAppend();
    }
    let messages: Message[] = [];
    if (this.msgs.some(mayLeaveBeforePersist)) {
      messages = this.msgs.filter(mayLeaveBeforePersist);
      this.msgs = this.msgs.filter((m) => !mayLeaveBeforePersist(m));
    }
    const committed = this.log.takeCommitted(this.maxCommittedPerReady);
    if (committed.length > 0) this.log.applied = committed[committed.length - 1]!.index;
    return { committed, messages };
  }

  /** The last Ready was handled: persisted, sent and applied. */
  advance(): void {
    const rd = this.outstanding;
    invariant(rd !== null, 'advance() follows ready()');
    if (rd.snapshot) this.log.stableSnapTo(rd.snapshot.meta.index);
    if (rd.entries.length > 0) this.log.stableTo(rd.entries);
    // (early() may have handed out and applied later entries meanwhile: applied never moves back.)
    if (rd.committed.length > 0)
      this.log.applied = Math.max(this.log.applied, rd.committed[rd.committed.length - 1]!.index);
    else if (rd.snapshot) this.log.applied = Math.max(this.log.applied, rd.snapshot.meta.index);
    this.outstanding = null;
    // The leader's own entries just became durable: they may complete a majority.
    if (this.currentRole === 'leader' && rd.entries.length > 0 && this.maybeCommit())
      this.bcastPending = true;
  }

  // --- state transitions ---

  private hardState(): HardState {
    return { term: this.currentTerm, vote: this.vote, commit: this.log.committed };
  }

  private reset(term: number): void {
    if (term !== this.currentTerm) {
      invariant(term > this.currentTerm, () => `term moves forward (${this.currentTerm} -> ${term})`);
      this.currentTerm = term;
      this.vote = null;
    }
    this.currentLeader = null;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.electionTicks + Math.floor(this.rand() * this.electionTicks);
    this.leadTransferee = null;
    this.votes.clear();
    this.prs.clear();
    this.readOnly = [];
    this.readsBeforeCommit = [];
    this.pendingConfIndex = 0;
  }

  private becomeFollower(term: number, leader: NodeId | null): void {
    this.reset(term);
    this.currentRole = 'follower';
    this.currentLeader = leader;
  }

  private becomePreCandidate(): void {
    invariant(this.currentRole !== 'leader', 'a leader does not become a pre-candidate');
    // Neither the term nor the vote changes: a pre-vote round leaves no trace if it fails.
    this.currentRole = 'preCandidate';
    this.currentLeader = null;
    this.votes.clear();
    this.randomizedElectionTimeout = this.electionTicks + Math.floor(this.rand() * this.electionTicks);
  }

  private becomeCandidate(): void {
    invariant(this.currentRole !== 'leader', 'a leader does not become a candidate');
    this.reset(this.currentTerm + 1);
    this.vote = this.id;
    this.currentRole = 'candidate';
  }

  private becomeLeader(): void {
    invariant(this.currentRole === 'candidate', 'only a candidate becomes leader');
    this.reset(this.currentTerm);
    this.currentRole = 'leader';
    this.currentLeader = this.id;
    const next = this.log.lastIndex() + 1;
    for (const m of this.memberList) if (m !== this.id) this.prs.set(m, new Progress(next, this.maxInflight));
    // No conf change until this term's first entry (the no-op below) commits.
    this.pendingConfIndex = next;
    this.appendEntry('normal', EMPTY);
  }

  private promotable(): boolean {
    return this.memberSet.has(this.id) && !this.rejoining;
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(false);
    }
  }

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTicks) {
      this.electionElapsed = 0;
      if (this.checkQuorum && !this.quorumActive()) {
        this.becomeFollower(this.currentTerm, null);
        return;
      }
      // A transfer that did not complete within an election timeout is abandoned.
      this.leadTransferee = null;
    }
    for (const [to, pr] of this.prs) {
      if (pr.state === 'snapshot' && ++pr.snapshotTicks >= this.snapshotRetryTicks) {
        pr.becomeProbe();
        this.sendAppend(to);
      }
    }
    if (this.heartbeatElapsed >= this.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** Check-quorum: did a majority (counting this leader, if a member) answer since the last check? */
  private quorumActive(): boolean {
    let active = this.memberSet.has(this.id) ? 1 : 0;
    for (const [id, pr] of this.prs) {
      if (pr.recentActive && this.memberSet.has(id)) active++;
      pr.recentActive = false;
    }
    return active >= majority(this.memberList.length);
  }

  /** Starts an election: pre-vote first unless disabled or forced by a leadership transfer. */
  private hup(transfer: boolean): void {
    if (this.currentRole === 'leader' || !this.promotable()) return;
    if (this.preVote && !transfer) this.startCampaign('preVote', false);
    else this.startCampaign('vote', transfer);
  }

  private startCampaign(kind: 'preVote' | 'vote', transfer: boolean): void {
    let voteTerm: number;
    if (kind === 'preVote') {
      this.becomePreCandidate();
      voteTerm = this.currentTerm + 1;
    } else {
      this.becomeCandidate();
      voteTerm = this.currentTerm;
    }
    if (this.poll(this.id, true) === 'won') {
      // A single-member configuration.
      if (kind === 'preVote') this.startCampaign('vote', transfer);
      else {
        this.becomeLeader();
        this.bcastAppend();
      }
      return;
    }
    const lastIndex = this.log.lastIndex();
    const lastTerm = this.log.lastTerm();
    for (const to of this.memberList) {
      if (to === this.id) continue;
      const m: Message = {
        type: kind,
        from: this.id,
        to,
        term: voteTerm,
        logIndex: lastIndex,
        logTerm: lastTerm,
      };
      if (transfer) m.context = CAMPAIGN_TRANSFER;
      this.msgs.push(m);
    }
  }

  private poll(from: NodeId, granted: boolean): 'won' | 'lost' | 'pending' {
    if (this.memberSet.has(from) && !this.votes.has(from)) this.votes.set(from, granted);
    let yes = 0;
    let no = 0;
    for (const v of this.votes.values()) {
      if (v) yes++;
      else no++;
    }
    const q = majority(this.memberList.length);
    if (yes >= q) return 'won';
    if (no > this.memberList.length - q) return 'lost';
    return 'pending';
  }

  // --- messages ---

  private send(m: Omit<Message, 'from' | 'term'> & { term?: number }): void {
    this.msgs.push({ ...m, from: this.id, term: m.term ?? this.currentTerm });
  }

  private stepMessage(m: Message): void {
    // Only the leader this node follows, in its own term, may hand leadership over: anything else asking
    // for an election at once (a forged or stale message) is ignored, and its term is not adopted.
    if (m.type === 'timeoutNow' && (m.term !== this.currentTerm || m.from !== this.currentLeader)) return;
    if (m.term > this.currentTerm) {
      if (m.type === 'vote' || m.type === 'preVote') {
        // Leader stickiness: while this node hears from a leader, a (pre-)candidate cannot disrupt it,
        // unless the leader itself asked for the election (a transfer).
        const inLease =
          (this.checkQuorum || this.preVote) &&
          this.currentLeader !== null &&
          this.electionElapsed < this.electionTicks;
        if (inLease && m.context !== CAMPAIGN_TRANSFER) return;
      }
      if (m.type === 'preVote') {
        // A pre-vote request does not move this node's term.
      } else if (m.type === 'preVoteResp' && !m.reject) {
        // A granted pre-vote carries the term the pre-candidate will campaign in; it is not a new term yet.
      } else if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot') {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, null);
      }
    } else if (m.term < this.currentTerm) {
      if ((this.checkQuorum || this.preVote) && (m.type === 'heartbeat' || m.type === 'append')) {
        // A leader of an older term: this node may have moved its term on during a partition and now can
        // neither win an election nor follow that leader. Answering makes the old leader step down, so
        // a new election can include this node.
        this.send({ type: 'appendResp', to: m.from });
      } else if (m.type === 'preVote') {
        this.send({ type: 'preVoteResp', to: m.from, reject: true });
      }
      return;
    }

    if (m.type === 'vote' || m.type === 'preVote') {
      this.handleVoteRequest(m);
      return;
    }
    switch (this.currentRole) {
      case 'leader':
        this.stepLeader(m);
        break;
      case 'candidate':
      case 'preCandidate':
        this.stepCandidate(m);
        break;
      case 'follower':
        this.stepFollower(m);
        break;
    }
  }

  private handleVoteRequest(m: Message): void {
    const isPre = m.type === 'preVote';
    // One vote per term: repeat a vote already given, give one if none was given and no leader is known
    // in this term, and grant pre-votes for a later term freely (they promise nothing).
    const canVote =
      this.vote === m.from ||
      (this.vote === null && this.currentLeader === null) ||
      (isPre && m.term > this.currentTerm);
    const respType = isPre ? 'preVoteResp' : 'voteResp';
    if (canVote && !this.rejoining && this.log.isUpToDate(m.logIndex ?? 0, m.logTerm ?? 0)) {
      // The answer carries the request's term: for a pre-vote that is the future term asked about.
      this.send({ type: respType, to: m.from, term: m.term, reject: false });
      if (!isPre) {
        // Persisted (Ready.hardState) before the answer is sent (Ready.messages).
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, to: m.from, reject: true });
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case 'append':
      case 'heartbeat':
      case 'snapshot':
        // A leader won this term.
        this.becomeFollower(this.currentTerm, m.from);
        this.stepFollower(m);
        return;
      case 'preVoteResp':
      case 'voteResp': {
        const mine = this.currentRole === 'preCandidate' ? 'preVoteResp' : 'voteResp';
        if (m.type !== mine) return;
        if (mine === 'preVoteResp' && !m.reject && m.term !== this.currentTerm + 1) return;
        const result = this.poll(m.from, !m.reject);
        if (result === 'won') {
          if (this.currentRole === 'preCandidate') this.startCampaign('vote', false);
          else {
            this.becomeLeader();
            this.bcastAppend();
          }
        } else if (result === 'lost') {
          this.becomeFollower(this.currentTerm, null);
        }
        return;
      }
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case 'append':
        this.electionElapsed = 0;
        this.currentLeader = m.from;
        this.handleAppend(m);
        return;
      case 'heartbeat':
        this.electionElapsed = 0;
        this.currentLeader = m.from;
        this.handleHeartbeat(m);
        return;
      case 'snapshot':
        this.electionElapsed = 0;
        this.currentLeader = m.from;
        this.handleSnapshot(m);
        return;
      case 'timeoutNow':
        // The leader hands over: campaign at once, without pre-vote.
        this.hup(true);
        return;
      default:
        return;
    }
  }

  private handleAppend(m: Message): void {
    const prevIndex = m.logIndex ?? 0;
    const ents = m.entries ?? [];
    for (let i = 0; i < ents.length; i++) {
      // Malformed (not consecutive after logIndex, or from a later term than the message): drop it.
      if (ents[i]!.index !== prevIndex + 1 + i || ents[i]!.term > m.term) return;
    }
    if (prevIndex < this.log.committed) {
      // Everything up to the commit index already matches the leader's log.
      this.send({ type: 'appendResp', to: m.from, hintIndex: this.log.committed });
      return;
    }
    if (this.log.matchTerm(prevIndex, m.logTerm ?? 0)) {
      const lastNew = prevIndex + ents.length;
      let i = 0;
      while (i < ents.length && this.log.term(ents[i]!.index) === ents[i]!.term) i++;
      if (i < ents.length) {
        invariant(
          ents[i]!.index > this.log.committed,
          () => `entry ${ents[i]!.index} from ${m.from} conflicts with committed entry ${this.log.committed}`,
        );
        this.appendToLog(ents.slice(i));
      }
      // Only up to the last entry of this message is known to match the leader.
      this.commitTo(Math.min(m.commit ?? 0, lastNew));
      this.send({ type: 'appendResp', to: m.from, hintIndex: lastNew });
      return;
    }
    // Rejected: hint where the logs may match, so the leader skips whole terms at once.
    const hint = this.log.findConflictByTerm(Math.min(prevIndex, this.log.lastIndex()), m.logTerm ?? 0);
    this.send({
      type: 'appendResp',
      to: m.from,
      reject: true,
      logIndex: prevIndex,
      hintIndex: hint.index,
      hintTerm: hint.term,
    });
  }

  private handleHeartbeat(m: Message): void {
    // The leader caps `commit` at what it knows this follower has.
    this.commitTo(m.commit ?? 0);
    const resp: Omit<Message, 'from' | 'term'> = { type: 'heartbeatResp', to: m.from };
    if (m.context !== undefined) resp.context = m.context;
    this.send(resp);
  }

  private handleSnapshot(m: Message): void {
    const snap = m.snapshot;
    if (!snap) return;
    const { index, term } = snap.meta;
    if (index <= this.log.committed) {
      this.send({ type: 'appendResp', to: m.from, hintIndex: this.log.committed });
      return;
    }
    if (this.log.matchTerm(index, term)) {
      // The log already has the snapshot's last entry: keep the log, just learn the commit.
      this.commitTo(index);
      this.send({ type: 'appendResp', to: m.from, hintIndex: this.log.committed });
      return;
    }
    this.log.restore(snap);
    this.baseMembers = [...snap.meta.members];
    this.confLog = [];
    this.membershipChanged();
    this.send({ type: 'appendResp', to: m.from, hintIndex: index });
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case 'appendResp':
        this.handleAppendResp(m);
        return;
      case 'heartbeatResp':
        this.handleHeartbeatResp(m);
        return;
      case 'append':
      case 'heartbeat':
      case 'snapshot':
        invariant(false, () => `two leaders in term ${this.currentTerm}: ${this.id} and ${m.from}`);
        break;
      default:
        return;
    }
  }

  private handleAppendResp(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    pr.recentActive = true;
    if (m.reject) {
      let hint = m.hintIndex ?? 0;
      if ((m.hintTerm ?? 0) > 0) hint = this.log.findConflictByTerm(hint, m.hintTerm!).index;
      if (pr.maybeDecrTo(m.logIndex ?? 0, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppend(m.from);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.hintIndex ?? 0)) return;
    if (pr.state === 'probe') pr.becomeReplicate();
    else if (pr.state === 'snapshot' && pr.match >= pr.pendingSnapshot) pr.becomeReplicate();
    // A new commit index reaches the followers with the next ready(), once for all the acks until then.
    if (this.maybeCommit()) this.bcastPending = true;
    else if (wasPaused) this.sendAppend(m.from);
    // Flow control may allow several appends now (after probe -> replicate, or freed inflight slots).
    while (this.currentRole === 'leader' && this.prs.has(m.from) && this.sendAppend(m.from, false)) {}
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) this.sendTimeoutNow(m.from);
  }

  private handleHeartbeatResp(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    pr.recentActive = true;
    pr.probeSent = false;
    pr.freeOneIfFull();
    if (pr.match < this.log.lastIndex()) this.sendAppend(m.from);
    if (m.context === undefined || this.readOnly.length === 0) return;
    const at = this.readOnly.findIndex((r) => r.context === m.context);
    if (at < 0) return;
    const req = this.readOnly[at]!;
    if (this.memberSet.has(m.from)) req.acks.add(m.from);
    if (req.acks.size < majority(this.memberList.length)) return;
    // Leadership is confirmed for this request and for every earlier one.
    for (const r of this.readOnly.splice(0, at + 1))
      this.readStates.push({ context: r.context, index: r.index });
  }

  private startRead(context: number): void {
    const acks = new Set<NodeId>();
    if (this.memberSet.has(this.id)) acks.add(this.id);
    if (acks.size >= majority(this.memberList.length)) {
      this.readStates.push({ context, index: this.log.committed });
      return;
    }
    this.readOnly.push({ context, index: this.log.committed, acks });
    this.bcastHeartbeat(context);
  }

  // --- replication (leader) ---

  private checkCanPropose(): void {
    if (this.currentRole !== 'leader') throw new NotLeaderError(this.currentLeader);
    if (this.leadTransferee !== null) throw new NotLeaderError(this.leadTransferee);
    // A leader that removed itself only finishes committing what it has.
    if (!this.memberSet.has(this.id)) throw new NotLeaderError(null);
  }

  private appendEntry(type: Entry['type'], data: Buffer, payload?: Buffer): Entry {
    const index = this.log.lastIndex() + 1;
    const e: Entry = Object.freeze(
      payload
        ? { term: this.currentTerm, index, type, data, payload }
        : { term: this.currentTerm, index, type, data },
    );
    this.appendToLog([e]);
    this.maybeCommit();
    return e;
  }

  /** Appends to the log and keeps the membership in step with the conf entries it now holds. */
  private appendToLog(ents: readonly Entry[]): void {
    const after = ents[0]!.index;
    this.log.append(ents);
    let changed = false;
    while (this.confLog.length > 0 && this.confLog[this.confLog.length - 1]!.index >= after) {
      this.confLog.pop();
      changed = true;
    }
    for (const e of ents) {
      if (e.type !== 'conf') continue;
      this.confLog.push({ index: e.index, members: applyConfChange(this.currentMembers(), e.data) });
      changed = true;
    }
    if (changed) this.membershipChanged();
  }

  private currentMembers(): NodeId[] {
    return this.confLog.length > 0 ? this.confLog[this.confLog.length - 1]!.members : this.baseMembers;
  }

  private membershipChanged(): void {
    const members = this.currentMembers();
    this.memberSet = new Set(members);
    this.memberList = [...members].sort();
    if (this.currentRole !== 'leader') return;
    this.syncProgress();
  }

  /**
   * Leader: tracks every member, and keeps replicating to a member being removed until the change commits,
   * so that it learns of its removal (and stops campaigning) rather than time out and disrupt.
   */
  private syncProgress(): void {
    const next = this.log.lastIndex() + 1;
    for (const m of this.memberList) {
      if (m !== this.id && !this.prs.has(m)) {
        const pr = new Progress(next, this.maxInflight);
        pr.recentActive = true;
        this.prs.set(m, pr);
      }
    }
    if (this.leadTransferee !== null && !this.memberSet.has(this.leadTransferee)) this.leadTransferee = null;
    if (this.confLog.length > 0) return;
    for (const id of [...this.prs.keys()]) if (!this.memberSet.has(id)) this.prs.delete(id);
  }

  private commitTo(index: number): boolean {
    if (!this.log.commitTo(index)) return false;
    if (this.pruneConfLog() && this.currentRole === 'leader') this.syncProgress();
    if (this.currentRole === 'leader' && this.log.term(this.log.committed) === this.currentTerm) {
      const waiting = this.readsBeforeCommit;
      this.readsBeforeCommit = [];
      for (const context of waiting) this.startRead(context);
    }
    return true;
  }

  /** Conf entries at or below the commit index can never be rolled back: fold them into the base. */
  private pruneConfLog(): boolean {
    let pruned = false;
    while (this.confLog.length > 0 && this.confLog[0]!.index <= this.log.committed) {
      this.baseMembers = this.confLog.shift()!.members;
      pruned = true;
    }
    return pruned;
  }

  /**
   * Advances the commit index to what a majority of the members has. Raft §5.4.2: only an entry of the
   * current term is committed by counting replicas; earlier entries commit with it.
   */
  private maybeCommit(): boolean {
    if (this.commitWithoutMajority) return this.commitTo(this.log.lastIndex());
    // The leader counts its own copy only once it is durable: its appends may go out while its own fsync
    // runs (thesis 10.2.1), so an entry commits on a majority of durable copies, with or without the leader's.
    const durable = this.log.durableLastIndex();
    const index = committedIndex(this.memberList, (id) =>
      id === this.id ? durable : (this.prs.get(id)?.match ?? 0),
    );
    if (index <= this.log.committed || this.log.term(index) !== this.currentTerm) return false;
    return this.commitTo(index);
  }

  private bcastAppend(): void {
    for (const to of this.prs.keys()) this.sendAppend(to);
  }

  private bcastHeartbeat(context?: number): void {
    const ctx = context ?? this.readOnly[this.readOnly.length - 1]?.context;
    for (const [to, pr] of this.prs) {
      const m: Omit<Message, 'from' | 'term'> = {
        type: 'heartbeat',
        to,
        commit: Math.min(pr.match, this.log.committed),
      };
      if (ctx !== undefined) m.context = ctx;
      this.send(m);
    }
  }

  /**
   * Sends `to` the entries it needs next (or a snapshot when they were compacted). With sendIfEmpty false,
   * sends only if there are entries. Returns whether a message went out.
   */
  private sendAppend(to: NodeId, sendIfEmpty = true): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    let ents: Entry[] | null = null;
    if (prevTerm !== undefined) {
      try {
        ents = this.log.entries(pr.next, this.log.lastIndex() + 1, this.maxEntriesPerMessage);
      } catch (err) {
        if (!(err instanceof CompactedError)) throw err;
      }
    }
    if (prevTerm === undefined || ents === null) return this.sendSnapshot(to, pr);
    if (ents.length === 0 && !sendIfEmpty) return false;
    let bytes = 0;
    for (let i = 0; i < ents.length; i++) {
      bytes += entryBytes(ents[i]!);
      if (i > 0 && bytes > this.maxBytesPerMessage) {
        ents = ents.slice(0, i);
        break;
      }
    }
    this.send({
      type: 'append',
      to,
      logIndex: prevIndex,
      logTerm: prevTerm,
      entries: ents,
      commit: this.log.committed,
    });
    pr.sentAppend(prevIndex + ents.length, ents.length);
    return true;
  }

  private sendSnapshot(to: NodeId, pr: Progress): boolean {
    const snapshot: Snapshot = this.log.snapshotForFollower();
    invariant(snapshot.meta.index > 0, 'entries are compacted only into a real snapshot');
    this.send({ type: 'snapshot', to, snapshot });
    pr.becomeSnapshot(snapshot.meta.index);
    return true;
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send({ type: 'timeoutNow', to });
  }

  /** After every event: a leader whose own removal has committed steps down. */
  private afterEvent(): void {
    if (
      this.currentRole === 'leader' &&
      !this.memberSet.has(this.id) &&
      this.log.committed >= this.pendingConfIndex &&
      this.confLog.length === 0
    ) {
      // Tell the others the change committed, then step down; they elect a leader among themselves.
      this.bcastAppend();
      this.becomeFollower(this.currentTerm, null);
    }
  }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
