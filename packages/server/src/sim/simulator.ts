/**
 * The deterministic simulator: a cluster of RaftNode cores, each with the REAL state machine, a simulated
 * disk and clock, on a simulated network, with simulated clients; every choice comes from one seeded PRNG,
 * so one seed replays a whole run exactly.
 *
 * A run (tigerbeetle's VOPR shape):
 * 1. swarm: the seed first draws this run's fault probabilities (some faults off entirely);
 * 2. fault phase: crashes (with lost and torn un-synced writes), restarts, partitions (symmetric and
 *    one-way, clients included), loss, duplication, long delays, clock skew, silent clients whose
 *    sessions expire, leadership transfers, log compaction (so lagging nodes need snapshots);
 * 3. liveness phase: the network heals and every node comes back; a leader must emerge and every client
 *    must complete a new operation within a bound.
 * The safety checkers (checkers.ts) run on every observation; the client history is checked for
 * linearizability at the end (history.ts).
 *
 * Each node runs the server's own Raft loop (log/raft-driver.ts, the one RaftLog runs) over a simulated
 * disk whose fsync takes simulated time, under a simulated Env (sim/env.ts: the run's clock, timer queue and
 * PRNG). The broken variant `ackBeforeFsync` is a disk that claims an fsync is done at once and syncs later.
 */
import { createHash } from 'node:crypto';
import { type Command, decodeCommand, encodeCommand, type Outcome } from '../core/commands.js';
import { StateMachine } from '../core/state-machine.js';
import { RaftDriver } from '../log/raft-driver.js';
import { decodeConfChange } from '../raft/confchange.js';
import { RaftInvariantError } from '../raft/invariant.js';
import { RaftNode } from '../raft/node.js';
import {
  type Entry,
  type HardState,
  type Message,
  type NodeId,
  NotLeaderError,
  type Role,
  type Snapshot,
} from '../raft/types.js';
import { type CheckerName, SafetyChecker, Violation } from './checkers.js';
import {
  type ClientEnv,
  type ClientParams,
  type ClientToNode,
  type LogAck,
  type NodeToClient,
  SimClient,
} from './client.js';
import { SimDisk } from './disk.js';
import { SimClock, SimEnv } from './env.js';
import { describeOp, History } from './history.js';
import { type NetworkParams, SimNetwork } from './network.js';
import { Prng } from './prng.js';

export type BrokenVariant = 'commitWithoutMajority' | 'ackBeforeFsync' | 'skipFencing';
export const BROKEN_VARIANTS: readonly BrokenVariant[] = [
  'commitWithoutMajority',
  'ackBeforeFsync',
  'skipFencing',
];

export interface SimOptions {
  seed: number;
  /** Cluster size. Default 3. */
  nodes?: number;
  /** Ticks of the fault phase. Default 1500. */
  ticks?: number;
  /** Ticks the liveness phase may take at most. Default 1500. */
  livenessTicks?: number;
  broken?: BrokenVariant;
  /** Overrides some of the parameters the seed draws (targeted runs). */
  params?: Partial<SimParams>;
  /**
   * Turns off the durability checker, to show that the end-to-end checkers (committed entries, election
   * safety, linearizability) also catch ackBeforeFsync.
   */
  skipDurabilityCheck?: boolean;
  /** Called with every trace event as it happens (the CLI's --trace). */
  onTrace?: (line: string) => void;
  /**
   * Clients also append to a shared log (default true). Their choices come from a random stream of their
   * own, so `false` gives exactly the runs from before logs were simulated (the regression seeds use it).
   */
  logs?: boolean;
}

/** This run's draw of fault probabilities and timings (swarm testing). */
export interface SimParams {
  network: NetworkParams;
  electionTicks: number;
  heartbeatTicks: number;
  skew: number;
  fsyncMaxTicks: number;
  crashP: number;
  downTicksMax: number;
  partitionP: number;
  partitionTicksMax: number;
  transferP: number;
  /** When a new leader is seen: chance to crash or isolate it a few ticks later (a leader-hunting nemesis). */
  leaderFaultP: number;
  /** Per tick: chance that the operator starts replacing a member (remove it, then add a fresh node). */
  reconfigP: number;
  compactEvery: number;
  maxEntriesPerMessage: number;
  maxInflight: number;
  clients: number;
  client: ClientParams;
  sessionTimeoutTicks: number;
}

export interface SimStats {
  ticks: number;
  livenessTicks: number;
  leaderTerms: number;
  committed: number;
  crashes: number;
  lostWrites: number;
  tornWrites: number;
  partitions: number;
  transfers: number;
  replacements: number;
  snapshotsInstalled: number;
  compactions: number;
  expiries: number;
  messages: number;
  dropped: number;
  opsCompleted: number;
  opsUnknown: number;
  clientPauses: number;
  replays: number;
  /** Log appends acknowledged (each checked in the final log). */
  logAppends: number;
}

export class SimFailure extends Error {
  constructor(
    readonly seed: number,
    readonly checker: CheckerName,
    readonly detail: string,
    readonly trace: string[],
    replay: string,
  ) {
    super(
      `seed ${seed}: ${checker} violated: ${detail}\n  replay: ${replay}\n  last ${trace.length} events:\n${trace
        .map((l) => `    ${l}`)
        .join('\n')}`,
    );
    this.name = 'SimFailure';
  }
}

