/**
 * A minimal protocol client for operator commands (the server package must not depend on the client
 * SDK): a session on the group's leader, found by following redirects, that resumes itself on another
 * connection so retried requests apply once; and one-shot STATUS questions to any member.
 *
 * Every wait is bounded: reaching a leader (dialling, the handshake, redirects, an election) by the
 * caller's `timeoutMs`, an answer by the time the request may take on the server plus `timeoutMs`.
 */
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import {
  decodeError,
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MessageType,
  type OkBodies,
  PROTOCOL_VERSION,
  parseHostPort,
  type Request,
  SegmemError,
  type StatusOk,
} from '@segmem/protocol';

export interface AdminOptions {
  /** host:port of some members; the leader is found from any of them. */
  servers: string[];
  /** How long to try to reach a leader, and how long an answer may be late. */
  timeoutMs: number;
  /** The credential the servers require (config `token`), or null. */
  token: string | null;
  /** Log in as this user (`--user`, `--password-file`); absent or null: none. */
  login?: { user: string; password: string } | null;
  /** Connect over TLS with these options; none: plain TCP. */
  tls?: ConnectionOptions;
  /** Told of every push the leader sends (requestId 0: INVALIDATE, CHANGED); none: pushes are ignored. */
  onPush?: (frame: Frame) => void;
  /** Told when the connection to the leader is lost (the next call finds the leader again). */
  onDisconnect?: () => void;
}

/** How long the servers keep an operator's session (and its locks) after it vanished without GOODBYE. */
const ADMIN_SESSION_TIMEOUT_MS = 5000;
/** The least time one attempt to reach an address gets (dial and handshake). */
const MIN_ATTEMPT_MS = 200;
/** Pause after every listed address failed once, before dialling them again. */
const RETRY_PAUSE_MS = 100;

type Answer<T extends Request['type']> = OkBodies[T];

/** One connection: requests matched to answers by request id, each with its own deadline. */
class Conn {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, (frame: Frame | SegmemError) => void>();
  private nextId = 1;
  private closedWith: SegmemError | null = null;

  /** Pushes (requestId 0) other than a frame-level ERROR. */
  onPush: (frame: Frame) => void = () => {};
  onClosed: () => void = () => {};

