/**
 * The one loop that drives the pure Raft core (raft/node.ts): it feeds the core its inputs and carries out
 * each `Ready`. The server's {@link RaftLog} and the simulator (sim/simulator.ts) both run it, over narrow
 * interfaces: a {@link DurableLog}, a {@link PeerSender}, the state machine's side ({@link DriverApp}) and
 * an {@link Env}. It is synchronous and calls back (no promises), so the simulator stays deterministic and
 * can complete an fsync in the same step, and the server pays no extra turn of the event loop.
 *
 * The loop, one Ready at a time and in this order:
 *   1. a snapshot from the leader is persisted and the state machine restored from it (`installSnapshot`);
 *   2. a leader's own messages ({@link mayLeaveBeforePersist}: appends, heartbeats) leave at once, in
 *      parallel with its fsync; votes and acknowledgements wait for step 4;
 *   3. hard state and new entries are handed to the durable log, and the committed entries are applied
 *      (unless this Ready restores a snapshot): they are durable on a majority already, so they need not
 *      wait for this Ready's own fsync;
 *   4. when `mustSync`, the loop waits until the log says its writes are durable; only then do the other
 *      messages leave (a vote or an acknowledgement must never outrun the disk);
 *   5. with a snapshot, the committed entries are applied now (after the restore); read states are answered
 *      once applied; `advance()`; then the application may compact (`afterReady`).
 * While the loop waits in step 4, what may go ahead of the fsync (new commits, a leader's appends of new
 * proposals: `core.early()`) goes on the next turn of the event loop, once per turn, so that proposals made
 * together still share a message.
 *
 * A proposal resolves with the outcome of the entry at its index if that entry has its term; if another
 * leader's entry took the index, it fails with UNAVAILABLE and the client retries (same seq: applied at
 * most once, thanks to the state machine's dedup table). A leader that loses leadership fails every
 * proposal and read it holds (the outcome is unknown: `maybeApplied`).
 *
 * A failure inside the loop (the disk, an invariant) stops it for good: proposals are refused from then on,
 * and `onFailure` hears of it (the server logs it, the simulator reports it).
 */
import { type Env, type EnvTimer, SegmemError } from '@segmem/protocol';
import type { Outcome } from '../core/commands.js';
import { decodeConfChange } from '../raft/confchange.js';
import { invariant } from '../raft/invariant.js';
import { mayLeaveBeforePersist } from '../raft/node.js';
import type { ConfChange, Entry, HardState, Message, NodeId, Ready, Role, Snapshot } from '../raft/types.js';
import { NotLeaderError } from '../raft/types.js';

/** What the driver needs from the core (raft/node.ts). */
export interface RaftCore {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: number;
  readonly leader: NodeId | null;
  readonly members: NodeId[];
  readonly commitIndex: number;
  readonly lastIndex: number;
  tick(): void;
  step(msg: Message): void;
  propose(data: Buffer, payload?: Buffer): { index: number; term: number };
  proposeConfChange(cc: ConfChange): { index: number; term: number };
  readIndex(context: number): void;
  transferLeadership(to: NodeId): void;
  progress(id: NodeId): { match: number; next: number; state: string } | undefined;
  reportSnapshot(to: NodeId, ok: boolean): void;
  hasReady(): boolean;
  ready(): Ready;
  /** While a Ready is being persisted: commits to apply and messages that may go ahead of it. */
  early(): { committed: Entry[]; messages: Message[] };
  advance(): void;
}

export interface PeerSender {
  send(msg: Message): void;
  /** Optional batching: sends between cork() and flush() may leave together. */
  cork?(): void;
  flush?(): void;
  setMembers(members: NodeId[]): void;
  addressOf(id: NodeId): string | undefined;
  addAddress(id: NodeId, address: string): void;
  /** Bytes sent and messages dropped so far (for metrics). */
  readonly sentBytes?: number;
  readonly droppedMessages?: number;
  /** Peers this member dialled that failed to prove the cluster secret. */
  readonly authFailures?: number;
}

