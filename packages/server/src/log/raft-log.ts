/**
 * The log of a replicated group: the {@link RaftDriver} (log/raft-driver.ts, where the order in which a
 * Ready is carried out is written down) over the member's real storage (the WAL and snapshot files of
 * {@link DiskRaftStorage}), its peer links and the state machine, ticked by the Env's clock.
 * Proposals and reads become promises here; the driver itself calls back.
 */
import { type Env, SegmemError } from '@segmem/protocol';
import { type Command, decodeCommand, encodeCommandHead, type Outcome } from '../core/commands.js';
import { describeGroupRange, sameGroupRange } from '../core/group-range.js';
import { StateMachine } from '../core/state-machine.js';
import type { ConfChange, Entry, Message, NodeId, Role, Snapshot } from '../raft/types.js';
import { NotLeaderError } from '../raft/types.js';
import { type LogStats, type MetricsSink, walStats } from '../stats.js';
import { describeSnapshotWrite } from '../storage/page-file.js';
import type { DiskRaftStorage } from '../storage/raft-storage.js';
import { type PeerSender, type RaftCore, RaftDriver } from './raft-driver.js';
import type { ApplyListener, NodeLog } from './types.js';

export type { PeerSender, RaftCore } from './raft-driver.js';

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
  metrics?: MetricsSink;
}

export class RaftLog implements NodeLog {
  private sm: StateMachine;
  private readonly driver: RaftDriver;
  private readonly env: Env;
  private entriesSinceSnapshot = 0;
  private timer: ReturnType<Env['setInterval']> | null = null;
  private closed = false;
  private compacting = false;
  /** Why the driver stopped, if it did (for health). */
  private failure: SegmemError | null = null;
  /** The highest commit index a leader of `leaderCommitTerm` told this member (for its lag in stats()). */
  private leaderCommit = 0;
  private leaderCommitTerm = 0;

  constructor(
    private readonly core: RaftCore,
    private readonly storage: DiskRaftStorage,
    sm: StateMachine,
    private readonly peers: PeerSender,
    private readonly onApply: ApplyListener,
    private readonly opts: RaftLogOptions,
  ) {
    this.sm = sm;
    this.env = opts.env;
    const snap = storage.snapshot().meta;
    this.driver = new RaftDriver({
      core,
      storage: {
        save: (hardState, entries) => storage.save(hardState, entries),
        waitDurable: (position, done, failed) => {
          storage.waitDurable(position).then(done, failed);
        },
        onceWritable: (retry) => storage.onceWritable(retry),
      },
      peers,
      app: {
        installSnapshot: (s, done, failed) => {
          this.installSnapshot(s).then(done, failed);
        },
        apply: (e) => this.applyEntry(e),
        afterReady: () => this.maybeCompact(),
      },
      env: opts.env,
      applied: { index: snap.index, term: snap.term },
      ...(opts.onRoleChange ? { onRoleChange: opts.onRoleChange } : {}),
      ...(opts.onAddress ? { onAddress: opts.onAddress } : {}),
      onFailure: (err) => {
        this.failure = err;
      },
      ...(opts.log ? { log: opts.log } : {}),
    });
    storage.onSnapshotReady = () => this.driver.retrySnapshots();
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
    this.timer = this.env.setInterval(() => this.driver.tick(), this.opts.tickMs);
    this.driver.kick();
  }

  /** A message from a peer. */
  receive(msg: Message): void {
    if (this.closed) return;
    if (msg.snapshot && !this.verifySnapshot(msg)) return;
    this.noteLeaderCommit(msg);
    this.driver.receive(msg);
  }

  /** Snapshots from peers refused because their content did not check out. */
  refusedSnapshots = 0;
  /**
   * A snapshot is restored (checksums, geometry, the content check of StateMachine.restore) before the
   * consensus core sees it, so a bad one is refused while this member keeps its state and keeps serving.
   * The trial state is dropped at once (installing restores again): holding it until the core asks for
   * it would keep a second copy of the whole state in memory.
   */
  private verifySnapshot(msg: Message): boolean {
    const snap = msg.snapshot!;
    try {
      const sm = StateMachine.restore(snap.data);
      if (sm.pageBytes !== this.opts.pageBytes || sm.segmentBytes !== this.opts.segmentBytes) {
        throw new Error(
          `its geometry (${sm.pageBytes}-byte pages, ${sm.segmentBytes}-byte segment) is not this member's`,
        );
      }
      // A member's group and range never change: a snapshot of another group's state is not this group's.
      if (!sameGroupRange(sm.group, this.sm.group)) {
        throw new Error(
          `it holds ${describeGroupRange(sm.group)}, this member ${describeGroupRange(this.sm.group)}`,
        );
      }
      return true;
    } catch (err) {
      this.refusedSnapshots++;
      this.opts.log?.(
        `refused the snapshot at index ${snap.meta.index} (term ${snap.meta.term}) from ${msg.from}: ${(err as Error).message}`,
      );
      return false;
    }
  }

  propose(cmd: Command): Promise<Outcome> {
    return new Promise<Outcome>((resolve, reject) => {
      try {
        const { head, data } = encodeCommandHead(cmd);
        this.driver.propose(head, { resolve, reject }, data);
      } catch (err) {
        reject(this.notLeader(err));
      }
    });
  }