  private constructor(
    private readonly socket: Socket,
    readonly address: string,
    tls: boolean,
  ) {
    let heard = false;
    socket.on('data', (chunk: Buffer) => {
      heard = true;
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.fail(asSegmemError(err, 'PROTOCOL'));
        return;
      }
      for (const f of frames) {
        if (f.requestId !== 0) {
          const answer = this.pending.get(f.requestId);
          this.pending.delete(f.requestId);
          answer?.(f);
        } else if (f.type === MessageType.ERROR) {
          // A frame-level error (a refusal: a plain connection to a TLS port, a limit): the server closes
          // the connection after it.
          let said: SegmemError;
          try {
            said = decodeError(f);
          } catch (err) {
            this.fail(asSegmemError(err, 'PROTOCOL'));
            return;
          }
          this.fail(new SegmemError(said.code, `${address}: ${said.message}`, { ...said.details, address }));
        }
        // Anything else with id 0 is a push (INVALIDATE, CHANGED): only a command that asked hears it.
        else this.onPush(f);
      }
    });
    socket.on('close', () =>
      this.fail(
        new SegmemError(
          'UNAVAILABLE',
          // An older server that serves TLS only closes a plain connection without a word.
          `${address} closed the connection${heard || tls ? '' : ' without a word (if it serves TLS: --tls-ca)'}`,
          { reason: 'CLOSED' },
        ),
      ),
    );
    socket.on('error', () => {});
  }

  /** Dials `address`; fails with a one-line reason by `deadline` at the latest. */
  static open(address: string, deadline: number, tls?: ConnectionOptions): Promise<Conn> {
    const { host, port } = parseHostPort(address, 'server address');
    return new Promise((resolve, reject) => {
      const s = tls
        ? tlsConnect({ ...tls, host, port, ...(isIP(host) ? {} : { servername: host }) })
        : netConnect({ host, port });
      let tcpConnected = false;
      if (tls) s.once('connect', () => (tcpConnected = true));
      const timer = setTimeout(
        () => {
          s.destroy();
          reject(new SegmemError('UNAVAILABLE', 'connect timed out', { reason: 'TIMEOUT' }));
        },
        Math.max(0, deadline - Date.now()),
      );
      s.once(tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        resolve(new Conn(s, address, tls !== undefined));
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (tls && tcpConnected) {
          // Reached, but no TLS: an untrusted certificate, one for another name, or a server without TLS.
          const why = err.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:/, '').trim();
          reject(
            new SegmemError('UNAVAILABLE', `TLS handshake with ${address} failed: ${why}`, {
              reason: 'TLS',
              tlsCode: err.code,
            }),
          );
          return;
        }
        reject(new SegmemError('UNAVAILABLE', describeSocketError(err), { reason: err.code ?? 'ERROR' }));
      });
    });
  }

  call<T extends Request['type']>(req: Extract<Request, { type: T }>, timeoutMs: number): Promise<Answer<T>> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new SegmemError('TIMEOUT', `no answer to ${req.type} from ${this.address} within ${timeoutMs} ms`, {
            reason: 'NO_ANSWER',
            request: req.type,
          }),
        );
      }, timeoutMs);
      this.pending.set(id, (f) => {
        clearTimeout(timer);
        if (f instanceof SegmemError) reject(f);
        else {
          try {
            resolve(decodeResponse(req.type, f));
          } catch (err) {
            reject(err);
          }
        }
      });
      for (const p of encodeRequest(req, id)) this.socket.write(p);
    });
  }

  /** Sends `req` without waiting for its answer (keepalives). */
  send(req: Request): void {
    if (this.closedWith) return;
    const id = this.nextId++;
    this.pending.set(id, () => {});
    for (const p of encodeRequest(req, id)) this.socket.write(p);
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  private fail(err: SegmemError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiting) w(err);
    this.socket.destroy();
    this.onClosed();
  }

  close(): void {
    this.fail(new SegmemError('CLOSED', 'closed'));
  }
}

/**
 * A session on the leader of the group reachable at `servers`, for operator commands. Each call goes to
 * the leader; a lost connection is replaced and the session resumed on it, so a request re-sent with the
 * same sequence number is applied once.
 */
export class AdminSession {
  private conn: Conn | null = null;
  private clusterIdSeen = '';
  private readonly queue: string[];
  private session: { id: number; secret: string } | null = null;
  /** True once a session was lost (expired while away): an earlier request's fate is then unknown. */
  private sessionLost = false;
  private keepalive: NodeJS.Timeout | null = null;
  private seq = 0;

  constructor(private readonly opts: AdminOptions) {
    if (opts.servers.length === 0) throw new SegmemError('INVALID_ARGUMENT', 'no server address given');
    this.queue = [...opts.servers];
  }

  get clusterId(): string {
    return this.clusterIdSeen;
  }

  /** True once the session was lost (it expired while away): its locks are gone. */
  get lost(): boolean {
    return this.sessionLost;
  }

  /** The next sequence number of this session's mutations (exactly-once retries). */
  nextSeq(): number {
    return ++this.seq;
  }