export interface SimResult {
  seed: number;
  ok: boolean;
  /** SHA-256 of every trace event of the run, in order: equal for two runs of one seed. */
  traceHash: string;
  failure: SimFailure | null;
  stats: SimStats;
  params: SimParams;
}

const PAGE_BYTES = 4096;
const SEGMENT_BYTES = 64 * PAGE_BYTES;
const TRACE_EVENTS = 40;
const DIGEST_EVERY = 4;
/** Simulated milliseconds per tick: a tick of the Raft clock, as the server's (cluster.ts RAFT_TICK_MS). */
export const SIM_TICK_MS = 50;

type Payload = { kind: 'raft'; msg: Message } | ClientToNode | NodeToClient;

/** Proposals whose outcome nobody waits for (session expiry, membership changes). */
const IGNORE_OUTCOME = { resolve: () => {}, reject: () => {} };

class SimNode {
  up = true;
  raft!: RaftNode;
  /** The server's Raft loop, over this node's simulated disk and network. */
  driver!: RaftDriver;
  /** This incarnation's Env: its timers (an fsync in progress) die in a crash. */
  env!: SimEnv;
  sm!: StateMachine;
  /** Raft index of the last applied entry. */
  applied = 0;
  rate = 1;
  tickCarry = 0;
  localTicks = 0;
  downUntil = 0;
  /** ackBeforeFsync: a background fsync is scheduled. */
  syncScheduled = false;
  /** The connection each session last came from (grants are pushed there). */
  sessionClient = new Map<number, string>();
  lastHeard = new Map<number, number>();
  /** Leader: when it last proposed to expire each session (not again until that had time to commit). */
  expireProposed = new Map<number, number>();
  leaderSince = -1;
  nextExpireAt = 0;
  role: Role = 'follower';
  /** The highest entry this node acknowledged (index and term there), and the last vote it gave. */
  ack: { index: number; term: number } | null = null;
  vote: { term: number; for: NodeId } | null = null;
  /** Removed from the cluster and destroyed. */
  gone = false;

  constructor(
    readonly id: NodeId,
    readonly disk: SimDisk,
  ) {}
}

function drawParams(prng: Prng, nodes: number): SimParams {
  const on = (p: number) => prng.chance(p);
  // A quarter of the runs hunt leaders: every new leader is likely crashed or cut off within a few
  // heartbeats, one entry per append. That is what it takes to reach Figure-8-like interleavings
  // (a leader's old-term entry on a majority before its own entry is).
  const churn = on(0.25);
  const latencyMax = prng.int(2, 8);
  const electionTicks = prng.int(Math.max(12, latencyMax * 3), 30);
  const sessionTimeoutTicks = prng.int(100, 250);
  return {
    network: {
      lossP: on(0.6) ? prng.float() * 0.1 : 0,
      dupP: on(0.5) ? prng.float() * 0.06 : 0,
      latencyMin: 1,
      latencyMax,
      tailP: on(0.5) ? prng.float() * 0.03 : 0,
      tailMax: prng.int(latencyMax + 5, 60),
    },
    electionTicks,
    heartbeatTicks: prng.int(1, 3),
    skew: on(0.5) ? prng.float() * 0.2 : 0,
    fsyncMaxTicks: prng.int(0, 6),
    crashP: churn ? 0.002 + prng.float() * 0.003 : on(0.75) ? prng.float() * 0.006 : 0,
    downTicksMax: prng.int(10, 250),
    partitionP: churn ? 0.002 + prng.float() * 0.003 : on(0.7) ? prng.float() * 0.008 : 0,
    partitionTicksMax: prng.int(20, 300),
    transferP: on(0.3) ? prng.float() * 0.003 : 0,
    reconfigP: on(0.3) ? prng.float() * 0.003 : 0,
    leaderFaultP: churn ? 0.6 + prng.float() * 0.35 : on(0.5) ? prng.float() * 0.6 : 0,
    compactEvery: prng.int(8, 120),
    maxEntriesPerMessage: churn ? 1 : prng.pick([1, 4, 64, 256]),
    maxInflight: prng.pick([1, 4, 64]),
    clients: prng.int(2, 4) + (nodes > 3 ? 1 : 0),
    sessionTimeoutTicks,
    client: {
      objects: ['c0', 'c1', 'c2'].slice(0, prng.int(1, 3)),
      retryTicks: prng.int(30, 70),
      keepaliveTicks: prng.int(8, 20),
      sessionTimeoutTicks,
      holdTicksMax: prng.int(0, 6),
      thinkTicksMax: prng.int(0, 10),
      writeP: 0.5 + prng.float() * 0.4,
      pauseP: on(0.6) ? prng.float() * 0.002 : 0,
      pauseWhileHoldingP: on(0.6) ? prng.float() * 0.15 : 0,
      pauseTicksMax: prng.int(20, 3 * sessionTimeoutTicks),
      // Drawn in the constructor from a stream of its own (see SimOptions.logs).
      appendP: 0,
      logName: 'events',
    },
  };
}

