/**
 * The simulation of the code that ships: three real members (openClusterNode: SegmemNode, RaftLog and its
 * driver, DiskRaftStorage with its data directory on the simulated disk SimFs, the real connection handling,
 * and the real peer links, which prove one cluster secret to each other before any Raft message) and
 * 2..4 real clients (the client's own Session and SegmentImpl over a BufferSegment, reconnecting and
 * following the leader by their own code), every one a process with its own Env on one simulated clock.
 *
 * Each seed draws its faults (swarm testing): network delay and jitter, partitions between members
 * (symmetric or one-way) and between a client and a member, and client pauses longer than the session
 * timeout taken while the client holds a write handle, after which it writes into that handle; peer
 * handshakes reset midway, peer links reset, and a forged peer without the secret. Then the
 * faults stop and every operation still out must complete (liveness). The history of what the clients saw
 * is checked: increments counted exactly once, reads of committed values only, linearizability per
 * counter, stat versions that count every increment acknowledged before them, shared-log appends exactly
 * once at the sequence number their answer gave; and terms that grow only by campaigns.
 *
 * With `groups` (several shard groups of three members), the clients are the real ShardedSegment (one
 * Session and SegmentImpl per group, routing by hash slot), faults strike one group at a time, the counters
 * spread over the groups, pair increments hold a counter of one group while incrementing one of another (so
 * waits form cycles through groups, broken by the clients' probes), and the real rebalance driver
 * (Rebalancer, over sessions of the simulated network) moves the slots of the workload's names between groups
 * every 1.5 s or so; a run a fault stops half way is resumed or rolled back by the next, and by one after
 * the faults stop.
 */
import { createHash } from 'node:crypto';
import { FollowerReads } from '@segmem/client/internal/follower-reads';
import { BufferSegment, type MappedSegment, sharedMapping } from '@segmem/client/internal/mapped-segment';
import { SegmentImpl } from '@segmem/client/internal/segment';
import { Session } from '@segmem/client/internal/session';
import { ShardedSegment } from '@segmem/client/internal/sharded-segment';
import {
  DEFAULT_SEGMENT_BYTES,
  type Env,
  initialSlotTable,
  ownerOf,
  PAGE_BYTES,
  SegmemError,
  type SlotTable,
  slotOf,
} from '@segmem/protocol';
import type { SegmemNode } from '@segmem/server';
import { type GroupEndpoint, newMoveId, Rebalancer } from '@segmem/server/internal/cli/rebalance';
import { openClusterNode } from '@segmem/server/internal/cluster';
import type { GroupRange } from '@segmem/server/internal/core/group-range';
import { RaftNode } from '@segmem/server/internal/raft/node';
import type { RaftStorage } from '@segmem/server/internal/raft/types';
import { CLUSTER_SECRET_BYTES } from '@segmem/server/internal/shell/peer-auth';
import { runFor } from '@segmem/server/internal/sim/drive';
import { SimClock, SimEnv } from '@segmem/server/internal/sim/env';
import { SimFs } from '@segmem/server/internal/sim/fs';
import { describeOp, History, type OpRecord } from '@segmem/server/internal/sim/history';
import { SimPeerNetwork } from '@segmem/server/internal/sim/peer-network';
import { Prng } from '@segmem/server/internal/sim/prng';
import { SkewedEnv } from '@segmem/server/internal/sim/skewed-env';
import { WAL_DIR } from '@segmem/server/internal/storage/datadir';
import { isSnapshotName, SNAPSHOT_DIR } from '@segmem/server/internal/storage/snapshot-file';
import { isSegmentFileName, verifiedRecordSpans } from '@segmem/server/internal/storage/wal';
import { SimClientNetwork } from './client-network.js';
import { ForgedPeer } from './forged-peer.js';
import { PausableEnv } from './pausable-env.js';

export const REAL_BROKEN_VARIANTS = [
  'keepCopyAfterLockLost',
  'replyBeforeCommit',
  'followerReadsUnapplied',
  'walSkipsFsync',
  'grantPastLease',
  'leaseWithoutDriftMargin',
  'acceptUnprovenPeer',
  'noCrossGroupProbes',
] as const;
/**
 * Deliberately broken variants of the shipped code, each of which the checkers must catch:
 * keepCopyAfterLockLost: the client keeps trusting a copy a lost write handle wrote (no dropUncommitted).
 * replyBeforeCommit: the members' Raft counts an entry committed as soon as the leader has it (RaftNode's
 * unsafe commitWithoutMajority), so a leader applies and answers before a majority has the command.
 * followerReadsUnapplied: a follower answers READ_PAGES with the bytes it has even when it has not applied
 * the version asked for yet (NodeOptions' unsafe servePagesUnapplied), so a large read may be stale.
 * walSkipsFsync: now and then one fdatasync of a follower's WAL does nothing (SimFs.skipFsync), and the
 * follower crashes soon after: it may have acknowledged entries its disk never had.
 * grantPastLease: a client serves acquires from the grants it keeps whatever its lease says (SegmentImpl's
 * ignoreLease), so a paused or cut-off client may read its copy after its session ended and others wrote.
 * leaseWithoutDriftMargin: a client's lease is the whole session timeout on its own clock (Session's
 * unsafeLeaseMs), with no margin for the drift bound; runs with the lease edge (RealSimOptions.leaseEdge).
 * acceptUnprovenPeer: a member takes a dialer's PEER_PROOF unchecked (NodeOptions' unsafe
 * acceptUnprovenPeer), so a forged peer that names a member is taken for it; runs with the forged peer.
 * noCrossGroupProbes: a sharded client never probes its waits (ProbeHub's unsafeOff), so a cycle of waits
 * through two groups is never broken; runs with three groups.
 */
export type RealBrokenVariant = (typeof REAL_BROKEN_VARIANTS)[number];

export interface RealSimOptions {
  seed: number;
  broken?: RealBrokenVariant;
  /**
   * The edge a lease must hold at (implied by leaseWithoutDriftMargin): clients' clocks run 5% slow and
   * members' 5% fast, now and then a client is cut off from every member the moment a lease renewal is
   * answered, keeps re-reading an object it keeps a read grant of, and the others write that object.
   */
  leaseEdge?: boolean;
  /**
   * At the lease edge, how far clocks run off true time (default 0.05, the bound the lease assumes): above
   * it the run shows what breaks beyond the bound.
   */
  edgeDrift?: number;
  /** Simulated ms of workload under faults (default 8000), before the liveness phase. */
  workloadMs?: number;
  /**
   * Shard groups of three members each (default 1: one group, the cluster without groups). With several,
   * the segment is split between them, the clients route by hash slot, the counters spread over every
   * group, and some increments hold counters of two groups at once (cross-group deadlocks are broken).
   */
  groups?: number;
  /** Every line of the trace as it is made. */
  onTrace?: (line: string) => void;
}

/** What a seed drew: which faults are on, and how often. */
export interface RealSimParams {
  clients: number;
  latencyMs: number;
  jitterMs: number;
  /** Between members: up to this much more latency per message (they may overtake each other), and a rate of duplicates. */
  peerJitterMs: number;
  peerDuplicateRate: number;
  sessionTimeoutMs: number;
  /** Chance that an increment pauses its client while it holds the write handle. */
  pauseRate: number;
  memberPartitions: boolean;
  oneWayPartitions: boolean;
  clientPartitions: boolean;
  /**
   * How often each client's watcher starts a read without waiting for the ones still out (0: no watcher),
   * as a process whose many tasks read at once; some of them then start while the client reconnects.
   */
  watchEveryMs: number;
  /**
   * Chance that a write release reaching a member strands its client: cut off from that member for longer
   * than the session timeout as the release arrives, so it commits and its answer is lost.
   */
  strandRate: number;
  /** Mean simulated ms between two partitions. */
  partitionEveryMs: number;
  /**
   * Each process's clock runs at 1 ± up to this rate off true time (0.01: up to 1% fast or slow) and reads
   * up to clockOffsetMs off the others'.
   */
  clockDrift: number;
  clockOffsetMs: number;
  /** Mean simulated ms between two forward jumps of some process's clock (0: none). */
  clockJumpEveryMs: number;
  /** Mean simulated ms between two member crashes (0: none); a crashed member restarts after up to crashDownMs. */
  crashEveryMs: number;
  crashDownMs: number;
  /** Chance that a member's disk is damaged while it is down: a bit flipped in a synced WAL record or snapshot. */
  bitFlipRate: number;
  /** Chance that a restart meets a read error (the member refuses to start; it is started again later). */
  readErrorRate: number;
  /** Mean simulated ms between two spells of a full disk on some member (0: none). */
  fullDiskEveryMs: number;
  /** The members compact their logs into a snapshot every this many applied entries. */
  snapshotEveryEntries: number;
  /** Chance that a frame of a peer handshake resets its connection instead of arriving. */
  handshakeResetRate: number;
  /** Mean simulated ms between two resets of every peer connection at once (0: none). */
  linkResetEveryMs: number;
  /** Mean simulated ms between two attempts of a forged peer, without the cluster secret (0: none). */
  forgedPeerEveryMs: number;
}

