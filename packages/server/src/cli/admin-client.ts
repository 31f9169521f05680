/**
 * A minimal protocol client for operator commands (the server package must not depend on the client
 * SDK): opens a session on the group's leader, following redirects, runs one request, says goodbye.
 */
import { connect as netConnect, type Socket } from 'node:net';
import {
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  type OkBodies,
  PROTOCOL_VERSION,
  type Request,
  SegmemError,
} from '@segmem/protocol';
import { parseHostPort } from '../shell/tcp.js';

class Conn {
  private readonly decoder = new FrameDecoder();
  private readonly frames: Frame[] = [];
  /** Calls waiting for a frame (several may be in flight: answers are matched by request id). */
  private readonly waiters = new Set<() => void>();
  private closed = false;
  private nextId = 1;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const f of this.decoder.push(chunk)) this.frames.push(f);
      this.wakeAll();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wakeAll();
    });
    socket.on('error', () => {});
  }

  static open(address: string, timeoutMs: number): Promise<Conn> {
    const { host, port } = parseHostPort(address, 'server address');
    return new Promise((resolve, reject) => {
      const s = netConnect({ host, port });
      const timer = setTimeout(() => s.destroy(new Error(`connect to ${address} timed out`)), timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(new Conn(s));
      });
      s.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  async call<T extends Request['type']>(
    req: Extract<Request, { type: T }>,
    timeoutMs: number,
  ): Promise<OkBodies[T]> {
    const id = this.nextId++;
    for (const p of encodeRequest(req, id)) this.socket.write(p);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex((f) => f.requestId === id || f.requestId === 0);
      if (i >= 0) return decodeResponse(req.type, this.frames.splice(i, 1)[0]!);
      if (this.closed) throw new SegmemError('UNAVAILABLE', 'the server closed the connection');
      if (Date.now() > deadline)
        throw new SegmemError('TIMEOUT', `no answer to ${req.type} within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        this.waiters.add(r);
        setTimeout(r, 50);
      });
    }
  }

  private wakeAll(): void {
    const waiting = [...this.waiters];
    this.waiters.clear();
    for (const w of waiting) w();
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * A session on the leader of the group reachable at `servers`, for operator commands: each call goes to
 * the leader, following redirects and re-dialling (a new session) when the connection is lost.
 */
export class AdminSession {
  private conn: Conn | null = null;
  private clusterId = '';
  private readonly queue: string[];

  constructor(private readonly servers: string[]) {
    this.queue = [...servers];
  }

  /** Runs `req` on the leader; `timeoutMs` bounds the whole attempt, retries included. */
  async call<T extends Request['type']>(
    req: Extract<Request, { type: T }>,
    timeoutMs = 15_000,
  ): Promise<OkBodies[T] & { clusterId: string }> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    const tried: string[] = [];
    /** Whether an earlier attempt sent the request and lost the connection before the answer. */
    let uncertain = false;
    while (Date.now() < deadline) {
      const address = this.queue[0] ?? this.servers[0]!;
      try {
        const conn = await this.connected(address);
        let answer: OkBodies[T];
        try {
          answer = await conn.call(req, Math.max(1000, deadline - Date.now()));
        } catch (err) {
          // A lost connection, or a leader that lost leadership with the change in its log: it may be done.
          if (SegmemError.is(err) && err.code === 'UNAVAILABLE') {
            if (err.details?.reason !== 'NOT_LEADER' || err.details?.maybeApplied === true) uncertain = true;
          }
          throw err;
        }
        return { ...answer, clusterId: this.clusterId };
      } catch (err) {
        lastError = err;
        this.drop();
        if (process.env.SEGMEM_DEBUG) tried.push(`${address}: ${(err as Error).message}`);
        const details = SegmemError.is(err) ? err.details : undefined;
        if (details?.reason === 'NOT_LEADER' && typeof details.address === 'string') {
          this.prefer(details.address);
          continue;
        }
        this.queue.push(this.queue.shift()!);
        if (details?.reason === 'NOT_LEADER') {
          await new Promise((r) => setTimeout(r, 200)); // an election is under way
        } else if (SegmemError.is(err) && err.code !== 'UNAVAILABLE') {
          // Tell the caller whether an earlier attempt may have done the work (its answer was lost).
          throw uncertain ? new SegmemError(err.code, err.message, { ...err.details, retried: true }) : err;
        }
      }
    }
    if (process.env.SEGMEM_DEBUG) process.stderr.write(`${tried.join('\n')}\n`);
    throw lastError instanceof Error ? lastError : new SegmemError('UNAVAILABLE', 'no leader reachable');
  }

  /** Says goodbye (the session ends at once) and closes. */
  async close(): Promise<void> {
    if (this.conn) await this.conn.call({ type: 'GOODBYE' }, 2000).catch(() => {});
    this.drop();
  }

  private async connected(address: string): Promise<Conn> {
    if (this.conn) return this.conn;
    const conn = await Conn.open(address, 2000);
    try {
      const hello = await conn.call(
        { type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 5000, clientName: 'segmem cli' },
        5000,
      );
      this.clusterId = hello.clusterId;
    } catch (err) {
      conn.close();
      throw err;
    }
    this.conn = conn;
    return conn;
  }

  private drop(): void {
    this.conn?.close();
    this.conn = null;
  }

  private prefer(address: string): void {
    const i = this.queue.indexOf(address);
    if (i >= 0) this.queue.splice(i, 1);
    this.queue.unshift(address);
  }
}

/** Runs `req` on the leader of the group reachable at `servers`, in a session of its own. */
export async function adminCall<T extends Request['type']>(
  servers: string[],
  req: Extract<Request, { type: T }>,
  timeoutMs = 15_000,
): Promise<OkBodies[T] & { clusterId: string }> {
  const session = new AdminSession(servers);
  try {
    return await session.call(req, timeoutMs);
  } finally {
    await session.close();
  }
}