  proposeConfChange(cc: ConfChange): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      try {
        this.driver.proposeConfChange(cc, { resolve: () => resolve(), reject });
      } catch (err) {
        // Not the leader: a redirect. Anything else (already a member, a change in progress) is the caller's.
        if (err instanceof NotLeaderError || SegmemError.is(err)) reject(this.notLeader(err));
        else reject(new SegmemError('INVALID_ARGUMENT', (err as Error).message));
      }
    });
  }

  /** Resolves once this node's applied state includes everything committed before the call (ReadIndex). */
  readBarrier(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      try {
        this.driver.readBarrier({ resolve, reject });
      } catch (err) {
        reject(this.notLeader(err));
      }
    });
  }

  /** A lease rests on leadership confirmed after the call: the read barrier's heartbeat round gives that. */
  leaseBarrier(): Promise<void> {
    return this.readBarrier();
  }

  transferLeadership(to: NodeId): void {
    this.driver.transferLeadership(to);
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
    const deadline = this.env.now() + timeoutMs;
    while (this.core.role === 'leader' && this.env.now() < deadline)
      await new Promise<void>((r) => this.env.setTimeout(r, 10));
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

  /** The Raft index and term of the last entry applied. */
  appliedPosition(): { index: number; term: number } {
    return this.driver.applied;
  }

  /** Records the address an 'add' conf entry carries. */
  learnAddress(data: Buffer): void {
    this.driver.learnAddress(data);
  }

  /** Current members with the addresses this member knows for them. */
  membersWithAddresses(): [NodeId, string | null][] {
    return this.core.members.map((id) => [id, this.peers.addressOf(id) ?? null]);
  }

  /** Ready step 1: the state restored from the leader's snapshot, then written to disk from it. */
  private async installSnapshot(snap: Snapshot): Promise<void> {
    // Restored first: the file is written from the restored state (its objects' pages).
    const sm = StateMachine.restore(snap.data);
    const written = await this.storage.installSnapshot(snap, sm.freeze());
    this.sm = sm;
    if (written) this.opts.metrics?.snapshotWritten('install', written.bytes, written.ms);
    this.opts.log?.(
      `installed snapshot at index ${snap.meta.index} (term ${snap.meta.term})` +
        (written ? `: ${describeSnapshotWrite(written)} in ${written.ms.toFixed(0)} ms` : ''),
    );
  }

  private applyEntry(e: Entry): Outcome | null {
    if (e.type !== 'normal' || e.data.length === 0) return null;
    const cmd = decodeCommand(e.data, e.payload);
    const outcome = this.sm.apply(this.sm.appliedIndex + 1, cmd);
    this.entriesSinceSnapshot++;
    this.onApply(e.index, cmd, outcome);
    return outcome;
  }

  private maybeCompact(): void {
    const every = this.opts.snapshotEveryEntries;
    if (this.compacting || every <= 0 || this.entriesSinceSnapshot < every) return;
    this.compacting = true;
    this.entriesSinceSnapshot = 0;
    const index = this.driver.applied.index;
    // Frozen now, written and serialised in slices: the heartbeats and appends keep flowing meanwhile.
    this.storage
      .compact(index, this.sm.freeze())
      .then((written) => {
        if (written) this.opts.metrics?.snapshotWritten('compact', written.bytes, written.ms);
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

  /** Remembers the commit index a leader announces (appends carry it whole; heartbeats capped at our match). */
  private noteLeaderCommit(msg: Message): void {
    if ((msg.type !== 'append' && msg.type !== 'heartbeat') || msg.commit === undefined) return;
    if (msg.term > this.leaderCommitTerm) {
      this.leaderCommitTerm = msg.term;
      this.leaderCommit = 0;
    }
    if (msg.term === this.leaderCommitTerm) this.leaderCommit = Math.max(this.leaderCommit, msg.commit);
  }

  /** See {@link NodeLog.heldBytes}: the Raft log since the snapshot, and the snapshot's bytes. */
  heldBytes(): number {
    return this.storage.heldBytes();
  }

  /** Where this member stands, for metrics and health (read at scrape time). */
  stats(): LogStats {
    const core = this.core;
    const leading = core.role === 'leader';
    const heard = this.leaderCommitTerm === core.term && core.leader !== null ? this.leaderCommit : null;
    return {
      role: core.role,
      term: core.term,
      leader: core.leader,
      commitIndex: core.commitIndex,
      appliedIndex: this.driver.applied.index,
      lastIndex: core.lastIndex,
      leaderCommitIndex: leading
        ? core.commitIndex
        : heard === null
          ? null
          : Math.max(heard, core.commitIndex),
      peers: leading
        ? core.members
            .filter((id) => id !== core.id)
            .map((id) => ({ id, matchIndex: core.progress(id)?.match ?? 0 }))
        : [],
      peerLinks: {
        sentBytes: this.peers.sentBytes ?? 0,
        droppedMessages: this.peers.droppedMessages ?? 0,
        authFailures: this.peers.authFailures ?? 0,
      },
      ...walStats(this.storage.wal, this.failure),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.env.clearInterval(this.timer);
    this.driver.close();
    await this.storage.close();
  }
}
