/**
 * One segmem server's state and request handling, independent of how bytes arrive: the data directory,
 * the log and its state machine, and the parts that serve clients: sessions (sessions.ts), locks
 * (grants.ts), waiting reads (reads.ts), consolidated snapshots (exports.ts), and what follows each
 * applied entry (effects.ts). Answers go out through each connection's Port (port.ts), which encodes them.
 * `startServer` puts it behind TCP/UDP; the client's embedded mode attaches in-process connections.
 */
import type { Socket as UdpSocket } from 'node:dgram';
import { join } from 'node:path';
import {
  type AcquireRequest,
  type BarrierOk,
  type CancelReason,
  DEFAULT_LOG_MAX_BYTES,
  DEFAULT_SEGMENT_BYTES,
  type DeleteRequest,
  type Env,
  type HelloRequest,
  LEASE_GRACE_MS,
  type LockedObject,
  type LogAppendRequest,
  type LogReadRequest,
  MAX_LEASE_MS,
  MAX_STATUS_LOCKS,
  type MemberRole,
  PAGE_BYTES,
  type ProbeRequest,
  type ReadPagesRequest,
  type ReleaseOk,
  type ReleaseRequest,
  type Request,
  SegmemError,
  type SlotsOk,
  type SlotTable,
  type StatusOk,
  systemEnv,
  type UserInfo,
  type UsersRequest,
} from '@segmem/protocol';
import { DEFAULT_CONFIG, parseSegmentBytes } from '../config.js';
import type { Command, Outcome } from '../core/commands.js';
import { objectHeldBytes, type StateMachine } from '../core/state-machine.js';
import { openLocalLog } from '../log/local-log.js';
import type { ApplyListener, NodeLog } from '../log/types.js';
import type { Message } from '../raft/types.js';
import { ConsolidatedSchedule } from '../shell/consolidated-schedule.js';
import { UdpHints } from '../shell/udp-hints.js';
import { type MetricsSink, NO_METRICS, type NodeStats, timedWalIo } from '../stats.js';
import type { ConsolidatedExport } from '../storage/consolidated.js';
import { DataDir } from '../storage/datadir.js';
import type { StorageFs } from '../storage/fs.js';
import { describeLocalRecovery } from '../storage/local-storage.js';
import { isSnapshotName, SNAPSHOT_DIR } from '../storage/snapshot-file.js';
import { isSegmentFileName, type RecoveryReport } from '../storage/wal.js';
import { ADMIN, isAdmin, may, type Principal, requireRight } from './access.js';
import { MemoryBudget } from './budget.js';
import type { NodeContext, NodeOptions } from './context.js';
import { afterApply } from './effects.js';
import { SnapshotExports } from './exports.js';
import { Grants } from './grants.js';
import { Moves } from './moves.js';
import type { Port } from './port.js';
import { Reads } from './reads.js';
import { Sessions } from './sessions.js';
import { requireSlot, withSlotTable } from './slots.js';
import { pick, sameSecret, toBuffer, unwrap } from './util.js';
import { Watches } from './watches.js';
import { WriteHold } from './write-hold.js';

export class SegmemNode {
  readonly id: string;
  readonly recovery: RecoveryReport;
  readonly clusterId: string;
  readonly metrics: MetricsSink;
  private readonly log: NodeLog;
  /** Clock, timers and randomness of this node (the shell uses its timers too). */
  readonly env: Env;
  private readonly sessions: Sessions;
  private readonly grants: Grants;
  private readonly reads: Reads;
  private readonly exports: SnapshotExports;
  private readonly watches: Watches;
  /** BARRIER's hold on content changes (write-hold.ts). */
  private readonly hold: WriteHold;
  /** Slot moves: MOVE, MOVE_READ, and changes waiting for a frozen slot (moves.ts). */
  readonly moves: Moves;
  /** The memory budget: admission for creates, appends and exports (node/budget.ts). */
  readonly budget: MemoryBudget;
  private closing = false;
  private readonly schedule: ConsolidatedSchedule | null;

