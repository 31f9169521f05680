/**
 * The log of a replicated group: drives the pure Raft core with real time, storage and network.
 *
 * The loop (one Ready at a time, in order):
 *   1. a snapshot from the leader is written to disk and the state machine restored from it;
 *   2. hard state and new entries are appended to the WAL, and fsynced when Ready.mustSync says so;
 *   3. only then are the Ready's messages sent (a vote or an acknowledgement must never outrun the disk);
 *   4. committed entries are applied to the state machine in order, and the proposals they answer resolve;
 *   5. advance().
 * A proposal resolves with the outcome of the entry at its index if that entry has its term; if another
 * leader's entry took the index, the proposal fails with UNAVAILABLE and the client retries (same seq:
 * applied at most once, thanks to the state machine's dedup table).
 */
import { type Env, type EnvTimer, SegmemError } from '@segmem/protocol';
import { type Command, decodeCommand, encodeCommand, type Outcome } from '../core/commands.js';
import { StateMachine } from '../core/state-machine.js';
import type { NodeLog } from '../node.js';
import { decodeConfChange } from '../raft/confchange.js';
import { mayLeaveBeforePersist } from '../raft/node.js';
import type { ConfChange, Entry, Message, NodeId, Ready, Role } from '../raft/types.js';
import { NotLeaderError } from '../raft/types.js';
import { describeSnapshotWrite } from '../storage/page-file.js';
import type { DiskRaftStorage } from '../storage/raft-storage.js';
import type { ApplyListener } from './local-log.js';

/** What the driver needs from the core (raft/node.ts). */
export interface RaftCore {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: number;
  readonly leader: NodeId | null;
  readonly members: NodeId[];
  tick(): void;
  step(msg: Message): void;
  propose(data: Buffer): { index: number; term: number };
  proposeConfChange(cc: ConfChange): { index: number; term: number };
  readIndex(context: number): void;
  transferLeadership(to: NodeId): void;
  progress(id: NodeId): { match: number; next: number; state: string } | undefined;
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
}

interface PendingProposal {
  term: number;
  resolve: (outcome: Outcome) => void;
  reject: (err: Error) => void;
}

export interface RaftLogOptions {
  tickMs: number;
  /** Take a state machine snapshot and compact the log every this many applied entries (0: never). */
  snapshotEveryEntries: number;
  pageBytes: number;
  segmentBytes: number;
  /** Clock, timers and randomness. */
  env: Env;
  onRoleChange?: (role: Role, leader: NodeId | null, term: number) => void;
  /** A conf entry named a member's address (at start-up too, for those still in the log). */
  onAddress?: (id: NodeId, address: string) => void;
  log?: (line: string) => void;
}

export class RaftLog implements NodeLog {
  private sm: StateMachine;
  private readonly pending = new Map<number, PendingProposal>();
  private readonly reads = new Map<
    number,
    { resolve: () => void; reject: (err: Error) => void; index: number }
  >();
  private readonly waitingApplied: { index: number; resolve: () => void }[] = [];
  private nextReadContext = 1;
  private appliedIndex: number;
  private entriesSinceSnapshot = 0;
  private processing = false;
  private again = false;
  private timer: EnvTimer | null = null;
  private closed = false;
  private lastRole: Role;
  private lastLeader: NodeId | null;
  private failure: SegmemError | null = null;
  private compacting = false;

  constructor(
    private readonly core: RaftCore,
    private readonly storage: DiskRaftStorage,
    sm: StateMachine,
    private readonly peers: PeerSender,
    private readonly onApply: ApplyListener,
    private readonly opts: RaftLogOptions,
  ) {
    this.sm = sm;
    this.appliedIndex = storage.snapshot().meta.index;
    this.lastRole = core.role;
    this.lastLeader = core.leader;
  }

  get stateMachine(): StateMachine {
    return this.sm;
  }

  get role(): Role {
    return this.core.role;
  }

  isLeader(): boolean {
    return this.core.role === 'leader';
  }

  leaderHint(): { id: string; address: string | null } | null {
    const leader = this.core.leader;
    return leader ? { id: leader, address: this.peers.addressOf(leader) ?? null } : null;
  }

  get leader(): NodeId | null {
    return this.core.leader;
  }

  get term(): number {
    return this.core.term;
  }

  get members(): NodeId[] {
    return this.core.members;
  }

  start(): void {
    this.timer = this.opts.env.setInterval(() => {
      this.core.tick();
      this.kick();
    }, this.opts.tickMs);
    this.kick();
  }

  /** A message from a peer. */
  receive(msg: Message): void {
    if (this.closed) return;
    this.core.step(msg);
    this.kick();
  }

  propose(cmd: Command): Promise<Outcome> {
    if (this.closed) return Promise.reject(new SegmemError('CLOSED', 'the server is shutting down'));
    if (this.failure) return Promise.reject(this.failure);
    let at: { index: number; term: number };
    try {
      at = this.core.propose(Buffer.concat(encodeCommand(cmd)));
    } catch (err) {
      return Promise.reject(this.notLeader(err));
    }
    const promise = new Promise<Outcome>((resolve, reject) => {
      this.pending.set(at.index, { term: at.term, resolve, reject });
    });
    this.kick();
    return promise;
  }