class Simulation {
  private readonly prng: Prng;
  /** The run's clock and timer queue (an Env over them per node incarnation). */
  private readonly env: SimEnv;
  private readonly params: SimParams;
  private readonly net: SimNetwork<Payload>;
  private readonly nodes = new Map<NodeId, SimNode>();
  /** The live (not removed) node ids; clients try these. */
  private readonly nodeIds: NodeId[];
  private readonly bootstrapMembers: NodeId[];
  private nextNodeNumber: number;
  /** The operator's membership change in progress (a member replaced by a fresh node). */
  private reconfig:
    | { phase: 'idle' }
    | { phase: 'removing'; victim: NodeId; done: boolean }
    | { phase: 'adding'; joiner: NodeId; done: boolean } = {
    phase: 'idle',
  };
  private reconfigRetryAt = 0;
  /** The nemesis's next strike at a new leader. */
  private leaderFault: { at: number; target: NodeId; term: number } | null = null;
  private readonly clients = new Map<string, SimClient>();
  private readonly checker = new SafetyChecker();
  private readonly history = new History();
  private readonly logPrng: Prng;
  private readonly logAcks: LogAck[] = [];
  private readonly traceRing: string[] = [];
  private readonly traceDigest = createHash('sha256');
  private traceAt = 0;
  private now = 0;
  private eventClock = 0;
  private calm = false;
  private healClock = Number.POSITIVE_INFINITY;
  private partitionUntil = -1;
  private readonly faultTicks: number;
  private readonly livenessTicks: number;
  private readonly broken: BrokenVariant | undefined;
  private readonly stats: SimStats = {
    ticks: 0,
    livenessTicks: 0,
    leaderTerms: 0,
    committed: 0,
    crashes: 0,
    lostWrites: 0,
    tornWrites: 0,
    partitions: 0,
    transfers: 0,
    replacements: 0,
    snapshotsInstalled: 0,
    compactions: 0,
    expiries: 0,
    messages: 0,
    dropped: 0,
    opsCompleted: 0,
    opsUnknown: 0,
    clientPauses: 0,
    logAppends: 0,
    replays: 0,
  };

  constructor(private readonly opts: SimOptions) {
    this.prng = new Prng(opts.seed);
    this.env = new SimEnv(new SimClock(), this.prng);
    const n = opts.nodes ?? 3;
    this.params = { ...drawParams(this.prng, n), ...opts.params };
    this.logPrng = new Prng((opts.seed ^ 0x10c5eed) >>> 0);
    if (opts.logs !== false && !opts.params?.client) {
      this.params.client = { ...this.params.client, appendP: 0.05 + this.logPrng.float() * 0.25 };
    }
    this.faultTicks = opts.ticks ?? 1500;
    this.livenessTicks = opts.livenessTicks ?? 1500;
    this.broken = opts.broken;
    this.net = new SimNetwork<Payload>(this.prng, { ...this.params.network });
    this.nodeIds = Array.from({ length: n }, (_, i) => `n${i + 1}`);
    this.bootstrapMembers = [...this.nodeIds];
    this.nextNodeNumber = n + 1;
    for (const id of this.nodeIds) this.addNode(id);
    const sim = this;
    const env: ClientEnv = {
      get now() {
        return sim.now;
      },
      clock: () => ++this.eventClock,
      send: (from, to, msg) => this.net.send(this.now, from, to, msg),
      nodes: this.nodeIds,
      prng: this.prng,
      history: this.history,
      logPrng: this.logPrng,
      logAcks: this.logAcks,
      trace: (line) => this.trace(line),
      get calm() {
        return sim.calm;
      },
    };
    for (let i = 1; i <= this.params.clients; i++) {
      const id = `c${i}`;
      this.clients.set(id, new SimClient(id, env, this.params.client));
    }
  }

  private trace(line: string): void {
    const event = `${this.now} ${line}`;
    this.traceDigest.update(event).update('\n');
    this.traceRing[this.traceAt++ % TRACE_EVENTS] = event;
    this.opts.onTrace?.(event);
  }

  private lastEvents(): string[] {
    const n = Math.min(this.traceAt, TRACE_EVENTS);
    const out: string[] = [];
    for (let i = this.traceAt - n; i < this.traceAt; i++) out.push(this.traceRing[i % TRACE_EVENTS]!);
    return out;
  }

  // --- nodes ---

  /** A node with an empty disk whose configuration at index 0 is the bootstrap membership. */
  private addNode(id: NodeId): SimNode {
    const node = new SimNode(id, new SimDisk(this.bootstrapMembers));
    node.rate = 1 + (this.prng.float() * 2 - 1) * this.params.skew;
    this.nodes.set(id, node);
    this.boot(node);
    return node;
  }

  private newStateMachine(data: Buffer | null): StateMachine {
    const unsafeSkipFencing = this.broken === 'skipFencing';
    if (data && data.length > 0) return StateMachine.restore(data, { unsafeSkipFencing });
    return new StateMachine({ pageBytes: PAGE_BYTES, segmentBytes: SEGMENT_BYTES, unsafeSkipFencing });
  }

