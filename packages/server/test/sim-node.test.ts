/**
 * Real members under the simulated Env: three openClusterNode members (SegmemNode, RaftLog and its Raft
 * driver, DiskRaftStorage, the whole data directory on the simulated disk (SimFs), the real connection handling and peer
 * codec) on one simulated clock and seed, and a client speaking the real protocol through an in-process
 * connection. Nothing here waits for real time: election timeouts, fsyncs, network latency, session expiry
 * all happen on the simulated clock, which the test moves. This is the step towards running the shipped
 * server (and later the client) in the simulator.
 */
import {
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  type Request,
  type RequestType,
  SegmemError,
} from '@segmem/protocol';
import test from 'ava';
import { openClusterNode } from '../src/cluster.js';
import type { SegmemNode } from '../src/node/index.js';
import { RaftNode } from '../src/raft/node.js';
import { connectLocal, type LocalEnd } from '../src/shell/local.js';
import { SimClock, SimEnv } from '../src/sim/env.js';
import { SimFs } from '../src/sim/fs.js';
import { SimPeerNetwork } from '../src/sim/peer-network.js';
import { Prng } from '../src/sim/prng.js';

/** Lets the promise continuations of the simulated code run (all of them: a macrotask comes after). */
function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

class RealSim {
  readonly clock = new SimClock(Date.UTC(2030, 0, 1));
  readonly env: SimEnv;
  readonly net: SimPeerNetwork;
  readonly nodes = new Map<string, SegmemNode>();
  readonly fs: SimFs;
  readonly addresses: Record<string, string> = {};
  /** Log lines of the members, stamped with simulated time. */
  readonly trace: string[] = [];

  constructor(seed: number) {
    const prng = new Prng(seed);
    this.env = new SimEnv(this.clock, prng);
    this.fs = new SimFs(this.env.process(), prng.fork(), { fsyncMaxMs: 8 });
    this.net = new SimPeerNetwork(this.env, 2);
  }

  get nowMs(): number {
    return this.clock.nowMs;
  }

  async start(ids: string[]): Promise<void> {
    ids.forEach((id, i) => {
      this.addresses[id] = `10.0.0.${i + 1}:7401`;
    });
    // One after the other, the simulated clock running: the simulated disk's fsyncs take simulated time.
    for (const id of ids) {
      const env = this.env.process();
      const opening = openClusterNode({
        id,
        dataDir: `/sim/${id}`,
        peers: this.addresses,
        fsync: 'batch',
        env,
        transport: this.net.transport,
        fs: this.fs,
        makeCore: (cfg) => new RaftNode(cfg),
        log: (line) => {
          if (line.startsWith('raft:')) this.trace.push(`${this.nowMs - Date.UTC(2030, 0, 1)} ${id} ${line}`);
        },
      });
      const node = await this.settle(opening, 5000, `opening ${id}`);
      this.nodes.set(id, node);
      this.net.attach(this.addresses[id]!, node);
    }
  }

  /** Moves simulated time forward by `ms`, one timer at a time, letting each one's continuations run. */
  async run(ms: number): Promise<void> {
    const until = this.clock.nowMs + ms;
    while (this.clock.runNext(until)) await drainMicrotasks();
    this.clock.runUntil(until);
    await drainMicrotasks();
  }

  /** Runs simulated time until `promise` settles, at most `maxMs`; resolves or rejects as it does. */
  async settle<T>(promise: Promise<T>, maxMs: number, what: string): Promise<T> {
    let settled = false;
    const tracked = promise.finally(() => {
      settled = true;
    });
    tracked.catch(() => {});
    await this.until(() => settled, maxMs, what);
    return tracked;
  }

  /** Runs simulated time until `done()` holds, at most `maxMs`; returns the simulated ms it took. */
  async until(done: () => boolean, maxMs: number, what: string): Promise<number> {
    const started = this.nowMs;
    while (!done()) {
      if (this.nowMs - started > maxMs) throw new Error(`${what}: not within ${maxMs} simulated ms`);
      await this.run(10);
    }
    return this.nowMs - started;
  }

  leaders(): string[] {
    return [...this.nodes].filter(([, n]) => n.status().leader).map(([id]) => id);
  }

  /**
   * Closes every member (a leader hands off first, on the simulated clock; the last fsyncs take simulated
   * time too).
   */
  async stop(): Promise<void> {
    await this.settle(Promise.all([...this.nodes.values()].map((n) => n.close())), 30_000, 'closing');
  }
}

/** A protocol client over an in-process connection; answers arrive as the simulation runs. */
class FrameClient {
  private readonly decoder = new FrameDecoder({ maxFrameBytes: MAX_FRAME_BYTES });
  private readonly answers = new Map<number, Frame>();
  private nextId = 1;
  closed = false;

  constructor(
    private readonly sim: RealSim,
    private readonly end: LocalEnd,
  ) {
    end.onData = (chunk) => {
      for (const f of this.decoder.push(chunk)) this.answers.set(f.requestId, f);
    };
    end.onClose = () => {
      this.closed = true;
    };
  }

