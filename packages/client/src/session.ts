/**
 * A client session with one server (or an embedded node): the HELLO handshake, request/response
 * correlation with many requests in flight, keepalives, sequence numbers for exactly-once retries,
 * and, over TCP, reconnection that resumes the session and re-sends what was not answered.
 */
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import {
  type AcquireOk,
  type Changed,
  decodeChanged,
  decodeError,
  decodeInvalidate,
  decodeProbed,
  decodeResponse,
  decodeRevoke,
  type Env,
  type EnvTimer,
  encodeRequest,
  type Frame,
  FrameDecoder,
  type HelloOk,
  type Invalidate,
  leaseMsFor,
  MAX_FRAME_BYTES,
  MAX_INFLIGHT_REQUESTS,
  MessageType,
  type OkBodies,
  PROTOCOL_VERSION,
  type Probed,
  parseHostPort,
  type ReleaseOk,
  type Request,
  type RequestType,
  type Revoke,
  SegmemError,
} from '@segmem/protocol';

/** A byte stream to a server: a TCP socket or an in-process pipe. */
export interface Transport {
  write(parts: Buffer[]): void;
  close(): void;
  onData: (chunk: Buffer) => void;
  onClose: () => void;
  /** The server's address, when it has one (TCP). */
  readonly address?: string;
  /** Why it closed, when a socket error said (e.g. a TLS alert from the server). */
  readonly closeReason?: string;
}

/**
 * Opens a transport, to `prefer` first when given (a leader named by a redirect) and to `avoid` last (a
 * server that just failed the handshake); rejects when nothing answers.
 */
export type Dial = (prefer?: string, avoid?: string) => Promise<Transport>;

/** How often to ask again while the group elects a leader (members answer NOT_LEADER without a hint). */
const ELECTION_POLL_MS = 50;
/**
 * Longest wait for a HELLO answer. A server that accepts the connection but never answers (paused with
 * SIGSTOP, or wedged: the kernel still completes the TCP handshake) must not hold the client: after this
 * the connection is dropped and the other servers are tried. A healthy leader answers within an election.
 */
const HANDSHAKE_TIMEOUT_MS = 3000;
/** The least silence (nothing from the server while keepalives go out) after which a connection is given up. */
const UNRESPONSIVE_MIN_MS = 1000;

/** A follower's answer: not the leader (the client goes to `address` if it is known). */
function redirectOf(err: unknown): { address: string | null } | null {
  if (!SegmemError.is(err, 'UNAVAILABLE') || err.details?.reason !== 'NOT_LEADER') return null;
  const address = err.details.address;
  return { address: typeof address === 'string' ? address : null };
}

interface Pending {
  readonly req: Request;
  /** Whether the request went out on the transport (requests made while disconnected wait). */
  sent: boolean;
  /**
   * Whether it ever went out: a redirect makes it unsent again (to re-send it to the leader), but the old
   * leader may have put it in the group's log all the same.
   */
  everSent?: boolean;
  /** When it last went out (this process's clock). */
  sentAtMs?: number;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: SegmemError) => void;
}

export interface SessionOptions {
  dial: Dial;
  /** Clock, timers and randomness (the process's own, or a simulator's). */
  env: Env;
  sessionTimeoutMs: number;
  clusterId?: string;
  token?: string;
  /** Log in as this user with this password (every HELLO, reconnects too). */
  login?: { user: string; password: string };
  udpPort?: number;
  /** Whether a lost transport may be re-dialled (TCP); an embedded pipe cannot come back. */
  reconnect: boolean;
  onInvalidate: (msg: Invalidate) => void;
  /** Another session waits for an object this session holds a grant of. */
  onRevoke?: (msg: Revoke) => void;
  /** A CHANGED push (objects this session watches changed); none: such pushes are ignored. */
  onChanged?: (msg: Changed) => void;
  /** A PROBED push: a probe of a cycle of waits across shard groups reached this session. */
  onProbed?: (msg: Probed) => void;
  /** The session was replaced by a new one (the old one expired while disconnected). */
  onSessionLost: (err: SegmemError) => void;
  /** Dropping the transport made the client's cache unreliable: revalidate it. */
  onResumed: () => void;
  /** Whether the transport is TLS (for error messages). */
  tls?: boolean;
  /** A page-reader connection: no session, READ_PAGES only, to any member (see HelloRequest.pageReader). */
  pageReader?: boolean;
}