  private constructor(
    private readonly opts: NodeOptions,
    private readonly dataDir: DataDir,
    makeLog: (onApply: ApplyListener) => NodeLog,
    recovery: RecoveryReport,
  ) {
    this.id = opts.id;
    this.recovery = recovery;
    this.clusterId = dataDir.meta.clusterId;
    this.env = opts.env ?? systemEnv;
    this.metrics = opts.metrics ?? NO_METRICS;
    this.hold = new WriteHold(this.env);
    const node = this;
    this.budget = new MemoryBudget(
      opts.maxMemoryBytes ?? null,
      {
        stateBytes: () => node.sm.heldBytes() + (node.log.heldBytes?.() ?? 0),
        sessions: () => node.sm.sessionCount(),
        frozenCopyBytes: () => node.sm.frozenCopyBytes(),
      },
      this.env,
    );
    // Read through the node: the log is made below, and a Raft follower may replace its state machine.
    const ctx: NodeContext = {
      id: this.id,
      clusterId: this.clusterId,
      env: this.env,
      opts,
      metrics: this.metrics,
      get log() {
        return node.log;
      },
      get sm() {
        return node.log.stateMachine;
      },
      requireLeader: () => this.requireLeader(),
      propose: (cmd) => this.propose(cmd),
      budget: this.budget,
    };
    this.sessions = new Sessions(ctx);
    this.grants = new Grants(ctx, this.sessions);
    this.reads = new Reads(ctx);
    this.exports = new SnapshotExports(ctx);
    this.watches = new Watches(ctx, this.sessions);
    this.moves = new Moves(ctx);
    const targets = {
      sessions: this.sessions,
      grants: this.grants,
      reads: this.reads,
      exports: this.exports,
      watches: this.watches,
      hold: this.hold,
    };
    this.log = makeLog((_index, cmd, outcome) => {
      this.metrics.applied(cmd.op);
      afterApply(outcome, targets);
      this.watches.applied(cmd, outcome);
      this.moves.applied(cmd);
    });
    this.schedule = opts.consolidatedDir
      ? new ConsolidatedSchedule(
          { isLeader: () => this.log.isLeader(), consolidate: () => this.consolidate() },
          {
            dir: opts.consolidatedDir,
            intervalMs: opts.consolidatedIntervalMs ?? DEFAULT_CONFIG.consolidatedIntervalMs,
            keep: opts.consolidatedKeep ?? DEFAULT_CONFIG.consolidatedKeep,
            env: this.env,
            fs: dataDir.fs,
            ...(opts.log ? { log: opts.log } : {}),
          },
        )
      : null;
  }

  get sm(): StateMachine {
    return this.log.stateMachine;
  }

  get pageBytes(): number {
    return this.sm.pageBytes;
  }

  /** Pages this member served through READ_PAGES (for status lines and tests). */
  get pagesServed(): number {
    return this.reads.pagesServed;
  }

  // --- lifecycle ---

  static async open(opts: NodeOptions): Promise<SegmemNode> {
    const segmentBytes = parseSegmentBytes(opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES);
    const dataDir = await DataDir.open({
      dir: opts.dataDir,
      serverId: opts.id,
      pageBytes: PAGE_BYTES,
      segmentBytes,
      ...(opts.group ? { group: opts.group } : {}),
      ...(opts.clusterId ? { clusterId: opts.clusterId } : {}),
    });
    try {
      const local = await openLocalLog({
        dir: dataDir.dir,
        walDir: dataDir.walDir,
        onWalStarted: () => dataDir.walStarted(),
        fsync: opts.fsync ?? 'batch',
        pageBytes: PAGE_BYTES,
        segmentBytes,
        ...(opts.group ? { group: opts.group } : {}),
        ...pick(opts, 'snapshotEveryEntries', 'snapshotIntervalMs', 'walFileBytes', 'log', 'env'),
        ...(opts.slotTable ? { slotTable: opts.slotTable } : {}),
        ...(opts.repair ? { repair: true } : {}),
        ...(opts.metrics
          ? { metrics: opts.metrics, walIo: timedWalIo(opts.metrics, opts.env ?? systemEnv) }
          : {}),
        onStall: (stall) =>
          opts.log?.(stall ? `WAL: ${stall.message}` : 'WAL: writes succeed again; changes are accepted'),
      });
      for (const line of dataDir.warnings) opts.log?.(line);
      for (const line of describeLocalRecovery(local.report)) opts.log?.(line);
      const node = new SegmemNode(opts, dataDir, local.create, local.report.wal);
      // A client may still use a cached grant of a session the restart ends, until its lease runs out on its
      // own clock: no conflicting lock is granted before then.
      const leaseHolders = node.sm.lockHolderTimeoutMs();
      if (leaseHolders > 0) node.grants.holdGrantsFor(Math.min(leaseHolders, MAX_LEASE_MS) + LEASE_GRACE_MS);
      // Sessions end with a restart: their lock state may not all have reached the disk.
      await node.log.propose({ op: 'restart', sessionIdFloor: Math.floor(node.env.now()) * 1000 });
      node.start();
      return node;
    } catch (err) {
      await dataDir.close();
      throw err;
    }
  }

