/**
 * One segmem server's state and request handling, independent of how bytes arrive: the data
 * directory, the WAL, the state machine and its log, session liveness, and the delivery of grants,
 * errors and invalidations to whichever connection a session is attached to.
 * `startServer` puts it behind TCP/UDP; the client's embedded mode attaches in-process connections.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Socket as UdpSocket } from 'node:dgram';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type AcquireRequest,
  DEFAULT_SEGMENT_BYTES,
  type Env,
  type EnvTimer,
  encodeError,
  encodeInvalidate,
  encodeInvalidationDatagram,
  encodeOk,
  grantPayloadBytes,
  type HelloRequest,
  type LockedObject,
  type LogAppendRequest,
  type LogReadRequest,
  MAX_FRAME_BYTES,
  MAX_LOG_BATCH_RECORDS,
  MAX_OBJECT_BYTES,
  MAX_STATUS_LOCKS,
  type MemberRole,
  PAGE_BYTES,
  pageCount,
  type ReadPagesRequest,
  type ReleaseRequest,
  SegmemError,
  type StatusOk,
  systemEnv,
} from '@segmem/protocol';
import { DEFAULT_CONFIG, parseSegmentBytes } from './config.js';
import type { Command, Grant, LockMode, Outcome, Result } from './core/commands.js';
import type { SegmentObject, StateMachine } from './core/state-machine.js';
import { type ApplyListener, openLocalLog, type ReplicatedLog } from './log/local-log.js';
import type { Message } from './raft/types.js';
import { ConsolidatedSchedule } from './shell/consolidated-schedule.js';
import { SessionLiveness } from './shell/liveness.js';
import { type LogStats, type MetricsSink, NO_METRICS, type NodeStats, timedWalIo } from './stats.js';
import { type ConsolidatedExport, encodeConsolidated } from './storage/consolidated.js';
import { DataDir } from './storage/datadir.js';
import { describeLocalRecovery } from './storage/local-storage.js';
import { isSnapshotName, SNAPSHOT_DIR } from './storage/snapshot-file.js';
import { type FsyncPolicy, isSegmentFileName, type RecoveryReport } from './storage/wal.js';

/** An unread consolidated snapshot is dropped after this long without a SNAPSHOT_READ. */
const SNAPSHOT_EXPORT_IDLE_MS = 60_000;

export interface NodeOptions {
  id: string;
  dataDir: string;
  fsync?: FsyncPolicy;
  segmentBytes?: number;
  clusterId?: string;
  /** Credential clients must present in HELLO; none when unset. */
  token?: string;
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
}

/** The transport under one connection: TCP socket or an in-process pipe. */
export interface Wire {
  write(parts: Buffer[]): void;
  close(): void;
  /** Remote address for UDP hints (TCP only). */
  readonly remoteAddress?: string | undefined;
}

/** What the node needs to know about a connection to answer it. */
export interface Port {
  readonly wire: Wire;
  readonly udpPort: number | null;
  closed: boolean;
}

interface Waiting {
  port: Port;
  requestId: number;
  mode: LockMode;
  /** When the ACQUIRE arrived (the node's clock), for the acquire wait metric. */
  sinceMs: number;
  cachedId: number;
  cachedVersion: number;
  /** Most page bytes the grant may carry before it defers them to READ_PAGES; null: no limit. */
  inlineMaxBytes: number | null;
  timer: EnvTimer | null;
}

/** A READ_PAGES for a version this member has not applied yet. */
interface PageReadWaiter {
  port: Port;
  requestId: number;
  req: ReadPagesRequest;
  timer: EnvTimer | null;
}

/** A LOG_READ held until its log gains a record (or its wait ends). */
interface LogWaiter {
  port: Port;
  requestId: number;
  req: LogReadRequest;
  timer: EnvTimer | null;
}

interface SessionState {
  port: Port | null;
  invalidationSeq: number;
  /** Acquires waiting in the lock queue, by seq. */
  readonly waiting: Map<number, Waiting>;
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
  /** Before a clean shutdown: let another member lead (Raft groups; a single member has nobody to hand to). */
  handOff?(): Promise<void>;
  /** The log index (and Raft term; 0 for a single member) the applied state stands at. */
  appliedPosition(): { index: number; term: number };
  /** Where the log stands, for metrics and health. */
  stats(): LogStats;
  /** Raft groups: members with their addresses, and single-server membership changes. */
  membersWithAddresses?(): [string, string | null][];
  proposeConfChange?(cc: { op: 'add' | 'remove'; id: string; address?: string }): Promise<void>;
}