export class Session {
  hello!: HelloOk;
  private transport: Transport | null = null;
  private decoder = new FrameDecoder({ maxFrameBytes: MAX_FRAME_BYTES });
  /** The error frame (requestId 0) the server sent on this transport before closing it, if any. */
  private closingError: SegmemError | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextRequestId = 1;
  private nextSeq = 1;
  private keepaliveTimer: EnvTimer | null = null;
  /** When the last bytes came from the server (this process's clock). */
  private lastHeardMs = 0;
  private closed = false;
  private reconnecting: Promise<void> | null = null;
  private readonly capacityWaiters: (() => void)[] = [];
  /** Set while no server has been reachable for longer than the session timeout. */
  private unavailable: SegmemError | null = null;
  /**
   * When the latest request the server answered was sent (this process's clock): the session was alive at the
   * servers then. Pushes do not count: they may have waited in the socket while the process was stopped.
   */
  private provenAliveMs = 0;
  private unavailableTimer: EnvTimer | null = null;
  /** Lease KEEPALIVEs sent so far: each one's number orders it against the grants received (see leaseCovers). */
  private leaseSends = 0;
  /** The latest lease KEEPALIVE answered on this session, and until when (this process's clock) it covers. */
  private leaseConfirmed = 0;
  private leaseUntilMs = 0;
  private readonly leaseRenewals = new Map<number, Promise<boolean>>();
  /**
   * @internal The simulator's broken variant only: the lease length for a session timeout, in place of
   * leaseMsFor (e.g. the whole timeout, trusting this process's clock with no drift margin).
   */
  unsafeLeaseMs: ((sessionTimeoutMs: number) => number) | null = null;
  /** Bytes written to and read from the transport, for benchmarks and diagnostics. */
  readonly traffic = { bytesSent: 0, bytesReceived: 0, requests: 0 };

  /** Clock, timers and randomness of this session (and of the segment and logs over it). */
  readonly env: Env;

  private constructor(private readonly opts: SessionOptions) {
    this.env = opts.env;
  }

  static async open(opts: SessionOptions): Promise<Session> {
    const session = new Session(opts);
    // Follow redirects to the leader; while a group elects one, keep trying for up to the session timeout.
    const env = opts.env;
    const deadline = env.now() + Math.max(opts.sessionTimeoutMs, 5000);
    let prefer: string | undefined;
    let avoid: string | undefined;
    let delayMs = 25;
    for (;;) {
      const transport = await opts.dial(prefer, avoid);
      try {
        await session.attach(transport, null);
        return session;
      } catch (err) {
        transport.close();
        const redirect = redirectOf(err);
        // A redirect, or a member that dropped the connection mid-handshake (e.g. it just lost leadership):
        // try again, until the deadline. A plain connection to a server that requires TLS will not mend by
        // waiting, and a full memory budget (details.budget) is the leader's answer: both said at once.
        const retry =
          redirect !== null ||
          (SegmemError.is(err, 'UNAVAILABLE') &&
            err.details?.reason !== 'TLS_REQUIRED' &&
            err.details?.budget === undefined);
        if (!retry || env.now() > deadline) throw err;
        prefer = redirect?.address ?? undefined;
        avoid = prefer ? undefined : transport.address;
        if (!prefer) {
          await sleep(env, redirect ? ELECTION_POLL_MS : delayMs);
          if (!redirect) delayMs = Math.min(delayMs * 2, 500);
        }
      }
    }
  }

  get sessionId(): number {
    return this.hello.sessionId;
  }

  /**
   * Before a write release after a silence (the process stalled, or the server went quiet): if nothing came
   * from the server for more than half the session timeout, a keepalive goes first and its answer is
   * awaited. Resolves if the session is the same afterwards; rejects with LOCK_LOST if it was replaced
   * meanwhile (the group had ended it, so the release, never sent, is surely discarded). Without this check
   * such a release would go out on a session already gone and its outcome would be unknown. Returns null,
   * at once, when the server was heard from lately: the caller then sends on the same turn, keeping the
   * order of this session's requests.
   */
  confirmAliveAfterSilence(): Promise<void> | null {
    if (this.env.now() - this.provenAliveMs <= this.opts.sessionTimeoutMs / 2) return null;
    const sessionId = this.sessionId;
    return this.call({ type: 'KEEPALIVE' }).then(() => {
      if (this.sessionId !== sessionId)
        throw new SegmemError('LOCK_LOST', `session ${sessionId} ended while the process was silent`);
    });
  }