  /** Builds a node over a log made by the caller (the cluster mode's Raft log). */
  static withLog(
    opts: NodeOptions,
    dataDir: DataDir,
    makeLog: (onApply: ApplyListener) => NodeLog,
    recovery: RecoveryReport,
  ): SegmemNode {
    const node = new SegmemNode(opts, dataDir, makeLog, recovery);
    node.start();
    return node;
  }

  private start(): void {
    this.sessions.start();
    this.schedule?.start();
  }

  /** The log's leadership changed: a new leader restarts every session's clock; a deposed one lets go. */
  roleChanged(isLeader: boolean): void {
    this.sessions.roleChanged(isLeader);
    if (!isLeader) this.watches.clear();
    if (!isLeader) this.reads.dropLogReads();
  }

  private readonly closeHooks: (() => void)[] = [];

  /** Runs `fn` when the node closes (before the log and data directory close). */
  onClose(fn: () => void): void {
    this.closeHooks.push(fn);
  }

  private closed: Promise<void> | null = null;

  close(): Promise<void> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  /** Before a clean shutdown of a Raft member: let another member lead (no-op for a single member). */
  async handOff(): Promise<void> {
    if (this.closing) return;
    await this.log.handOff?.().catch(() => {});
  }

  private async shutdown(): Promise<void> {
    await this.handOff();
    this.closing = true;
    for (const fn of this.closeHooks) fn();
    this.sessions.stop();
    this.budget.close();
    this.reads.close();
    this.hold.releaseAll();
    this.exports.close();
    await this.schedule?.stop();
    await this.log.close();
    await this.dataDir.close();
  }

  // --- status ---

  /** For operators and tests: where this member stands. */
  status(): {
    leader: boolean;
    applied: number;
    digest: string;
    sessions: number;
    objects: number;
    logs: number;
    pagesServed: number;
  } {
    const sm = this.sm;
    return {
      leader: this.log.isLeader(),
      applied: sm.appliedIndex,
      digest: sm.digest(),
      sessions: sm.sessionIds().length,
      objects: sm.objectCount(),
      logs: sm.logCount(),
      pagesServed: this.pagesServed,
    };
  }

  /** For the metrics endpoint: where this member stands, read when scraped (a scan of the objects for the locks). */
  stats(): NodeStats {
    const sm = this.sm;
    const log = this.log.stats();
    // A single member leads itself.
    if (log.role === 'leader' && log.leader === null) log.leader = this.id;
    return {
      id: this.id,
      clusterId: this.clusterId,
      log,
      sessions: sm.sessionCount(),
      objects: sm.objectCount(),
      logs: sm.logCount(),
      locks: sm.lockStats(),
      pagesServed: this.pagesServed,
      memory: {
        usedBytes: this.budget.usedBytes(),
        limitBytes: this.budget.limitBytes,
        counted: this.budget.counted(),
        waitingForRoom: this.budget.waitingForRoom,
      },
    };
  }

  /** Cluster mode: the consensus core's position, for STATUS (set by cluster.ts). */
  raftStatus: (() => RaftStatus) | null = null;