  /**
   * Runs `req` on the leader. `serverMs`: how long the request may take on the server (a held read, a lock
   * wait, building a snapshot) on top of the timeout.
   */
  async call<T extends Request['type']>(
    req: Extract<Request, { type: T }>,
    serverMs = 0,
  ): Promise<Answer<T>> {
    const timeoutMs = this.opts.timeoutMs;
    let reachBy = Date.now() + timeoutMs;
    const tried = new Map<string, string>();
    /** Whether an attempt sent the request and lost the connection before its answer. */
    let uncertain = false;
    let failuresInARow = 0;
    /** Addresses whose last attempt failed the TLS handshake. */
    const tlsRefused = new Set<string>();
    for (;;) {
      const address = this.queue[0]!;
      let conn = this.conn;
      if (!conn) {
        if (Date.now() >= reachBy) throw unreachable(tried, timeoutMs);
        try {
          // A silent member (paused, wedged) must not use up the time the other addresses need.
          const share = this.queue.length > 1 ? Math.max(MIN_ATTEMPT_MS, timeoutMs / 2) : timeoutMs;
          conn = await this.connect(address, Math.min(reachBy, Date.now() + share));
          failuresInARow = 0;
        } catch (err) {
          tried.set(address, reasonOf(err));
          if (!isRetriable(err)) throw err;
          if (
            SegmemError.is(err) &&
            (err.details?.reason === 'TLS' || err.details?.reason === 'TLS_REQUIRED')
          )
            tlsRefused.add(address);
          else tlsRefused.delete(address);
          // Every address answered, and failed TLS (or required it): a mistake that waiting will not mend.
          if (this.queue.every((a) => tlsRefused.has(a))) throw err;
          const redirect = redirectOf(err);
          if (redirect) this.prefer(redirect);
          else this.queue.push(this.queue.shift()!);
          // Every address failed once (or no leader is elected yet): pause before the next round.
          if (!redirect && ++failuresInARow % this.queue.length === 0)
            await sleep(Math.min(RETRY_PAUSE_MS, Math.max(0, reachBy - Date.now())));
          continue;
        }
      }
      try {
        return await conn.call(req, serverMs + timeoutMs);
      } catch (err) {
        // An error the server answered (NOT_FOUND, ALREADY_EXISTS, ...) leaves the connection good, and
        // close() needs it to say GOODBYE: without one the session would linger until it expires.
        if (conn.closed || !answeredBy(err)) this.drop();
        const redirect = redirectOf(err);
        // A full memory budget (details.budget) is the leader's answer, not a lost connection: no retry.
        if (SegmemError.is(err) && err.code === 'UNAVAILABLE' && err.details?.budget === undefined) {
          tried.set(conn.address, reasonOf(err));
          // Lost on the way, or a leader deposed with the request in its log: it may have been applied.
          if (!redirect || err.details?.maybeApplied === true) uncertain = true;
          if (redirect) this.prefer(redirect);
          else this.queue.push(this.queue.shift()!);
          reachBy = Date.now() + timeoutMs;
          continue;
        }
        throw uncertain || this.sessionLost ? markRetried(err) : err;
      }
    }
  }

  /** Says goodbye (the session, and any lock it holds, ends at once) and closes. */
  async close(): Promise<void> {
    const conn = this.conn;
    if (conn && !conn.closed)
      await conn.call({ type: 'GOODBYE' }, Math.min(this.opts.timeoutMs, 1000)).catch(() => {});
    this.drop();
  }

  private async connect(address: string, deadline: number): Promise<Conn> {
    const conn = await Conn.open(address, deadline, this.opts.tls);
    if (this.opts.onPush) conn.onPush = this.opts.onPush;
    try {
      const hello = await conn.call(
        {
          type: 'HELLO',
          protocol: PROTOCOL_VERSION,
          token: this.opts.token,
          sessionTimeoutMs: ADMIN_SESSION_TIMEOUT_MS,
          clientName: 'segmem cli',
          ...loginFields(this.opts.login),
          resumeSessionId: this.session?.id ?? null,
          resumeSecret: this.session?.secret ?? null,
        },
        Math.max(1, deadline - Date.now()),
      );
      if (this.session && !hello.resumed) this.sessionLost = true;
      this.session = { id: hello.sessionId, secret: hello.sessionSecret };
      this.clusterIdSeen = hello.clusterId;
      this.conn = conn;
      const onDisconnect = this.opts.onDisconnect;
      if (onDisconnect) conn.onClosed = () => onDisconnect();
      // Keepalives beside a long wait (a followed log), so the session outlives it.
      this.keepalive = setInterval(() => conn.send({ type: 'KEEPALIVE' }), hello.keepaliveMs);
      this.keepalive.unref();
      return conn;
    } catch (err) {
      conn.close();
      throw err;
    }
  }