export interface RealSimStats {
  simulatedMs: number;
  increments: number;
  incrementsUnknown: number;
  reads: number;
  stats: number;
  appends: number;
  failedOps: number;
  lockLost: number;
  /** Operations that ended in DEADLOCK, and a sharded run's increments of two counters of different groups. */
  deadlocks: number;
  pairs: number;
  /** A sharded run's slot moves done by the rebalance driver, and its runs a fault stopped half way. */
  moves: number;
  movesStopped: number;
  pauses: number;
  partitions: number;
  clockJumps: number;
  crashes: number;
  restarts: number;
  bitFlips: number;
  readErrors: number;
  fullDisks: number;
  /** Peer connections: opened, reset by the handshake fault, and dialers a member refused for their proof. */
  peerConnections: number;
  handshakeResets: number;
  linkResets: number;
  peerAuthFailures: number;
  /** Connections a forged peer opened to members, and those the member refused. */
  forgedAttempts: number;
  forgedRefused: number;
  connections: number;
  brokenConnections: number;
  leaderChanges: number;
  /** Timers run (every delivery, tick and timeout): the run's work, whatever the machine's speed. */
  timersRun: number;
  /** Pages of deferred grants read from followers, and from the leader. */
  pagesFromFollowers: number;
  pagesFromLeader: number;
}

export interface RealSimResult {
  seed: number;
  ok: boolean;
  failure?: { checker: string; detail: string };
  params: RealSimParams;
  stats: RealSimStats;
  /** sha256 of the trace: one seed, one hash. */
  traceHash: string;
  trace: string[];
}

const START_MS = Date.UTC(2030, 0, 1);
/** Counters; client i works mostly on c(i mod 4), so some objects are left alone while their client stalls. */
const COUNTERS = ['c0', 'c1', 'c2', 'c3'];
/**
 * A counter object: the count n (int32 at 0), then the tag of the increment that made each step (int32
 * slot i at 4 + 4i: the one that took the count from i to i + 1). The final object is then the whole
 * committed sequence of increments: what every read and every answer is checked against.
 */
const COUNTER_BYTES = 4096;
const MAX_SLOTS = (COUNTER_BYTES - 4) / 4;
const LOG = 'events';
/**
 * An object large enough that a grant after someone else's write is deferred and its pages read from a
 * follower: every write fills it with its tag, so a read must see one tag, of a write that may have committed.
 */
const BLOB = 'blob';
const BLOB_BYTES = 32 * 4096;
/**
 * Errors an operation may end with under faults; anything else is a failure of the run. DEADLOCK: a
 * client's concurrent tasks share its session, so one task holding an object while another waits counts as
 * the session holding while waiting, and a wait-for cycle between sessions is refused.
 */
const EXPECTED_CODES = new Set(['UNAVAILABLE', 'LOCK_LOST', 'DEADLOCK']);
/** A run stops after this many timers (a seed runs 10,000..200,000): members spinning must not hang the run. */
const MAX_TIMERS_RUN = 1_000_000;
/** Simulated ms the liveness phase may take once faults stop. */
const LIVENESS_MS = 60_000;

class Failure extends Error {
  constructor(
    readonly checker: string,
    readonly detail: string,
  ) {
    super(`${checker}: ${detail}`);
  }
}

function sleep(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => env.setTimeout(resolve, ms));
}

/** Two counters per group of a sharded run (`c<j>`, or `c<j>.<k>` for the first k whose slot the group owns). */
function spreadCounters(groups: number): string[] {
  const table = initialSlotTable(Array.from({ length: groups }, (_, g) => ({ id: g + 1, members: [] })));
  const out: string[] = [];
  for (let j = 0; j < 2 * groups; j++) {
    const group = (j % groups) + 1;
    let name = `c${j}`;
    for (let k = 1; ownerOf(table, slotOf(name)) !== group; k++) name = `c${j}.${k}`;
    out.push(name);
  }
  return out;
}

function drawParams(prng: Prng): RealSimParams {
  const partitions = prng.chance(0.6);
  return {
    clients: prng.int(2, 4),
    latencyMs: prng.int(1, 5),
    jitterMs: prng.chance(0.5) ? prng.int(1, 30) : 0,
    peerJitterMs: prng.chance(0.5) ? prng.int(1, 20) : 0,
    peerDuplicateRate: prng.chance(0.3) ? prng.pick([0.01, 0.1]) : 0,
    sessionTimeoutMs: prng.pick([600, 1000, 1500]),
    pauseRate: prng.chance(0.7) ? prng.pick([0.05, 0.15, 0.3]) : 0,
    memberPartitions: partitions && prng.chance(0.7),
    oneWayPartitions: partitions && prng.chance(0.4),
    clientPartitions: partitions && prng.chance(0.6),
    partitionEveryMs: prng.int(1000, 4000),
    watchEveryMs: prng.chance(0.7) ? prng.int(1, 5) : 0,
    strandRate: prng.chance(0.3) ? prng.pick([0.02, 0.1]) : 0,
    clockDrift: prng.chance(0.6) ? prng.pick([0.001, 0.01, 0.05]) : 0,
    clockOffsetMs: prng.chance(0.5) ? prng.pick([1000, 3_600_000]) : 0,
    clockJumpEveryMs: prng.chance(0.3) ? prng.int(1000, 4000) : 0,
    crashEveryMs: prng.chance(0.6) ? prng.int(800, 4000) : 0,
    crashDownMs: prng.pick([200, 1000, 4000]),
    bitFlipRate: prng.chance(0.4) ? prng.pick([0.3, 1]) : 0,
    readErrorRate: prng.chance(0.3) ? prng.pick([0.2, 0.5]) : 0,
    fullDiskEveryMs: prng.chance(0.25) ? prng.int(1000, 4000) : 0,
    snapshotEveryEntries: prng.pick([20, 100, 500, 10_000]),
    handshakeResetRate: prng.chance(0.3) ? prng.pick([0.05, 0.3]) : 0,
    linkResetEveryMs: prng.chance(0.3) ? prng.int(500, 3000) : 0,
    forgedPeerEveryMs: prng.chance(0.4) ? prng.int(100, 1000) : 0,
  };
}

interface SimClient {
  name: string;
  /** The counter this client works on most. */
  home: string;
  /** The process: pausable, and its clock (`clock`, which the client's code runs on) skewed. */
  env: PausableEnv;
  clock: SkewedEnv;
  /** A SegmentImpl over the one group, or a sharded run's ShardedSegment over every group. */
  segment: SegmentImpl | ShardedSegment;
}

/** The segments of a client's sessions: the one, or every group's it has opened. */
function partsOf(c: SimClient): SegmentImpl[] {
  return c.segment instanceof ShardedSegment ? c.segment.groupSegments() : [c.segment];
}

interface AppendRecord {
  payload: string;
  status: 'ok' | 'unknown';
  seq: number;
}

class RealSimulation {
  readonly clock = new SimClock(START_MS);
  readonly world: SimEnv;
  readonly prng: Prng;
  readonly params: RealSimParams;
  readonly peerNet: SimPeerNetwork;
  readonly clientNet: SimClientNetwork;
  /** The cluster secret every member is started with (again after each crash), from the seed. */
  readonly secret: Buffer;
  /**
   * The highest term any member of each group has named in a message: a term grows only by a campaign, one
   * at a time (each group has terms of its own).
   */
  private readonly maxTerm = new Map<number, number>();
  /** The members of each shard group (one group of three for a cluster without groups). */
  readonly groups: string[][];
  /** Each member's group: its index in `groups`. */
  readonly groupOf = new Map<string, number>();
  /** The counter objects: four, spread over the groups. */
  readonly counters: string[];
  forger: ForgedPeer | null = null;
  readonly nodes = new Map<string, SegmemNode>();
  /** Each member's clock. */
  readonly memberClocks = new Map<string, SkewedEnv>();
  /** The lease edge: the object a cut-off client keeps a read grant of, re-read by it and written by others. */
  private readonly leaseTargets = new Map<string, string>();
  /** Whether this run plays the lease edge (see RealSimOptions.leaseEdge). */
  private readonly leaseEdge: boolean;
  /** When the workload under faults ends (set by startFaults). */
  private workloadEndMs = 0;
  readonly addresses: Record<string, string> = {};
  readonly clients: SimClient[] = [];
  readonly history = new History();
  readonly appends: AppendRecord[] = [];
  /** What each counter operation (by history id) saw at its grant: the slots 0..n-1. */
  readonly seen = new Map<number, Buffer>();
  readonly trace: string[] = [];
  readonly stats: RealSimStats = {
    simulatedMs: 0,
    increments: 0,
    incrementsUnknown: 0,
    reads: 0,
    stats: 0,
    appends: 0,
    failedOps: 0,
    lockLost: 0,
    deadlocks: 0,
    pairs: 0,
    moves: 0,
    movesStopped: 0,
    pauses: 0,
    partitions: 0,
    clockJumps: 0,
    crashes: 0,
    restarts: 0,
    bitFlips: 0,
    readErrors: 0,
    fullDisks: 0,
    peerConnections: 0,
    handshakeResets: 0,
    linkResets: 0,
    peerAuthFailures: 0,
    forgedAttempts: 0,
    forgedRefused: 0,
    connections: 0,
    brokenConnections: 0,
    leaderChanges: 0,
    pagesFromFollowers: 0,
    pagesFromLeader: 0,
    timersRun: 0,
  };
  /** Who led each term, by `group:term`. */
  private readonly termLeaders = new Map<string, string>();
  /** Each member's disk (a machine each), its data directory at `/sim/<id>`. */
  readonly disks = new Map<string, SimFs>();
  /** The process each member runs in now (a crash kills it; a restart is a new one). */
  private readonly memberProcesses = new Map<string, SimEnv>();
  /** Members crashed and not running again yet, and those being opened. */
  readonly down = new Set<string>();
  private readonly opening = new Set<string>();
  /**
   * What each member last acknowledged to a leader (an accepted append's answer): that its log matches
   * that term's leader's up to `index`, durably. Its log after a crash must still hold that much.
   */
  private readonly acked = new Map<string, { term: number; index: number }>();
  /** A member whose disk was damaged, until it has caught up from the leader (and votes again). */
  private damaged: { id: string } | null = null;
  /** Members whose next open meets an injected read error (so a failed open is expected). */
  private readonly readFaults = new Set<string>();
  /** Members left down for the liveness phase (not in its majority core). */
  readonly keptDown = new Set<string>();
  private unexpected: Failure | null = null;
  faultsOn = true;