/** The Raft log's stable storage, as the driver writes it. */
export interface DurableLog {
  /**
   * Appends the Ready's entries, then its hard state (buffered: no waiting here; entries first, so a crash
   * that keeps a prefix never keeps a commit index beyond them). Returns the position to wait on.
   */
  save(hardState: HardState | undefined, entries: Entry[]): number;
  /** Calls `done` once everything up to `position` is durable (at once if it is), or `failed`. */
  waitDurable(position: number, done: () => void, failed: (err: unknown) => void): void;
  /**
   * After `save` threw: if the log refuses writes only for now (a full disk, retried), calls `retry` once
   * they may be tried again and returns true; false if the error is not such a stall.
   */
  onceWritable?(retry: () => void): boolean;
}

/** The state machine's side of the loop. */
export interface DriverApp {
  /**
   * Persists a snapshot received from the leader and restores the state machine from it, then calls `done`
   * (at once if it can), or `failed`.
   */
  installSnapshot(snap: Snapshot, done: () => void, failed: (err: unknown) => void): void;
  /**
   * Applies one committed entry (every kind, in index order, each exactly once) and returns the outcome of
   * a command; null for a no-op or a membership change.
   */
  apply(entry: Entry): Outcome | null;
  /** After each Ready: the place to take a snapshot and compact the log. */
  afterReady?(): void;
}

export interface ProposalCallbacks<T> {
  resolve(value: T): void;
  reject(err: Error): void;
}

export interface RaftDriverOptions {
  core: RaftCore;
  storage: DurableLog;
  peers: PeerSender;
  app: DriverApp;
  env: Env;
  /** Where the state machine stands when the driver starts (its snapshot's index and term). */
  applied: { index: number; term: number };
  /** The role or the known leader changed (checked after each pass of the loop). */
  onRoleChange?: (role: Role, leader: NodeId | null, term: number) => void;
  /** A conf entry named a member's address. */
  onAddress?: (id: NodeId, address: string) => void;
  /**
   * The loop failed and stopped: `err` is what proposals are refused with, `cause` what was thrown (the
   * simulator reports it; the server only logs it).
   */
  onFailure?: (err: SegmemError, cause: unknown) => void;
  log?: (line: string) => void;
}

/**
 * How long a leader holds a commit notice back (see `sendAll`): about the time a client takes to send its
 * next request after an answer, so that the append of that request carries the commit instead.
 */
export const NOTICE_DELAY_MS = 1;

const OK_OUTCOME: Outcome = { result: { ok: true, value: null }, effects: [] };

export class RaftDriver {
  readonly core: RaftCore;
  private readonly pending = new Map<number, { term: number } & ProposalCallbacks<Outcome>>();
  private readonly reads = new Map<number, ProposalCallbacks<void>>();
  /** Read states waiting for the applied index to reach theirs, lowest first. */
  private readonly waitingApplied: { index: number; resolve: () => void }[] = [];
  private nextReadContext = 1;
  private appliedIndex: number;
  private appliedTerm: number;
  /** A Ready is being handled (possibly waiting for the disk). */
  private processing = false;
  /** Input arrived while processing: one more pass once the current Ready is done. */
  private again = false;
  private earlyScheduled = false;
  private closed = false;
  private failure: SegmemError | null = null;
  private lastRole: Role;
  private lastLeader: NodeId | null;

  constructor(private readonly opts: RaftDriverOptions) {
    this.core = opts.core;
    this.appliedIndex = opts.applied.index;
    this.appliedTerm = opts.applied.term;
    this.lastRole = opts.core.role;
    this.lastLeader = opts.core.leader;
  }

  /** The Raft index and term of the last entry applied. */
  get applied(): { index: number; term: number } {
    return { index: this.appliedIndex, term: this.appliedTerm };
  }

  /** One tick of the consensus clock. */
  tick(): void {
    if (this.closed) return;
    this.core.tick();
    this.kick();
  }

  /**
   * A snapshot that could not be sent (its bytes were still being made: the message was dropped) is ready:
   * the followers waiting for one are probed again now instead of after the core's snapshot retry ticks.
   */
  retrySnapshots(): void {
    if (this.closed || this.failure) return;
    for (const id of this.core.members) if (id !== this.core.id) this.core.reportSnapshot(id, false);
    this.kick();
  }

  /** A message from a peer. */
  receive(msg: Message): void {
    if (this.closed) return;
    this.core.step(msg);
    this.kick();
  }