  /** (Re)starts a node from its durable disk: Raft state from storage, state machine from its snapshot. */
  private boot(node: SimNode): void {
    const p = this.params;
    const storage = node.disk.live;
    const env = this.env.process();
    node.env = env;
    node.raft = new RaftNode({
      id: node.id,
      storage,
      electionTicks: p.electionTicks,
      heartbeatTicks: p.heartbeatTicks,
      rand: () => env.random(),
      maxEntriesPerMessage: p.maxEntriesPerMessage,
      maxInflightMessages: p.maxInflight,
      snapshotRetryTicks: p.electionTicks * 3,
      ...(this.broken === 'commitWithoutMajority' ? { unsafe: { commitWithoutMajority: true } } : {}),
    });
    const snap = storage.snapshot();
    node.sm = this.newStateMachine(snap.meta.index > 0 ? snap.data : null);
    node.applied = snap.meta.index;
    node.driver = new RaftDriver({
      core: node.raft,
      storage: {
        save: (hardState, entries) => this.persist(node, hardState, entries),
        waitDurable: (_position, done) => this.fsync(node, done),
      },
      peers: {
        send: (m) => this.sendMessage(node, m),
        // Simulated nodes reach each other by id: no links or addresses to manage.
        setMembers: () => {},
        addressOf: () => undefined,
        addAddress: () => {},
      },
      app: {
        installSnapshot: (s, done) => {
          this.installSnapshot(node, s);
          done();
        },
        apply: (e) => this.apply(node, e),
        afterReady: () => this.maybeCompact(node),
      },
      env,
      applied: { index: snap.meta.index, term: snap.meta.term },
      // What broke is the run's finding: the checker that threw, or a core invariant.
      onFailure: (_err, cause) => {
        throw cause;
      },
    });
    node.up = true;
    node.role = node.raft.role;
    node.leaderSince = -1;
  }

  private crash(node: SimNode): void {
    const r = node.disk.crash(this.prng);
    node.up = false;
    node.env.kill();
    node.syncScheduled = false;
    node.sessionClient.clear();
    node.lastHeard.clear();
    node.expireProposed.clear();
    node.role = 'follower';
    this.stats.crashes++;
    this.stats.lostWrites += r.unsynced - r.kept;
    if (r.torn) this.stats.tornWrites++;
    const torn = r.torn ? `, tore one (${r.torn.kept}/${r.torn.of} entries)` : '';
    this.trace(`CRASH ${node.id}: kept ${r.kept} of ${r.unsynced} un-synced writes${torn}`);
    this.checkDurable(node);
  }

  /** What the node acknowledged before the crash must have survived it. */
  private checkDurable(node: SimNode): void {
    if (this.opts.skipDurabilityCheck) return;
    const disk = node.disk.live;
    const ack = node.ack;
    if (ack && ack.index >= disk.firstIndex() - 1) {
      const term = ack.index <= disk.lastIndex() ? disk.term(ack.index) : undefined;
      if (term !== ack.term) {
        throw new Violation(
          'durability',
          `${node.id} acknowledged entry ${ack.index} (term ${ack.term}) but after a crash its disk has ${term === undefined ? 'no such entry' : `term ${term}`}`,
        );
      }
    }
    const vote = node.vote;
    const hs = disk.hardState();
    if (vote && (hs.term < vote.term || (hs.term === vote.term && hs.vote !== vote.for))) {
      throw new Violation(
        'durability',
        `${node.id} voted for ${vote.for} in term ${vote.term}, but after a crash its disk says term ${hs.term}, vote ${hs.vote}`,
      );
    }
  }

  private restart(node: SimNode): void {
    this.boot(node);
    this.trace(
      `RESTART ${node.id} term ${node.raft.term} commit ${node.raft.commitIndex} log ${node.raft.firstIndex}..${node.raft.lastIndex}`,
    );
  }

  /** After any call into a core: role changes and the checkers that watch them. */
  private observe(node: SimNode): void {
    const role = node.raft.role;
    if (role === 'leader') this.checker.onLeader(node.id, node.raft.term);
    if (role !== node.role) {
      if (role === 'leader') {
        this.checker.onNewLeader(node.id, (i) => node.raft.termAt(i), node.raft.firstIndex);
        this.trace(`${node.id} LEADER of term ${node.raft.term} (log ..${node.raft.lastIndex})`);
        if (!this.calm && this.leaderFault === null && this.prng.chance(this.params.leaderFaultP)) {
          const at = this.now + this.prng.int(0, 3 * this.params.heartbeatTicks + 3);
          this.leaderFault = { at, target: node.id, term: node.raft.term };
        }
      } else if (node.role === 'leader') {
        this.trace(`${node.id} steps down to ${role} in term ${node.raft.term}`);
      }
      node.role = role;
    }
  }

  private tickNodes(): void {
    for (const node of this.nodes.values()) {
      if (!node.up) continue;
      node.tickCarry += node.rate;
      while (node.tickCarry >= 1) {
        node.tickCarry -= 1;
        node.localTicks++;
        node.driver.tick();
        this.observe(node);
      }
    }
  }

  /** The disk under the driver: entries, then hard state (the disk keeps a prefix of them in a crash). */
  private persist(node: SimNode, hardState: HardState | undefined, entries: Entry[]): number {
    if (entries.length > 0) {
      const disk = node.disk.live;
      this.checker.onPersist(
        node.id,
        entries,
        (i) => node.raft.termAt(i),
        (i) => (i >= disk.firstIndex() - 1 && i <= disk.lastIndex() ? disk.term(i) : undefined),
      );
      node.disk.write({ kind: 'entries', entries });
    }
    if (hardState) node.disk.write({ kind: 'hardState', hardState });
    // A conflicting append legitimately replaces acknowledged (uncommitted) entries.
    const ack = node.ack;
    if (ack && node.raft.termAt(ack.index) !== ack.term) node.ack = null;
    return 0;
  }