  /**
   * A stamp for a grant received now: the session's lease covers it once a lease KEEPALIVE sent after this
   * moment was answered (the servers then hold the grant on disk and leadership was confirmed after it).
   */
  leaseStamp(): number {
    return this.leaseSends;
  }

  /** Whether the session may use a cached grant received at `stamp` now: it is surely alive at the servers. */
  leaseCovers(stamp: number): boolean {
    return this.leaseConfirmed > stamp && this.env.now() < this.leaseUntilMs;
  }

  /**
   * Renews the lease with a KEEPALIVE sent after `stamp` (one already on its way is shared). Resolves true
   * once answered on the same session; false if it failed or the session was replaced meanwhile.
   */
  renewLease(stamp: number): Promise<boolean> {
    for (const [n, p] of this.leaseRenewals) if (n > stamp) return p;
    const n = ++this.leaseSends;
    const sentAtMs = this.env.now();
    const sessionId = this.hello.sessionId;
    const renewal = this.call({ type: 'KEEPALIVE', lease: true }).then(
      () => {
        if (this.hello.sessionId !== sessionId || this.closed) return false;
        if (n > this.leaseConfirmed) {
          this.leaseConfirmed = n;
          this.leaseUntilMs = sentAtMs + (this.unsafeLeaseMs ?? leaseMsFor)(this.hello.sessionTimeoutMs);
        }
        return true;
      },
      () => false,
    );
    this.leaseRenewals.set(n, renewal);
    renewal.finally(() => this.leaseRenewals.delete(n)).catch(() => {});
    return renewal;
  }

  /** How long a lease lasts on this session (see leaseMsFor). */
  get leaseMs(): number {
    return leaseMsFor(this.hello.sessionTimeoutMs);
  }

  /** The next sequence number for a mutating request. */
  seq(): number {
    return this.nextSeq++;
  }

  /** Sends a request; resolves with the OK body, rejects with the server's SegmemError. */
  async call<T extends RequestType>(req: Extract<Request, { type: T }>): Promise<OkBodies[T]> {
    if (this.pending.size >= MAX_INFLIGHT_REQUESTS) await this.waitForCapacity();
    return this.start(req).promise as Promise<OkBodies[T]>;
  }

  /**
   * Sends a request and returns its requestId at once, with the promise of its answer (so a waiting
   * ACQUIRE can be cancelled by id).
   */
  start(req: Request): { requestId: number; promise: Promise<unknown> } {
    if (this.closed)
      return { requestId: 0, promise: Promise.reject(new SegmemError('CLOSED', 'the segment is closed')) };
    if (this.unavailable) {
      // A release still goes out once a server answers: if the session resumes, the server would otherwise
      // hold the lock for as long as the session lives. Its caller fails fast, as every other caller does.
      if (req.type === 'RELEASE') this.orphan(this.allocateRequestId(), req, false);
      // Failed after a turn of the event loop, not at once: a caller that retries in a loop would otherwise
      // never let the process run the timers and sockets of the reconnection that ends this state.
      const err = this.unavailable;
      return {
        requestId: 0,
        promise: new Promise<unknown>((_, reject) => this.env.setImmediate(() => reject(err))),
      };
    }
    const requestId = this.allocateRequestId();
    let entry!: Pending;
    const promise = new Promise<unknown>((resolve, reject) => {
      entry = { req, sent: false, resolve, reject };
      this.pending.set(requestId, entry);
    });
    if (this.transport && !this.reconnecting) {
      this.send(encodeRequest(req, requestId));
      entry.sent = true;
      entry.everSent = true;
      entry.sentAtMs = this.env.now();
    }
    return { requestId, promise };
  }

  private send(parts: Buffer[]): void {
    const transport = this.transport;
    if (!transport) return; // lost meanwhile: pending requests are re-sent after the next attach
    for (const p of parts) this.traffic.bytesSent += p.length;
    this.traffic.requests++;
    transport.write(parts);
  }

