/**
 * A simulated client: one session at a time, one command in flight, retried with the SAME (session, seq)
 * until answered, following NotLeader hints or trying the other nodes. Its workload: open a session,
 * create the counters (ifNotExists), then cycles of acquire write -> read the counter at the grant -> release
 * with the counter + 1, and acquire read -> release read. It sends keepalives, and may go silent (a long
 * pause, as a stopped process): its session may expire meanwhile. A client that learns that its session
 * is gone while holding a write opens a new session and replays its release (new session, old token): a
 * correct server refuses it (fencing); one without the token check applies a stale write.
 *
 * Some idle turns append a record to a shared log instead (a payload unique to this client and append),
 * retried with the same seq like everything else; the simulator checks at the end that every
 * acknowledged record is in the log exactly once, at the sequence number its answer gave.
 */
import type { Command, LockMode, Result } from '../core/commands.js';
import type { NodeId } from '../raft/types.js';
import type { History, OpRecord } from './history.js';
import type { Prng } from './prng.js';

export type ClientToNode =
  | { kind: 'request'; client: string; reqId: number; cmd: Command }
  | { kind: 'keepalive'; client: string; sessionId: number };

export type NodeToClient =
  | { kind: 'reply'; reqId: number; result: Result; value: number | null; sessionAlive: boolean }
  | { kind: 'notLeader'; reqId: number; leader: NodeId | null }
  | { kind: 'grant'; sessionId: number; seq: number; token: number; value: number }
  | { kind: 'fail'; sessionId: number; seq: number; code: string };

export interface ClientEnv {
  readonly now: number;
  /** A fresh, strictly increasing event time for the history. */
  clock(): number;
  send(from: string, to: NodeId, msg: ClientToNode): void;
  readonly nodes: readonly NodeId[];
  readonly prng: Prng;
  readonly history: History;
  /** Decides the log appends, apart from `prng`, so runs without appends draw exactly as before. */
  readonly logPrng: Prng;
  /** Every acknowledged append: what the final log check holds the log to. */
  readonly logAcks: LogAck[];
  trace(line: string): void;
  /** No new pauses (the liveness phase). */
  readonly calm: boolean;
}

export interface ClientParams {
  objects: string[];
  retryTicks: number;
  keepaliveTicks: number;
  sessionTimeoutTicks: number;
  holdTicksMax: number;
  thinkTicksMax: number;
  writeP: number;
  /** Per tick: chance to go silent (at any moment). */
  pauseP: number;
  /** When a write is granted: chance to go silent while holding it. */
  pauseWhileHoldingP: number;
  pauseTicksMax: number;
  /** From idle: chance to append a log record instead of a lock cycle (0: never). */
  appendP: number;
  /** The shared log appended to. */
  logName: string;
}

export interface LogAck {
  client: string;
  payload: string;
  /** The sequence number the append's answer gave its record. */
  seq: number;
}

type Phase = 'open' | 'create' | 'idle' | 'acquire' | 'hold' | 'release' | 'replay' | 'append';

interface Request {
  reqId: number;
  cmd: Command;
  resendAt: number;
  attempts: number;
  /** An acquire answered "queued": wait for the grant, re-asking now and then. */
  queued: boolean;
  /** At resendAt, try the next node (a timeout) rather than the current target (a redirect, a re-ask). */
  rotate: boolean;
}

interface Held {
  op: OpRecord;
  mode: LockMode;
  name: string;
  seq: number;
  token: number;
  value: number;
}

export class SimClient {
  sessionId: number | null = null;
  private seq = 0;
  private nextReqId = 1;
  private target: NodeId;
  private rotation: number;
  phase: Phase = 'open';
  private req: Request | null = null;
  private created = 0;
  /** The current cycle: set from the acquire until the cycle ends. */
  private cycle: { op: OpRecord; mode: LockMode; name: string; seq: number } | null = null;
  private held: Held | null = null;
  /** A write whose release must be replayed under a new session (see the file comment). */
  private replay: Held | null = null;
  private nextActAt = 0;
  private lastKeepaliveAt = Number.NEGATIVE_INFINITY;
  pausedUntil = -1;
  private inbox: NodeToClient[] = [];
  /** Call time of the last cycle completed OK. */
  lastCompletedCall = -1;
  completed = 0;
  pauses = 0;
  replays = 0;
  appends = 0;

  constructor(
    readonly id: string,
    private readonly env: ClientEnv,
    private readonly p: ClientParams,
  ) {
    this.rotation = env.prng.int(0, env.nodes.length - 1);
    this.target = env.nodes[this.rotation]!;
  }

  get paused(): boolean {
    return this.pausedUntil > this.env.now;
  }

  wake(): void {
    this.pausedUntil = -1;
  }

  receive(msg: NodeToClient): void {
    if (this.paused) {
      this.inbox.push(msg);
      return;
    }
    this.handle(msg);
  }