  /** An fsync takes 0..fsyncMaxTicks of simulated time (done at once when 0). */
  private fsync(node: SimNode, done: () => void): void {
    if (this.broken === 'ackBeforeFsync') {
      // Broken on purpose: the disk says it is durable at once, and syncs some time later.
      if (!node.syncScheduled) {
        node.syncScheduled = true;
        const ticks = 1 + this.prng.int(0, this.params.fsyncMaxTicks * 2);
        node.env.setTimeout(() => {
          node.syncScheduled = false;
          node.disk.sync();
        }, ticks * SIM_TICK_MS);
      }
      done();
      return;
    }
    const ticks = this.prng.int(0, this.params.fsyncMaxTicks);
    if (ticks === 0) {
      node.disk.sync();
      done();
      return;
    }
    node.env.setTimeout(() => {
      node.disk.sync();
      done();
    }, ticks * SIM_TICK_MS);
  }

  /** Ready step 1 on a node: the leader's snapshot to disk, the state machine restored from it. */
  private installSnapshot(node: SimNode, snapshot: Snapshot): void {
    this.checker.onSnapshot(node.id, snapshot);
    node.disk.write({ kind: 'snapshot', snapshot });
    // A snapshot legitimately replaces acknowledged (uncommitted) entries.
    node.ack = null;
    node.sm = this.newStateMachine(snapshot.data);
    node.applied = snapshot.meta.index;
    this.stats.snapshotsInstalled++;
    this.trace(`${node.id} installs snapshot at ${snapshot.meta.index} (term ${snapshot.meta.term})`);
  }

  private sendMessage(node: SimNode, m: Message): void {
    if (m.type === 'appendResp' && !m.reject && m.hintIndex !== undefined) {
      // The highest acknowledged index counts (a stale duplicate is answered with a lower one).
      const term = node.raft.termAt(m.hintIndex);
      if (term !== undefined && (!node.ack || m.hintIndex >= node.ack.index)) {
        node.ack = { index: m.hintIndex, term };
      }
    } else if (m.type === 'voteResp' && !m.reject) {
      node.vote = { term: m.term, for: m.to };
    }
    this.net.send(this.now, node.id, m.to, { kind: 'raft', msg: m });
  }

  /** The state machine's side of the driver: one committed entry (the driver hands them out in order). */
  private apply(node: SimNode, e: Entry): Outcome | null {
    this.checker.onApply(node.id, e);
    node.applied = e.index;
    if (e.index > this.stats.committed) this.stats.committed = e.index;
    if (e.type === 'conf') this.confApplied(e);
    let out: Outcome | null = null;
    if (e.type === 'normal' && e.data.length > 0) {
      const cmd = decodeCommand(e.data, e.payload);
      out = node.sm.apply(node.sm.appliedIndex + 1, cmd);
      if (cmd.op === 'expire') this.stats.expiries++;
      // A session is heard from when it opens (every node: any of them may lead later).
      if (cmd.op === 'open' && out.result.ok) {
        node.lastHeard.set((out.result.value as { sessionId: number }).sessionId, node.localTicks);
      }
      for (const eff of out.effects) {
        if (eff.kind !== 'grant' && eff.kind !== 'fail') continue;
        const client = node.sessionClient.get(eff.sessionId);
        if (!client) continue;
        if (eff.kind === 'grant') {
          const value = this.counter(node, eff.grant.object.name);
          this.toClient(node.id, client, {
            kind: 'grant',
            sessionId: eff.sessionId,
            seq: eff.seq,
            token: eff.grant.token,
            value,
          });
        } else {
          this.toClient(node.id, client, {
            kind: 'fail',
            sessionId: eff.sessionId,
            seq: eff.seq,
            code: eff.code,
          });
        }
      }
    }
    if (e.index % DIGEST_EVERY === 0) this.checker.onDigest(node.id, e.index, node.sm.digest());
    return out;
  }

  /** A client's proposal was applied on the node it asked (with the term it was proposed in): the answer. */
  private reply(node: SimNode, client: string, reqId: number, cmd: Command, out: Outcome): void {
    let value: number | null = null;
    if (cmd.op === 'open' && out.result.ok) {
      node.sessionClient.set((out.result.value as { sessionId: number }).sessionId, client);
    }
    if (cmd.op === 'acquire' && out.result.ok && (out.result.value as { granted?: unknown }).granted) {
      value = this.counter(node, cmd.name);
    }
    const sessionAlive = 'sessionId' in cmd ? node.sm.hasSession(cmd.sessionId) : true;
    this.toClient(node.id, client, { kind: 'reply', reqId, result: out.result, value, sessionAlive });
  }

  private counter(node: SimNode, name: string): number {
    const obj = node.sm.objectNamed(name);
    if (!obj) throw new Error(`no object ${name} on ${node.id}`);
    return obj.data ? obj.data.readUInt32LE(0) : 0;
  }

  private maybeCompact(node: SimNode): void {
    const storage = node.disk.live;
    if (node.applied - storage.firstIndex() + 1 < this.params.compactEvery) return;
    if (node.applied > storage.lastIndex()) return;
    node.disk.write({ kind: 'compact', index: node.applied, data: node.sm.snapshot() });
    this.stats.compactions++;
  }

  private toClient(from: NodeId, client: string, msg: NodeToClient): void {
    this.net.send(this.now, from, client, msg);
  }