  private allocateRequestId(): number {
    let id = this.nextRequestId;
    while (this.pending.has(id) || id === 0) id = id >= 0xffffffff ? 1 : id + 1;
    this.nextRequestId = id >= 0xffffffff ? 1 : id + 1;
    return id;
  }

  private waitForCapacity(): Promise<void> {
    return new Promise((resolve) => this.capacityWaiters.push(resolve));
  }

  private async attach(transport: Transport, resumeSessionId: number | null): Promise<boolean> {
    this.decoder = new FrameDecoder({ maxFrameBytes: MAX_FRAME_BYTES });
    this.closingError = null;
    this.transport = transport;
    transport.onData = (chunk) => this.receive(chunk);
    const requestId = this.allocateRequestId();
    const hello: Request = {
      type: 'HELLO',
      protocol: PROTOCOL_VERSION,
      sessionTimeoutMs: this.opts.sessionTimeoutMs,
      clusterId: this.opts.clusterId ?? null,
      token: this.opts.token ?? null,
      resumeSessionId,
      // The secret the server gave with the session: without it, it opens a new one.
      resumeSecret: resumeSessionId ? this.hello.sessionSecret : null,
      udpPort: this.opts.udpPort ?? null,
      clientName: `pid ${process.pid}`,
      pageReader: this.opts.pageReader ?? false,
      ...(this.opts.login ? { user: this.opts.login.user, password: this.opts.login.password } : {}),
    };
    const answer = new Promise<unknown>((resolve, reject) => {
      this.pending.set(requestId, { req: hello, sent: true, sentAtMs: this.env.now(), resolve, reject });
    });
    const receivedBefore = this.traffic.bytesReceived;
    transport.onClose = () => {
      const p = this.pending.get(requestId);
      if (!p) return;
      this.pending.delete(requestId);
      // The server said why it closed (a plain connection to a TLS port, a connection limit): that is the reason.
      const said = this.closingError;
      // Still UNAVAILABLE whatever its code (a handshake deadline's TIMEOUT): another attempt may do.
      if (said) {
        p.reject(
          new SegmemError('UNAVAILABLE', `${transport.address ?? 'the server'}: ${said.message}`, {
            ...said.details,
            ...(said.code !== 'UNAVAILABLE' ? { serverCode: said.code } : {}),
            ...(transport.address !== undefined ? { address: transport.address } : {}),
          }),
        );
        return;
      }
      // An older server that serves TLS only closes a plain connection without a word.
      const plain =
        !this.opts.tls && transport.address !== undefined && this.traffic.bytesReceived === receivedBefore;
      p.reject(
        new SegmemError(
          'UNAVAILABLE',
          `the connection closed during the handshake${
            transport.closeReason
              ? `: ${transport.closeReason}`
              : plain
                ? ' (a server that requires TLS does so: see the tls option)'
                : ''
          }`,
        ),
      );
    };
    this.send(encodeRequest(hello, requestId));
    // Over a network only: an in-process store has no server that could stop answering.
    const waitMs = Math.min(HANDSHAKE_TIMEOUT_MS, Math.max(500, Math.floor(this.opts.sessionTimeoutMs / 3)));
    const address = transport.address;
    const timer =
      address === undefined
        ? undefined
        : this.env.setTimeout(() => {
            const p = this.pending.get(requestId);
            if (!p) return;
            this.pending.delete(requestId);
            p.reject(
              new SegmemError('UNAVAILABLE', `${address} did not answer the handshake within ${waitMs} ms`, {
                reason: 'HANDSHAKE_TIMEOUT',
              }),
            );
            transport.close();
          }, waitMs);
    let ok: HelloOk;
    try {
      ok = (await answer) as HelloOk;
    } finally {
      this.env.clearTimeout(timer);
    }
    if (ok.sessionId === 0 && !this.opts.pageReader) {
      throw new SegmemError('PROTOCOL', 'the server opened no session (sessionId 0) for a session HELLO');
    }
    transport.onClose = () => this.lost(transport);
    this.hello = ok;
    // From now on only this cluster will do: an address reused by another cluster's server is refused.
    this.opts.clusterId ??= ok.clusterId;
    if (!this.opts.pageReader) this.startKeepalive(ok.keepaliveMs);
    return ok.resumed;
  }

