/**
 * Client sessions on this member: HELLO (open or resume), which connection each session is attached to,
 * liveness and expiry, and the invalidations pushed to them. The sessions themselves are replicated
 * (the state machine); what lives here is this member's view of their connections and clocks.
 */
import {
  type EnvTimer,
  type HelloRequest,
  MAX_FRAME_BYTES,
  MAX_OBJECT_BYTES,
  PAGE_BYTES,
  type Probed,
  SegmemError,
} from '@segmem/protocol';
import type { LockMode } from '../core/commands.js';
import { SessionLiveness } from '../shell/liveness.js';
import type { UdpHints } from '../shell/udp-hints.js';
import { ADMIN, ANONYMOUS, type Principal } from './access.js';
import type { NodeContext } from './context.js';
import { DECOY_HASH, LoginGate, verifyPassword } from './passwords.js';
import type { Port } from './port.js';
import { sameSecret, unwrap } from './util.js';

/** An ACQUIRE waiting for its grant, or a DELETE waiting for the object's holders. */
export interface Waiting {
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
  /** Set for a DELETE: called once it is applied (null) or failed; the connection answers it. */
  settle?: (err: SegmemError | null) => void;
}

export interface SessionState {
  port: Port | null;
  invalidationSeq: number;
  /** Acquires waiting in the lock queue, by seq. */
  readonly waiting: Map<number, Waiting>;
}

export class Sessions {
  /** Connections of clients with a session, so a deposed leader can close them (they then find the new one). */
  private readonly ports = new Set<Port>();
  private readonly states = new Map<number, SessionState>();
  private readonly liveness: SessionLiveness;
  /** Bounds the password checks running and waiting on this member. */
  private readonly logins = new LoginGate();
  /** Sessions whose expiry is being proposed: not resumable any more. */
  private readonly expiring = new Set<number>();
  private expiryTimer: EnvTimer | null = null;
  private udp: UdpHints | null = null;
  private stopped = false;

  constructor(private readonly ctx: NodeContext) {
    this.liveness = new SessionLiveness(ctx.env);
  }

  setUdp(hints: UdpHints | null): void {
    this.udp = hints;
  }

  /** HELLO on a client connection: opens a session or resumes one; returns its id. */
  async hello(port: Port, requestId: number, req: HelloRequest): Promise<number> {
    const ctx = this.ctx;
    // Credentials first: a follower names its leader only to a client that logged in.
    const login = this.logIn(port, req);
    port.principal = login instanceof Promise ? await login : login;
    ctx.requireLeader();
    let sessionId = 0;
    let resumed = false;
    // A session is resumed only with the secret it was opened with: its id alone (small, sequential) would
    // let any client take over another's locks. A wrong secret is treated like an unknown session, and so
    // is a session without one (opened before secrets existed).
    const resumeId = req.resumeSessionId ?? 0;
    const expected = resumeId ? ctx.sm.sessionSecret(resumeId) : '';
    if (expected !== '' && sameSecret(req.resumeSecret, expected) && !this.expiring.has(resumeId)) {
      sessionId = resumeId;
      resumed = true;
    } else {
      // Admitted on the leader before proposing (node/budget.ts); a resumed session grows nothing.
      ctx.budget.admitSession();
      const outcome = await ctx.log.propose({
        op: 'open',
        timeoutMs: req.sessionTimeoutMs,
        clientName: req.clientName ?? null,
        secret: ctx.env.randomBytes(16).toString('hex'),
      });
      sessionId = (unwrap(outcome.result) as { sessionId: number }).sessionId;
    }
    let state = this.states.get(sessionId);
    if (!state) {
      state = { port: null, invalidationSeq: 0, waiting: new Map() };
      this.states.set(sessionId, state);
    }
    state.port = port;
    this.ports.add(port);
    const timeoutMs = ctx.sm.sessionTimeoutMs(sessionId) ?? req.sessionTimeoutMs;
    this.liveness.track(sessionId, timeoutMs);
    this.rescheduleExpiry();
    this.answerHello(port, requestId, sessionId, resumed, timeoutMs, {
      keepaliveMs: Math.max(50, Math.floor(timeoutMs / 4)),
      udpPort: this.udp ? this.udp.port : null,
    });
    return sessionId;
  }