  proposeConfChange(cc: ConfChange): Promise<void> {
    let at: { index: number; term: number };
    try {
      at = this.core.proposeConfChange(cc);
    } catch (err) {
      // Not the leader: a redirect. Anything else (already a member, a change in progress) is the caller's.
      if (err instanceof NotLeaderError) return Promise.reject(this.notLeader(err));
      return Promise.reject(new SegmemError('INVALID_ARGUMENT', (err as Error).message));
    }
    const promise = new Promise<void>((resolve, reject) => {
      this.pending.set(at.index, { term: at.term, resolve: () => resolve(), reject });
    });
    this.kick();
    return promise;
  }

  /** Resolves once this node's applied state includes everything committed before the call (ReadIndex). */
  readBarrier(): Promise<void> {
    if (this.core.role !== 'leader')
      return Promise.reject(this.notLeader(new NotLeaderError(this.core.leader)));
    const context = this.nextReadContext++;
    const promise = new Promise<void>((resolve, reject) => {
      this.reads.set(context, { resolve, reject, index: 0 });
    });
    this.core.readIndex(context);
    this.kick();
    return promise;
  }

  transferLeadership(to: NodeId): void {
    this.core.transferLeadership(to);
    this.kick();
  }

  /**
   * Before a clean shutdown: if this member leads, hand leadership to the most caught-up follower and wait
   * (up to `timeoutMs`) until it has taken over, so clients see a short redirect instead of an election.
   */
  async handOff(timeoutMs = 2000): Promise<void> {
    if (this.core.role !== 'leader') return;
    let best: { id: NodeId; match: number } | undefined;
    for (const id of this.core.members) {
      if (id === this.core.id) continue;
      const match = this.core.progress(id)?.match ?? 0;
      if (!best || match > best.match) best = { id, match };
    }
    if (!best) return;
    try {
      this.transferLeadership(best.id);
    } catch {
      return;
    }
    const env = this.opts.env;
    const deadline = env.now() + timeoutMs;
    while (this.core.role === 'leader' && env.now() < deadline)
      await new Promise<void>((r) => env.setTimeout(r, 10));
    this.opts.log?.(
      this.core.role === 'leader'
        ? `leadership transfer to ${best.id} did not finish`
        : `handed leadership to ${best.id}`,
    );
  }

  private notLeader(err: unknown): SegmemError {
    if (err instanceof NotLeaderError) {
      return new SegmemError('UNAVAILABLE', err.message, { reason: 'NOT_LEADER', leader: err.leader });
    }
    return SegmemError.is(err) ? err : new SegmemError('UNAVAILABLE', String((err as Error)?.message ?? err));
  }