  private receive(chunk: Buffer): void {
    this.traffic.bytesReceived += chunk.length;
    this.lastHeardMs = this.env.now();
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.transport?.close();
      this.failAll(err as SegmemError);
      return;
    }
    for (const frame of frames) {
      if (frame.requestId === 0) {
        if (frame.type === MessageType.INVALIDATE) {
          try {
            this.opts.onInvalidate(decodeInvalidate(frame));
          } catch {
            this.opts.onResumed(); // an unreadable push: treat as a gap
          }
        } else if (frame.type === MessageType.REVOKE) {
          let revoke: Revoke | null = null;
          try {
            revoke = decodeRevoke(frame);
          } catch {
            this.opts.onResumed(); // unreadable: the client gives back every cached grant it can
          }
          if (revoke) this.opts.onRevoke?.(revoke);
        } else if (frame.type === MessageType.CHANGED) {
          try {
            this.opts.onChanged?.(decodeChanged(frame));
          } catch {
            this.opts.onResumed(); // an unreadable push: watches are sent again, their answers fill the gap
          }
        } else if (frame.type === MessageType.PROBED) {
          try {
            this.opts.onProbed?.(decodeProbed(frame));
          } catch {
            // unreadable: probes are hints, repeated while their wait lasts
          }
        } else if (frame.type === MessageType.ERROR) {
          // The server is closing the connection (a framing error, a refusal); the close handler follows.
          try {
            this.closingError = decodeError(frame);
          } catch {
            // unreadable: the close says what it can
          }
        }
        continue;
      }
      const p = this.pending.get(frame.requestId);
      if (!p) continue; // an answer to something we gave up on (e.g. a cancelled acquire)
      let value: unknown;
      try {
        value = decodeResponse(p.req.type, frame);
      } catch (err) {
        if (redirectOf(err) && p.req.type !== 'HELLO' && this.opts.reconnect) {
          // This server stopped leading: keep the request, move to the leader, re-send it there (same seq).
          p.sent = false;
          this.transport?.close();
          continue;
        }
        this.pending.delete(frame.requestId);
        this.releaseCapacity();
        p.reject(SegmemError.is(err) ? err : new SegmemError('PROTOCOL', String(err)));
        continue;
      }
      this.pending.delete(frame.requestId);
      this.releaseCapacity();
      if (p.sentAtMs !== undefined && p.sentAtMs > this.provenAliveMs) this.provenAliveMs = p.sentAtMs;
      p.resolve(value);
    }
  }

  private releaseCapacity(): void {
    while (this.capacityWaiters.length > 0 && this.pending.size < MAX_INFLIGHT_REQUESTS)
      this.capacityWaiters.shift()!();
  }

  /** Forgets a request whose answer no longer matters. */
  abandon(requestId: number): void {
    if (this.pending.delete(requestId)) this.releaseCapacity();
  }

  private startKeepalive(everyMs: number): void {
    this.env.clearInterval(this.keepaliveTimer);
    this.lastHeardMs = this.env.now();
    let lastTickMs = this.env.now();
    this.keepaliveTimer = this.env.setInterval(() => {
      const now = this.env.now();
      // A tick long overdue means this process stalled: what the server sent meanwhile is still unread.
      const stalled = now - lastTickMs > 2 * everyMs;
      lastTickMs = now;
      if (!this.transport || this.reconnecting) return;
      if (!stalled && now - this.lastHeardMs > this.unresponsiveMs()) {
        // The server holds the connection open and answers nothing, keepalives included (a stopped or
        // hung process): the others may have a new leader by now. Dial again; what is unanswered is re-sent.
        this.transport.close();
        return;
      }
      this.start({ type: 'KEEPALIVE' }).promise.catch(() => {});
    }, everyMs);
    this.keepaliveTimer.unref();
  }

  /**
   * How long a server may send nothing while keepalives go to it before the connection is given up: half
   * the session timeout (as the leader's own silence check), at least a second.
   */
  private unresponsiveMs(): number {
    return Math.max(UNRESPONSIVE_MIN_MS, Math.floor(this.opts.sessionTimeoutMs / 2));
  }

  private lost(transport: Transport): void {
    if (transport !== this.transport) return;
    this.transport = null;
    if (this.closed) return;
    if (!this.opts.reconnect) {
      this.shutdown(new SegmemError('CLOSED', 'the connection to the store closed'));
      return;
    }
    // One reconnection loop at a time: if the link drops again while it runs (even right after it
    // re-attached), the loop sees its transport gone and goes round again.
    if (this.reconnecting) return;
    // Callers wait for the reconnection up to sessionTimeoutMs; after that they fail fast with
    // UNAVAILABLE while the client keeps re-dialling in the background, so service resumes by itself.
    this.unavailable = null;
    this.unavailableTimer = this.env.setTimeout(() => {
      this.unavailableTimer = null;
      this.unavailable = new SegmemError(
        'UNAVAILABLE',
        `no server reachable for ${this.opts.sessionTimeoutMs} ms; still trying to reconnect`,
      );
      this.failAll(this.unavailable, true);
    }, this.opts.sessionTimeoutMs);
    this.unavailableTimer.unref();
    this.reconnecting = this.reconnect().finally(() => {
      this.reconnecting = null;
      this.env.clearTimeout(this.unavailableTimer);
      this.unavailableTimer = null;
      this.unavailable = null;
      // Requests made by onResumed / onSessionLost (VALIDATE, WATCH) were held while the loop ran: send them.
      if (!this.transport || this.closed) return;
      for (const [id, p] of this.pending) {
        if (p.sent) continue;
        this.send(encodeRequest(p.req, id));
        p.sent = true;
        p.everSent = true;
        p.sentAtMs = this.env.now();
      }
    });
  }

  /** Re-dials with capped, jittered back-off until it reaches a server or the session is closed. */
  private async reconnect(): Promise<void> {
    const oldSession = this.hello.sessionId;
    let delayMs = 20;
    let prefer: string | undefined;
    let avoid: string | undefined;
    while (!this.closed) {
      let dialled: Transport | undefined;
      try {
        const transport = await this.opts.dial(prefer, avoid);
        dialled = transport;
        prefer = undefined;
        avoid = undefined;
        if (this.closed) {
          transport.close();
          return;
        }
        const resumed = await this.attach(transport, this.hello.sessionId);
        if (resumed) {
          // Same session: every unanswered request is re-sent with its seq; the server answers retries
          // of what it already applied from its dedup table.
          for (const [id, p] of this.pending) {
            this.send(encodeRequest(p.req, id));
            p.sent = true;
            p.everSent = true;
            p.sentAtMs = this.env.now();
          }
          this.opts.onResumed();
          if (this.transport === transport) return;
          continue; // lost again already: dial again
        }
        // A new session: locks and waits of the old one are gone. Requests that never went out, and
        // read-only ones, are sent now; the outcome of a mutation that went out under the old session (even
        // one redirected since: the old leader may have logged it) is unknown: a write
        // release may have been applied before the group ended the session, so it is not LOCK_LOST
        // ("discarded") but UNAVAILABLE with an unknown outcome.
        const lost = new SegmemError(
          'LOCK_LOST',
          `session ${oldSession} ended while disconnected; a new session started`,
        );
        for (const [id, p] of this.pending) {
          const t = p.req.type;
          if (
            !p.everSent ||
            t === 'STAT' ||
            t === 'LIST' ||
            t === 'VALIDATE' ||
            t === 'KEEPALIVE' ||
            t === 'LOG_READ' ||
            t === 'WATCH' ||
            t === 'UNWATCH'
          ) {
            this.send(encodeRequest(p.req, id));
            p.sent = true;
            p.everSent = true;
            p.sentAtMs = this.env.now();
            continue;
          }
          this.pending.delete(id);
          const writeRelease = t === 'RELEASE' && p.req.mode === 'write';
          p.reject(
            t === 'CREATE' || t === 'DELETE' || t === 'LOG_APPEND' || t === 'LOG_TRUNCATE' || writeRelease
              ? new SegmemError(
                  'UNAVAILABLE',
                  writeRelease
                    ? `session ${oldSession} ended before the write release of "${p.req.name}" was answered; it may or may not have been applied`
                    : `the server restarted before answering ${t}; it may or may not have been applied`,
                  { reason: 'OUTCOME_UNKNOWN' },
                )
              : lost,
          );
        }
        this.releaseCapacity();
        this.opts.onSessionLost(lost);
        if (this.transport === transport) return;
      } catch (err) {
        const otherCluster = SegmemError.is(err) && err.details?.reason === 'CLUSTER_MISMATCH';
        if (
          SegmemError.is(err) &&
          !otherCluster &&
          (err.code === 'UNAUTHORIZED' || err.code === 'PROTOCOL')
        ) {
          this.shutdown(err);
          return;
        }
        this.transport?.close();
        const redirect = redirectOf(err);
        if (redirect?.address) {
          prefer = redirect.address;
          continue;
        }
        // This server would not do (another cluster on a reused address, no leader known, a dropped
        // handshake): try the others first next time.
        avoid = dialled?.address;
        if (redirect) {
          // A member answered: an election is under way. Ask again soon; backing off here would only add
          // to the failover time what the election itself did not cost.
          await sleep(this.env, ELECTION_POLL_MS);
          continue;
        }
        await sleep(this.env, delayMs * (0.5 + this.env.random()));
        delayMs = Math.min(delayMs * 2, 1000);
      }
    }
  }

  /**
   * Rejects every pending request. With `keepAcquires` (the session may still live), an acquire or a release
   * stays registered as an orphan: its caller has its error, but if the server grants it later (it may already
   * be in the group's log), the grant is given straight back instead of holding the lock forever, and a
   * release still reaches the server.
   */
  private failAll(err: SegmemError, keepAcquires = false): void {
    for (const [id, p] of this.pending) {
      p.reject(err);
      if (keepAcquires && (p.req.type === 'ACQUIRE' || p.req.type === 'RELEASE'))
        this.orphan(id, p.req, p.sent);
      else this.pending.delete(id);
    }
    this.releaseCapacity();
  }

  /**
   * Keeps a request nobody waits for any more, to be sent (again) once a server answers: an acquire, whose
   * grant is given straight back, or a release, so a resumed session holds no lock its caller gave up.
   */
  private orphan(id: number, req: Request, sent: boolean): void {
    // A write release that never went out is sent without its bytes: its caller was told it failed, so the
    // write must not become visible later; only the lock is given back. One already sent keeps its bytes
    // (re-sent with its seq, it is applied at most once; its outcome was unknown to the caller anyway).
    if (req.type === 'RELEASE' && !sent && req.ranges.length > 0)
      req = { ...req, ranges: [], payload: Buffer.alloc(0) };
    // Its caller dropped the grant it may have kept: the lock must go back, not stay with nobody to use it. A
    // release already sent may have been applied with `keep` (a retry is answered from the first result).
    const kept = req.type === 'RELEASE' && req.keep === true;
    if (req.type === 'RELEASE' && kept && !sent) req = { ...req, keep: false };
    const orphaned = req;
    this.pending.set(id, {
      req,
      sent,
      resolve: (answer) => {
        if (orphaned.type === 'ACQUIRE')
          this.giveBack(orphaned.name, orphaned.mode, (answer as AcquireOk).token);
        // Whatever this copy asks, the group may have applied an earlier one with `keep` (a redirected request).
        else if (orphaned.type === 'RELEASE' && (answer as ReleaseOk).kept)
          this.giveBack(orphaned.name, 'write', orphaned.token);
      },
      reject: () => {},
    });
  }

  /** Releases a grant nobody waits for any more, changing nothing. */
  giveBack(name: string, mode: 'read' | 'write', token: number): void {
    const req: Request = {
      type: 'RELEASE',
      seq: this.seq(),
      name,
      mode,
      token,
      ranges: [],
      payload: Buffer.alloc(0),
    };
    this.start(req).promise.catch(() => {});
  }

  private shutdown(err: SegmemError): void {
    this.closed = true;
    this.env.clearTimeout(this.unavailableTimer);
    this.env.clearInterval(this.keepaliveTimer);
    this.failAll(err);
    for (const w of this.capacityWaiters.splice(0)) w();
    this.transport?.close();
    this.transport = null;
    this.opts.onSessionLost(err);
  }

  /** Ends the session: the server releases its locks at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.transport && !this.reconnecting) {
      await Promise.race([
        this.call({ type: 'GOODBYE' }).catch(() => {}),
        new Promise<void>((r) => this.env.setTimeout(r, 2000).unref()),
      ]);
    }
    this.closed = true;
    this.env.clearInterval(this.keepaliveTimer);
    this.env.clearTimeout(this.unavailableTimer);
    this.failAll(new SegmemError('CLOSED', 'the segment is closed'));
    this.transport?.close();
    this.transport = null;
  }

  /** True while a transport is up and no reconnection is under way. */
  get isConnected(): boolean {
    return this.transport !== null && this.reconnecting === null && !this.closed;
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

/** Dials the first reachable server of the list (in order, then round again); over TLS with `tls`. */
export function tcpDial(servers: string[], env: Env, tls?: ConnectionOptions): Dial {
  let next = 0;
  return async (prefer?: string, avoid?: string) => {
    let lastError: Error | undefined;
    let tlsError: SegmemError | undefined;
    let order = prefer
      ? [prefer, ...servers.filter((s) => s !== prefer)]
      : servers.map((_, i) => servers[(next + i) % servers.length]!);
    // A named leader goes first whatever failed before; otherwise the server that just failed goes last.
    if (!prefer && avoid && order.length > 1 && order.includes(avoid))
      order = [...order.filter((s) => s !== avoid), avoid];
    for (const addr of order) {
      try {
        const t = await dialOne(addr, env, tls);
        next = Math.max(0, servers.indexOf(addr));
        return t;
      } catch (err) {
        lastError = err as Error;
        if (SegmemError.is(err) && err.details?.reason === 'TLS') tlsError ??= err;
      }
    }
    next = (next + 1) % servers.length;
    // A server that answered but failed TLS says more than the others' refused connections.
    if (tlsError) throw tlsError;
    throw new SegmemError('UNAVAILABLE', `no server reachable (${order.join(', ')}): ${lastError?.message}`);
  };
}

function dialOne(addr: string, env: Env, tls?: ConnectionOptions): Promise<Transport> {
  let host: string;
  let port: number;
  try {
    ({ host, port } = parseHostPort(addr, 'server address'));
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise((resolve, reject) => {
    const socket: Socket = tls
      ? tlsConnect({ ...tls, host, port, ...(tls.servername || isIP(host) ? {} : { servername: host }) })
      : netConnect({ host, port, noDelay: true });
    socket.setNoDelay(true);
    let tcpConnected = false;
    const timer = env.setTimeout(() => socket.destroy(new Error(`connect to ${addr} timed out`)), 5000);
    socket.once('error', (err: NodeJS.ErrnoException) => {
      env.clearTimeout(timer);
      // Reached, but the TLS handshake failed: an untrusted certificate, a name it is not for, a plain server.
      reject(tls && tcpConnected ? tlsFailure(addr, err) : err);
    });
    if (tls) socket.once('connect', () => (tcpConnected = true));
    socket.once(tls ? 'secureConnect' : 'connect', () => {
      env.clearTimeout(timer);
      socket.removeAllListeners('error');
      const transport: Transport & { closeReason?: string } = {
        address: addr,
        write(parts) {
          if (socket.destroyed) return;
          if (parts.length === 1) socket.write(parts[0]!);
          else {
            socket.cork();
            for (const p of parts) socket.write(p);
            socket.uncork();
          }
        },
        close() {
          socket.destroy();
        },
        onData: () => {},
        onClose: () => {},
      };
      socket.on('data', (chunk: Buffer) => transport.onData(chunk));
      socket.on('error', (err: Error) => {
        transport.closeReason = err.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:/, '').trim();
      });
      socket.on('close', () => transport.onClose());
      resolve(transport);
    });
  });
}

/** A failed TLS handshake as an UNAVAILABLE error with reason TLS, saying why in OpenSSL's words. */
function tlsFailure(addr: string, err: NodeJS.ErrnoException): SegmemError {
  const code = err.code ?? 'ERROR';
  const why = err.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:/, '').trim();
  const hint =
    code === 'ECONNRESET' || /wrong version number|packet length too long/i.test(why)
      ? ' (does the server serve TLS?)'
      : code === 'ERR_TLS_CERT_ALTNAME_INVALID'
        ? ' (the certificate is not for this host: see tls.servername)'
        : /certificate|self.signed|unable to verify/i.test(why)
          ? ' (is tls.ca the CA that signed the server certificate?)'
          : '';
  return new SegmemError('UNAVAILABLE', `TLS handshake with ${addr} failed: ${why} (${code})${hint}`, {
    reason: 'TLS',
    tlsCode: code,
    address: addr,
  });
}

/** Resolves after `ms` on the env's clock. */
export function sleep(env: Env, ms: number): Promise<void> {
  return new Promise((resolve) => env.setTimeout(resolve, ms));
}