  /**
   * STATUS: where this member stands; any member answers, leader or not. The locked objects listed are
   * those `principal` may read.
   */
  async statusReport(principal: Principal = ADMIN): Promise<StatusOk> {
    const sm = this.sm;
    const applied = this.log.appliedPosition().index;
    const raft: RaftStatus = this.raftStatus?.() ?? {
      role: 'leader',
      leader: this.id,
      term: 0,
      commitIndex: applied,
      lastIndex: applied,
      progress: [],
    };
    const locked = sm
      .lockedObjects()
      .filter((obj) => may(sm, principal, 'read', obj.name))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const locks: LockedObject[] = locked.slice(0, MAX_STATUS_LOCKS).map((obj) => {
      const writing = obj.writer !== 0;
      return [obj.name, writing ? 'write' : 'read', writing ? 1 : obj.readers, obj.queue.length];
    });
    const fs = this.dataDir.fs;
    const wal = await filesIn(fs, this.dataDir.walDir, isSegmentFileName, false);
    const snaps = await filesIn(fs, join(this.dataDir.dir, SNAPSHOT_DIR), isSnapshotName, true);
    return {
      serverId: this.id,
      clusterId: this.clusterId,
      ...raft,
      appliedIndex: applied,
      members: this.log.membersWithAddresses?.() ?? [[this.id, null]],
      walFiles: wal.files,
      walBytes: wal.bytes,
      snapshotFiles: snaps.files,
      snapshotBytes: snaps.bytes,
      snapshotIndex: snaps.newest ? Number(snaps.newest.slice(21, 41)) : 0,
      sessions: sm.sessionIds().length,
      objects: sm.objectCount(),
      logs: sm.logCount(),
      locks,
      lockedObjects: locked.length,
      fsync: this.opts.fsync ?? 'batch',
      group: { id: sm.group.id, start: sm.group.start, bytes: sm.group.bytes },
      ...(this.hold.held ? { writesHeldMs: this.hold.remainingMs() } : {}),
    };
  }

  // --- membership and peers ---

  /** Throws the redirect a client follows when this member is not the leader. */
  requireLeader(): void {
    if (this.log.isLeader()) return;
    const hint = this.log.leaderHint();
    throw new SegmemError(
      'UNAVAILABLE',
      hint
        ? `not the leader; the leader is ${hint.id}${hint.address ? ` at ${hint.address}` : ''}`
        : 'not the leader; no leader is known yet',
      { reason: 'NOT_LEADER', leader: hint?.id ?? null, address: hint?.address ?? null },
    );
  }

  // --- slots (slots.ts) ---

  /**
   * Throws the MOVED redirect (UNAVAILABLE, details `{ reason: 'MOVED', slot, group, version, table }`) when
   * another shard group owns `name`'s slot.
   */
  requireSlot(name: string): void {
    requireSlot(this.sm, name);
  }

  /** A MOVED refusal from applying a command gains the slot table its redirect carries. */
  withSlotTable(err: unknown): unknown {
    return withSlotTable(err, this.sm);
  }

  /** SLOTS: this server's shard group and the slot table its state holds. */
  slots(): SlotsOk {
    return { groupId: this.sm.group.id, table: this.sm.slotTable };
  }

  /**
   * Installs a newer slot table in this group's replicated state (committed before it resolves): what moving
   * slots between groups proposes. INVALID_ARGUMENT, and no change, for a bad table or one whose version
   * is not above the installed one.
   */
  async installSlots(table: SlotTable): Promise<{ version: number }> {
    this.requireLeader();
    return unwrap((await this.propose({ op: 'slots', table })).result) as { version: number };
  }

  /** MEMBERSHIP: lists the group, or adds or removes one server (committed before it answers). */
  async membership(op: 'list' | 'add' | 'remove', id: string | null, address: string | null) {
    this.requireLeader();
    const log = this.log;
    if (!log.membersWithAddresses || !log.proposeConfChange) {
      if (op !== 'list') {
        throw new SegmemError(
          'INVALID_ARGUMENT',
          'this server runs a single-member group; start it with --peers to replicate',
        );
      }
      return { members: [[this.id, null]] as [string, string | null][], leader: this.id };
    }
    if (op !== 'list') {
      try {
        await log.proposeConfChange({ op, id: id!, ...(op === 'add' && address ? { address } : {}) });
      } catch (err) {
        if (SegmemError.is(err)) throw err;
        throw new SegmemError('INVALID_ARGUMENT', (err as Error).message);
      }
    }
    return { members: log.membersWithAddresses(), leader: this.id };
  }

  /** Writes one line to the server's log (what an operator should see: a member's link refused). */
  note(line: string): void {
    this.opts.log?.(line);
  }