  // --- the shell's duties on a node: client requests, session expiry ---

  private onClientMessage(node: SimNode, from: string, msg: ClientToNode): void {
    if (msg.kind === 'keepalive') {
      node.lastHeard.set(msg.sessionId, node.localTicks);
      node.sessionClient.set(msg.sessionId, from);
      return;
    }
    const cmd = msg.cmd;
    if ('sessionId' in cmd) {
      node.lastHeard.set(cmd.sessionId, node.localTicks);
      node.sessionClient.set(cmd.sessionId, from);
    }
    try {
      node.driver.propose(Buffer.concat(encodeCommand(cmd)), {
        resolve: (out) => this.reply(node, from, msg.reqId, cmd, out),
        // Lost leadership, or another leader's entry took the index: no answer, the client retries.
        reject: () => {},
      });
    } catch (err) {
      if (!(err instanceof NotLeaderError)) throw err;
      this.toClient(node.id, from, { kind: 'notLeader', reqId: msg.reqId, leader: err.leader });
      return;
    }
    this.observe(node);
  }

  private expireSessions(node: SimNode): void {
    if (node.raft.role !== 'leader') {
      node.leaderSince = -1;
      return;
    }
    const t = node.localTicks;
    if (node.leaderSince < 0) node.leaderSince = t;
    const timeout = this.params.sessionTimeoutTicks;
    if (t - node.leaderSince < timeout || t < node.nextExpireAt) return;
    node.nextExpireAt = t + 5;
    const silent = node.sm
      .sessionIds()
      .filter(
        (s) =>
          t - Math.max(node.lastHeard.get(s) ?? -1, node.leaderSince) > timeout &&
          t - (node.expireProposed.get(s) ?? Number.NEGATIVE_INFINITY) > 4 * this.params.electionTicks,
      );
    if (silent.length === 0) return;
    for (const s of silent) node.expireProposed.set(s, t);
    try {
      node.driver.propose(Buffer.concat(encodeCommand({ op: 'expire', sessionIds: silent })), IGNORE_OUTCOME);
      this.trace(`${node.id} proposes expiry of sessions ${silent.join(',')}`);
    } catch (err) {
      if (!(err instanceof NotLeaderError)) throw err;
    }
    this.observe(node);
  }

  // --- faults ---

  private faults(): void {
    const p = this.params;
    for (const node of this.nodes.values()) {
      if (!node.up && !node.gone && this.now >= node.downUntil) this.restart(node);
    }
    if (this.prng.chance(p.crashP)) {
      const up = [...this.nodes.values()].filter((n) => n.up);
      // Half the time, strike a node in the middle of a write (un-synced data): lost and torn writes.
      const writing = up.filter((n) => n.disk.unsynced > 0);
      if (up.length > 0) {
        const node = this.prng.pick(writing.length > 0 && this.prng.chance(0.5) ? writing : up);
        this.crash(node);
        node.downUntil = this.now + this.prng.int(1, p.downTicksMax);
      }
    }
    const lf = this.leaderFault;
    if (lf && this.now >= lf.at) {
      this.leaderFault = null;
      const node = this.nodes.get(lf.target)!;
      if (node.up && node.raft.role === 'leader' && node.raft.term === lf.term) {
        if (this.partitionUntil < 0 && this.prng.chance(0.5)) this.partition(node.id);
        else {
          this.crash(node);
          node.downUntil = this.now + this.prng.int(1, p.downTicksMax);
        }
      }
    }
    if (this.partitionUntil >= 0 && this.now >= this.partitionUntil) {
      this.net.heal();
      this.partitionUntil = -1;
      this.trace('partition heals');
    } else if (this.partitionUntil < 0 && this.prng.chance(p.partitionP)) {
      this.partition();
    }
    if (this.prng.chance(p.transferP)) {
      const leader = [...this.nodes.values()].find((n) => n.up && n.raft.role === 'leader');
      if (leader) {
        const others = leader.raft.members.filter((m) => m !== leader.id);
        if (others.length > 0) {
          const to = this.prng.pick(others);
          leader.driver.transferLeadership(to);
          this.observe(leader);
          this.stats.transfers++;
          this.trace(`${leader.id} transfers leadership to ${to}`);
        }
      }
    }
  }

  /** A random partition, or the isolation of `lone` (with some clients). */
  private partition(lone?: NodeId): void {
    const kind = lone ? 'isolate' : this.prng.pick(['isolate', 'split', 'oneway'] as const);
    const clients = [...this.clients.keys()];
    const cutBoth = (a: string, b: string) => {
      this.net.cut(a, b);
      this.net.cut(b, a);
    };
    let desc: string;
    if (kind === 'isolate') {
      lone ??= this.prng.pick(this.nodeIds);
      for (const other of this.nodeIds) if (other !== lone) cutBoth(lone, other);
      const withLone = clients.filter(() => this.prng.chance(0.3));
      for (const c of clients) {
        if (withLone.includes(c)) for (const other of this.nodeIds) if (other !== lone) cutBoth(c, other);
        if (!withLone.includes(c)) cutBoth(c, lone);
      }
      desc = `isolate ${lone}${withLone.length ? ` with ${withLone.join(',')}` : ''}`;
    } else if (kind === 'split') {
      const side = new Map<string, boolean>();
      for (const id of [...this.nodeIds, ...clients]) side.set(id, this.prng.chance(0.5));
      const all = [...side.keys()];
      for (const a of all) for (const b of all) if (a < b && side.get(a) !== side.get(b)) cutBoth(a, b);
      desc = `split ${all.filter((x) => side.get(x)).join(',')} | ${all.filter((x) => !side.get(x)).join(',')}`;
    } else {
      const links: string[] = [];
      const count = this.prng.int(1, this.nodeIds.length);
      for (let i = 0; i < count; i++) {
        const a = this.prng.pick(this.nodeIds);
        const b = this.prng.pick(this.nodeIds);
        if (a === b) continue;
        this.net.cut(a, b);
        links.push(`${a}>${b}`);
      }
      desc = `one-way cuts ${links.join(' ')}`;
    }
    this.partitionUntil = this.now + this.prng.int(5, this.params.partitionTicksMax);
    this.stats.partitions++;
    this.trace(`PARTITION ${desc} until ${this.partitionUntil}`);
  }

