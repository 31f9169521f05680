/**
 * The reads that may wait for the applied state: LOG_READ (held until its log gains a record) and
 * READ_PAGES (held until this member applies the version asked for). Both are woken from the apply path,
 * never polled.
 */
import {
  type LogReadRequest,
  MAX_LOG_BATCH_RECORDS,
  pageCount,
  type ReadPagesRequest,
  SegmemError,
} from '@segmem/protocol';
import { accessError } from './access.js';
import type { NodeContext } from './context.js';
import type { Port } from './port.js';
import { answerWithPages, objectRecord } from './util.js';
import { type Waiter, Waiters } from './waiters.js';

export class Reads {
  /** Pages this member served through READ_PAGES (for status lines and tests). */
  pagesServed = 0;
  /** Held LOG_READs by log name. */
  private readonly logWaiters: Waiters<string, LogReadRequest>;
  /** READ_PAGES waiting for this member to apply their version, by object id. */
  private readonly pageWaiters: Waiters<number, ReadPagesRequest>;

  constructor(private readonly ctx: NodeContext) {
    this.logWaiters = new Waiters(ctx.env, (w, mustAnswer) => this.answerLogRead(w, mustAnswer));
    this.pageWaiters = new Waiters(ctx.env, (w, mustAnswer) => this.answerPageRead(w, mustAnswer));
  }

  /**
   * LOG_READ: answers on `port` with the records from `req.from`, now or, when there are none yet and the
   * request may wait, as soon as the log gains one.
   */
  async logRead(port: Port, requestId: number, req: LogReadRequest): Promise<void> {
    this.ctx.requireLeader();
    await this.ctx.log.readBarrier();
    // Resolves once answered: a held read counts as a request in flight on its connection.
    return new Promise((resolve) =>
      this.logWaiters.wait(req.name, port, requestId, req, req.waitMs, resolve),
    );
  }

  /**
   * READ_PAGES: the pages of an object at exactly `req.version`, from this member's applied state. A
   * member that has not applied that version yet waits for it (up to `waitMs`); one that has moved past
   * it cannot serve it (the reader's grant must have been lost).
   */
  readPages(port: Port, requestId: number, req: ReadPagesRequest): Promise<void> {
    // Resolves once answered: a held read counts as a request in flight on its connection.
    return new Promise((resolve) =>
      this.pageWaiters.wait(req.objectId, port, requestId, req, req.waitMs, resolve),
    );
  }

  /** An entry was applied: any object may have reached the version a page reader waits for (or been created). */
  applied(): void {
    if (this.pageWaiters.size > 0) this.pageWaiters.wakeAll();
  }

  logChanged(name: string): void {
    this.logWaiters.wake(name);
  }

  /** Forgets held log reads (this member stopped leading: their connections are being closed). */
  dropLogReads(): void {
    this.logWaiters.clear();
  }

  close(): void {
    this.logWaiters.clear();
    this.pageWaiters.clear();
  }

  /** Answers a LOG_READ unless it has nothing to say yet and may wait; returns whether it answered. */
  private answerLogRead(w: Waiter<LogReadRequest>, mustAnswer: boolean): boolean {
    const { port, requestId, req } = w;
    const r = this.ctx.sm.readLog(req.name, req.from, req.maxBytes, MAX_LOG_BATCH_RECORDS);
    if (port.closed) return true;
    // A follower of a log that does not exist yet waits for its first append, as for any new record.
    if (!r.ok && r.code === 'NOT_FOUND' && !mustAnswer) return false;
    if (!r.ok) {
      const details = r.first === undefined ? undefined : { first: r.first };
      port.error(requestId, new SegmemError(r.code, r.message, details));
      return true;
    }
    const read = r.read;
    if (read.sizes.length === 0 && req.maxBytes > 0 && !mustAnswer) return false;
    const { parts, ...header } = read;
    port.ok('LOG_READ', requestId, header, parts);
    return true;
  }

  /** Answers a READ_PAGES unless this member is behind its version and may wait; returns whether it answered. */
  private answerPageRead(w: Waiter<ReadPagesRequest>, mustAnswer: boolean): boolean {
    const { port, requestId, req } = w;
    if (port.closed) return true;
    const { sm, id } = this.ctx;
    const obj = sm.object(req.objectId);
    let err: SegmemError | null = null;
    // The broken variant serves the stale bytes it has, labelled with the version asked for (the client
    // checks the label, so only a lie gets stale bytes past it).
    const stale = obj !== undefined && obj.version < req.version && this.ctx.opts.unsafe?.servePagesUnapplied;
    if (obj && obj.version < req.version && !stale) {
      if (!mustAnswer) return false;
      err = new SegmemError(
        'UNAVAILABLE',
        `member ${id} has not applied version ${req.version} of "${obj.name}" yet (it has ${obj.version})`,
        { reason: 'BEHIND' },
      );
    } else if (!obj) {
      // A follower that has not applied the object's create yet is behind, not wrong.
      if (!mustAnswer && !this.ctx.log.isLeader()) return false;
      err = new SegmemError('NOT_FOUND', `no object with id ${req.objectId} on member ${id}`);
    } else if (obj.version > req.version) {
      err = new SegmemError(
        'LOCK_LOST',
        `"${obj.name}" changed since version ${req.version} (it is at ${obj.version}): the grant was lost`,
      );
    } else if (req.pages[req.pages.length - 1]! >= pageCount(obj.size)) {
      err = new SegmemError('INVALID_ARGUMENT', `"${obj.name}" has ${pageCount(obj.size)} pages`);
    }
    err ??= accessError(sm, port.principal, 'read', obj!.name);
    if (err) {
      port.error(requestId, err);
      return true;
    }
    if (port.hasRoom()) this.sendPages(w, stale);
    else port.whenRoom(() => this.sendPages(w, stale));
    return true;
  }

  /** Answers a READ_PAGES found servable, once its connection has room (the object may have moved on since). */
  private sendPages(w: Waiter<ReadPagesRequest>, stale: boolean | undefined): void {
    const { port, requestId, req } = w;
    if (port.closed) return;
    const { sm, id } = this.ctx;
    const obj = sm.object(req.objectId);
    if (!obj) {
      port.error(
        requestId,
        new SegmemError('NOT_FOUND', `no object with id ${req.objectId} on member ${id}`),
      );
      return;
    }
    if (obj.version !== req.version && !stale) {
      port.error(
        requestId,
        new SegmemError(
          'LOCK_LOST',
          `"${obj.name}" changed since version ${req.version} (it is at ${obj.version}): the grant was lost`,
        ),
      );
      return;
    }
    const record = stale ? { ...objectRecord(obj), version: req.version } : objectRecord(obj);
    answerWithPages(port, 'READ_PAGES', requestId, { object: record, pages: req.pages }, sm, obj, req.pages);
    this.pagesServed += req.pages.length;
  }
}