  /** Receives consensus messages from peers (cluster mode only). */
  peerHandler: ((msg: Message) => void) | null = null;
  /** Whether `id` is a member this one knows of (cluster mode only): a peer that is not gets refused. */
  peerIsMember: ((id: string) => boolean) | null = null;

  /** The cluster secret members prove to each other (shell/peer-auth.ts); null only in unit tests on the simulated clock. */
  get peerSecret(): Buffer | null {
    return this.opts.clusterSecret ?? null;
  }

  /** @internal The simulator's broken variant acceptUnprovenPeer: a dialer's PEER_PROOF is taken unchecked. */
  get acceptsUnprovenPeers(): boolean {
    return this.opts.unsafe?.acceptUnprovenPeer === true;
  }

  /**
   * Checks a peer's PEER_HELLO; throws UNAUTHORIZED for another cluster, a misdirected peer or one that is
   * not a member. With a cluster secret the connection still has to pass the proof (shell/connection.ts)
   * before the returned handler sees a message. The handler refuses a message that names another sender.
   */
  acceptPeer(hello: {
    clusterId: string;
    from: string;
    to: string;
    token: string | null;
  }): (msg: Message) => void {
    // Without a secret (unit tests on the simulated clock only) the token stands in for it, checked before anything else.
    if (
      !this.opts.clusterSecret &&
      this.opts.token !== undefined &&
      !sameSecret(hello.token, this.opts.token)
    )
      throw new SegmemError('UNAUTHORIZED', `peer ${hello.from}: bad or missing token`);
    if (!this.peerHandler)
      throw new SegmemError('PROTOCOL', 'this server runs a single-member group and takes no peers');
    if (hello.clusterId !== this.clusterId) {
      throw new SegmemError(
        'UNAUTHORIZED',
        `peer ${hello.from} belongs to cluster ${hello.clusterId}, not ${this.clusterId}`,
      );
    }
    if (hello.to !== this.id)
      throw new SegmemError('UNAUTHORIZED', `peer ${hello.from} dialled ${hello.to}, but this is ${this.id}`);
    const isMember = this.peerIsMember;
    if (isMember && !isMember(hello.from))
      throw new SegmemError(
        'UNAUTHORIZED',
        `peer ${hello.from} is not a member of this group that ${this.id} knows`,
      );
    const handler = this.peerHandler;
    return (msg) => {
      // The link speaks for the one member that authenticated on it, to this member only.
      if (msg.from !== hello.from || msg.to !== this.id)
        throw new SegmemError(
          'PROTOCOL',
          `a message from ${msg.from} to ${msg.to} on the link of peer ${hello.from} to ${this.id}`,
        );
      // Forgotten since the link opened: its messages are dropped.
      if (isMember && !isMember(msg.from)) return;
      handler(msg);
    };
  }

  /** Attaches the UDP socket used to send invalidation hints. */
  setUdp(socket: UdpSocket | null): void {
    this.sessions.setUdp(socket ? new UdpHints(socket) : null);
  }

  // --- sessions (sessions.ts) ---

  /** HELLO on a client connection: opens or resumes a session, answers on `port`, returns the session id. */
  hello(port: Port, requestId: number, req: HelloRequest): Promise<number> {
    return this.sessions.hello(port, requestId, req);
  }

  /** HELLO of a page-reader connection: any member answers, after the cluster and credential checks. */
  helloPageReader(port: Port, requestId: number, req: HelloRequest): void | Promise<void> {
    return this.sessions.helloPageReader(port, requestId, req);
  }

  touch(sessionId: number): void {
    this.sessions.touch(sessionId);
  }

  /** A connection went away; its session lives on until it resumes or times out. */
  detach(port: Port, sessionId: number): void {
    this.sessions.detach(port, sessionId);
  }

  goodbye(sessionId: number): Promise<void> {
    return this.sessions.goodbye(sessionId);
  }

  // --- objects ---