  step(): void {
    const now = this.env.now;
    if (this.paused) return;
    if (this.inbox.length > 0) {
      const msgs = this.inbox;
      this.inbox = [];
      for (const m of msgs) this.handle(m);
    }
    if (!this.env.calm && this.p.pauseP > 0 && this.env.prng.chance(this.p.pauseP)) {
      this.pause();
      return;
    }
    if (this.sessionId !== null && now - this.lastKeepaliveAt >= this.p.keepaliveTicks) {
      this.lastKeepaliveAt = now;
      this.env.send(this.id, this.target, { kind: 'keepalive', client: this.id, sessionId: this.sessionId });
    }
    if (this.req) {
      if (now >= this.req.resendAt) this.resend();
      return;
    }
    if (now >= this.nextActAt) this.act();
  }

  private pause(): void {
    const ticks = this.env.prng.int(1, this.p.pauseTicksMax);
    this.pausedUntil = this.env.now + ticks;
    this.pauses++;
    this.env.trace(`${this.id} goes silent for ${ticks} ticks (${this.phase})`);
  }

  private rotate(): void {
    this.rotation = (this.rotation + 1) % this.env.nodes.length;
    this.target = this.env.nodes[this.rotation]!;
  }

  private sendCmd(cmd: Command): void {
    this.req = {
      reqId: this.nextReqId++,
      cmd,
      resendAt: this.env.now + this.p.retryTicks,
      attempts: 1,
      queued: false,
      rotate: true,
    };
    this.env.send(this.id, this.target, { kind: 'request', client: this.id, reqId: this.req.reqId, cmd });
  }

  /** Sends the same command again (same session and seq). */
  private resend(): void {
    const req = this.req!;
    if (req.rotate && !req.queued) this.rotate();
    // A queued acquire is re-asked once where it waits; if that goes unanswered, it moves on.
    req.queued = false;
    req.rotate = true;
    req.attempts++;
    req.resendAt = this.env.now + this.p.retryTicks;
    this.env.send(this.id, this.target, { kind: 'request', client: this.id, reqId: req.reqId, cmd: req.cmd });
  }

  private act(): void {
    const sid = this.sessionId;
    switch (this.phase) {
      case 'open':
        this.sendCmd({ op: 'open', timeoutMs: this.p.sessionTimeoutTicks, clientName: this.id });
        return;
      case 'create':
        this.sendCmd({
          op: 'create',
          sessionId: sid!,
          seq: ++this.seq,
          name: this.p.objects[this.created]!,
          size: 4,
          ifNotExists: true,
        });
        return;
      case 'idle': {
        if (this.p.appendP > 0 && this.env.logPrng.chance(this.p.appendP)) {
          const data = Buffer.from(`${this.id}#${++this.appends}`);
          this.phase = 'append';
          this.sendCmd({
            op: 'append',
            sessionId: sid!,
            seq: ++this.seq,
            name: this.p.logName,
            sizes: [data.length],
            maxBytes: 1 << 20,
            data,
          });
          return;
        }
        const name = this.env.prng.pick(this.p.objects);
        const mode: LockMode = this.env.prng.chance(this.p.writeP) ? 'write' : 'read';
        const op = this.env.history.begin(this.id, name, mode, this.env.clock());
        const seq = ++this.seq;
        this.cycle = { op, mode, name, seq };
        this.phase = 'acquire';
        this.env.trace(`${this.id} acquire ${mode} ${name} (session ${sid}, seq ${seq}) -> ${this.target}`);
        this.sendCmd({ op: 'acquire', sessionId: sid!, seq, name, mode });
        return;
      }
      case 'hold': {
        const h = this.held!;
        this.phase = 'release';
        if (h.mode === 'write') h.op.releaseSent = true;
        this.sendCmd(this.releaseCmd(h, sid!, ++this.seq));
        return;
      }
      case 'replay': {
        const h = this.replay!;
        this.replays++;
        this.env.trace(`${this.id} replays its release of ${h.name} (token ${h.token}) in session ${sid}`);
        this.sendCmd(this.releaseCmd(h, sid!, ++this.seq));
        return;
      }
      default:
        return;
    }
  }

  private releaseCmd(h: Held, sessionId: number, seq: number): Command {
    if (h.mode === 'read') {
      return {
        op: 'release',
        sessionId,
        seq,
        name: h.name,
        mode: 'read',
        token: h.token,
        ranges: [],
        data: null,
      };
    }
    const data = Buffer.alloc(4);
    data.writeUInt32LE(h.value + 1, 0);
    return {
      op: 'release',
      sessionId,
      seq,
      name: h.name,
      mode: 'write',
      token: h.token,
      ranges: [[0, 4]],
      data,
    };
  }

  private handle(msg: NodeToClient): void {
    switch (msg.kind) {
      case 'notLeader': {
        const req = this.req;
        if (!req || msg.reqId !== req.reqId) return;
        if (msg.leader && msg.leader !== this.target) {
          this.target = msg.leader;
          const i = this.env.nodes.indexOf(msg.leader);
          if (i >= 0) this.rotation = i;
          req.rotate = false;
          req.resendAt = this.env.now + 1;
        } else {
          req.rotate = true;
          req.resendAt = this.env.now + 3;
        }
        return;
      }
      case 'grant': {
        const c = this.cycle;
        if (this.phase !== 'acquire' || !c || msg.sessionId !== this.sessionId || msg.seq !== c.seq) return;
        this.req = null;
        this.granted(msg.token, msg.value);
        return;
      }
      case 'fail': {
        const c = this.cycle;
        if (this.phase !== 'acquire' || !c || msg.sessionId !== this.sessionId || msg.seq !== c.seq) return;
        this.req = null;
        this.endCycle('void');
        return;
      }
      case 'reply': {
        const req = this.req;
        if (!req || msg.reqId !== req.reqId) return;
        this.req = null;
        this.onResult(req, msg.result, msg.value, msg.sessionAlive);
        return;
      }
    }
  }

