/**
 * Locks as clients see them: ACQUIRE (answered at once or when the queue moves), CANCEL, RELEASE, and the
 * delivery of grants and failures the apply path produces for waiting acquires.
 */
import {
  type AcquireRequest,
  type CancelReason,
  type DeleteRequest,
  type ErrorCode,
  grantPayloadBytes,
  type ReleaseOk,
  type ReleaseRequest,
  SegmemError,
} from '@segmem/protocol';
import type { Command, Grant, Outcome } from '../core/commands.js';
import type { NodeContext } from './context.js';
import type { Port } from './port.js';
import type { Sessions, Waiting } from './sessions.js';
import { withSlotTable } from './slots.js';
import { answerWithPages, objectRecord, toBuffer, unwrap } from './util.js';

export class Grants {
  /** No lock is granted before this time (the node's clock): leases of a previous run may still be in use. */
  private grantsFromMs = 0;

  constructor(
    private readonly ctx: NodeContext,
    private readonly sessions: Sessions,
  ) {}

  /** Holds every grant back for `ms` from now (after a restart, see SegmemNode.open). */
  holdGrantsFor(ms: number): void {
    this.grantsFromMs = this.ctx.env.now() + ms;
  }

  /** Takes a lock; answers on `port` now (granted/failed) or later (when the queue moves). */
  async acquire(port: Port, sessionId: number, requestId: number, req: AcquireRequest): Promise<void> {
    const ctx = this.ctx;
    const holdMs = this.grantsFromMs - ctx.env.now();
    if (holdMs > 0) await new Promise<void>((resolve) => ctx.env.setTimeout(resolve, holdMs));
    const state = this.sessions.state(sessionId);
    // Registered before proposing: a grant for this waiter may be applied in the same drain.
    const waiting: Waiting = {
      port,
      requestId,
      mode: req.mode,
      sinceMs: ctx.env.now(),
      cachedId: req.cachedId,
      cachedVersion: req.cachedVersion,
      inlineMaxBytes: req.inlineMaxBytes ?? null,
      timer: null,
    };
    state.waiting.set(req.seq, waiting);
    let outcome: Outcome;
    try {
      outcome = await ctx.log.propose({
        op: 'acquire',
        sessionId,
        seq: req.seq,
        name: req.name,
        mode: req.mode,
      });
    } catch (err) {
      state.waiting.delete(req.seq);
      throw err;
    }
    if (state.waiting.get(req.seq) !== waiting) return; // already answered by a grant or failure effect
    const result = outcome.result;
    if (!result.ok) {
      state.waiting.delete(req.seq);
      throw new SegmemError(result.code, result.message, result.details);
    }
    const value = result.value as { granted?: Grant; queued?: boolean };
    if (value.granted) {
      state.waiting.delete(req.seq);
      this.sendGrant(waiting, value.granted);
      return;
    }
    if (req.timeoutMs !== null) {
      waiting.timer = ctx.env.setTimeout(() => {
        waiting.timer = null;
        ctx.log.propose({ op: 'cancel', sessionId, seq: req.seq, reason: 'TIMEOUT' }).catch(() => {});
      }, req.timeoutMs);
    }
  }

  /**
   * DELETE: resolves once the object is deleted, at once or when its holders have released it (a delete
   * waits in the object's queue like a writer; CANCEL and `timeoutMs` end the wait as for an ACQUIRE).
   */
  async delete(port: Port, sessionId: number, requestId: number, req: DeleteRequest): Promise<void> {
    const ctx = this.ctx;
    const state = this.sessions.state(sessionId);
    let settle!: (err: SegmemError | null) => void;
    const done = new Promise<void>((resolve, reject) => {
      settle = (err) => (err ? reject(err) : resolve());
    });
    // Settled by an effect maybe before anyone awaits it: not an unhandled rejection.
    done.catch(() => {});
    const waiting: Waiting = {
      port,
      requestId,
      mode: 'write', // a delete waits like a writer
      sinceMs: ctx.env.now(),
      cachedId: 0,
      cachedVersion: 0,
      inlineMaxBytes: null,
      timer: null,
      settle,
    };
    state.waiting.set(req.seq, waiting);
    let outcome: Outcome;
    try {
      outcome = await ctx.propose({ op: 'delete', sessionId, seq: req.seq, name: req.name });
    } catch (err) {
      state.waiting.delete(req.seq);
      throw err;
    }
    if (state.waiting.get(req.seq) !== waiting) return done; // already settled by a deleted or fail effect
    const result = outcome.result;
    if (!result.ok || (result.value as { queued?: boolean } | null)?.queued !== true) {
      state.waiting.delete(req.seq);
      unwrap(result);
      return;
    }
    const timeoutMs = req.timeoutMs ?? null;
    if (timeoutMs !== null) {
      waiting.timer = ctx.env.setTimeout(() => {
        waiting.timer = null;
        ctx.log.propose({ op: 'cancel', sessionId, seq: req.seq, reason: 'TIMEOUT' }).catch(() => {});
      }, timeoutMs);
    }
    return done;
  }