  async create(sessionId: number, req: { seq: number; name: string; size: number; ifNotExists: boolean }) {
    // Admitted on the leader before proposing (node/budget.ts); an existing name grows nothing.
    this.requireLeader();
    const grows =
      this.sm.objectNamed(req.name) === undefined && Number.isSafeInteger(req.size) && req.size > 0;
    const admitted = grows
      ? this.budget.admitGrowth(
          objectHeldBytes(req.size, Math.ceil(req.size / this.sm.pageBytes)),
          `creating object "${req.name}" (${req.size} bytes)`,
        )
      : null;
    try {
      const outcome = await this.propose({
        op: 'create',
        sessionId,
        ...pick(req, 'seq', 'name', 'size', 'ifNotExists'),
      });
      return unwrap(outcome.result) as { object: ReturnType<StateMachine['stat']>; created: boolean };
    } finally {
      admitted?.();
    }
  }

  /** DELETE: resolves once the object is deleted (it waits for the object's holders like a writer). */
  delete(port: Port, sessionId: number, requestId: number, req: DeleteRequest): Promise<void> {
    return this.grants.delete(port, sessionId, requestId, req);
  }

  async stat(name: string) {
    this.requireLeader();
    await this.log.readBarrier();
    const rec = this.sm.stat(name);
    if (!rec) throw new SegmemError('NOT_FOUND', `no object named "${name}"`);
    return rec;
  }

  /** LIST: the objects under `prefix` that `principal` may read, of this shard group's slots only. */
  async list(prefix: string, principal: Principal = ADMIN) {
    this.requireLeader();
    await this.log.readBarrier();
    const sm = this.sm;
    return sm
      .list(prefix)
      .filter(
        (o) =>
          sm.slotMove(o.name) === null && (principal.kind === 'admin' || may(sm, principal, 'read', o.name)),
      );
  }

  // --- access (access.ts) ---

  /**
   * Throws UNAUTHORIZED (reason FORBIDDEN) unless `principal` has the right `req` needs: read for what only
   * looks (STAT, WATCH, read ACQUIRE, LOG_READ), write for what changes a name (CREATE, DELETE, write ACQUIRE
   * and RELEASE, LOG_APPEND, LOG_TRUNCATE), admin on every name for the cluster's own operations
   * (MEMBERSHIP add/remove, SNAPSHOT, USERS, MOVE, MOVE_READ). LIST and STATUS filter instead; READ_PAGES is checked where the
   * object is found (reads.ts); SNAPSHOT_READ by who made the snapshot. The rest need only the login.
   */
  authorize(principal: Principal, req: Request): void {
    if (principal.kind === 'admin') return;
    const sm = this.sm;
    switch (req.type) {
      case 'CREATE':
      case 'DELETE':
      case 'LOG_APPEND':
      case 'LOG_TRUNCATE':
        requireRight(sm, principal, 'write', req.name);
        return;
      case 'ACQUIRE':
        requireRight(sm, principal, req.mode, req.name);
        return;
      case 'RELEASE':
        // Giving a read back needs no right (a rule removed meanwhile must not keep the lock held).
        if (req.mode === 'write') requireRight(sm, principal, 'write', req.name);
        return;
      case 'STAT':
      case 'WATCH':
      case 'LOG_READ':
        requireRight(sm, principal, 'read', req.name);
        return;
      case 'MEMBERSHIP':
        // Listing the members is how every client learns where to fail over to.
        if (req.op !== 'list') requireRight(sm, principal, 'admin', null);
        return;
      case 'SNAPSHOT':
      case 'USERS':
      case 'BARRIER':
      case 'MOVE':
      case 'MOVE_READ':
        requireRight(sm, principal, 'admin', null);
        return;
      default:
        return;
    }
  }

  /** USERS: lists users, or changes one (committed before it answers). */
  async users(sessionId: number, req: UsersRequest): Promise<{ users: UserInfo[] }> {
    this.requireLeader();
    if (req.op === 'list') {
      await this.log.readBarrier();
      return { users: this.sm.listUsers(req.user) };
    }
    const base = { sessionId, seq: req.seq, user: req.user! };
    const cmd: Command =
      req.op === 'add'
        ? { op: 'userAdd', ...base, password: req.password!, ...(req.rules ? { rules: req.rules } : {}) }
        : req.op === 'remove'
          ? { op: 'userRemove', ...base }
          : req.op === 'aclSet'
            ? { op: 'aclSet', ...base, prefix: req.prefix!, right: req.right! }
            : { op: 'aclRemove', ...base, prefix: req.prefix! };
    return unwrap((await this.log.propose(cmd)).result) as { users: UserInfo[] };
  }