  /** The end of the fault phase: everything heals, comes back, and calms down. */
  private heal(): void {
    this.net.heal();
    this.partitionUntil = -1;
    this.net.params = { ...this.net.params, lossP: 0, dupP: 0, tailP: 0 };
    for (const node of this.nodes.values()) if (!node.up && !node.gone) this.restart(node);
    for (const c of this.clients.values()) c.wake();
    this.calm = true;
    this.healClock = ++this.eventClock;
    this.trace('FAULTS END: network healed, all nodes up');
  }

  // --- the run ---

  private deliver(): void {
    for (const pkt of this.net.deliver(this.now)) {
      const payload = pkt.payload;
      switch (payload.kind) {
        case 'raft': {
          const node = this.nodes.get(pkt.to);
          if (!node?.up) break;
          node.driver.receive(payload.msg);
          this.observe(node);
          break;
        }
        case 'request':
        case 'keepalive': {
          const node = this.nodes.get(pkt.to);
          if (node?.up) this.onClientMessage(node, pkt.from, payload);
          break;
        }
        default:
          this.clients.get(pkt.to)?.receive(payload);
      }
    }
  }

  // --- the operator: replaces a member (remove it; once that commits, destroy it and add a fresh node) ---

  /** A committed conf entry, seen by the operator. */
  private confApplied(e: Entry): void {
    const cc = decodeConfChange(e.data);
    const r = this.reconfig;
    if (r.phase === 'removing' && cc.op === 'remove' && cc.id === r.victim) r.done = true;
    if (r.phase === 'adding' && cc.op === 'add' && cc.id === r.joiner) r.done = true;
  }

  private operator(faultPhase: boolean): void {
    const leader = [...this.nodes.values()].find((n) => n.up && n.raft.role === 'leader');
    const r = this.reconfig;
    if (r.phase === 'idle') {
      if (!faultPhase || !leader || !this.prng.chance(this.params.reconfigP)) return;
      const victim = this.prng.pick(leader.raft.members);
      this.reconfig = { phase: 'removing', victim, done: false };
      this.trace(`operator: replace ${victim}`);
      this.reconfigRetryAt = this.now;
    } else if (r.phase === 'removing' && r.done) {
      const victim = this.nodes.get(r.victim)!;
      victim.up = false;
      victim.gone = true;
      victim.env.kill();
      this.nodeIds.splice(this.nodeIds.indexOf(r.victim), 1);
      const joiner = `n${this.nextNodeNumber++}`;
      this.addNode(joiner);
      this.nodeIds.push(joiner);
      this.stats.replacements++;
      this.trace(`operator: ${r.victim} removed and destroyed; ${joiner} starts empty`);
      this.reconfig = { phase: 'adding', joiner, done: false };
      this.reconfigRetryAt = this.now;
      return;
    } else if (r.phase === 'adding' && r.done) {
      this.trace(`operator: ${r.joiner} added`);
      this.reconfig = { phase: 'idle' };
      return;
    }
    const cur = this.reconfig;
    if (cur.phase === 'idle' || !leader || this.now < this.reconfigRetryAt) return;
    this.reconfigRetryAt = this.now + 2 * this.params.electionTicks;
    const cc =
      cur.phase === 'removing'
        ? leader.raft.members.includes(cur.victim) && ({ op: 'remove', id: cur.victim } as const)
        : !leader.raft.members.includes(cur.joiner) && ({ op: 'add', id: cur.joiner } as const);
    if (!cc) return;
    try {
      leader.driver.proposeConfChange(cc, IGNORE_OUTCOME);
      this.trace(`${leader.id} proposes ${cc.op} ${cc.id}`);
    } catch (err) {
      if (err instanceof RaftInvariantError) throw err;
    }
    this.observe(leader);
  }