  /** CANCEL: the waiter answers through the `fail` effect; this answers whether it was still waiting. */
  async cancel(
    sessionId: number,
    acquireRequestId: number,
    reason: CancelReason,
    port: Port,
  ): Promise<boolean> {
    const state = this.sessions.find(sessionId);
    if (!state) return false;
    for (const [seq, w] of state.waiting) {
      if (w.requestId === acquireRequestId && w.port === port) {
        const outcome = await this.ctx.log.propose({ op: 'cancel', sessionId, seq, reason });
        return (unwrap(outcome.result) as { cancelled: boolean }).cancelled;
      }
    }
    return false;
  }

  /**
   * RELEASE: resolves with the object's version once the release is applied (a write: committed and durable),
   * and for a write release that asked to keep its lock, whether it was kept.
   */
  async release(sessionId: number, req: ReleaseRequest): Promise<ReleaseOk> {
    const data = req.mode === 'write' && req.payload.byteLength > 0 ? toBuffer(req.payload) : null;
    const cmd: Command = {
      op: 'release',
      sessionId,
      seq: req.seq,
      name: req.name,
      mode: req.mode,
      token: req.token,
      ranges: req.ranges,
      data,
      ...(req.keep ? { keep: true } : {}),
    };
    const outcome = await this.ctx.propose(cmd);
    const r = unwrap(outcome.result) as { version: number; kept?: boolean };
    // A retry is answered from the first result: a release applied with `keep` says so even to a copy without it.
    if (r.kept === true) return { version: r.version, kept: true };
    return req.keep ? { version: r.version, kept: false } : { version: r.version };
  }

  /** The apply path granted a queued acquire. */
  granted(sessionId: number, seq: number, grant: Grant): void {
    const w = this.take(sessionId, seq);
    if (w) this.sendGrant(w, grant);
  }

  /** The apply path applied a queued delete. */
  deleted(sessionId: number, seq: number): void {
    this.take(sessionId, seq)?.settle?.(null);
  }

  /**
   * The apply path failed a queued acquire (cancelled, timed out, deadlock, object deleted, or its slot moved
   * to another group: then the MOVED details gain the slot table, as a refusal before proposing has it).
   */
  failed(
    sessionId: number,
    seq: number,
    code: ErrorCode,
    message: string,
    details?: Record<string, unknown>,
  ): void {
    const w = this.take(sessionId, seq);
    if (!w) return;
    const err = withSlotTable(new SegmemError(code, message, details), this.ctx.sm) as SegmemError;
    if (w.settle) w.settle(err);
    else if (!w.port.closed) w.port.error(w.requestId, err);
  }

  private take(sessionId: number, seq: number): Waiting | undefined {
    const state = this.sessions.find(sessionId);
    const w = state?.waiting.get(seq);
    if (!w) return undefined;
    state!.waiting.delete(seq);
    this.ctx.env.clearTimeout(w.timer);
    return w;
  }

  /**
   * Answers a grant once the connection has room for it (a client that does not read its socket holds the
   * lock, not the bytes). The lock is held meanwhile, so the object cannot change unless the session ends.
   */
  private sendGrant(w: Waiting, grant: Grant): void {
    if (w.port.closed) return; // the client resumes and retries the same seq: the grant is remembered
    if (w.port.hasRoom()) this.answerGrant(w, grant);
    else w.port.whenRoom(() => this.answerGrant(w, grant));
  }

  private answerGrant(w: Waiting, grant: Grant): void {
    if (w.port.closed) return;
    const { sm, env, metrics } = this.ctx;
    const obj = sm.object(grant.object.id);
    if (!obj) {
      w.port.error(w.requestId, new SegmemError('NOT_FOUND', `object "${grant.object.name}" was deleted`));
      return;
    }
    metrics.granted(w.mode, env.now() - w.sinceMs);
    const pages = sm.pagesSince(obj, w.cachedId, w.cachedVersion);
    const record = objectRecord(obj);
    if (w.inlineMaxBytes !== null && grantPayloadBytes(obj.size, pages) > w.inlineMaxBytes) {
      // Too many bytes for the leader to send: the client reads them from a follower (READ_PAGES).
      w.port.ok('ACQUIRE', w.requestId, {
        object: record,
        token: grant.token,
        pages,
        deferred: true,
        ...(grant.contended ? { contended: true } : {}),
      });
      return;
    }
    answerWithPages(
      w.port,
      'ACQUIRE',
      w.requestId,
      { object: record, token: grant.token, pages, ...(grant.contended ? { contended: true } : {}) },
      sm,
      obj,
      pages,
    );
  }
}