  async validate(objects: [number, number][]): Promise<[number, number][]> {
    this.requireLeader();
    await this.log.readBarrier();
    const stale: [number, number][] = [];
    for (const [id, version] of objects) {
      const obj = this.sm.object(id);
      if (!obj) stale.push([id, 0]);
      else if (obj.version !== version) stale.push([id, obj.version]);
    }
    return stale;
  }

  // --- watches (watches.ts) ---

  /** WATCH: the object's id and version now; later committed changes are pushed as CHANGED. */
  watch(sessionId: number, name: string): Promise<{ objectId: number; version: number }> {
    return this.watches.watch(sessionId, name);
  }

  /** UNWATCH: true when the session watched the object. */
  unwatch(sessionId: number, objectId: number): boolean {
    return this.watches.unwatch(sessionId, objectId);
  }

  // --- locks (grants.ts) ---

  /** Takes a lock; answers on `port` now (granted/failed) or later (when the queue moves). */
  acquire(port: Port, sessionId: number, requestId: number, req: AcquireRequest): Promise<void> {
    return this.grants.acquire(port, sessionId, requestId, req);
  }

  /**
   * PROBE: passes a probe of a cycle of waits across shard groups on, one hop further, to every session the
   * waits of `sessionId` are behind (their holds, and conflicting waits queued ahead). Read from the state
   * this leader has applied, without a barrier: a probe is a hint, repeated while the wait lasts, and a
   * cycle is only declared when a probe comes back to the client that started it. Returns how many went out.
   */
  probe(sessionId: number, req: ProbeRequest): number {
    this.requireLeader();
    let pushed = 0;
    for (const behind of this.sm.waitsBehind(sessionId)) {
      const msg = { initiator: req.initiator, probeId: req.probeId, hops: req.hops + 1, name: behind.name };
      if (this.sessions.pushProbed(behind.sessionId, msg)) pushed++;
    }
    return pushed;
  }

  /** CANCEL: the waiter answers through the `fail` effect; this answers whether it was still waiting. */
  cancel(sessionId: number, acquireRequestId: number, reason: CancelReason, port: Port): Promise<boolean> {
    return this.grants.cancel(sessionId, acquireRequestId, reason, port);
  }

  release(sessionId: number, req: ReleaseRequest): Promise<ReleaseOk> {
    // A write's bytes replace bytes the object's creation was admitted for: counted while in flight,
    // never refused (a refused release would keep the writer's lock and lose its change). The promise is
    // handed back as it is: an extra await would let answers sent after it overtake it.
    const released = this.grants.release(sessionId, req);
    if (req.payload.byteLength > 0) {
      const counted = this.budget.count(req.payload.byteLength);
      released.then(counted, counted);
    }
    return released;
  }

  /** See {@link NodeLog.leaseBarrier}: what a KEEPALIVE renewing a lease waits for. */
  leaseBarrier(): Promise<void> {
    this.requireLeader();
    return this.log.leaseBarrier();
  }

  // --- shared logs ---

  /** LOG_APPEND: one command, so the batch is atomic, contiguous and applied exactly once. */
  async logAppend(sessionId: number, req: LogAppendRequest): Promise<{ first: number; count: number }> {
    // Admitted on the leader before proposing (node/budget.ts): what the log grows by, past its retention's drops.
    this.requireLeader();
    const bytes = req.payload.byteLength;
    const log = this.sm.logSize(req.name);
    const retention = log?.maxBytes ?? req.maxBytes ?? DEFAULT_LOG_MAX_BYTES;
    const before = log?.bytes ?? 0;
    const growth = Math.max(0, Math.min(before + bytes, Math.max(retention, bytes)) - before);
    const admitted = this.budget.admitGrowth(
      growth,
      `appending ${req.sizes.length} record(s) (${bytes} bytes) to shared log "${req.name}"`,
    );
    const counted = this.budget.count(bytes - growth);
    const cmd: Command = {
      op: 'append',
      sessionId,
      seq: req.seq,
      name: req.name,
      sizes: req.sizes,
      maxBytes: req.maxBytes,
      data: req.payload.byteLength > 0 ? toBuffer(req.payload) : null,
    };
    try {
      return unwrap((await this.propose(cmd)).result) as { first: number; count: number };
    } finally {
      admitted();
      counted();
    }
  }