  /**
   * HELLO of a page-reader connection: any member answers, after the cluster and credential checks. Returns
   * a promise only when a password must be checked (a HELLO without one is answered at once).
   */
  helloPageReader(port: Port, requestId: number, req: HelloRequest): void | Promise<void> {
    const login = this.logIn(port, req);
    // No session, so nothing to keep alive and no invalidations to hint.
    const answer = (principal: Principal) => {
      port.principal = principal;
      this.answerHello(port, requestId, 0, false, req.sessionTimeoutMs, {
        keepaliveMs: req.sessionTimeoutMs,
        udpPort: null,
      });
    };
    if (login instanceof Promise) return login.then(answer);
    answer(login);
  }

  /**
   * Who a HELLO logs in as (see node/access.ts): a user by password (checked off the event loop, at most
   * MAX_CONCURRENT_LOGINS at once), the token holder (admin), or, while the group has no users and the
   * token (if any) is right, a client without credentials. UNAUTHORIZED otherwise; a wrong user name and a
   * wrong password get the same answer after the same work. A promise only when a password is checked.
   */
  private logIn(port: Port, req: HelloRequest): Principal | Promise<Principal> {
    if (port.inProcess) return ADMIN;
    const { opts, sm } = this.ctx;
    if (req.user != null) {
      const name = req.user;
      const password = req.password ?? '';
      return this.logins
        .run(
          () => verifyPassword(password, sm.userPassword(name) ?? DECOY_HASH),
          () => !port.closed,
        )
        .then((good) => {
          // Asked again after the check: the user may have been removed meanwhile.
          if (!good || !this.ctx.sm.userPassword(name)) {
            throw new SegmemError('UNAUTHORIZED', 'bad user name or password', { reason: 'BAD_LOGIN' });
          }
          this.checkCluster(req);
          return { kind: 'user', name } satisfies Principal;
        });
    }
    const hasToken = opts.token !== undefined && sameSecret(req.token, opts.token);
    if (opts.token !== undefined && !hasToken) {
      throw new SegmemError(
        'UNAUTHORIZED',
        sm.hasUsers() ? 'bad or missing token; or log in with a user and password' : 'bad or missing token',
      );
    }
    if (!hasToken && sm.hasUsers()) {
      throw new SegmemError('UNAUTHORIZED', 'this cluster has users: log in with a user and password', {
        reason: 'LOGIN_REQUIRED',
      });
    }
    this.checkCluster(req);
    return hasToken ? ADMIN : ANONYMOUS;
  }

  private answerHello(
    port: Port,
    requestId: number,
    sessionId: number,
    resumed: boolean,
    sessionTimeoutMs: number,
    extra: { keepaliveMs: number; udpPort: number | null },
  ): void {
    const sm = this.ctx.sm;
    port.ok('HELLO', requestId, {
      sessionId,
      resumed,
      sessionSecret: sm.sessionSecret(sessionId),
      clusterId: this.ctx.clusterId,
      serverId: this.ctx.id,
      pageBytes: PAGE_BYTES,
      segmentBytes: sm.segmentBytes,
      maxFrameBytes: MAX_FRAME_BYTES,
      maxObjectBytes: MAX_OBJECT_BYTES,
      sessionTimeoutMs,
      groupId: sm.group.id,
      ...extra,
    });
  }

  /** After the credentials: without them a caller learns nothing, not even the cluster's name. */
  private checkCluster(req: HelloRequest): void {
    const { clusterId } = this.ctx;
    if (req.clusterId && req.clusterId !== clusterId) {
      throw new SegmemError(
        'UNAUTHORIZED',
        `this server belongs to cluster ${clusterId}, not ${req.clusterId}`,
        {
          reason: 'CLUSTER_MISMATCH',
          clusterId,
        },
      );
    }
  }

  touch(sessionId: number): void {
    this.liveness.touch(sessionId);
  }

  /** A connection went away; its session lives on until it resumes or times out. */
  detach(port: Port, sessionId: number): void {
    port.closed = true;
    this.ports.delete(port);
    const state = this.states.get(sessionId);
    if (state && state.port === port) state.port = null;
  }

  async goodbye(sessionId: number): Promise<void> {
    await this.ctx.log.propose({ op: 'close', sessionId });
  }

  /** The session's state on this member; LOCK_LOST when it is gone. */
  state(sessionId: number): SessionState {
    const state = this.states.get(sessionId);
    if (!state) throw new SegmemError('LOCK_LOST', `session ${sessionId} has expired or was closed`);
    return state;
  }

  find(sessionId: number): SessionState | undefined {
    return this.states.get(sessionId);
  }