  /**
   * Proposes a command (encoded); `cb` hears its outcome once it is applied. Throws NotLeaderError (as the
   * core does) when this member does not lead, and the driver's failure or CLOSED when it stopped.
   */
  propose(data: Buffer, cb: ProposalCallbacks<Outcome>, payload?: Buffer): { index: number; term: number } {
    this.refuseIfStopped();
    const at = this.core.propose(data, payload);
    this.pending.set(at.index, { term: at.term, ...cb });
    this.kick();
    return at;
  }

  /** Proposes a membership change; `cb` hears once it is applied. Throws as {@link propose} and the core do. */
  proposeConfChange(cc: ConfChange, cb: ProposalCallbacks<Outcome>): { index: number; term: number } {
    this.refuseIfStopped();
    const at = this.core.proposeConfChange(cc);
    this.pending.set(at.index, { term: at.term, ...cb });
    this.kick();
    return at;
  }

  /**
   * ReadIndex: `cb` resolves once the applied state includes everything committed before the call.
   * Throws NotLeaderError when this member does not lead.
   */
  readBarrier(cb: ProposalCallbacks<void>): void {
    this.refuseIfStopped();
    if (this.core.role !== 'leader') throw new NotLeaderError(this.core.leader);
    const context = this.nextReadContext++;
    this.reads.set(context, cb);
    this.core.readIndex(context);
    this.kick();
  }

  transferLeadership(to: NodeId): void {
    this.core.transferLeadership(to);
    this.kick();
  }

