/**
 * Real cluster members under the simulated Env for tests: openClusterNode members (SegmemNode, RaftLog and
 * its Raft driver, DiskRaftStorage) with their data directories (`/sim/<id>`) on one simulated disk
 * (SimFs), their peer links on a SimPeerNetwork, all on one simulated clock and seed; and a protocol client
 * over an in-process connection. A member can crash (its disk loses what was not durable, its process
 * dies) and be opened again over the same disk.
 */
import {
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MAX_FRAME_BYTES,
  type Request,
  type RequestType,
} from '@segmem/protocol';
import { type ClusterNodeOptions, openClusterNode } from '../src/cluster.js';
import type { SegmemNode } from '../src/node/index.js';
import { RaftNode } from '../src/raft/node.js';
import type { LocalEnd } from '../src/shell/local.js';
import { runFor } from '../src/sim/drive.js';
import { SimClock, SimEnv } from '../src/sim/env.js';
import { SimFs, type UnsyncedFate } from '../src/sim/fs.js';
import { SimPeerNetwork } from '../src/sim/peer-network.js';
import { Prng } from '../src/sim/prng.js';

export class RealSim {
  readonly clock = new SimClock(Date.UTC(2030, 0, 1));
  readonly env: SimEnv;
  readonly net: SimPeerNetwork;
  readonly nodes = new Map<string, SegmemNode>();
  readonly fs: SimFs;
  readonly addresses: Record<string, string> = {};
  /** The members' role changes, stamped with simulated time. */
  readonly trace: string[] = [];
  /** Every log line of each member, over all its runs. */
  readonly logs = new Map<string, string[]>();
  private readonly envs = new Map<string, SimEnv>();

  constructor(seed: number) {
    const prng = new Prng(seed);
    this.env = new SimEnv(this.clock, prng);
    this.fs = new SimFs(this.env.process(), prng.fork(), { fsyncMaxMs: 8 });
    this.net = new SimPeerNetwork(this.env, 2);
  }

  get nowMs(): number {
    return this.clock.nowMs;
  }

  /** Gives `ids` addresses and opens them, one after the other. */
  async start(ids: string[]): Promise<void> {
    ids.forEach((id, i) => {
      this.addresses[id] = `10.0.0.${i + 1}:7401`;
    });
    for (const id of ids) await this.open(id);
  }

  /**
   * Opens member `id` over `/sim/<id>` (again, after a crash), the simulated clock running: the simulated
   * disk's fsyncs take simulated time. `peers`: the group it is told of (default: every address known);
   * `options`: more of openClusterNode's.
   */
  async open(
    id: string,
    peers: Record<string, string> = this.addresses,
    options: Partial<ClusterNodeOptions> = {},
  ): Promise<SegmemNode> {
    const env = this.env.process();
    const lines = this.logs.get(id) ?? [];
    this.logs.set(id, lines);
    const opening = openClusterNode({
      ...options,
      id,
      dataDir: `/sim/${id}`,
      peers,
      fsync: 'batch',
      env,
      transport: this.net.transport,
      fs: this.fs,
      makeCore: (cfg) => new RaftNode(cfg),
      log: (line) => {
        lines.push(line);
        if (line.startsWith('raft:')) this.trace.push(`${this.nowMs - Date.UTC(2030, 0, 1)} ${id} ${line}`);
      },
    });
    const node = await this.settle(opening, 5000, `opening ${id}`);
    this.nodes.set(id, node);
    this.envs.set(id, env);
    this.net.attach(peers[id]!, node);
    return node;
  }

  /** Member `id`'s process dies: its disk keeps what was durable (see SimFs.crash), its timers stop. */
  crash(id: string, unsynced?: UnsyncedFate): void {
    this.fs.crash(`/sim/${id}`, unsynced);
    this.envs.get(id)?.kill();
    this.envs.delete(id);
    this.nodes.delete(id);
    const address = this.addresses[id];
    if (address) this.net.detach(address);
  }

  /** Moves simulated time forward by `ms`, one timer at a time, letting each one's continuations run. */
  run(ms: number): Promise<void> {
    return runFor(this.clock, ms);
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

  /**
   * Runs simulated time until `done()` holds (checked every `stepMs`), at most `maxMs`; returns the
   * simulated ms it took.
   */
  async until(done: () => boolean, maxMs: number, what: string, stepMs = 10): Promise<number> {
    const started = this.nowMs;
    while (!done()) {
      if (this.nowMs - started > maxMs) throw new Error(`${what}: not within ${maxMs} simulated ms`);
      await this.run(stepMs);
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
export class FrameClient {
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

  /** Sends `req` without waiting for its answer; returns its request id. */
  send(req: Request): number {
    const id = this.nextId++;
    this.end.write(encodeRequest(req, id));
    return id;
  }

  /**
   * Sends `req` and runs the simulation until its answer arrives (checked every `stepMs` of simulated
   * time: 1 stops the clock right after it).
   */
  async call<T extends RequestType>(req: Extract<Request, { type: T }>, maxMs = 5000, stepMs = 10) {
    const id = this.send(req);
    await this.sim.until(() => this.answers.has(id) || this.closed, maxMs, `answer to ${req.type}`, stepMs);
    const frame = this.answers.get(id);
    if (!frame) throw new Error(`connection closed before the answer to ${req.type}`);
    this.answers.delete(id);
    return decodeResponse(req.type, frame);
  }
}