  async logTruncate(sessionId: number, req: { seq: number; name: string; before: number }): Promise<number> {
    const outcome = await this.propose({
      op: 'truncate',
      sessionId,
      ...pick(req, 'seq', 'name', 'before'),
    });
    return (unwrap(outcome.result) as { first: number }).first;
  }

  // --- waiting reads (reads.ts) ---

  /** LOG_READ: answers on `port` now, or as soon as the log gains a record (pushed from the apply path). */
  logRead(port: Port, requestId: number, req: LogReadRequest): Promise<void> {
    return this.reads.logRead(port, requestId, req);
  }

  /** READ_PAGES: answers on `port` with the pages at exactly `req.version`, waiting up to `waitMs` to apply it. */
  readPages(port: Port, requestId: number, req: ReadPagesRequest): Promise<void> {
    return this.reads.readPages(port, requestId, req);
  }

  /** Proposes through the BARRIER hold: a change to content waits while a hold is on. */
  private propose(cmd: Command): Promise<Outcome> {
    return this.hold.propose(cmd, (c) => this.log.propose(c));
  }

  /**
   * BARRIER `hold`: stops proposing content changes for `holdMs` (this session's hold; changes wait while
   * any session holds) and answers once everything proposed before is applied, with the applied position;
   * `release`: ends the session's hold, `held` saying whether it was still on (false: it ended by itself,
   * so a cut taken under it may not be consistent).
   */
  async barrier(sessionId: number, req: { op: 'hold' | 'release'; holdMs: number }): Promise<BarrierOk> {
    this.requireLeader();
    if (req.op === 'release') {
      const held = this.hold.release(sessionId);
      return { held, ...this.log.appliedPosition(), remainingMs: 0 };
    }
    await this.hold.hold(sessionId, req.holdMs);
    await this.log.readBarrier();
    const { index, term } = this.log.appliedPosition();
    return { ...this.hold.state(sessionId), index, term };
  }

  // --- consolidated snapshots (exports.ts) ---

  /** A consolidated snapshot of the applied state; see {@link SnapshotExports.consolidate}. */
  consolidate(): Promise<ConsolidatedExport> {
    return this.exports.consolidate();
  }

  /** SNAPSHOT: a consolidated snapshot kept for SNAPSHOT_READ until the asking session ends. */
  snapshotExport(sessionId: number): Promise<{ id: number; bytes: number; index: number; term: number }> {
    return this.exports.export(sessionId);
  }

  /**
   * SNAPSHOT_READ: a piece of an export, as views of its frozen bytes (no copy). Only the session that made
   * the export, or an admin of every name, may read it.
   */
  snapshotRead(
    req: { id: number; offset: number; length: number },
    sessionId = 0,
    principal: Principal = ADMIN,
  ): Buffer[] {
    return this.exports.read(req, (owner) => owner === sessionId || isAdmin(this.sm, principal));
  }
}

/** The consensus position STATUS reports (a single server: the leader of its own group, term 0). */
export interface RaftStatus {
  role: MemberRole;
  leader: string | null;
  term: number;
  commitIndex: number;
  lastIndex: number;
  /** The leader only: `[id, matchIndex]` of every other member. */
  progress: [string, number][];
}

/** How many files in `dir` match `isName`, their bytes (allocated on disk when `allocated`), the last name. */
async function filesIn(
  fs: StorageFs,
  dir: string,
  isName: (name: string) => boolean,
  allocated: boolean,
): Promise<{ files: number; bytes: number; newest: string | null }> {
  let names: string[];
  try {
    names = (await fs.readdir(dir)).filter(isName).sort();
  } catch {
    return { files: 0, bytes: 0, newest: null };
  }
  let bytes = 0;
  for (const name of names) {
    // A file deleted meanwhile (a compaction) just does not count.
    const st = await fs.stat(join(dir, name)).catch(() => null);
    if (st) bytes += allocated ? st.allocatedBytes : st.size;
  }
  return { files: names.length, bytes, newest: names[names.length - 1] ?? null };
}