  /** Tells a session that an object changed (version) or went (0), by TCP push and a UDP hint. */
  pushInvalidation(sessionId: number, objectId: number, version: number): void {
    const state = this.states.get(sessionId);
    if (!state) return;
    // Numbered even when the session is detached, so the client sees the gap when it returns.
    const seq = ++state.invalidationSeq;
    const port = state.port;
    if (!port || port.closed) return;
    port.invalidate({ seq, objects: [[objectId, version]] });
    if (port.udpPort && this.udp && port.remoteAddress) {
      this.udp.send({ sessionId, seq, objects: [[objectId, version]] }, port.udpPort, port.remoteAddress);
    }
  }

  /** Asks a session to give back its grant of an object (another session waits for it). */
  pushRevoke(sessionId: number, objectId: number): void {
    const port = this.states.get(sessionId)?.port;
    // A session not connected now gives back its cached grants when it resumes (see the client's onResumed).
    if (port && !port.closed) port.revoke({ objectId });
  }

  /** Passes a probe of a cycle of waits to a session, if it is connected here (probes are best effort). */
  pushProbed(sessionId: number, msg: Probed): boolean {
    const port = this.states.get(sessionId)?.port;
    if (!port || port.closed) return false;
    port.probed(msg);
    return true;
  }

  /** The replicated state ended a session (GOODBYE or expiry). */
  ended(sessionId: number, reason: string): void {
    const state = this.states.get(sessionId);
    this.states.delete(sessionId);
    this.liveness.forget(sessionId);
    this.expiring.delete(sessionId);
    if (state) this.clearWaiting(state);
    // An expired session whose client is still connected (e.g. its event loop stalled past the timeout):
    // close the connection, so the client notices, finds its session gone and starts a new one.
    if (reason === 'expired' && state?.port && !state.port.closed) {
      this.ports.delete(state.port);
      state.port.close();
    }
  }

  /** The log's leadership changed: a new leader restarts every session's clock; a deposed one lets go. */
  roleChanged(isLeader: boolean): void {
    const sm = this.ctx.sm;
    if (isLeader) {
      for (const id of sm.sessionIds()) this.liveness.track(id, sm.sessionTimeoutMs(id) ?? 10_000);
      this.rescheduleExpiry();
      return;
    }
    for (const id of sm.sessionIds()) this.liveness.forget(id);
    this.expiring.clear();
    for (const state of this.states.values()) this.clearWaiting(state);
    this.states.clear();
    // Close client connections once the answers already on their way are written (a turn of the loop).
    const ports = [...this.ports];
    this.ports.clear();
    this.ctx.env.setImmediate(() => {
      for (const port of ports) port.close();
    });
  }

  /** Starts the expiry checks (once the node is open). */
  start(): void {
    this.scheduleExpiry();
  }

  stop(): void {
    this.stopped = true;
    this.ctx.env.clearTimeout(this.expiryTimer);
    for (const state of this.states.values()) this.clearWaiting(state);
  }

  private clearWaiting(state: SessionState): void {
    for (const w of state.waiting.values()) this.ctx.env.clearTimeout(w.timer);
  }

  private scheduleExpiry(): void {
    if (this.stopped) return;
    const every = this.liveness.checkEveryMs(1000);
    this.expiryTimer = this.ctx.env.setTimeout(() => {
      this.expiryTimer = null;
      this.expireOverdue();
      this.scheduleExpiry();
    }, every);
    this.expiryTimer.unref();
  }

  private rescheduleExpiry(): void {
    this.ctx.env.clearTimeout(this.expiryTimer);
    this.scheduleExpiry();
  }

  private expireOverdue(): void {
    const ctx = this.ctx;
    if (!ctx.log.isLeader()) return;
    // A REVOKE is not numbered and goes with a dropped connection: holders of contended objects are asked again.
    for (const { objectId, sessionIds } of ctx.sm.contendedHolders())
      for (const sid of sessionIds) this.pushRevoke(sid, objectId);
    const overdue = this.liveness.overdue().filter((id) => !this.expiring.has(id));
    if (overdue.length === 0) return;
    for (const id of overdue) this.expiring.add(id);
    ctx.log.propose({ op: 'expire', sessionIds: overdue }).catch((err) => {
      ctx.opts.log?.(`session expiry failed: ${(err as Error).message}`);
      for (const id of overdue) this.expiring.delete(id); // tried again at the next check
    });
  }
}