export class SegmemNode {
  readonly id: string;
  readonly recovery: RecoveryReport;
  readonly clusterId: string;
  readonly metrics: MetricsSink;
  private readonly log: NodeLog;
  /** Connections of clients with a session, so a deposed leader can close them (they then find the new one). */
  private readonly ports = new Set<Port>();
  private readonly sessions = new Map<number, SessionState>();
  private readonly liveness: SessionLiveness;
  private readonly expiring = new Set<number>();
  /** Held LOG_READs by log name. */
  private readonly logWaiters = new Map<string, Set<LogWaiter>>();
  /** READ_PAGES waiting for this member to apply their version. */
  private readonly pageWaiters = new Set<PageReadWaiter>();
  /** Pages this member served through READ_PAGES (for status lines and tests). */
  pagesServed = 0;
  private expiryTimer: EnvTimer | null = null;
  private readonly env: Env;
  private udp: UdpSocket | null = null;
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
    this.liveness = new SessionLiveness(this.env);
    this.metrics = opts.metrics ?? NO_METRICS;
    this.log = makeLog((_index, cmd, outcome) => {
      this.metrics.applied(cmd.op);
      this.afterApply(outcome);
    });
    this.schedule = opts.consolidatedDir
      ? new ConsolidatedSchedule(
          { isLeader: () => this.log.isLeader(), consolidate: () => this.consolidate() },
          {
            dir: opts.consolidatedDir,
            intervalMs: opts.consolidatedIntervalMs ?? DEFAULT_CONFIG.consolidatedIntervalMs,
            keep: opts.consolidatedKeep ?? DEFAULT_CONFIG.consolidatedKeep,
            env: this.env,
            ...(opts.log ? { log: opts.log } : {}),
          },
        )
      : null;
  }

  get sm(): StateMachine {
    return this.log.stateMachine;
  }

  /** Builds a node over a log made by the caller (the cluster mode's Raft log). */
  static withLog(
    opts: NodeOptions,
    dataDir: DataDir,
    makeLog: (onApply: ApplyListener) => NodeLog,
    recovery: RecoveryReport,
  ): SegmemNode {
    const node = new SegmemNode(opts, dataDir, makeLog, recovery);
    node.scheduleExpiry();
    node.schedule?.start();
    return node;
  }

  /** The log's leadership changed: a new leader restarts every session's clock; a deposed one lets go. */
  roleChanged(isLeader: boolean): void {
    if (isLeader) {
      for (const id of this.sm.sessionIds()) this.liveness.track(id, this.sm.sessionTimeoutMs(id) ?? 10_000);
      this.rescheduleExpiry();
      return;
    }
    for (const id of this.sm.sessionIds()) this.liveness.forget(id);
    this.expiring.clear();
    for (const state of this.sessions.values())
      for (const w of state.waiting.values()) this.env.clearTimeout(w.timer);
    this.sessions.clear();
    this.dropLogWaiters();
    // Close client connections once the answers already on their way are written (a turn of the loop).
    const ports = [...this.ports];
    this.ports.clear();
    this.env.setImmediate(() => {
      for (const port of ports) {
        port.closed = true;
        port.wire.close();
      }
    });
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
    };
  }

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

  static async open(opts: NodeOptions): Promise<SegmemNode> {
    const segmentBytes = parseSegmentBytes(opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES);
    const dataDir = await DataDir.open({
      dir: opts.dataDir,
      serverId: opts.id,
      pageBytes: PAGE_BYTES,
      segmentBytes,
      ...(opts.clusterId ? { clusterId: opts.clusterId } : {}),
    });
    try {
      const local = await openLocalLog({
        dir: dataDir.dir,
        walDir: dataDir.walDir,
        fsync: opts.fsync ?? 'batch',
        pageBytes: PAGE_BYTES,
        segmentBytes,
        ...pick(opts, 'snapshotEveryEntries', 'snapshotIntervalMs', 'walFileBytes', 'log', 'env'),
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
      // Sessions end with a restart: their lock state may not all have reached the disk.
      await node.log.propose({ op: 'restart', sessionIdFloor: Math.floor(node.env.now()) * 1000 });
      node.scheduleExpiry();
      node.schedule?.start();
      return node;
    } catch (err) {
      await dataDir.close();
      throw err;
    }
  }

  /** Receives consensus messages from peers (cluster mode only). */
  peerHandler: ((msg: Message) => void) | null = null;

  /** Cluster mode: the consensus core's position, for STATUS (set by cluster.ts). */
  raftStatus: (() => RaftStatus) | null = null;

  /** STATUS: where this member stands; any member answers, leader or not. */
  async statusReport(): Promise<StatusOk> {
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
    const locked = sm.lockedObjects().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const locks: LockedObject[] = locked.slice(0, MAX_STATUS_LOCKS).map((obj) => {
      const writing = obj.writer !== 0;
      return [obj.name, writing ? 'write' : 'read', writing ? 1 : obj.readers, obj.queue.length];
    });
    const wal = await filesIn(this.dataDir.walDir, isSegmentFileName, false);
    const snaps = await filesIn(join(this.dataDir.dir, SNAPSHOT_DIR), isSnapshotName, true);
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
    };
  }

  /** Checks a peer's PEER_HELLO; throws UNAUTHORIZED for another cluster or a misdirected peer. */
  acceptPeer(hello: {
    clusterId: string;
    from: string;
    to: string;
    token: string | null;
  }): (msg: Message) => void {
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
    // With a token set, members present it to each other too: a process that can reach the port but does
    // not know it cannot speak Raft here.
    if (this.opts.token !== undefined && !sameSecret(hello.token, this.opts.token))
      throw new SegmemError('UNAUTHORIZED', `peer ${hello.from}: bad or missing token`);
    const handler = this.peerHandler;
    return (msg) => {
      if (msg.from === hello.from && msg.to === this.id) handler(msg);
    };
  }

  /** Attaches the UDP socket used to send invalidation hints. */
  setUdp(socket: UdpSocket | null): void {
    this.udp = socket;
  }

  get pageBytes(): number {
    return this.sm.pageBytes;
  }

  // --- requests ---

  /** Handles one decoded request from `port`, whose session is `sessionId` (0 before HELLO). */
  async hello(port: Port, requestId: number, req: HelloRequest): Promise<number> {
    this.requireLeader();
    this.checkCredentials(req);
    let sessionId = 0;
    let resumed = false;
    // A session is resumed only with the secret it was opened with: its id alone (small, sequential) would
    // let any client take over another's locks. A wrong secret is treated like an unknown session, and so
    // is a session without one (opened before secrets existed).
    const resumeId = req.resumeSessionId ?? 0;
    const expected = resumeId ? this.sm.sessionSecret(resumeId) : '';
    if (expected !== '' && sameSecret(req.resumeSecret, expected) && !this.expiring.has(resumeId)) {
      sessionId = resumeId;
      resumed = true;
    } else {
      const outcome = await this.log.propose({
        op: 'open',
        timeoutMs: req.sessionTimeoutMs,
        clientName: req.clientName ?? null,
        secret: this.env.randomBytes(16).toString('hex'),
      });
      sessionId = (unwrap(outcome.result) as { sessionId: number }).sessionId;
    }
    let state = this.sessions.get(sessionId);
    if (!state) {
      state = { port: null, invalidationSeq: 0, waiting: new Map() };
      this.sessions.set(sessionId, state);
    }
    state.port = port;
    this.ports.add(port);
    const timeoutMs = this.sm.sessionTimeoutMs(sessionId) ?? req.sessionTimeoutMs;
    this.liveness.track(sessionId, timeoutMs);
    this.rescheduleExpiry();
    port.wire.write(
      this.helloOk(requestId, sessionId, resumed, timeoutMs, {
        keepaliveMs: Math.max(50, Math.floor(timeoutMs / 4)),
        udpPort: this.udp ? this.udp.address().port : null,
      }),
    );
    return sessionId;
  }

  touch(sessionId: number): void {
    this.liveness.touch(sessionId);
  }

  async create(sessionId: number, req: { seq: number; name: string; size: number; ifNotExists: boolean }) {
    const outcome = await this.log.propose({
      op: 'create',
      sessionId,
      ...pick(req, 'seq', 'name', 'size', 'ifNotExists'),
    });
    return unwrap(outcome.result) as { object: ReturnType<StateMachine['stat']>; created: boolean };
  }

  async delete(sessionId: number, req: { seq: number; name: string }): Promise<void> {
    unwrap((await this.log.propose({ op: 'delete', sessionId, seq: req.seq, name: req.name })).result);
  }

  async stat(name: string) {
    this.requireLeader();
    await this.log.readBarrier();
    const rec = this.sm.stat(name);
    if (!rec) throw new SegmemError('NOT_FOUND', `no object named "${name}"`);
    return rec;
  }

  async list(prefix: string) {
    this.requireLeader();
    await this.log.readBarrier();
    return this.sm.list(prefix);
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

  /** Takes a lock; answers on `port` now (granted/failed) or later (when the queue moves). */
  async acquire(port: Port, sessionId: number, requestId: number, req: AcquireRequest): Promise<void> {
    const state = this.sessionState(sessionId);
    // Registered before proposing: a grant for this waiter may be applied in the same drain.
    const waiting: Waiting = {
      port,
      requestId,
      mode: req.mode,
      sinceMs: this.env.now(),
      cachedId: req.cachedId,
      cachedVersion: req.cachedVersion,
      inlineMaxBytes: req.inlineMaxBytes ?? null,
      timer: null,
    };
    state.waiting.set(req.seq, waiting);
    let outcome: Outcome;
    try {
      outcome = await this.log.propose({
        op: 'acquire',
        sessionId,
        seq: req.seq,
        name: req.name,
        mode: req.mode,
      });
    } catch (err) {
      state.waiting.delete(req.seq);
      throw err;
    }
    if (state.waiting.get(req.seq) !== waiting) return; // already answered by a grant or failure effect
    const result = outcome.result;
    if (!result.ok) {
      state.waiting.delete(req.seq);
      throw new SegmemError(result.code, result.message);
    }
    const value = result.value as { granted?: Grant; queued?: boolean };
    if (value.granted) {
      state.waiting.delete(req.seq);
      this.sendGrant(waiting, value.granted);
      return;
    }
    if (req.timeoutMs !== null) {
      waiting.timer = this.env.setTimeout(() => {
        waiting.timer = null;
        this.log.propose({ op: 'cancel', sessionId, seq: req.seq, reason: 'TIMEOUT' }).catch(() => {});
      }, req.timeoutMs);
    }
  }

  /** CANCEL: the waiter answers through the `fail` effect; this answers whether it was still waiting. */
  async cancel(
    sessionId: number,
    acquireRequestId: number,
    reason: 'TIMEOUT' | 'ABORTED',
    port: Port,
  ): Promise<boolean> {
    const state = this.sessions.get(sessionId);
    if (!state) return false;
    for (const [seq, w] of state.waiting) {
      if (w.requestId === acquireRequestId && w.port === port) {
        const outcome = await this.log.propose({ op: 'cancel', sessionId, seq, reason });
        return (unwrap(outcome.result) as { cancelled: boolean }).cancelled;
      }
    }
    return false;
  }

  async release(sessionId: number, req: ReleaseRequest): Promise<number> {
    const data = req.mode === 'write' && req.payload.byteLength > 0 ? toBuffer(req.payload) : null;
    const cmd: Command = {
      op: 'release',
      sessionId,
      seq: req.seq,
      name: req.name,
      mode: req.mode,
      token: req.token,
      ranges: req.ranges,
      data,
    };
    const outcome = await this.log.propose(cmd);
    return (unwrap(outcome.result) as { version: number }).version;
  }

  /** LOG_APPEND: one command, so the batch is atomic, contiguous and applied exactly once. */
  async logAppend(sessionId: number, req: LogAppendRequest): Promise<{ first: number; count: number }> {
    const cmd: Command = {
      op: 'append',
      sessionId,
      seq: req.seq,
      name: req.name,
      sizes: req.sizes,
      maxBytes: req.maxBytes,
      data: req.payload.byteLength > 0 ? toBuffer(req.payload) : null,
    };
    return unwrap((await this.log.propose(cmd)).result) as { first: number; count: number };
  }

  async logTruncate(sessionId: number, req: { seq: number; name: string; before: number }): Promise<number> {
    const outcome = await this.log.propose({
      op: 'truncate',
      sessionId,
      ...pick(req, 'seq', 'name', 'before'),
    });
    return (unwrap(outcome.result) as { first: number }).first;
  }

  /**
   * LOG_READ: answers on `port` with the records from `req.from`, now or, when there are none yet and the
   * request may wait, as soon as the log gains one (pushed from the apply path, not polled).
   */
  async logRead(port: Port, requestId: number, req: LogReadRequest): Promise<void> {
    this.requireLeader();
    await this.log.readBarrier();
    if (this.answerLogRead(port, requestId, req, req.waitMs === 0)) return;
    const waiter: LogWaiter = { port, requestId, req, timer: null };
    let set = this.logWaiters.get(req.name);
    if (!set) {
      set = new Set();
      this.logWaiters.set(req.name, set);
    }
    set.add(waiter);
    waiter.timer = this.env.setTimeout(() => {
      waiter.timer = null;
      this.logWaiters.get(req.name)?.delete(waiter);
      this.answerLogRead(port, requestId, req, true);
    }, req.waitMs);
  }

  /** Answers a LOG_READ unless it has nothing to say yet and may wait; returns whether it answered. */
  private answerLogRead(port: Port, requestId: number, req: LogReadRequest, mustAnswer: boolean): boolean {
    const r = this.sm.readLog(req.name, req.from, req.maxBytes, MAX_LOG_BATCH_RECORDS);
    if (port.closed) return true;
    // A follower of a log that does not exist yet waits for its first append, as for any new record.
    if (!r.ok && r.code === 'NOT_FOUND' && !mustAnswer) return false;
    if (!r.ok) {
      const details = r.first === undefined ? undefined : { first: r.first };
      port.wire.write(this.errorFrame(requestId, new SegmemError(r.code, r.message, details)));
      return true;
    }
    const read = r.read;
    if (read.sizes.length === 0 && req.maxBytes > 0 && !mustAnswer) return false;
    const { parts, ...header } = read;
    port.wire.write(encodeOk('LOG_READ', requestId, header, parts));
    return true;
  }

  private wakeLogReaders(name: string): void {
    const set = this.logWaiters.get(name);
    if (!set) return;
    for (const w of set) {
      if (this.answerLogRead(w.port, w.requestId, w.req, false)) {
        set.delete(w);
        this.env.clearTimeout(w.timer);
      }
    }
    if (set.size === 0) this.logWaiters.delete(name);
  }

  private dropLogWaiters(): void {
    for (const set of this.logWaiters.values()) for (const w of set) this.env.clearTimeout(w.timer);
    this.logWaiters.clear();
  }

  private dropPageWaiters(): void {
    for (const w of this.pageWaiters) this.env.clearTimeout(w.timer);
    this.pageWaiters.clear();
  }

  private checkCredentials(req: HelloRequest): void {
    if (req.clusterId && req.clusterId !== this.clusterId) {
      throw new SegmemError(
        'UNAUTHORIZED',
        `this server belongs to cluster ${this.clusterId}, not ${req.clusterId}`,
        { reason: 'CLUSTER_MISMATCH', clusterId: this.clusterId },
      );
    }
    if (this.opts.token !== undefined && !sameSecret(req.token, this.opts.token)) {
      throw new SegmemError('UNAUTHORIZED', 'bad or missing token');
    }
  }

  private readonly exports = new Map<
    number,
    { parts: Buffer[]; bytes: number; release: () => void; timer: EnvTimer; sessionId: number }
  >();
  private nextExportId = 1;

  /**
   * A consolidated snapshot of the applied state after a read barrier (so it holds everything acknowledged
   * before the call): the file's bytes as parts over a frozen copy-on-write view, so the content stays as of
   * `index` while it is encoded, read or written in pieces, and commands keep applying meanwhile (their
   * writes copy the objects they change). Call `release()` once the parts are no longer needed.
   */
  async consolidate(): Promise<ConsolidatedExport> {
    this.requireLeader();
    await this.log.readBarrier();
    const { index, term } = this.log.appliedPosition();
    const view = this.sm.freeze();
    const createdAt = new Date(this.env.now()).toISOString();
    let parts: Buffer[];
    try {
      parts = await encodeConsolidated(this.sm.exportContent(), {
        clusterId: this.clusterId,
        createdAt,
        groups: [[0, index, term]],
      });
    } catch (err) {
      view.release();
      throw err;
    }
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    return { parts, bytes, index, term, createdAt, release: () => view.release() };
  }

  /**
   * SNAPSHOT: {@link consolidate}, kept under an id for SNAPSHOT_READ until the session that asked ends
   * (its GOODBYE, expiry, or this member's loss of leadership) or nobody read it for a minute.
   */
  async snapshotExport(
    sessionId: number,
  ): Promise<{ id: number; bytes: number; index: number; term: number }> {
    const ex = await this.consolidate();
    const id = this.nextExportId++;
    const timer = this.env.setTimeout(() => this.dropExport(id), SNAPSHOT_EXPORT_IDLE_MS);
    timer.unref();
    this.exports.set(id, { parts: ex.parts, bytes: ex.bytes, release: ex.release, timer, sessionId });
    return { id, bytes: ex.bytes, index: ex.index, term: ex.term };
  }

  private dropExport(id: number): void {
    const ex = this.exports.get(id);
    if (!ex) return;
    this.env.clearTimeout(ex.timer);
    ex.release();
    this.exports.delete(id);
  }

  /**
   * SNAPSHOT_READ: a piece of an export, as views of its frozen bytes (no copy). They may wait in the
   * socket's queue after this returns: the export, and so the frozen view, lives until its session ends,
   * by which time the reader has had every piece it asked for.
   */
  snapshotRead(req: { id: number; offset: number; length: number }): Buffer[] {
    const ex = this.exports.get(req.id);
    if (!ex)
      throw new SegmemError(
        'NOT_FOUND',
        `no snapshot ${req.id} here (its session ended, idle for a minute, or another server's)`,
      );
    if (req.offset > ex.bytes) {
      throw new SegmemError('INVALID_ARGUMENT', `offset ${req.offset} is past the end (${ex.bytes} bytes)`);
    }
    const end = Math.min(ex.bytes, req.offset + req.length);
    const piece: Buffer[] = [];
    let partStart = 0;
    for (const p of ex.parts) {
      const partEnd = partStart + p.length;
      if (partEnd > req.offset && partStart < end) {
        piece.push(
          p.subarray(Math.max(req.offset, partStart) - partStart, Math.min(end, partEnd) - partStart),
        );
      }
      if (partEnd >= end) break;
      partStart = partEnd;
    }
    ex.timer.refresh();
    return piece;
  }

  /** HELLO of a page-reader connection: any member answers, after the cluster and credential checks. */
  helloPageReader(port: Port, requestId: number, req: HelloRequest): void {
    this.checkCredentials(req);
    // No session, so nothing to keep alive and no invalidations to hint.
    port.wire.write(
      this.helloOk(requestId, 0, false, req.sessionTimeoutMs, {
        keepaliveMs: req.sessionTimeoutMs,
        udpPort: null,
      }),
    );
  }

  private helloOk(
    requestId: number,
    sessionId: number,
    resumed: boolean,
    sessionTimeoutMs: number,
    extra: { keepaliveMs: number; udpPort: number | null },
  ): Buffer[] {
    return encodeOk('HELLO', requestId, {
      sessionId,
      resumed,
      sessionSecret: this.sm.sessionSecret(sessionId),
      clusterId: this.clusterId,
      serverId: this.id,
      pageBytes: PAGE_BYTES,
      segmentBytes: this.sm.segmentBytes,
      maxFrameBytes: MAX_FRAME_BYTES,
      maxObjectBytes: MAX_OBJECT_BYTES,
      sessionTimeoutMs,
      ...extra,
    });
  }

  /**
   * READ_PAGES: the pages of an object at exactly `req.version`, from this member's applied state. A
   * member that has not applied that version yet waits for it (up to `waitMs`); one that has moved past
   * it cannot serve it (the reader's grant must have been lost).
   */
  async readPages(port: Port, requestId: number, req: ReadPagesRequest): Promise<void> {
    if (this.answerPageRead(port, requestId, req, req.waitMs === 0)) return;
    const waiter: PageReadWaiter = { port, requestId, req, timer: null };
    this.pageWaiters.add(waiter);
    waiter.timer = this.env.setTimeout(() => {
      this.pageWaiters.delete(waiter);
      this.answerPageRead(port, requestId, req, true);
    }, req.waitMs);
  }

  /** Answers a READ_PAGES unless this member is behind its version and may wait; returns whether it answered. */
  private answerPageRead(port: Port, requestId: number, req: ReadPagesRequest, mustAnswer: boolean): boolean {
    if (port.closed) return true;
    const obj = this.sm.object(req.objectId);
    let err: SegmemError | null = null;
    if (obj && obj.version < req.version) {
      if (!mustAnswer) return false;
      err = new SegmemError(
        'UNAVAILABLE',
        `member ${this.id} has not applied version ${req.version} of "${obj.name}" yet (it has ${obj.version})`,
        { reason: 'BEHIND' },
      );
    } else if (!obj) {
      // A follower that has not applied the object's create yet is behind, not wrong.
      if (!mustAnswer && !this.log.isLeader()) return false;
      err = new SegmemError('NOT_FOUND', `no object with id ${req.objectId} on member ${this.id}`);
    } else if (obj.version > req.version) {
      err = new SegmemError(
        'LOCK_LOST',
        `"${obj.name}" changed since version ${req.version} (it is at ${obj.version}): the grant was lost`,
      );
    } else if (req.pages[req.pages.length - 1]! >= pageCount(obj.size)) {
      err = new SegmemError('INVALID_ARGUMENT', `"${obj.name}" has ${pageCount(obj.size)} pages`);
    }
    if (err) {
      port.wire.write(this.errorFrame(requestId, err));
      return true;
    }
    const record = {
      id: obj!.id,
      name: obj!.name,
      size: obj!.size,
      address: obj!.address,
      version: obj!.version,
    };
    const payload = pagesPayload(obj!, req.pages, this.sm.pageBytes);
    port.wire.write(encodeOk('READ_PAGES', requestId, { object: record, pages: req.pages }, payload));
    this.pagesServed += req.pages.length;
    return true;
  }

  private wakePageReaders(): void {
    for (const w of this.pageWaiters) {
      if (this.answerPageRead(w.port, w.requestId, w.req, false)) {
        this.pageWaiters.delete(w);
        this.env.clearTimeout(w.timer);
      }
    }
  }

  async goodbye(sessionId: number): Promise<void> {
    await this.log.propose({ op: 'close', sessionId });
  }

  /** A connection went away; its session lives on until it resumes or times out. */
  detach(port: Port, sessionId: number): void {
    port.closed = true;
    this.ports.delete(port);
    const state = this.sessions.get(sessionId);
    if (state && state.port === port) state.port = null;
  }

  // --- effects ---

  private afterApply(outcome: Outcome): void {
    if (this.pageWaiters.size > 0) this.wakePageReaders();
    for (const effect of outcome.effects) {
      switch (effect.kind) {
        case 'grant': {
          const w = this.takeWaiting(effect.sessionId, effect.seq);
          if (w) this.sendGrant(w, effect.grant);
          break;
        }
        case 'fail': {
          const w = this.takeWaiting(effect.sessionId, effect.seq);
          if (w && !w.port.closed) {
            w.port.wire.write(this.errorFrame(w.requestId, new SegmemError(effect.code, effect.message)));
          }
          break;
        }
        case 'invalidate':
          for (const sid of effect.sessionIds) this.pushInvalidation(sid, effect.objectId, effect.version);
          break;
        case 'logChanged':
          this.wakeLogReaders(effect.name);
          break;
        case 'sessionClosed': {
          const state = this.sessions.get(effect.sessionId);
          this.sessions.delete(effect.sessionId);
          this.liveness.forget(effect.sessionId);
          this.expiring.delete(effect.sessionId);
          if (state) for (const w of state.waiting.values()) this.env.clearTimeout(w.timer);
          // Its consolidated snapshots: every piece it read has reached it (it ended after them).
          for (const [id, ex] of this.exports) if (ex.sessionId === effect.sessionId) this.dropExport(id);
          // An expired session whose client is still connected (e.g. its event loop stalled past the timeout):
          // close the connection, so the client notices, finds its session gone and starts a new one.
          if (effect.reason === 'expired' && state?.port && !state.port.closed) {
            state.port.closed = true;
            this.ports.delete(state.port);
            state.port.wire.close();
          }
          break;
        }
      }
    }
  }

  /** An ERROR answer, counted by code. */
  private errorFrame(requestId: number, err: SegmemError): Buffer[] {
    this.metrics.failed(err.code);
    return encodeError(requestId, err);
  }

  private takeWaiting(sessionId: number, seq: number): Waiting | undefined {
    const state = this.sessions.get(sessionId);
    const w = state?.waiting.get(seq);
    if (!w) return undefined;
    state!.waiting.delete(seq);
    this.env.clearTimeout(w.timer);
    return w;
  }

  private sendGrant(w: Waiting, grant: Grant): void {
    if (w.port.closed) return; // the client resumes and retries the same seq: the grant is remembered
    const obj = this.sm.object(grant.object.id);
    if (!obj) {
      w.port.wire.write(
        this.errorFrame(
          w.requestId,
          new SegmemError('NOT_FOUND', `object "${grant.object.name}" was deleted`),
        ),
      );
      return;
    }
    this.metrics.granted(w.mode, this.env.now() - w.sinceMs);
    const pages = this.sm.pagesSince(obj, w.cachedId, w.cachedVersion);
    const record = { id: obj.id, name: obj.name, size: obj.size, address: obj.address, version: obj.version };
    if (w.inlineMaxBytes !== null && grantPayloadBytes(obj.size, pages) > w.inlineMaxBytes) {
      // Too many bytes for the leader to send: the client reads them from a follower (READ_PAGES).
      w.port.wire.write(
        encodeOk('ACQUIRE', w.requestId, { object: record, token: grant.token, pages, deferred: true }),
      );
      return;
    }
    const payload = pagesPayload(obj, pages, this.sm.pageBytes);
    w.port.wire.write(
      encodeOk('ACQUIRE', w.requestId, { object: record, token: grant.token, pages }, payload),
    );
  }

  private pushInvalidation(sessionId: number, objectId: number, version: number): void {
    const state = this.sessions.get(sessionId);
    if (!state) return;
    // Numbered even when the session is detached, so the client sees the gap when it returns.
    const seq = ++state.invalidationSeq;
    const port = state.port;
    if (!port || port.closed) return;
    port.wire.write(encodeInvalidate({ seq, objects: [[objectId, version]] }));
    if (port.udpPort && this.udp && port.wire.remoteAddress) {
      const datagram = encodeInvalidationDatagram({ sessionId, seq, objects: [[objectId, version]] });
      this.udp.send(datagram, port.udpPort, port.wire.remoteAddress, () => {});
    }
  }

  private sessionState(sessionId: number): SessionState {
    const state = this.sessions.get(sessionId);
    if (!state) throw new SegmemError('LOCK_LOST', `session ${sessionId} has expired or was closed`);
    return state;
  }

  // --- session expiry ---

  private scheduleExpiry(): void {
    if (this.closing) return;
    const every = this.liveness.checkEveryMs(1000);
    this.expiryTimer = this.env.setTimeout(() => {
      this.expiryTimer = null;
      this.expireOverdue();
      this.scheduleExpiry();
    }, every);
    this.expiryTimer.unref();
  }

  private rescheduleExpiry(): void {
    this.env.clearTimeout(this.expiryTimer);
    this.scheduleExpiry();
  }

  private expireOverdue(): void {
    if (!this.log.isLeader()) return;
    const overdue = this.liveness.overdue().filter((id) => !this.expiring.has(id));
    if (overdue.length === 0) return;
    for (const id of overdue) this.expiring.add(id);
    this.log.propose({ op: 'expire', sessionIds: overdue }).catch((err) => {
      this.opts.log?.(`session expiry failed: ${(err as Error).message}`);
      for (const id of overdue) this.expiring.delete(id); // tried again at the next check
    });
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
    this.env.clearTimeout(this.expiryTimer);
    for (const state of this.sessions.values())
      for (const w of state.waiting.values()) this.env.clearTimeout(w.timer);
    this.dropLogWaiters();
    this.dropPageWaiters();
    for (const id of [...this.exports.keys()]) this.dropExport(id);
    await this.schedule?.stop();
    await this.log.close();
    await this.dataDir.close();
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
  dir: string,
  isName: (name: string) => boolean,
  allocated: boolean,
): Promise<{ files: number; bytes: number; newest: string | null }> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter(isName).sort();
  } catch {
    return { files: 0, bytes: 0, newest: null };
  }
  let bytes = 0;
  for (const name of names) {
    // A file deleted meanwhile (a compaction) just does not count.
    const st = await stat(join(dir, name)).catch(() => null);
    if (st) bytes += allocated ? st.blocks * 512 : st.size;
  }
  return { files: names.length, bytes, newest: names[names.length - 1] ?? null };
}

/** The bytes of the listed pages, copied once into the outgoing payload (the object may change before the socket drains). */
function pagesPayload(obj: SegmentObject, pages: number[], pageBytes: number): Buffer | undefined {
  if (pages.length === 0) return undefined;
  let total = 0;
  for (const p of pages) total += Math.min(pageBytes, obj.size - p * pageBytes);
  if (!obj.data) return Buffer.alloc(total); // never written: zeros
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const p of pages) {
    const start = p * pageBytes;
    at += obj.data.copy(out, at, start, Math.min(obj.size, start + pageBytes));
  }
  return out;
}

/** Compares a presented credential with the expected one in time independent of where they differ. */
function sameSecret(given: string | null | undefined, expected: string): boolean {
  if (typeof given !== 'string') return false;
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function unwrap(result: Result): unknown {
  if (!result.ok) throw new SegmemError(result.code, result.message);
  return result.value;
}

function pick<T extends object, K extends keyof T>(obj: T, ...keys: K[]): Pick<T, K> {
  const out = {} as Pick<T, K>;
  for (const k of keys) out[k] = obj[k];
  return out;
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