  /**
   * Every acknowledged append is in the shared log exactly once, at the sequence number its answer gave,
   * on the most advanced live node (the agreement checker holds the others to it); no payload appears
   * twice (a retried append applied once).
   */
  private checkLog(): void {
    const name = this.params.client.logName;
    const node = [...this.nodes.values()]
      .filter((n) => n.up && !n.gone)
      .sort((a, b) => b.applied - a.applied)[0];
    if (!node) return;
    const read = node.sm.readLog(name, null, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    if (!read.ok) {
      if (this.logAcks.length === 0 && read.code === 'NOT_FOUND') return;
      throw new Violation('logAppends', `${node.id} cannot read log ${name}: ${read.message}`);
    }
    const records = new Map<number, string>();
    const seen = new Map<string, number>();
    let seq = read.read.from;
    for (const part of read.read.parts) {
      const payload = part.toString();
      if (seen.has(payload))
        throw new Violation(
          'logAppends',
          `${payload} is in ${name} twice (records ${seen.get(payload)} and ${seq})`,
        );
      seen.set(payload, seq);
      records.set(seq++, payload);
    }
    for (const ack of this.logAcks) {
      const at = records.get(ack.seq);
      if (at !== ack.payload) {
        throw new Violation(
          'logAppends',
          `${ack.client}'s append of ${ack.payload} was acknowledged as record ${ack.seq}, but ${node.id} (applied ${node.applied}) has ${at === undefined ? 'no such record' : at} there`,
        );
      }
    }
  }

  private livenessMet(): boolean {
    if (![...this.nodes.values()].some((n) => n.raft.role === 'leader')) return false;
    for (const c of this.clients.values()) if (c.lastCompletedCall < this.healClock) return false;
    return true;
  }

  private replayCommand(): string {
    const n = this.bootstrapMembers.length;
    return `npm run sim -- --seed ${this.opts.seed}${n !== 3 ? ` --nodes ${n}` : ''}${
      this.broken ? ` --broken ${this.broken}` : ''
    }${this.opts.ticks !== undefined ? ` --ticks ${this.opts.ticks}` : ''}`;
  }

  run(): SimResult {
    let failure: SimFailure | null = null;
    try {
      this.loop();
      this.checkLog();
      const bad = this.history.check();
      if (bad) {
        // Show the operations around the point where no linearization could be extended.
        const sorted = [...bad.ops].sort((a, b) => a.call - b.call);
        const stuck = bad.result.ok === false ? bad.result.longestPrefix : sorted.length;
        const from = Math.max(0, stuck - 12);
        const ops = sorted.slice(from, from + 30);
        throw new Violation(
          'linearizability',
          `history of ${bad.object} is not linearizable (${'reason' in bad.result ? bad.result.reason : ''}; ${stuck} of ${sorted.length} operations could be linearized); operations ${from + 1}..${from + ops.length} by call time:\n      ${ops
            .map(describeOp)
            .join('\n      ')}`,
        );
      }
    } catch (err) {
      let checker: CheckerName;
      let detail: string;
      if (err instanceof Violation) {
        checker = err.checker;
        detail = err.message;
      } else if (err instanceof RaftInvariantError) {
        checker = 'coreInvariant';
        detail = err.message;
      } else {
        checker = 'crash';
        detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
      }
      failure = new SimFailure(this.opts.seed, checker, detail, this.lastEvents(), this.replayCommand());
    }
    const counts = this.history.counts();
    this.stats.opsCompleted = counts.completed;
    this.stats.opsUnknown = counts.optional;
    this.stats.leaderTerms = this.checker.leaderTerms;
    this.stats.messages = this.net.sent;
    this.stats.dropped = this.net.dropped;
    this.stats.logAppends = this.logAcks.length;
    for (const c of this.clients.values()) {
      this.stats.clientPauses += c.pauses;
      this.stats.replays += c.replays;
    }
    return {
      seed: this.opts.seed,
      ok: failure === null,
      traceHash: this.traceDigest.digest('hex'),
      failure,
      stats: this.stats,
      params: this.params,
    };
  }

  private loop(): void {
    const end = this.faultTicks + this.livenessTicks;
    const clock = this.env.clock;
    for (this.now = 0; this.now < end; this.now++) {
      // The clock moves to this tick: the fsyncs due by now complete.
      clock.runUntil(this.now * SIM_TICK_MS);
      if (this.now === this.faultTicks) this.heal();
      if (this.now < this.faultTicks) this.faults();
      this.operator(this.now < this.faultTicks);
      this.deliver();
      this.tickNodes();
      // What the drivers deferred to the next turn of their event loop (what may go ahead of an fsync).
      clock.runUntil(this.now * SIM_TICK_MS);
      for (const node of this.nodes.values()) if (node.up) this.expireSessions(node);
      for (const c of this.clients.values()) c.step();
      if (this.now >= this.faultTicks && this.livenessMet()) {
        this.stats.ticks = this.now + 1;
        this.stats.livenessTicks = this.now + 1 - this.faultTicks;
        this.trace('liveness: a leader, and every client completed a new operation');
        return;
      }
    }
    this.stats.ticks = end;
    const waiting = [...this.clients.values()]
      .filter((c) => c.lastCompletedCall < this.healClock)
      .map((c) => `${c.id} (${c.phase}${c.sessionId === null ? ', no session' : ''})`);
    const leaders = [...this.nodes.values()].filter((n) => n.raft.role === 'leader').map((n) => n.id);
    throw new Violation(
      'liveness',
      `${this.livenessTicks} ticks after the faults ended: leader ${leaders.join(',') || 'none'}; clients without a new completed operation: ${waiting.join(', ') || 'none'}`,
    );
  }
}

/** Runs one seed. Pure, synchronous and deterministic: the same options give the same result. */
export function runSimulation(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

/** Runs one seed and throws its {@link SimFailure} if a checker fired. */
export function checkSimulation(opts: SimOptions): SimResult {
  const r = runSimulation(opts);
  if (r.failure) throw r.failure;
  return r;
}
