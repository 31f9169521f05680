/**
 * The network between real clients and real members under simulation. A connection is a real
 * ServerConnection on the member (the shipped request handling and framing) and a {@link Transport} on the
 * client (what its Session reads and writes), with bytes delivered in order after a simulated delay. A
 * partition between the two, seen when bytes cross it, breaks the connection on both sides, as a TCP reset
 * or keepalive failure would; dialling across one fails after a connect timeout. The client's side of
 * every delivery is a timer of the client's own Env, so a paused client reads nothing until it resumes
 * (and then first what reached it before a break, as from a socket's buffer).
 */
import type { Dial, Transport } from '@segmem/client/internal/session';
import { type Env, FrameDecoder, MAX_FRAME_BYTES, MessageType, SegmemError } from '@segmem/protocol';
import type { SegmemNode, Wire } from '@segmem/server';
import { ServerConnection } from '@segmem/server/internal/shell/connection';

/** How long a dial across a partition waits before it gives up (a connect timeout). */
const CONNECT_TIMEOUT_MS = 1000;

export class SimClientNetwork {
  private readonly members = new Map<string, SegmemNode>();
  /** Cut pairs, as `client|address`. */
  private readonly cuts = new Set<string>();
  private readonly links = new Set<ClientLink>();
  /**
   * Called as a write RELEASE reaches a member (before the member reads it): the simulation may cut the
   * client off right then, so the release commits and its answer is lost.
   */
  onWriteRelease: ((client: string, address: string) => void) | null = null;
  /** Connections opened, and broken by a partition. */
  opened = 0;
  broken = 0;

  /** `latencyMs` one way, plus up to `jitterMs` per message (deliveries stay in order). */
  constructor(
    readonly env: Env,
    readonly latencyMs: number,
    readonly jitterMs: number,
  ) {}

  attach(address: string, node: SegmemNode): void {
    this.members.set(address, node);
  }

  /**
   * The member at `address` crashed: its connections break (the client hears it, as from the reset of a
   * socket whose process died; the dead member hears nothing), and dials to it fail until one is attached.
   */
  detach(address: string): void {
    this.members.delete(address);
    for (const link of [...this.links]) if (link.address === address) link.fail(false);
  }

  cut(client: string, address: string): void {
    this.cuts.add(`${client}|${address}`);
  }

  heal(): void {
    this.cuts.clear();
  }

  isCut(client: string, address: string): boolean {
    return this.cuts.has(`${client}|${address}`) || !this.members.has(address);
  }

  delayMs(): number {
    return this.latencyMs + Math.floor(this.env.random() * (this.jitterMs + 1));
  }

  /**
   * The dial of client `client` (whose process Env is `clientEnv`) over `addresses`, with tcpDial's order:
   * `prefer` first, the one that just failed (`avoid`) last, otherwise round from the last that worked.
   */
  dial(client: string, clientEnv: Env, addresses: string[]): Dial {
    let next = 0;
    return async (prefer?: string, avoid?: string) => {
      let order = prefer
        ? [prefer, ...addresses.filter((s) => s !== prefer)]
        : addresses.map((_, i) => addresses[(next + i) % addresses.length]!);
      if (!prefer && avoid && order.length > 1 && order.includes(avoid))
        order = [...order.filter((s) => s !== avoid), avoid];
      for (const address of order) {
        // One round trip to connect, or the connect timeout across a partition.
        const cut = this.isCut(client, address);
        await sleep(clientEnv, cut ? CONNECT_TIMEOUT_MS : 2 * this.latencyMs);
        if (this.isCut(client, address)) continue;
        next = Math.max(0, addresses.indexOf(address));
        const link = new ClientLink(this, client, clientEnv, address, this.members.get(address)!);
        this.links.add(link);
        this.opened++;
        return link;
      }
      next = (next + 1) % addresses.length;
      throw new SegmemError('UNAVAILABLE', `no server reachable (${order.join(', ')})`);
    };
  }