  async call<T extends RequestType>(req: Extract<Request, { type: T }>, maxMs = 5000) {
    const id = this.nextId++;
    this.end.write(encodeRequest(req, id));
    await this.sim.until(() => this.answers.has(id) || this.closed, maxMs, `answer to ${req.type}`);
    const frame = this.answers.get(id);
    if (!frame) throw new Error(`connection closed before the answer to ${req.type}`);
    this.answers.delete(id);
    return decodeResponse(req.type, frame);
  }
}

interface Outcome {
  electedAfterMs: number;
  expiredAfterMs: number;
  trace: string[];
  digests: string[];
  syncs: number;
}

/** Elect, open a session, write, go silent until the session expires; what happened, on the simulated clock. */
async function scenario(seed: number): Promise<Outcome> {
  const sim = new RealSim(seed);
  await sim.start(['s1', 's2', 's3']);
  try {
    const electedAfterMs = await sim.until(() => sim.leaders().length === 1, 10_000, 'a leader');
    const leader = sim.nodes.get(sim.leaders()[0]!)!;
    const client = new FrameClient(sim, connectLocal(leader));
    const hello = await client.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000 });
    const created = await client.call({
      type: 'CREATE',
      seq: 1,
      name: 'counter',
      size: 8,
      ifNotExists: false,
    });
    const grant = await client.call({
      type: 'ACQUIRE',
      seq: 2,
      name: 'counter',
      mode: 'write',
      cachedId: 0,
      cachedVersion: 0,
      timeoutMs: null,
    });
    const bytes = Buffer.from([1, 2, 3, 4]);
    const released = await client.call({
      type: 'RELEASE',
      seq: 3,
      name: 'counter',
      mode: 'write',
      token: grant.token,
      ranges: [[0, bytes.length]],
      payload: bytes,
    });
    if (released.version !== created.object.version + 1)
      throw new Error(`version ${released.version} after one write to version ${created.object.version}`);
    // Every member applies the same commands: the same state.
    const nodes = [...sim.nodes.values()];
    await sim.until(
      () => new Set(nodes.map((n) => n.status().digest)).size === 1,
      5000,
      'the members agreeing',
    );
    if (nodes.some((n) => n.status().sessions !== 1)) throw new Error('the session is not on every member');
    // Silence: no keepalive. The leader expires the session on the simulated clock.
    const silentAt = sim.nowMs;
    await sim.until(() => nodes.every((n) => n.status().sessions === 0), 10_000, 'the session expiring');
    const expiredAfterMs = sim.nowMs - silentAt;
    if (hello.sessionId < 1) throw new Error('no session id');
    const digests = nodes.map((n) => n.status().digest);
    const syncs = sim.fs.syncs;
    return { electedAfterMs, expiredAfterMs, trace: [...sim.trace], digests, syncs };
  } finally {
    await sim.stop();
  }
}

test('real members elect, replicate, fsync and expire a silent session on the simulated clock', async (t) => {
  const wallStarted = performance.now();
  const r = await scenario(7);
  const wallMs = performance.now() - wallStarted;
  // Election timeouts are 10..19 ticks of 50 ms: a first leader within a few of them.
  t.true(r.electedAfterMs >= 500 && r.electedAfterMs < 5000, `elected after ${r.electedAfterMs} ms`);
  // Expiry: the 2000 ms timeout, checked every quarter of it, then one commit.
  t.true(r.expiredAfterMs >= 2000 && r.expiredAfterMs < 3500, `expired after ${r.expiredAfterMs} ms`);
  t.true(r.syncs > 0, 'the WALs were fsynced (on the simulated disk)');
  t.true(r.trace.some((l) => /raft: leader in term \d+/.test(l)));
  t.log(
    `leader after ${r.electedAfterMs} simulated ms, session expired ${r.expiredAfterMs} ms after the client went silent; ` +
      `${r.syncs} fsyncs; ${wallMs.toFixed(0)} ms of wall time (opening and closing the data directories included)`,
  );
});

test('real members under the simulated Env: one seed replays the same run', async (t) => {
  const a = await scenario(11);
  const b = await scenario(11);
  t.deepEqual(a.trace, b.trace, 'the same role changes at the same simulated times');
  t.deepEqual(
    { ...a, trace: undefined },
    { ...b, trace: undefined },
    'the same timings, fsync count and states',
  );
  t.true(a.trace.length > 0);
});

test('a SegmemError reaches the client through the simulated members as on TCP', async (t) => {
  const sim = new RealSim(3);
  await sim.start(['s1', 's2', 's3']);
  try {
    await sim.until(() => sim.leaders().length === 1, 10_000, 'a leader');
    const follower = [...sim.nodes].find(([, n]) => !n.status().leader)![1];
    const client = new FrameClient(sim, connectLocal(follower));
    const err = await t.throwsAsync(
      client.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000 }),
    );
    t.true(SegmemError.is(err));
    t.is((err as SegmemError).code, 'UNAVAILABLE');
    t.is((err as SegmemError).details?.reason, 'NOT_LEADER');
    t.is((err as SegmemError).details?.leader, sim.leaders()[0]);
  } finally {
    await sim.stop();
  }
});