  constructor(readonly opts: RealSimOptions) {
    this.prng = new Prng(opts.seed);
    this.params = drawParams(this.prng);
    // The lease variant's targeted fault needs a client that goes on reading while it is cut off.
    this.leaseEdge = opts.leaseEdge === true || opts.broken === 'leaseWithoutDriftMargin';
    if (this.leaseEdge && this.params.watchEveryMs === 0) this.params.watchEveryMs = 2;
    // The variant about cycles through groups needs groups.
    const groups = opts.groups ?? (opts.broken === 'noCrossGroupProbes' ? 3 : 1);
    this.groups =
      groups === 1
        ? [['s1', 's2', 's3']]
        : Array.from({ length: groups }, (_, g) => [1, 2, 3].map((k) => `g${g + 1}s${k}`));
    this.groups.forEach((members, g) => {
      for (const id of members) this.groupOf.set(id, g);
    });
    this.counters = groups === 1 ? COUNTERS : spreadCounters(groups);
    this.world = new SimEnv(this.clock, this.prng.fork());
    this.peerNet = new SimPeerNetwork(
      this.world,
      this.params.latencyMs,
      this.params.peerJitterMs,
      this.params.peerDuplicateRate,
    );
    this.clientNet = new SimClientNetwork(this.world, this.params.latencyMs, this.params.jitterMs);
    this.secret = this.world.randomBytes(CLUSTER_SECRET_BYTES);
    // The forged peer's variant needs it there, often.
    if (opts.broken === 'acceptUnprovenPeer' && this.params.forgedPeerEveryMs === 0)
      this.params.forgedPeerEveryMs = 300;
  }

  get nowMs(): number {
    return this.clock.nowMs - START_MS;
  }

  log(line: string): void {
    const stamped = `${this.nowMs} ${line}`;
    this.trace.push(stamped);
    this.opts.onTrace?.(stamped);
  }

  /** Starts every member of every group. */
  async startMembers(): Promise<void> {
    const ids = this.groups.flat();
    this.groups.forEach((members, g) => {
      members.forEach((id, k) => {
        this.addresses[id] =
          this.groups.length === 1 ? `10.0.0.${k + 1}:7401` : `10.0.${g + 1}.${k + 1}:7401`;
        this.disks.set(id, new SimFs(this.world.process(), this.prng.fork(), { fsyncMaxMs: 8 }));
      });
    });
    this.peerNet.onSend = (from, msg) => {
      if (msg.type === 'appendResp' && !msg.reject && msg.hintIndex !== undefined)
        this.acked.set(from, { term: msg.term, index: msg.hintIndex });
      // A campaign names the next term; any larger step came from somewhere else (a forged peer's message).
      const group = this.groupOf.get(from) ?? -1;
      const max = this.maxTerm.get(group) ?? 0;
      if (msg.term > max + 1)
        this.unexpected ??= new Failure(
          'termGrowth',
          `${from} sent ${msg.type} in term ${msg.term}, while no member of its group had named a term above ${max}`,
        );
      this.maxTerm.set(group, Math.max(max, msg.term));
    };
    // One after the other, the clock running: the simulated disk's fsyncs take simulated time.
    for (const id of ids) await this.settle(this.openMember(id), 10_000, `opening ${id}`);
  }

  /** Starts member `id` in a new process over its disk; resolves once it serves (and is attached). */
  async openMember(id: string): Promise<void> {
    this.opening.add(id);
    const process = this.world.process();
    const env = this.skewed(process, 'member');
    try {
      const node = await openClusterNode({
        id,
        dataDir: `/sim/${id}`,
        peers: this.peersOf(id),
        ...this.groupOptions(id),
        fsync: 'batch',
        env,
        transport: this.peerNet.transport,
        fs: this.disks.get(id)!,
        clusterSecret: this.secret,
        snapshotEveryEntries: this.params.snapshotEveryEntries,
        makeCore: (cfg) => {
          this.checkRecovered(id, cfg.storage, cfg.rejoinTerm);
          return new RaftNode({
            ...cfg,
            ...(this.opts.broken === 'replyBeforeCommit' ? { unsafe: { commitWithoutMajority: true } } : {}),
          });
        },
        ...(this.opts.broken === 'followerReadsUnapplied' ? { unsafe: { servePagesUnapplied: true } } : {}),
        ...(this.opts.broken === 'acceptUnprovenPeer' ? { unsafe: { acceptUnprovenPeer: true } } : {}),
        log: (line) => {
          if (!process.alive) return;
          if (line.startsWith('raft:')) {
            const won = /^raft: leader in term (\d+)/.exec(line);
            if (won) this.leaderElected(id, Number(won[1]));
            this.log(`${id} ${line}`);
          } else if (
            /recovery|heal|damage|truncat|snapshot .*failed|cannot|waiting for the disk|takes writes/i.test(
              line,
            )
          ) {
            this.log(`${id} ${line}`);
            if (this.damaged?.id === id && /taking part in elections again/.test(line)) {
              this.log(`disk: ${id} caught up since its damage`);
              this.damaged = null;
            }
          }
        },
      });
      if (!process.alive) return; // crashed while opening
      if (this.keptDown.has(id)) {
        process.kill();
        this.disks.get(id)!.crash(`/sim/${id}`);
        return;
      }
      this.memberProcesses.set(id, process);
      this.memberClocks.set(id, env);
      this.nodes.set(id, node);
      this.down.delete(id);
      this.peerNet.attach(this.addresses[id]!, node);
      this.clientNet.attach(this.addresses[id]!, node);
    } catch (err) {
      process.kill();
      this.disks.get(id)!.crash(`/sim/${id}`);
      throw err;
    } finally {
      this.opening.delete(id);
    }
  }