  private granted(token: number, value: number): void {
    const c = this.cycle!;
    this.env.trace(`${this.id} granted ${c.mode} ${c.name} = ${value} (token ${token})`);
    c.op.value = value;
    if (c.mode === 'read') {
      c.op.ret = this.env.clock();
      c.op.status = 'ok';
      this.completedCycle(c.op);
    }
    this.held = { op: c.op, mode: c.mode, name: c.name, seq: c.seq, token, value };
    this.phase = 'hold';
    this.nextActAt = this.env.now + this.env.prng.int(0, this.p.holdTicksMax);
    if (c.mode === 'write' && !this.env.calm && this.env.prng.chance(this.p.pauseWhileHoldingP)) this.pause();
  }

  private completedCycle(op: OpRecord): void {
    this.completed++;
    if (op.call > this.lastCompletedCall) this.lastCompletedCall = op.call;
  }

  private endCycle(status: 'void' | 'unknown'): void {
    if (this.cycle && status === 'void' && this.cycle.op.status === 'pending') this.cycle.op.status = 'void';
    this.cycle = null;
    this.held = null;
    this.phase = 'idle';
    this.nextActAt = this.env.now + this.env.prng.int(0, this.p.thinkTicksMax);
  }

  private sessionLost(): void {
    this.env.trace(`${this.id} lost session ${this.sessionId}`);
    this.sessionId = null;
    this.phase = 'open';
    this.nextActAt = this.env.now;
  }

  private onResult(req: Request, result: Result, value: number | null, sessionAlive: boolean): void {
    const cmd = req.cmd;
    switch (cmd.op) {
      case 'open': {
        if (!result.ok) {
          this.retryLater(req);
          return;
        }
        this.sessionId = (result.value as { sessionId: number }).sessionId;
        this.seq = 0;
        this.lastKeepaliveAt = this.env.now;
        this.env.trace(`${this.id} opened session ${this.sessionId}`);
        if (this.replay) this.phase = 'replay';
        else this.phase = this.created < this.p.objects.length ? 'create' : 'idle';
        this.nextActAt = this.env.now;
        return;
      }
      case 'create': {
        if (result.ok || result.code === 'ALREADY_EXISTS') {
          this.created++;
          if (this.created >= this.p.objects.length) this.phase = 'idle';
        } else if (!sessionAlive) this.sessionLost();
        return;
      }
      case 'acquire': {
        if (result.ok) {
          const v = result.value as { granted?: { token: number }; queued?: boolean };
          if (v.granted) {
            if (value === null) throw new Error(`grant of ${cmd.name} answered without the counter value`);
            this.granted(v.granted.token, value);
            return;
          }
          // Queued: the grant comes as an effect; re-ask (same seq) now and then in case it is lost.
          this.req = { ...req, queued: true, resendAt: this.env.now + this.p.retryTicks * 2 };
          return;
        }
        this.endCycle('void');
        if (!sessionAlive) this.sessionLost();
        return;
      }
      case 'append': {
        if (result.ok) {
          const payload = cmd.data!.toString();
          const seq = (result.value as { first: number }).first;
          this.env.logAcks.push({ client: this.id, payload, seq });
          this.env.trace(`${this.id} appended ${payload} as record ${seq}`);
        }
        this.endCycle('unknown');
        if (!result.ok && !sessionAlive) this.sessionLost();
        return;
      }
      case 'release': {
        const h = this.phase === 'replay' ? this.replay : this.held;
        if (!h) return;
        this.env.trace(
          `${this.id} release ${h.mode} ${h.name}${h.mode === 'write' ? ` = ${h.value + 1}` : ''}: ${result.ok ? 'ok' : result.code}`,
        );
        if (result.ok) {
          if (h.mode === 'write') {
            h.op.ret = this.env.clock();
            h.op.status = 'ok';
            this.completedCycle(h.op);
          }
          if (this.phase === 'replay') this.env.trace(`${this.id}'s replayed release was ACCEPTED`);
          this.replay = null;
          this.endCycle('unknown');
          return;
        }
        // Not applied now; an earlier copy may have been (its answer lost): the write stays "unknown".
        const wasReplay = this.phase === 'replay';
        this.replay = null;
        this.endCycle('unknown');
        if (!sessionAlive) {
          if (h.mode === 'write' && !wasReplay) this.replay = h;
          this.sessionLost();
        }
        return;
      }
      default:
        return;
    }
  }

  private retryLater(req: Request): void {
    this.req = { ...req, resendAt: this.env.now + this.p.retryTicks };
  }
}