  private drop(): void {
    if (this.keepalive) clearInterval(this.keepalive);
    this.keepalive = null;
    this.conn?.close();
    this.conn = null;
  }

  private prefer(address: string): void {
    const i = this.queue.indexOf(address);
    if (i >= 0) this.queue.splice(i, 1);
    this.queue.unshift(address);
  }
}

/** Whether `err` is an answer from the server, rather than no answer (a timeout) or a lost connection. */
function answeredBy(err: unknown): boolean {
  return (
    SegmemError.is(err) &&
    (err.code !== 'UNAVAILABLE' || err.details?.budget !== undefined) &&
    err.code !== 'PROTOCOL' &&
    err.details?.reason !== 'NO_ANSWER'
  );
}

/** HELLO's user and password, when there is a login. */
function loginFields(login: { user: string; password: string } | null | undefined) {
  return login ? { user: login.user, password: login.password } : {};
}

/** Runs `req` on the leader of the group reachable at `opts.servers`, in a session of its own. */
export async function adminCall<T extends Request['type']>(
  opts: AdminOptions,
  req: Extract<Request, { type: T }>,
): Promise<Answer<T> & { clusterId: string }> {
  const session = new AdminSession(opts);
  try {
    const answer = await session.call(req);
    return { ...answer, clusterId: session.clusterId };
  } finally {
    await session.close();
  }
}

/**
 * Asks the member at `address` where it stands (STATUS on a page-reader connection: any member answers,
 * leader or not, without a session). Fails within `timeoutMs` with a one-line reason.
 */
export async function memberStatus(
  address: string,
  opts: {
    timeoutMs: number;
    token: string | null;
    login?: { user: string; password: string } | null;
    tls?: ConnectionOptions;
  },
): Promise<StatusOk> {
  const deadline = Date.now() + opts.timeoutMs;
  const conn = await Conn.open(address, deadline, opts.tls);
  try {
    await conn.call(
      {
        type: 'HELLO',
        protocol: PROTOCOL_VERSION,
        token: opts.token,
        sessionTimeoutMs: ADMIN_SESSION_TIMEOUT_MS,
        clientName: 'segmem status',
        ...loginFields(opts.login),
        pageReader: true,
      },
      Math.max(1, deadline - Date.now()),
    );
    return await conn.call({ type: 'STATUS' }, Math.max(1, deadline - Date.now()));
  } finally {
    conn.close();
  }
}

/** What went wrong with one address, in a few words (`connection refused`, `not the leader; ...`). */
export function reasonOf(err: unknown): string {
  if (SegmemError.is(err)) {
    if (err.details?.reason === 'NO_ANSWER') return `no answer to ${err.details.request}`;
    return err.message;
  }
  return (err as Error)?.message ?? String(err);
}

function unreachable(tried: Map<string, string>, timeoutMs: number): SegmemError {
  const list = [...tried].map(([address, why]) => `${address} (${why})`).join(', ');
  return new SegmemError('UNAVAILABLE', `no leader reachable within ${timeoutMs} ms: tried ${list}`, {
    tried: Object.fromEntries(tried),
  });
}

/** A follower's answer naming the leader's address. */
function redirectOf(err: unknown): string | null {
  if (!SegmemError.is(err) || err.details?.reason !== 'NOT_LEADER') return null;
  return typeof err.details.address === 'string' ? err.details.address : null;
}

/** Failures another address or a later attempt may cure: unreachable, not the leader, no answer yet. */
function isRetriable(err: unknown): boolean {
  return SegmemError.is(err) && (err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT');
}

function markRetried(err: unknown): unknown {
  if (!SegmemError.is(err)) return err;
  return new SegmemError(err.code, err.message, { ...err.details, retried: true });
}

function describeSocketError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ECONNRESET':
      return 'connection reset';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'unknown host';
    default:
      return err.message;
  }
}

function asSegmemError(err: unknown, code: 'PROTOCOL'): SegmemError {
  return SegmemError.is(err) ? err : new SegmemError(code, (err as Error)?.message ?? String(err));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