  /** The addresses of the members of `id`'s group. */
  peersOf(id: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const m of this.groups[this.groupOf.get(id)!]!) out[m] = this.addresses[m]!;
    return out;
  }

  /** A sharded run's member serves its group's range of the segment, and starts with the run's slot table. */
  private groupOptions(id: string): { group?: GroupRange; slotTable?: SlotTable } {
    if (this.groups.length === 1) return {};
    const g = this.groupOf.get(id)!;
    const bytes = Math.floor(DEFAULT_SEGMENT_BYTES / this.groups.length / PAGE_BYTES) * PAGE_BYTES;
    return { group: { id: g + 1, start: g * bytes, bytes }, slotTable: this.slotTable() };
  }

  /** The slot table every group starts with: the slots split evenly, in group order. */
  slotTable(): SlotTable {
    return initialSlotTable(
      this.groups.map((members, g) => ({
        id: g + 1,
        members: members.map((m): [string, string] => [m, this.addresses[m]!]),
      })),
    );
  }

  /**
   * Durability across a crash: the log a member recovered holds what it acknowledged before, unless a
   * later leader replaced that part (then its last entry is of a later term), or the member found its
   * storage damaged and healed it (`rejoinTerm`: it stays out of elections until it caught up).
   */
  private checkRecovered(id: string, storage: RaftStorage, rejoinTerm: number): void {
    const claim = this.acked.get(id);
    this.acked.delete(id);
    if (rejoinTerm > 0) {
      this.log(
        `${id} healed damaged storage; out of elections until it holds an entry of term ${rejoinTerm}`,
      );
      return;
    }
    if (!claim) return;
    const last = storage.lastIndex();
    const lastTerm = storage.term(last) ?? 0;
    if (last < claim.index && lastTerm <= claim.term)
      this.unexpected ??= new Failure(
        'durability',
        `${id} acknowledged its log up to index ${claim.index} in term ${claim.term}, and recovered only up to ${last} (term ${lastTerm})`,
      );
  }

  /** The process of member `id` dies: its timers stop, its connections break, what its disk had not synced is lost or torn. */
  crashMember(id: string): void {
    const process = this.memberProcesses.get(id);
    if (!process || this.down.has(id)) return;
    this.stats.crashes++;
    this.log(`crash: ${id}`);
    process.kill();
    this.down.add(id);
    this.nodes.delete(id);
    this.memberProcesses.delete(id);
    this.memberClocks.delete(id);
    this.peerNet.detach(this.addresses[id]!);
    this.clientNet.detach(this.addresses[id]!);
    this.disks.get(id)!.crash(`/sim/${id}`);
  }

  /**
   * Starts a crashed member again (as a supervisor would); an open that fails on an injected read error
   * is tried again later, any other failure fails the run.
   */
  restartMember(id: string): void {
    if (!this.down.has(id) || this.opening.has(id) || this.keptDown.has(id)) return;
    this.log(`restart: ${id}`);
    this.openMember(id).then(
      () => {
        this.stats.restarts++;
        this.log(`restart: ${id} serves`);
      },
      (err: unknown) => {
        // A full disk refuses the start before any read: the injected read error is still to come then.
        const fullDisk = this.disks.get(id)!.full;
        if (fullDisk || this.readFaults.delete(id)) {
          this.log(
            `restart: ${id} refused to start (${(err as Error).message.split('\n')[0]}); trying again`,
          );
          this.world.setTimeout(() => this.restartMember(id), this.prng.int(100, 1000));
          return;
        }
        this.unexpected ??= new Failure(
          'restart',
          `${id} did not start again: ${SegmemError.is(err) ? `${err.code} ${err.message}` : String((err as Error)?.stack ?? err)}`,
        );
      },
    );
  }

  /**
   * A sharded run's client: the real ShardedSegment over one SegmentImpl (and Session) per group, opened
   * over the simulated network as the client library does (the first at every member, the others from the
   * slot table the first one's group answers).
   */
  private async openShardedClient(name: string): Promise<SimClient> {
    const process = new PausableEnv(this.world.process());
    const env = this.skewed(process, 'client');
    const mapped = new BufferSegment();
    const shared = sharedMapping(mapped);
    const { segment: first } = await this.openGroupSegment(name, env, Object.values(this.addresses), shared);
    const table = (await first.slots()).table;
    const segment = new ShardedSegment(
      table,
      { group: first.groupId, segment: first, servers: Object.values(this.addresses) },
      mapped,
      async (_group, servers) => (await this.openGroupSegment(name, env, servers, shared)).segment,
      env,
    );
    if (this.opts.broken === 'noCrossGroupProbes') segment.probes.unsafeOff = true;
    this.log(`${name} client ${segment.clientId}, session ${first.sessionId} in group ${first.groupId}`);
    return {
      name,
      env: process,
      clock: env,
      segment,
      home: this.counters[this.clients.length % this.counters.length]!,
    };
  }

  /**
   * A client's Session and SegmentImpl over `servers` (a sharded client has one per group), with the broken
   * variant's flags. Large grants leave their pages to the followers, read over page-reader connections of
   * this network.
   */
  private async openGroupSegment(
    name: string,
    env: SkewedEnv,
    servers: string[],
    mapped: MappedSegment,
  ): Promise<{ segment: SegmentImpl; session: Session }> {
    let segment: SegmentImpl | undefined;
    const session = await Session.open({
      dial: this.clientNet.dial(name, env, servers),
      env,
      sessionTimeoutMs: this.params.sessionTimeoutMs,
      reconnect: true,
      onInvalidate: (msg) => segment?.onInvalidate(msg),
      onRevoke: (msg) => segment?.onRevoke(msg),
      onProbed: (msg) => segment?.onProbed(msg),
      onSessionLost: () => {
        this.log(`${name} session lost${this.groups.length > 1 ? ` (group ${session.hello.groupId})` : ''}`);
        segment?.sessionLost();
      },
      onResumed: () => segment?.revalidate(),
    });
    const followerReads = new FollowerReads(session, {
      sessionTimeoutMs: this.params.sessionTimeoutMs,
      dial: (address) => this.clientNet.dial(name, env, [address]),
    });
    segment = new SegmentImpl(
      session,
      mapped,
      session.hello.pageBytes,
      async () => followerReads.close(),
      followerReads,
      !globalThis.process.env.SIM_NO_DELEG,
    );
    if (this.opts.broken === 'keepCopyAfterLockLost') segment.keepUncommittedCopies = true;
    if (this.opts.broken === 'grantPastLease') segment.ignoreLease = true;
    if (this.opts.broken === 'leaseWithoutDriftMargin') session.unsafeLeaseMs = (timeoutMs) => timeoutMs;
    return { segment, session };
  }

  /** A real client: its own process Env, Session and SegmentImpl over the simulated network. */
  async openClient(name: string): Promise<SimClient> {
    if (this.groups.length > 1) return this.openShardedClient(name);
    const process = new PausableEnv(this.world.process());
    const env = this.skewed(process, 'client');
    const { segment, session } = await this.openGroupSegment(
      name,
      env,
      Object.values(this.addresses),
      new BufferSegment(),
    );
    if (this.leaseEdge) {
      // The edge a lease must hold at: now and then a client is cut off from every member the moment a lease
      // renewal is answered, while the others go on writing (its home object among others).
      const renew = session.renewLease.bind(session);
      session.renewLease = (stamp) => {
        const renewal = renew(stamp);
        renewal.then((ok) => {
          if (!ok || !this.faultsOn || this.nowMs >= this.workloadEndMs || !this.prng.chance(0.2)) return;
          const addresses = Object.values(this.addresses);
          if (addresses.some((a) => this.clientNet.isCut(name, a))) return;
          const kept = (segment?.idleReadGrants() ?? []).filter((o) => this.counters.includes(o));
          if (kept.length === 0) return;
          this.leaseTargets.set(name, this.prng.pick(kept));
          this.stats.partitions++;
          for (const address of addresses) this.clientNet.cut(name, address);
          const durationMs = Math.floor(this.params.sessionTimeoutMs * (1.5 + this.prng.float()));
          this.log(
            `partition: ${name} cut off from every member as a lease renewal is answered, for ${durationMs} ms`,
          );
          this.world.setTimeout(() => this.heal(), durationMs);
        });
        return renewal;
      };
    }
    const client = {
      name,
      env: process,
      clock: env,
      segment,
      home: this.counters[this.clients.length % this.counters.length]!,
    };
    this.log(`${name} session ${session.sessionId}`);
    return client;
  }

  /** Election safety: at most one leader per term, whatever crashes and disks did. */
  private leaderElected(id: string, term: number): void {
    this.stats.leaderChanges++;
    const key = `${this.groupOf.get(id)}:${term}`;
    const other = this.termLeaders.get(key);
    if (other !== undefined && other !== id)
      this.unexpected ??= new Failure('electionSafety', `${other} and ${id} both led term ${term}`);
    this.termLeaders.set(key, id);
  }

  /** A process's own clock: off true time by an offset and a drift rate drawn for it. */
  skewed(env: Env, role: 'member' | 'client'): SkewedEnv {
    const p = this.params;
    const offsetMs = p.clockOffsetMs > 0 ? Math.floor((this.prng.float() * 2 - 1) * p.clockOffsetMs) : 0;
    let rate = 1 + (this.prng.float() * 2 - 1) * p.clockDrift;
    // The lease edge meets the worst clocks the bound allows: clients slow, members fast (the draws above
    // are made all the same, so the rest of the seed stays as it is).
    if (this.leaseEdge) {
      const drift = this.opts.edgeDrift ?? 0.05;
      rate = role === 'client' ? 1 - drift : 1 + drift;
    }
    return new SkewedEnv(env, offsetMs, rate);
  }

  /** Moves simulated time forward by `ms`, one timer at a time, letting each one's continuations run. */
  run(ms: number): Promise<void> {
    return runFor(this.clock, ms, () => {
      if (this.unexpected) throw this.unexpected;
      if (this.clock.fired > MAX_TIMERS_RUN)
        throw new Failure(
          'budget',
          `${this.clock.fired} timers run by ${this.nowMs} simulated ms: the members or clients are spinning (a seed runs 10,000..200,000)`,
        );
    });
  }

  /** Runs simulated time until `done()` holds, at most `maxMs`. */
  async until(done: () => boolean, maxMs: number, what: string, checker = 'liveness'): Promise<void> {
    const started = this.nowMs;
    while (!done()) {
      if (this.nowMs - started > maxMs)
        throw new Failure(checker, `${what}: not within ${maxMs} simulated ms`);
      await this.run(10);
    }
  }

  /** Waits for `p` while the simulation runs, at most `maxMs` of simulated time. */
  async settle<T>(p: Promise<T>, maxMs: number, what: string): Promise<T> {
    let done = false;
    const watched = p.finally(() => {
      done = true;
    });
    watched.catch(() => {});
    await this.until(() => done, maxMs, what);
    try {
      return await watched;
    } catch (err) {
      // With the faults over, what the run waits for must succeed.
      if (err instanceof Failure || !SegmemError.is(err)) throw err;
      throw new Failure('liveness', `${what} failed: ${err.code} ${err.message}`);
    }
  }

  /** Each client's session as its own code sees it (for a liveness failure). */
  clientStates(): string {
    return this.clients
      .map((c) => {
        return partsOf(c)
          .map((part) => {
            const session = (part as unknown as { session: Session }).session;
            const inner = session as unknown as {
              pending: Map<number, { req: { type: string; name?: string }; sent: boolean }>;
            };
            const pending = [...inner.pending.values()].map(
              (p) => `${p.req.type}${p.req.name ? ` ${p.req.name}` : ''}${p.sent ? '' : ' (unsent)'}`,
            );
            const local = part.localState();
            const group = this.groups.length > 1 ? ` (group ${part.groupId})` : '';
            return `${c.name}${group}: ${session.isConnected ? 'connected' : 'not connected'}${c.env.isPaused ? ', paused' : ''}, session ${session.sessionId}, waiting for ${pending.join(', ') || 'nothing'}${local.map((l) => `\n  ${l}`).join('')}`;
          })
          .join('\n');
      })
      .join('\n')
      .concat(
        [...this.nodes]
          .filter(([, n]) => n.status().leader)
          .map(
            ([id, n]) => `\n${id} (leader): held and waited for ${JSON.stringify(n.sm.contendedHolders())}`,
          )
          .join(''),
      );
  }

  /** The leader of the group `members`, if it has one now. */
  leaderOf(members: string[]): string | undefined {
    // In the order the members started (as leaders() gives them): during a partition a group may have two.
    for (const [id, n] of this.nodes) if (members.includes(id) && n.status().leader) return id;
    return undefined;
  }

  /** A group the next fault strikes: the one group, or one drawn (a sharded run's). */
  private pickGroup(): string[] {
    return this.groups.length === 1 ? this.groups[0]! : this.prng.pick(this.groups);
  }

  leaders(): string[] {
    return [...this.nodes].filter(([, n]) => n.status().leader).map(([id]) => id);
  }

  /** An error no fault explains fails the run (after the current timer's continuations). */
  private check(err: unknown, client: string, what: string): SegmemError | null {
    if (SegmemError.is(err, 'DEADLOCK')) this.stats.deadlocks++;
    if (SegmemError.is(err) && EXPECTED_CODES.has(err.code)) return err;
    this.unexpected ??= new Failure(
      'unexpectedError',
      `${client} ${what}: ${SegmemError.is(err) ? `${err.code} ${err.message}` : String((err as Error)?.stack ?? err)}`,
    );
    return null;
  }

  /** Stalls a client's whole process for `ms` of simulated time (its timers and deliveries wait). */
  private pause(c: SimClient, ms: number): void {
    this.stats.pauses++;
    this.log(`${c.name} paused for ${ms} ms`);
    c.env.pause();
    this.world.setTimeout(() => {
      this.log(`${c.name} resumed`);
      c.env.resume();
    }, ms);
  }

  /**
   * `inner` runs while the write handle is held, before the write: a sharded run's increment of a counter
   * of another group, so waits can form cycles through two groups.
   */
  private async increment(c: SimClient, object: string, inner?: () => Promise<void>): Promise<void> {
    const op: OpRecord = this.history.begin(c.name, object, 'write', this.nowMs);
    const tag = op.id + 1;
    let wrote = false;
    try {
      await c.segment.update(object, async (h) => {
        const n = h.bytes.readInt32LE(0);
        op.value = n;
        this.seen.set(op.id, Buffer.from(h.bytes.subarray(4, 4 + 4 * n)));
        if (n >= MAX_SLOTS) throw new Failure('workload', `${object} is full`);
        if (inner) await inner();
        if (this.faultsOn && this.prng.chance(this.params.pauseRate)) {
          // The stall that matters: holding the write handle past the session timeout, then writing into it.
          this.pause(c, Math.floor(this.params.sessionTimeoutMs * (1.5 + this.prng.float() * 2)));
        }
        await sleep(c.clock, this.prng.int(0, 20));
        h.bytes.writeInt32LE(tag, 4 + 4 * n);
        h.bytes.writeInt32LE(n + 1, 0);
        wrote = true;
      });
      op.status = 'ok';
      op.ret = this.nowMs;
      this.stats.increments++;
      this.log(`${c.name} inc ${object} ${op.value}->${op.value! + 1} #${tag} ok`);
    } catch (err) {
      if (err instanceof Failure) throw err;
      const e = this.check(err, c.name, `increment of ${object}`);
      this.stats.failedOps++;
      if (!wrote || e?.code === 'LOCK_LOST') {
        // Never released, or refused as documented: "LOCK_LOST ... the write is then discarded".
        op.status = 'void';
        if (e?.code === 'LOCK_LOST') this.stats.lockLost++;
      } else {
        op.releaseSent = true; // unknown outcome: may or may not have been applied
        this.stats.incrementsUnknown++;
      }
      this.log(`${c.name} inc ${object} from ${op.value} #${tag} failed: ${e?.code ?? 'unexpected'}`);
    }
  }

  /**
   * A sharded run's increment of two counters of different groups, the first held while the second is
   * incremented. A client takes its pairs in one order (its tasks never wait for each other in a cycle, which
   * would be the process's own deadlock), half of the clients in the other: their waits can form cycles
   * through two groups, which must be broken with DEADLOCK rather than hang.
   */
  private async incrementPair(c: SimClient, pick: string): Promise<void> {
    let object = pick;
    const groupOf = (name: string) => this.counters.indexOf(name) % this.groups.length;
    // Half the pairs are the same two counters (of groups 1 and 2), so that clients taking them in opposite
    // orders meet often; the others join the task's object with one of another group.
    if (this.prng.chance(0.5)) object = this.counters[0]!;
    const other =
      object === this.counters[0]
        ? this.counters[1]!
        : this.prng.pick(this.counters.filter((n) => groupOf(n) !== groupOf(object)));
    const ascending = this.clients.indexOf(c) % 2 === 0;
    const [first, second] = ascending === object < other ? [object, other] : [other, object];
    this.stats.pairs++;
    await this.increment(c, first, () => this.increment(c, second));
  }

  private async read(c: SimClient, object: string): Promise<void> {
    const op = this.history.begin(c.name, object, 'read', this.nowMs);
    try {
      await c.segment.read(object, (h) => {
        const n = h.bytes.readInt32LE(0);
        op.value = n;
        this.seen.set(op.id, Buffer.from(h.bytes.subarray(4, 4 + 4 * Math.min(n, MAX_SLOTS))));
      });
      op.status = 'ok';
      op.ret = this.nowMs;
      this.stats.reads++;
      this.log(`${c.name} read ${object} ${op.value}`);
    } catch (err) {
      op.status = 'void';
      op.value = null;
      this.seen.delete(op.id);
      this.stats.failedOps++;
      this.log(`${c.name} read ${object} failed: ${this.check(err, c.name, `read of ${object}`)?.code}`);
    }
  }

  /** Blob writes by tag: the version their grant had (the one they made is the next), and when acknowledged. */
  private readonly blobWrites = new Map<
    number,
    { client: string; status: 'ok' | 'void' | 'unknown'; grantVersion: number; ackMs: number }
  >();
  /** Blob reads: the tag they saw, the version they were granted, when they were called and returned. */
  private readonly blobReads: {
    client: string;
    tag: number;
    version: number;
    callMs: number;
    atMs: number;
  }[] = [];
  /** Tags of blob writes: unique, and never a counter tag (those are history ids). */
  private nextBlobTag = 1_000_001;

  private async writeBlob(c: SimClient): Promise<void> {
    const tag = this.nextBlobTag++;
    let wrote = false;
    let grantVersion = -1;
    try {
      await c.segment.update(BLOB, (h) => {
        grantVersion = h.version;
        for (let at = 0; at < BLOB_BYTES; at += 4) h.bytes.writeInt32LE(tag, at);
        wrote = true;
      });
      this.blobWrites.set(tag, { client: c.name, status: 'ok', grantVersion, ackMs: this.nowMs });
      this.log(`${c.name} blob #${tag} ok`);
    } catch (err) {
      const e = this.check(err, c.name, 'blob write');
      this.stats.failedOps++;
      this.blobWrites.set(tag, {
        client: c.name,
        status: !wrote || e?.code === 'LOCK_LOST' ? 'void' : 'unknown',
        grantVersion,
        ackMs: Number.POSITIVE_INFINITY,
      });
      this.log(`${c.name} blob #${tag} failed: ${e?.code}`);
    }
  }

  private async readBlob(c: SimClient): Promise<void> {
    const callMs = this.nowMs;
    let version = -1;
    try {
      const tag = await c.segment.read(BLOB, (h) => {
        version = h.version;
        const first = h.bytes.readInt32LE(0);
        for (let at = 4; at < BLOB_BYTES; at += 4) {
          const t = h.bytes.readInt32LE(at);
          if (t !== first)
            throw new Failure(
              'blobWhole',
              `${c.name} read a blob mixing the writes #${first} and #${t} (at byte ${at})`,
            );
        }
        return first;
      });
      this.blobReads.push({ client: c.name, tag, version, callMs, atMs: this.nowMs });
      this.stats.reads++;
      this.log(`${c.name} blob read #${tag}`);
    } catch (err) {
      if (err instanceof Failure) throw err;
      this.stats.failedOps++;
      this.log(`${c.name} blob read failed: ${this.check(err, c.name, 'blob read')?.code}`);
    }
  }

  /**
   * A stat is linearizable against the increments: each acknowledged before it was called made a write
   * release (one version each, from 1 at the create), so its version counts at least those.
   */
  private async stat(c: SimClient, object: string): Promise<void> {
    const callMs = this.nowMs;
    try {
      const info = await c.segment.stat(object);
      const before = this.history.ops.filter(
        (o) => o.object === object && o.kind === 'write' && o.status === 'ok' && o.ret < callMs,
      ).length;
      if (info.version < 1 + before)
        throw new Failure(
          'statVersions',
          `${c.name} stat ${object} at ${callMs}..${this.nowMs} gave version ${info.version}, below 1 + the ${before} increments acknowledged before it`,
        );
      this.stats.stats++;
      this.log(`${c.name} stat ${object} v${info.version}`);
    } catch (err) {
      if (err instanceof Failure) throw err;
      this.stats.failedOps++;
      this.log(`${c.name} stat ${object} failed: ${this.check(err, c.name, `stat of ${object}`)?.code}`);
    }
  }

  private async append(c: SimClient, n: number): Promise<void> {
    const rec: AppendRecord = { payload: `${c.name}#${n}`, status: 'unknown', seq: -1 };
    this.appends.push(rec);
    try {
      rec.seq = await c.segment.log(LOG).append(rec.payload);
      rec.status = 'ok';
      this.stats.appends++;
      this.log(`${c.name} append ${rec.payload} at ${rec.seq}`);
    } catch (err) {
      this.stats.failedOps++;
      this.log(`${c.name} append ${rec.payload} failed: ${this.check(err, c.name, 'log append')?.code}`);
    }
  }

  private pickObject(c: SimClient): string {
    if (this.leaseEdge) {
      // The lease edge: the others write the object a cut-off client keeps a read grant of.
      const cut = this.clients.find(
        (o) => o !== c && Object.values(this.addresses).every((a) => this.clientNet.isCut(o.name, a)),
      );
      const target = cut && this.leaseTargets.get(cut.name);
      if (target && this.prng.chance(0.5)) return target;
    }
    return this.prng.chance(0.8) ? c.home : this.prng.pick(this.counters);
  }

  /** One task of a client: operations through the real client API until the workload ends. */
  async task(c: SimClient, taskNo: number, endMs: number): Promise<void> {
    let n = 0;
    while (this.nowMs < endMs) {
      const object = this.pickObject(c);
      const r = this.prng.float();
      if (this.groups.length > 1 && r < 0.15) await this.incrementPair(c, object);
      else if (r < 0.45) await this.increment(c, object);
      else if (r < 0.75) await this.read(c, object);
      else if (r < 0.8) await this.stat(c, object);
      else if (r < 0.84) await this.writeBlob(c);
      else if (r < 0.88) await this.readBlob(c);
      else await this.append(c, taskNo * 100_000 + n++);
      // A stall at any other moment: between operations, with the watcher's reads or a reconnection under way.
      if (this.faultsOn && !c.env.isPaused && this.prng.chance(this.params.pauseRate / 10))
        this.pause(c, Math.floor(this.params.sessionTimeoutMs * (0.5 + this.prng.float() * 2.5)));
      await sleep(c.clock, this.prng.int(0, 40));
    }
  }

  /** A client's watcher: reads started every watchEveryMs, at most 4 out at a time, until the workload ends. */
  watch(c: SimClient, endMs: number): Promise<void> {
    const everyMs = this.params.watchEveryMs;
    if (everyMs === 0) return Promise.resolve();
    let out = 0;
    return new Promise((resolve) => {
      let ended = false;
      const timer = c.clock.setInterval(() => {
        if (this.nowMs >= endMs) {
          c.clock.clearInterval(timer);
          ended = true;
          if (out === 0) resolve();
          return;
        }
        if (out >= 4) return;
        out++;
        // The lease edge: a client cut off from every member re-reads an object it keeps a read grant of,
        // so its reads go on where the lease alone decides.
        const cutOff =
          this.leaseEdge && Object.values(this.addresses).every((a) => this.clientNet.isCut(c.name, a));
        this.read(c, (cutOff && this.leaseTargets.get(c.name)) || this.pickObject(c)).finally(() => {
          out--;
          if (ended && out === 0) resolve();
        });
      }, everyMs);
    });
  }

  /** Faults other than pauses: partitions, drawn for the seed, started and healed on the world's clock. */
  /** Draws when something happens next: `meanMs` on average, from half to one and a half of it. */
  private every(meanMs: number, fn: () => void): void {
    this.world.setTimeout(fn, Math.floor(meanMs * (0.5 + this.prng.float())));
  }

  /** Members and their disks fail: crashes and restarts, damage and read errors while down, full disks. */
  private startDiskFaults(endMs: number): void {
    const p = this.params;
    const ids = Object.keys(this.addresses);
    const active = () => this.faultsOn && this.nowMs < endMs;
    if (p.crashEveryMs > 0) {
      const next = () =>
        this.every(p.crashEveryMs, () => {
          if (!active()) return;
          const group = this.pickGroup();
          const up = group.filter((id) => !this.down.has(id) && !this.opening.has(id));
          // Mostly one member of a group down at a time, sometimes two: then nothing commits there until
          // one is back.
          if (up.length === 3 || (up.length === 2 && this.prng.chance(0.3))) {
            const leader = this.leaderOf(group);
            const victim = leader && this.prng.chance(0.4) ? leader : this.prng.pick(up);
            this.crashMember(victim);
            this.world.setTimeout(() => void this.whileDown(victim), this.prng.int(20, p.crashDownMs));
          }
          next();
        });
      next();
    }
    if (p.fullDiskEveryMs > 0) {
      const next = () =>
        this.every(p.fullDiskEveryMs, () => {
          if (!active()) return;
          const id = this.prng.pick(ids);
          const disk = this.disks.get(id)!;
          if (!disk.full) {
            this.stats.fullDisks++;
            const ms = this.prng.int(100, 3000);
            this.log(`disk: ${id}'s disk is full for ${ms} ms`);
            disk.full = true;
            this.world.setTimeout(() => {
              disk.full = false;
              this.log(`disk: ${id}'s disk has space again`);
            }, ms);
          }
          next();
        });
      next();
    }
    if (this.opts.broken === 'walSkipsFsync') {
      const next = () =>
        this.every(700, () => {
          if (!active()) return;
          const group = this.pickGroup();
          const leader = this.leaderOf(group);
          const followers = group.filter(
            (id) => id !== leader && !this.down.has(id) && !this.opening.has(id),
          );
          if (leader && followers.length > 0) {
            const victim = this.prng.pick(followers);
            this.log(`broken: ${victim}'s next WAL fdatasync does nothing`);
            this.disks.get(victim)!.skipFsync(`/sim/${victim}`);
            this.world.setTimeout(
              () => {
                if (this.down.has(victim)) return;
                this.crashMember(victim);
                this.world.setTimeout(() => this.restartMember(victim), this.prng.int(50, 500));
              },
              this.prng.int(1, 12),
            );
          }
          next();
        });
      next();
    }
  }

  /** A member is down: its disk may be damaged or fail a read before it is started again. */
  private async whileDown(id: string): Promise<void> {
    if (this.keptDown.has(id)) return;
    const p = this.params;
    const others = this.groups[this.groupOf.get(id)!]!.filter((o) => o !== id);
    // Damage only while the other two are whole and running: with a majority intact, nothing may be lost.
    if (
      this.faultsOn &&
      this.damaged === null &&
      others.every((o) => !this.down.has(o) && !this.opening.has(o)) &&
      this.prng.chance(p.bitFlipRate)
    ) {
      const where = await this.flipSomewhere(id);
      if (where) {
        this.stats.bitFlips++;
        this.log(`disk: ${id} ${where}`);
        this.damaged = { id };
      }
    }
    if (this.faultsOn && this.prng.chance(p.readErrorRate)) {
      this.stats.readErrors++;
      this.readFaults.add(id);
      this.disks.get(id)!.failNextRead(`/sim/${id}`);
      this.log(`disk: ${id}'s next read fails (EIO)`);
    }
    this.restartMember(id);
  }

  /**
   * Flips one bit in a synced WAL record (the last one included), or anywhere in a snapshot file; returns
   * where, or null if the member has no such bytes.
   */
  private async flipSomewhere(id: string): Promise<string | null> {
    const disk = this.disks.get(id)!;
    const snapDir = `/sim/${id}/${SNAPSHOT_DIR}`;
    const snapshots = (await disk.readdir(snapDir).catch(() => [] as string[])).filter(isSnapshotName);
    if (snapshots.length > 0 && this.prng.chance(0.3)) {
      const file = `${snapDir}/${this.prng.pick(snapshots.sort())}`;
      const bytes = disk.durableBytes(file) ?? 0;
      if (bytes > 0) {
        const at = this.prng.int(0, bytes - 1);
        disk.flipBit(file, at, this.prng.int(0, 7));
        return `snapshot ${file} damaged: a bit flipped at byte ${at}`;
      }
    }
    const walDir = `/sim/${id}/${WAL_DIR}`;
    const segments = (await disk.readdir(walDir).catch(() => [] as string[]))
      .filter(isSegmentFileName)
      .sort();
    // Every record of every segment.
    const records: { file: string; start: number; end: number }[] = [];
    for (const name of segments) {
      const file = `${walDir}/${name}`;
      for (const span of verifiedRecordSpans(await disk.readFile(file))) records.push({ file, ...span });
    }
    if (records.length === 0) return null;
    const r = this.prng.pick(records);
    const at = this.prng.int(r.start, r.end - 1);
    disk.flipBit(r.file, at, this.prng.int(0, 7));
    return `WAL ${r.file} damaged: a bit flipped at byte ${at} (a record of ${r.end - r.start} bytes at ${r.start})`;
  }

  /**
   * Faults of the peer links: handshake frames that reset their connection, every connection reset at
   * once, and a forged peer without the secret dialling members.
   */
  private startPeerFaults(endMs: number): void {
    const p = this.params;
    const active = () => this.faultsOn && this.nowMs < endMs;
    this.peerNet.handshakeResetRate = p.handshakeResetRate;
    if (p.linkResetEveryMs > 0) {
      const next = () =>
        this.every(p.linkResetEveryMs, () => {
          if (!active()) return;
          this.stats.linkResets++;
          this.log('peer links: every connection resets');
          this.peerNet.resetAll();
          next();
        });
      next();
    }
    if (p.forgedPeerEveryMs > 0) {
      const forger = new ForgedPeer(this.peerNet, this.world.process(), this.prng, (line) => this.log(line));
      this.forger = forger;
      const ids = Object.keys(this.addresses);
      const next = () =>
        this.every(p.forgedPeerEveryMs, () => {
          if (!active()) return;
          const up = [...this.nodes.keys()];
          if (up.length > 0) {
            const target = this.prng.pick(up);
            forger.attempt(target, this.addresses[target]!, this.nodes.get(target)!.clusterId, ids);
          }
          next();
        });
      next();
    }
  }

  /** The rebalance driver's sessions, one per group, in a process of its own (a sharded run's). */
  private mover: { env: Env; groups: GroupEndpoint[] } | null = null;
  /** The driver's run under way, if any: one at a time, as an operator would. */
  private moving: Promise<void> | null = null;

  /** The real rebalance driver (Rebalancer) over sessions of the simulated network, made on first use. */
  private async rebalancer(): Promise<Rebalancer> {
    if (!this.mover) {
      const env = this.world.process();
      const groups: GroupEndpoint[] = [];
      for (const [g, members] of this.groups.entries()) {
        const session = await Session.open({
          dial: this.clientNet.dial(
            'mover',
            env,
            members.map((m) => this.addresses[m]!),
          ),
          env,
          sessionTimeoutMs: 5000,
          reconnect: true,
          onInvalidate: () => {},
          onSessionLost: () => {},
          onResumed: () => {},
        });
        groups.push({
          id: g + 1,
          session: { call: (req) => session.call(req), close: () => session.close() },
        });
      }
      this.mover = { env, groups };
    }
    return new Rebalancer(this.mover.groups, {
      report: (line) => this.log(`rebalance: ${line}`),
      stopAfter: null,
      drainWaitMs: 2000,
      env: this.mover.env,
    });
  }

  /**
   * Moves the slot of one of the workload's names (a counter, the blob or the log) to another group, after
   * finishing whatever an earlier run left (a crash, a partition or a drain that timed out may stop a run
   * half way: the next one resumes or rolls it back).
   */
  private moveSomething(): void {
    if (this.moving) return;
    const name = this.prng.pick([...this.counters, BLOB, LOG]);
    const toIndex = this.prng.int(1, this.groups.length);
    this.moving = (async () => {
      const r = await this.rebalancer();
      await r.resume();
      const table = await r.newestTable();
      const slot = slotOf(name);
      const from = ownerOf(table, slot);
      const to = toIndex === from ? (toIndex % this.groups.length) + 1 : toIndex;
      await r.runMove({ from, to, slots: [[slot, slot]] }, newMoveId(this.mover!.env));
      this.stats.moves++;
    })()
      .catch((err: unknown) => {
        if (!SegmemError.is(err)) {
          this.unexpected ??= new Failure('rebalance', String((err as Error)?.stack ?? err));
          return;
        }
        this.stats.movesStopped++;
        this.log(`rebalance: stopped by ${err.code}: ${err.message.split('\n')[0]}`);
      })
      .finally(() => {
        this.moving = null;
      });
  }

  /** With the faults over, the driver must finish or roll back every move left half way. */
  async finishMoves(): Promise<void> {
    if (this.groups.length === 1) return;
    await this.until(() => this.moving === null, 30_000, 'the rebalance run under way');
    for (let attempt = 0; ; attempt++) {
      try {
        await this.settle(
          (async () => (await this.rebalancer()).resume())(),
          30_000,
          'finishing the slot moves left',
        );
        return;
      } catch (err) {
        if (attempt >= 5 || !(err instanceof Failure)) throw err;
        this.log(`rebalance: finishing failed (${err.detail.split('\n')[0]}); again`);
        await this.run(500);
      }
    }
  }

  startFaults(endMs: number): void {
    const p = this.params;
    this.workloadEndMs = endMs;
    this.startDiskFaults(endMs);
    this.startPeerFaults(endMs);
    if (this.groups.length > 1) {
      const next = () =>
        this.every(1500, () => {
          if (!this.faultsOn || this.nowMs >= endMs) return;
          this.moveSomething();
          next();
        });
      next();
    }
    if (p.strandRate > 0) {
      this.clientNet.onWriteRelease = (client, address) => {
        if (!this.faultsOn || this.nowMs >= endMs || this.clientNet.isCut(client, address)) return;
        if (!this.prng.chance(p.strandRate)) return;
        this.stats.partitions++;
        this.clientNet.cut(client, address);
        const durationMs = Math.floor(p.sessionTimeoutMs * (1.5 + this.prng.float() * 1.5));
        this.log(
          `partition: ${client} cut off from ${address} as its write release arrives, for ${durationMs} ms`,
        );
        this.world.setTimeout(() => this.heal(), durationMs);
      };
    }
    if (p.clockJumpEveryMs > 0) {
      const jumpNext = () => {
        this.world.setTimeout(
          () => {
            if (!this.faultsOn || this.nowMs >= endMs) return;
            const processes: [string, SkewedEnv][] = [
              ...this.memberClocks,
              ...this.clients.map((c): [string, SkewedEnv] => [c.name, c.clock]),
            ];
            const [who, clock] = this.prng.pick(processes);
            const ms = this.prng.int(50, 2 * p.sessionTimeoutMs);
            this.stats.clockJumps++;
            this.log(`clock: ${who}'s clock jumps ${ms} ms forward`);
            clock.jump(ms);
            jumpNext();
          },
          Math.floor(p.clockJumpEveryMs * (0.5 + this.prng.float())),
        );
      };
      jumpNext();
    }
    if (!p.memberPartitions && !p.clientPartitions) return;
    const next = () => {
      const waitMs = Math.floor(p.partitionEveryMs * (0.5 + this.prng.float()));
      this.world.setTimeout(() => {
        if (this.nowMs >= endMs) return;
        this.stats.partitions++;
        const durationMs = this.prng.int(200, 3 * p.sessionTimeoutMs);
        const kinds = [...(p.memberPartitions ? ['member'] : []), ...(p.clientPartitions ? ['client'] : [])];
        if (this.prng.pick(kinds) === 'member') {
          // Often the leader: with clients still attached, it must not answer what it cannot commit.
          const ids = this.pickGroup();
          const leader = this.leaderOf(ids);
          const isolated = leader && this.prng.chance(0.5) ? leader : this.prng.pick(ids);
          const oneWay = p.oneWayPartitions && this.prng.chance(0.5);
          for (const other of ids) {
            if (other === isolated) continue;
            this.peerNet.cut(isolated, other);
            if (!oneWay) this.peerNet.cut(other, isolated);
          }
          this.log(`partition: ${isolated} ${oneWay ? 'cannot send to' : 'cut off from'} the others`);
        } else {
          const c = this.prng.pick(this.clients);
          // Mostly the leader: the cut that strands the client's requests and answers.
          const ids = this.pickGroup();
          const leader = this.leaderOf(ids);
          const member = leader && this.prng.chance(0.7) ? leader : this.prng.pick(ids);
          this.clientNet.cut(c.name, this.addresses[member]!);
          this.clientNet.breakCut();
          this.log(`partition: ${c.name} cut off from ${member}`);
        }
        this.world.setTimeout(() => {
          this.heal();
          next();
        }, durationMs);
      }, waitMs);
    };
    next();
  }

  /**
   * The liveness phase runs on a majority core: half the time one member stays down (the damaged one if it
   * has not caught up yet, so that what it lost is still on both of the others), every other member runs,
   * and the disks have space.
   */
  liveCore(): void {
    for (const disk of this.disks.values()) disk.full = false;
    for (const ids of this.groups) {
      const damaged = this.damaged && ids.includes(this.damaged.id) ? this.damaged.id : null;
      const out = damaged ?? (this.prng.chance(0.5) ? this.prng.pick(ids) : null);
      if (out) {
        this.log(`liveness: ${out} stays down`);
        this.keptDown.add(out);
        this.crashMember(out);
      }
      for (const id of ids) if (id !== out) this.restartMember(id);
    }
  }

  heal(): void {
    if (!this.faultsOn) this.peerNet.handshakeResetRate = 0;
    this.peerNet.heal();
    this.clientNet.heal();
    this.log('healed');
  }

  /** The checkers, over the history and the final state read by a client that saw no faults. */
  async checkFinal(reader: SimClient): Promise<void> {
    for (const object of this.counters) {
      const final = await this.settle(
        reader.segment.read(object, (h) => Buffer.from(h.bytes)),
        20_000,
        `the final read of ${object}`,
      );
      const count = final.readInt32LE(0);
      const op = this.history.begin(reader.name, object, 'read', this.nowMs);
      op.value = count;
      op.status = 'ok';
      op.ret = this.nowMs;
      const committed = final.subarray(4, 4 + 4 * count);
      const ops = this.history.ops.filter((o) => o.object === object && o.client !== reader.name);
      const byTag = new Map(ops.map((o) => [o.id + 1, o]));
      const describe = (o: OpRecord) =>
        `${o.client} ${o.kind === 'read' ? 'read' : `inc #${o.id + 1} from`} ${o.value} [${o.call}, ${Number.isFinite(o.ret) ? o.ret : '?'}] ${o.status === 'pending' ? 'unknown' : o.status}`;
      // The committed sequence: every step made by an increment that read the count it moved on from.
      const placed = new Set<number>();
      for (let i = 0; i < count; i++) {
        const tag = committed.readInt32LE(4 * i);
        const w = byTag.get(tag);
        if (w?.kind !== 'write')
          throw new Failure(
            'countedOnce',
            `${object} step ${i}->${i + 1} was made by no increment (tag ${tag})`,
          );
        if (w.value !== i)
          throw new Failure('countedOnce', `${object} step ${i}->${i + 1} is ${describe(w)}`);
        if (w.status === 'void')
          throw new Failure(
            'countedOnce',
            `${object} step ${i}->${i + 1} is a refused increment: ${describe(w)}`,
          );
        if (placed.has(tag)) throw new Failure('countedOnce', `${object}: ${describe(w)} counted twice`);
        placed.add(tag);
      }
      // Exactly once: every acknowledged increment is in it.
      for (const w of ops)
        if (w.kind === 'write' && w.status === 'ok' && !placed.has(w.id + 1))
          throw new Failure(
            'countedOnce',
            `${object} ends at ${count} without the acknowledged ${describe(w)}`,
          );
      // Every grant, of a read or a write, showed a committed state: a prefix of the committed sequence.
      for (const o of ops) {
        const saw = this.seen.get(o.id);
        if (!saw || o.value === null) continue;
        if (o.value > count || !saw.equals(committed.subarray(0, 4 * o.value)))
          throw new Failure(
            'readsCommitted',
            `${describe(o)} saw a state of ${object} that was never committed (count ${o.value}; ${count} committed)`,
          );
      }
    }
    // The blob: every read saw one write whole, and never one that was refused.
    for (const r of this.blobReads) {
      if (r.tag === 0) continue;
      const w = this.blobWrites.get(r.tag);
      if (!w || w.status === 'void')
        throw new Failure(
          'readsCommitted',
          `${r.client} read the blob written by #${r.tag} at ${r.atMs}: ${w ? `refused (${w.client})` : 'no such write'}`,
        );
    }
    // Every write release makes one version: a read granted version v sees the write that made v (the
    // create's zeros before any), and v is at least the version of every write acknowledged before the read
    // was called. Together: the blob's reads and writes are linearizable.
    const writes = [...this.blobWrites.entries()];
    for (const r of this.blobReads) {
      const w = this.blobWrites.get(r.tag);
      const madeBy = r.tag === 0 ? 'the create' : `#${r.tag} (granted at v${w?.grantVersion})`;
      if (
        r.tag === 0
          ? writes.some(([, x]) => x.status === 'ok' && x.grantVersion < r.version)
          : w!.grantVersion + 1 !== r.version
      )
        throw new Failure(
          'readsLatest',
          `${r.client} read the blob at v${r.version} [${r.callMs}, ${r.atMs}] and saw the bytes of ${madeBy}`,
        );
      for (const [tag, x] of writes)
        if (x.status === 'ok' && x.ackMs < r.callMs && x.grantVersion + 1 > r.version)
          throw new Failure(
            'readsLatest',
            `${r.client} read the blob at v${r.version} [${r.callMs}, ${r.atMs}], older than #${tag} (v${x.grantVersion + 1}) acknowledged at ${x.ackMs}`,
          );
    }
    const lin = this.history.check();
    if (lin) {
      const ops = [...lin.ops].sort((a, b) => a.call - b.call).map(describeOp);
      throw new Failure(
        'linearizability',
        `${lin.object}: ${lin.result.ok === false ? lin.result.reason : 'undecided'}\n${ops.join('\n')}`,
      );
    }
    // Log appends: each acknowledged one exactly once at its sequence number; none twice; none invented.
    const records: { seq: number; data: string }[] = [];
    if (this.appends.length > 0) {
      const reading = (async () => {
        try {
          for await (const r of reader.segment.log(LOG).read({ from: 0 }))
            records.push({ seq: r.seq, data: r.data.toString() });
        } catch (err) {
          // No append went through: the log was never created.
          if (!SegmemError.is(err, 'NOT_FOUND') || this.appends.some((a) => a.status === 'ok')) throw err;
        }
      })();
      await this.settle(reading, 20_000, 'reading the log');
    }
    const seen = new Map<string, number>();
    for (const r of records) {
      if (seen.has(r.data)) throw new Failure('logAppends', `"${r.data}" is in the log twice`);
      seen.set(r.data, r.seq);
    }
    const attempted = new Map(this.appends.map((a) => [a.payload, a]));
    for (const r of records)
      if (!attempted.has(r.data)) throw new Failure('logAppends', `"${r.data}" was never appended`);
    for (const a of this.appends) {
      if (a.status !== 'ok') continue;
      const at = seen.get(a.payload);
      if (at !== a.seq)
        throw new Failure(
          'logAppends',
          `"${a.payload}" acknowledged at ${a.seq}, found at ${at ?? 'nowhere'}`,
        );
    }
  }

  /**
   * Closes the clients and members (a leader hands off first, on the simulated clock; their last fsyncs
   * take simulated time), at most 30 simulated seconds.
   */
  async stop(): Promise<void> {
    for (const c of this.clients) c.env.resume();
    let done = false;
    const closing = (async () => {
      await Promise.all(this.clients.map((c) => c.segment.close().catch(() => {})));
      await Promise.all([...this.nodes.values()].map((n) => n.close()));
    })().finally(() => {
      done = true;
    });
    await this.until(() => done, 30_000, 'closing the clients and members', 'shutdown');
    await closing;
  }
}