  /** Runs the Ready loop; re-entrant calls are folded into one more pass. */
  private kick(): void {
    if (this.processing) {
      this.again = true;
      // The loop waits for an fsync: what may go ahead of it (commits, a leader's appends) goes now,
      // once per turn of the event loop so that proposals made together still share a message.
      if (!this.earlyScheduled) {
        this.earlyScheduled = true;
        this.opts.env.setImmediate(() => {
          this.earlyScheduled = false;
          if (this.processing && !this.closed) this.runEarly();
        });
      }
      return;
    }
    this.processing = true;
    this.loop()
      .catch((err: unknown) => this.fail(err))
      .finally(() => {
        this.processing = false;
      });
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      while (!this.closed && this.core.hasReady()) {
        const rd = this.core.ready();
        await this.handle(rd);
        this.core.advance();
      }
      this.noticeRole();
    } while (this.again && !this.closed);
  }

  private async handle(rd: Ready): Promise<void> {
    if (rd.snapshot) {
      // Restored first: the file is written from the restored state (its objects' pages).
      const sm = StateMachine.restore(rd.snapshot.data);
      const written = await this.storage.installSnapshot(rd.snapshot, sm.freeze());
      this.sm = sm;
      this.appliedIndex = rd.snapshot.meta.index;
      this.peers.setMembers(rd.snapshot.meta.members);
      this.opts.log?.(
        `installed snapshot at index ${rd.snapshot.meta.index} (term ${rd.snapshot.meta.term})` +
          (written ? `: ${describeSnapshotWrite(written)} in ${written.ms.toFixed(0)} ms` : ''),
      );
    }
    // A membership change takes effect when appended: learn an added member's address and link to it now.
    if (rd.entries.some((e) => e.type === 'conf')) {
      for (const e of rd.entries) if (e.type === 'conf') this.learnAddress(e.data);
      this.peers.setMembers(this.core.members);
    }
    // A leader's appends leave at once, in parallel with its own fsync; votes and acknowledgements wait.
    const early = rd.messages.filter(mayLeaveBeforePersist);
    const late = early.length === 0 ? rd.messages : rd.messages.filter((m) => !mayLeaveBeforePersist(m));
    this.sendAll(early);
    const walIndex = this.storage.save(rd.hardState, rd.entries);
    // Committed entries are durable on a majority already: apply (and answer) them now, not after this
    // Ready's own fsync, which only the new entries need. Otherwise every commit waits for one more fsync.
    if (!rd.snapshot) for (const e of rd.committed) this.applyEntry(e);
    if (rd.mustSync) await this.storage.waitDurable(walIndex);
    this.sendAll(late);
    if (rd.snapshot) for (const e of rd.committed) this.applyEntry(e);
    for (const rs of rd.readStates) {
      const r = this.reads.get(rs.context);
      if (!r) continue;
      this.reads.delete(rs.context);
      this.whenApplied(rs.index).then(r.resolve);
    }
    this.maybeCompact();
  }

  private earlyScheduled = false;
  private appliedTerm = 0;

  /** The Raft index and term of the last entry applied. */
  appliedPosition(): { index: number; term: number } {
    return { index: this.appliedIndex, term: this.appliedTerm || this.storage.snapshot().meta.term };
  }

  private runEarly(): void {
    const { committed, messages } = this.core.early();
    this.sendAll(messages);
    for (const e of committed) this.applyEntry(e);
  }

  private sendAll(messages: Message[]): void {
    if (messages.length === 0) return;
    this.peers.cork?.();
    for (const m of messages) {
      // A message that cannot be encoded (e.g. a snapshot larger than a frame) is dropped like a lost one:
      // the core retries, and this loop, which every member depends on, keeps running.
      try {
        this.peers.send(m);
      } catch (err) {
        this.opts.log?.(`dropped a ${m.type} message to ${m.to}: ${(err as Error).message}`);
      }
    }
    this.peers.flush?.();
  }

  /** Records the address an 'add' conf entry carries. */
  learnAddress(data: Buffer): void {
    try {
      const cc = decodeConfChange(data);
      if (cc.op === 'add' && cc.address) {
        this.peers.addAddress(cc.id, cc.address);
        this.opts.onAddress?.(cc.id, cc.address);
      }
    } catch {
      // a conf entry the core accepted is well formed; nothing to learn otherwise
    }
  }

  /** Current members with the addresses this member knows for them. */
  membersWithAddresses(): [NodeId, string | null][] {
    return this.core.members.map((id) => [id, this.peers.addressOf(id) ?? null]);
  }

  private applyEntry(e: Entry): void {
    if (e.index <= this.appliedIndex) return;
    this.appliedIndex = e.index;
    this.appliedTerm = e.term;
    const waiting = this.pending.get(e.index);
    if (waiting) this.pending.delete(e.index);
    if (waiting && waiting.term !== e.term) {
      waiting.reject(
        new SegmemError('UNAVAILABLE', 'leadership changed before the request committed; retry', {
          reason: 'NOT_LEADER',
        }),
      );
    }
    if (e.type === 'conf') {
      this.peers.setMembers(this.core.members);
      if (waiting && waiting.term === e.term)
        waiting.resolve({ result: { ok: true, value: null }, effects: [] });
    } else if (e.data.length > 0) {
      const cmd = decodeCommand(e.data);
      const outcome = this.sm.apply(this.sm.appliedIndex + 1, cmd);
      this.entriesSinceSnapshot++;
      this.onApply(e.index, cmd, outcome);
      if (waiting && waiting.term === e.term) waiting.resolve(outcome);
    } else if (waiting && waiting.term === e.term) {
      waiting.resolve({ result: { ok: true, value: null }, effects: [] });
    }
    while (this.waitingApplied.length > 0 && this.waitingApplied[0]!.index <= this.appliedIndex) {
      this.waitingApplied.shift()!.resolve();
    }
  }

  private whenApplied(index: number): Promise<void> {
    if (index <= this.appliedIndex) return Promise.resolve();
    return new Promise((resolve) => {
      this.waitingApplied.push({ index, resolve });
      this.waitingApplied.sort((a, b) => a.index - b.index);
    });
  }

  private maybeCompact(): void {
    const every = this.opts.snapshotEveryEntries;
    if (this.compacting || every <= 0 || this.entriesSinceSnapshot < every) return;
    this.compacting = true;
    this.entriesSinceSnapshot = 0;
    const index = this.appliedIndex;
    // Frozen now, written and serialised in slices: the heartbeats and appends keep flowing meanwhile.
    this.storage
      .compact(index, this.sm.freeze())
      .then((written) => {
        if (written)
          this.opts.log?.(
            `snapshot at index ${index}: ${describeSnapshotWrite(written)} in ${written.ms.toFixed(0)} ms`,
          );
      })
      .catch((err: unknown) => this.opts.log?.(`snapshot at ${index} failed: ${(err as Error).message}`))
      .finally(() => {
        this.compacting = false;
      });
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
  }

  async close(): Promise<void> {
    this.closed = true;
    this.opts.env.clearInterval(this.timer);
    const err = new SegmemError('CLOSED', 'the server is shutting down');
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    await this.storage.close();
  }
}