  /** Stops the loop; every proposal and read still waiting fails with CLOSED. */
  close(): void {
    this.closed = true;
    this.opts.env.clearTimeout(this.noticeTimer);
    this.notices.clear();
    const err = new SegmemError('CLOSED', 'the server is shutting down');
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const r of this.reads.values()) r.reject(err);
    this.reads.clear();
  }

  /** Records the address an 'add' conf entry carries. */
  learnAddress(data: Buffer): void {
    try {
      const cc = decodeConfChange(data);
      if (cc.op === 'add' && cc.address) {
        this.opts.peers.addAddress(cc.id, cc.address);
        this.opts.onAddress?.(cc.id, cc.address);
      }
    } catch {
      // a conf entry the core accepted is well formed; nothing to learn otherwise
    }
  }

  private refuseIfStopped(): void {
    if (this.closed) throw new SegmemError('CLOSED', 'the server is shutting down');
    if (this.failure) throw this.failure;
  }

  /** Runs the loop, or, while it runs, folds this input into one more pass. */
  kick(): void {
    if (this.closed || this.failure) return;
    if (this.processing) {
      this.again = true;
      this.scheduleEarly();
      return;
    }
    this.run();
  }

  /** Handles Readies until none is left or one waits for the disk (whose callback resumes the loop). */
  private run(): void {
    this.processing = true;
    try {
      for (;;) {
        this.again = false;
        while (!this.closed && !this.failure && this.core.hasReady()) {
          if (!this.handle(this.core.ready())) return; // waiting: still processing
        }
        if (this.closed || this.failure) break;
        this.noticeRole();
        if (!this.again) break;
      }
    } catch (err) {
      this.fail(err);
    }
    this.processing = false;
  }

  /** Steps 1-5 for one Ready; false when it waits for storage (the loop resumes from the callback). */
  private handle(rd: Ready): boolean {
    const snap = rd.snapshot;
    if (snap) {
      const waited = this.wait(
        (done, failed) => this.opts.app.installSnapshot(snap, done, failed),
        () => {
          if (this.persist(rd)) this.run();
        },
      );
      if (!waited) return false;
    }
    return this.persist(rd);
  }

  /** Steps 2-5: false when it waits for the fsync. */
  private persist(rd: Ready): boolean {
    const { peers } = this.opts;
    if (rd.snapshot) {
      this.appliedIndex = rd.snapshot.meta.index;
      this.appliedTerm = rd.snapshot.meta.term;
      peers.setMembers(rd.snapshot.meta.members);
    }
    // A membership change takes effect when appended: learn an added member's address and link to it now.
    if (rd.entries.some((e) => e.type === 'conf')) {
      for (const e of rd.entries) if (e.type === 'conf') this.learnAddress(e.data);
      peers.setMembers(this.core.members);
    }
    const early = rd.messages.filter(mayLeaveBeforePersist);
    this.sendAll(early, !rd.snapshot && rd.committed.length > 0);
    return this.save(rd, early.length);
  }

  /**
   * Steps 2 (the save itself) to 5: false when it waits for the fsync, or for a disk that refuses writes
   * for now (full): then the same Ready is saved again once it takes them, and nothing else moves meanwhile
   * (a stalled member neither acknowledges nor applies; the others go on without it).
   */
  private save(rd: Ready, sentEarly: number): boolean {
    const { storage } = this.opts;
    let position: number;
    try {
      position = storage.save(rd.hardState, rd.entries);
    } catch (err) {
      const waiting = storage.onceWritable?.(() => {
        this.stalled = false;
        if (this.closed || this.failure) return;
        this.opts.log?.('raft: the log takes writes again');
        this.guard(() => {
          if (this.save(rd, sentEarly)) this.run();
        });
      });
      if (!waiting) throw err;
      // The core counts this Ready's committed entries as applied: none after them may be applied early.
      this.stalled = true;
      this.opts.log?.(`raft: waiting for the disk: ${(err as Error).message}`);
      return false;
    }
    if (!rd.snapshot) for (const e of rd.committed) this.applyEntry(e);
    if (rd.mustSync) {
      const waited = this.wait(
        (done, failed) => storage.waitDurable(position, done, failed),
        () => {
          this.finish(rd, sentEarly);
          this.run();
        },
      );
      if (!waited) return false;
    }
    this.finish(rd, sentEarly);
    return true;
  }

  /** Step 5 (and the late messages of step 4). */
  private finish(rd: Ready, sentEarly: number): void {
    this.sendAll(sentEarly === 0 ? rd.messages : rd.messages.filter((m) => !mayLeaveBeforePersist(m)));
    if (rd.snapshot) for (const e of rd.committed) this.applyEntry(e);
    for (const rs of rd.readStates) {
      const r = this.reads.get(rs.context);
      if (!r) continue;
      this.reads.delete(rs.context);
      this.whenApplied(rs.index, () => r.resolve());
    }
    this.core.advance();
    this.opts.app.afterReady?.();
  }

  /**
   * Starts an operation that calls back; true if it completed at once. Otherwise `then` runs when it
   * completes (unless the driver stopped meanwhile), and a failure stops the driver.
   */
  private wait(start: (done: () => void, failed: (err: unknown) => void) => void, then: () => void): boolean {
    let synchronous = true;
    let completed = false;
    start(
      () => {
        if (synchronous) completed = true;
        else if (!this.closed && !this.failure) this.guard(then);
      },
      (err) => this.fail(err),
    );
    synchronous = false;
    return completed;
  }

  /** Runs a continuation of the loop outside of `run()`'s own try. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.fail(err);
      this.processing = false;
    }
  }

  /** A Ready waits for a disk that refuses writes for now (see `save`): nothing runs early meanwhile. */
  private stalled = false;

  private scheduleEarly(): void {
    if (this.earlyScheduled) return;
    this.earlyScheduled = true;
    this.opts.env.setImmediate(() => {
      this.earlyScheduled = false;
      if (this.processing && !this.closed && !this.failure) this.guard(() => this.runEarly());
    });
  }

  private runEarly(): void {
    if (this.stalled) return;
    const { committed, messages } = this.core.early();
    this.sendAll(messages, committed.length > 0);
    for (const e of committed) this.applyEntry(e);
  }

  /**
   * Sends `messages`. With `answersFirst` (the caller is about to apply committed entries), a leader's
   * commit notices (appends without entries) wait {@link NOTICE_DELAY_MS}, so that the answers to the
   * entries just committed leave first (on a few shared CPUs, followers woken to apply the commit would
   * compete with the leader's answer), and a notice whose peer gets a later append meanwhile (which
   * carries the commit index too) is dropped: under steady traffic a commit then costs no message of its
   * own, nor the follower's answer to it. Raft tolerates the delay.
   */
  private sendAll(messages: readonly Message[], answersFirst = false): void {
    if (messages.length === 0) return;
    const peers = this.opts.peers;
    peers.cork?.();
    for (const m of messages) {
      if (m.type === 'append') {
        if (answersFirst && (m.entries?.length ?? 0) === 0) {
          this.deferNotice(m);
          continue;
        }
        this.notices.delete(m.to);
      }
      this.sendOne(m);
    }
    peers.flush?.();
  }

  private sendOne(m: Message): void {
    // A message that cannot be encoded (e.g. a snapshot larger than a frame) is dropped like a lost one:
    // the core retries, and this loop, which every member depends on, keeps running.
    try {
      this.opts.peers.send(m);
    } catch (err) {
      this.opts.log?.(`dropped a ${m.type} message to ${m.to}: ${(err as Error).message}`);
    }
  }

  /** Commit notices held back by {@link sendAll}, the latest per peer. */
  private readonly notices = new Map<NodeId, Message>();

  private noticeTimer: EnvTimer | null = null;

  private deferNotice(m: Message): void {
    this.notices.set(m.to, m);
    if (this.noticeTimer !== null) return;
    this.noticeTimer = this.opts.env.setTimeout(() => {
      this.noticeTimer = null;
      if (this.closed || this.failure || this.notices.size === 0) return;
      const peers = this.opts.peers;
      peers.cork?.();
      for (const n of this.notices.values()) this.sendOne(n);
      this.notices.clear();
      peers.flush?.();
    }, NOTICE_DELAY_MS);
  }

  private applyEntry(e: Entry): void {
    invariant(
      e.index === this.appliedIndex + 1,
      () => `entries are applied in order, once: entry ${e.index} came after ${this.appliedIndex}`,
    );
    this.appliedIndex = e.index;
    this.appliedTerm = e.term;
    const outcome = this.opts.app.apply(e);
    if (e.type === 'conf') this.opts.peers.setMembers(this.core.members);
    const waiting = this.pending.get(e.index);
    if (waiting) {
      this.pending.delete(e.index);
      if (waiting.term === e.term) waiting.resolve(outcome ?? OK_OUTCOME);
      else {
        waiting.reject(
          new SegmemError('UNAVAILABLE', 'leadership changed before the request committed; retry', {
            reason: 'NOT_LEADER',
          }),
        );
      }
    }
    while (this.waitingApplied.length > 0 && this.waitingApplied[0]!.index <= this.appliedIndex) {
      this.waitingApplied.shift()!.resolve();
    }
  }

  private whenApplied(index: number, resolve: () => void): void {
    if (index <= this.appliedIndex) {
      resolve();
      return;
    }
    let at = this.waitingApplied.length;
    while (at > 0 && this.waitingApplied[at - 1]!.index > index) at--;
    this.waitingApplied.splice(at, 0, { index, resolve });
  }

  private noticeRole(): void {
    const role = this.core.role;
    const leader = this.core.leader;
    if (role === this.lastRole && leader === this.lastLeader) return;
    const lostLeadership = this.lastRole === 'leader' && role !== 'leader';
    this.lastRole = role;
    this.lastLeader = leader;
    if (lostLeadership) {
      // The entries may still commit under the next leader: the outcome is unknown (retries with the same
      // seq are answered from the dedup table; a membership change shows in the member list).
      const err = new SegmemError('UNAVAILABLE', 'this server lost leadership; retry', {
        reason: 'NOT_LEADER',
        leader,
        maybeApplied: true,
      });
      for (const [i, p] of this.pending) {
        this.pending.delete(i);
        p.reject(err);
      }
      for (const [c, r] of this.reads) {
        this.reads.delete(c);
        r.reject(err);
      }
    }
    this.opts.onRoleChange?.(role, leader, this.core.term);
  }

  private fail(err: unknown): void {
    if (this.failure) return;
    this.failure = SegmemError.is(err)
      ? err
      : new SegmemError('UNAVAILABLE', `replication failed: ${(err as Error)?.message ?? err}`, undefined, {
          cause: err,
        });
    this.opts.log?.(`raft loop failed: ${this.failure.message}`);
    for (const [i, p] of this.pending) {
      this.pending.delete(i);
      p.reject(this.failure);
    }
    for (const [c, r] of this.reads) {
      this.reads.delete(c);
      r.reject(this.failure);
    }
    this.opts.onFailure?.(this.failure, err);
  }
}