/** Runs one seed of the real-code simulation. */
export async function runRealSimulation(opts: RealSimOptions): Promise<RealSimResult> {
  const sim = new RealSimulation(opts);
  const workloadMs = opts.workloadMs ?? 8000;
  let failure: { checker: string; detail: string } | undefined;
  sim.log(`seed ${opts.seed} ${JSON.stringify(sim.params)}${opts.broken ? ` broken ${opts.broken}` : ''}`);
  try {
    await sim.startMembers();
    await sim.until(() => sim.leaders().length === sim.groups.length, 10_000, 'a first leader');
    for (let i = 0; i < sim.params.clients; i++) {
      const c = await sim.settle(sim.openClient(`k${i + 1}`), 10_000, `client k${i + 1} connecting`);
      sim.clients.push(c);
    }
    const setup = sim.clients[0]!.segment;
    for (const name of sim.counters)
      await sim.settle(setup.create(name, COUNTER_BYTES, { ifNotExists: true }), 10_000, `creating ${name}`);
    await sim.settle(setup.create(BLOB, BLOB_BYTES), 10_000, 'creating the blob');
    const endMs = sim.nowMs + workloadMs;
    const tasks = sim.clients.flatMap((c) => [
      sim.task(c, 0, endMs),
      sim.task(c, 1, endMs),
      sim.watch(c, endMs),
    ]);
    let running = tasks.length;
    for (const t of tasks)
      t.catch((err) => {
        failure ??= err instanceof Failure ? err : { checker: 'crash', detail: String(err?.stack ?? err) };
      }).finally(() => running--);
    sim.startFaults(endMs);
    await sim.run(workloadMs);
    // Liveness: the faults stop; every operation still out must complete.
    sim.faultsOn = false;
    sim.heal();
    sim.liveCore();
    try {
      await sim.finishMoves();
      await sim.until(() => running === 0 || failure !== undefined, LIVENESS_MS, 'the operations still out');
    } catch (err) {
      if (err instanceof Failure) throw new Failure(err.checker, `${err.detail}\n${sim.clientStates()}`);
      throw err;
    }
    if (!failure) {
      const reader = await sim.settle(sim.openClient('checker'), 10_000, 'the checking client connecting');
      sim.clients.push(reader);
      try {
        await sim.checkFinal(reader);
      } catch (err) {
        if (err instanceof Failure && err.checker === 'liveness')
          throw new Failure(err.checker, `${err.detail}\n${sim.clientStates()}`);
        throw err;
      }
    }
  } catch (err) {
    failure ??=
      err instanceof Failure
        ? { checker: err.checker, detail: err.detail }
        : { checker: 'crash', detail: String((err as Error)?.stack ?? err) };
  }
  if (failure instanceof Failure) failure = { checker: failure.checker, detail: failure.detail };
  sim.stats.simulatedMs = sim.nowMs;
  sim.stats.timersRun = sim.clock.fired;
  sim.stats.connections = sim.clientNet.opened;
  sim.stats.peerConnections = sim.peerNet.connections;
  sim.stats.handshakeResets = sim.peerNet.handshakeResets;
  sim.stats.peerAuthFailures = sim.peerNet.authFailures;
  sim.stats.forgedAttempts = sim.forger?.stats.attempts ?? 0;
  sim.stats.forgedRefused = sim.forger?.stats.refused ?? 0;
  sim.stats.brokenConnections = sim.clientNet.broken;
  for (const c of sim.clients) {
    const reads = c.segment.stats().pageReads;
    sim.stats.pagesFromFollowers += reads.fromFollowers;
    sim.stats.pagesFromLeader += reads.fromLeader;
  }
  if (failure) sim.log(`FAIL ${failure.checker}: ${failure.detail.split('\n')[0]}`);
  const trace = [...sim.trace];
  const traceHash = createHash('sha256').update(trace.join('\n')).digest('hex');
  try {
    await sim.stop();
  } catch (err) {
    failure ??= { checker: 'shutdown', detail: String(err) };
  }
  return {
    seed: opts.seed,
    ok: failure === undefined,
    ...(failure ? { failure } : {}),
    params: sim.params,
    stats: sim.stats,
    traceHash,
    trace,
  };
}