  /** Breaks every open connection that crosses a cut now (called when a partition starts). */
  breakCut(): void {
    for (const link of [...this.links]) if (this.isCut(link.client, link.address)) link.fail();
  }

  forget(link: ClientLink): void {
    this.links.delete(link);
  }
}

function sleep(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => env.setTimeout(resolve, ms));
}

class ClientLink implements Transport {
  onData: (chunk: Buffer) => void = () => {};
  onClose: () => void = () => {};
  private readonly conn: ServerConnection;
  private closed = false;
  /** The client's frames, read as they reach the member (only for onWriteRelease). */
  private upstream: FrameDecoder | null = null;
  /** The client closed it: nothing more reaches it. */
  private hungUp = false;
  /** Delivery times of the last bytes each way, to keep each direction in order. */
  private upAtMs = 0;
  private downAtMs = 0;

  constructor(
    private readonly net: SimClientNetwork,
    readonly client: string,
    private readonly clientEnv: Env,
    readonly address: string,
    node: SegmemNode,
  ) {
    const wire: Wire = {
      write: (parts) => this.toClient(Buffer.concat(parts)),
      // The member hangs up: the client hears it after the delay.
      close: () => this.toClientClose(),
    };
    this.conn = new ServerConnection(node, wire);
  }

  write(parts: Buffer[]): void {
    if (this.closed) return;
    const bytes = Buffer.concat(parts);
    const env = this.net.env;
    this.upAtMs = Math.max(env.now() + this.net.delayMs(), this.upAtMs);
    env.setTimeout(() => {
      if (this.closed) return;
      if (this.net.isCut(this.client, this.address)) {
        this.fail();
        return;
      }
      const hook = this.net.onWriteRelease;
      if (hook) {
        this.upstream ??= new FrameDecoder({ maxFrameBytes: MAX_FRAME_BYTES });
        for (const f of this.upstream.push(bytes))
          if (f.type === MessageType.RELEASE && f.header.mode === 'write') hook(this.client, this.address);
      }
      this.conn.receive(bytes);
    }, this.upAtMs - env.now());
  }

  /**
   * Member -> client: the bytes cross the network on the world's clock; once across they wait for the client
   * (its own Env: a paused client reads them when it resumes), even if the connection breaks after that.
   */
  private toClient(bytes: Buffer): void {
    if (this.closed) return;
    const env = this.net.env;
    this.downAtMs = Math.max(env.now() + this.net.delayMs(), this.downAtMs);
    env.setTimeout(() => {
      if (this.closed) return;
      if (this.net.isCut(this.client, this.address)) this.fail();
      else
        this.clientEnv.setTimeout(() => {
          if (!this.hungUp) this.onData(bytes);
        }, 0);
    }, this.downAtMs - env.now());
  }

  private toClientClose(): void {
    if (this.closed) return;
    const env = this.net.env;
    this.downAtMs = Math.max(env.now() + this.net.delayMs(), this.downAtMs);
    env.setTimeout(() => this.fail(), this.downAtMs - env.now());
  }

  /**
   * The connection breaks: the client learns it on its own Env (so a paused one later), and the member too
   * unless it is gone (`toMember` false: a crashed member runs no more code).
   */
  fail(toMember = true): void {
    if (this.closed) return;
    this.closed = true;
    this.net.broken++;
    this.net.forget(this);
    if (toMember) this.conn.disconnected();
    this.clientEnv.setTimeout(() => this.onClose(), 0);
  }

  /** The client hangs up: the member sees it after the delay; the client's close handler runs, as a socket's. */
  close(): void {
    this.hungUp = true;
    if (this.closed) return;
    this.closed = true;
    this.net.forget(this);
    this.net.env.setTimeout(() => this.conn.disconnected(), this.net.delayMs());
    this.clientEnv.setTimeout(() => this.onClose(), 0);
  }
}
