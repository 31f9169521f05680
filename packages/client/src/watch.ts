/**
 * `Segment.watch(name)`: an async iterable of the committed versions of one object, fed by the server's
 * CHANGED pushes on the session's connection.
 *
 * - One server-side watch (WATCH / UNWATCH) per object per session, shared by every iterator of the object
 *   in this process; the last iterator to end sends UNWATCH.
 * - Bounded: an iterator holds only the newest version known, never a queue. A slow consumer gets the latest
 *   version when it asks again (versions coalesce); since every write release increases the version by one,
 *   a jump says how many changes were folded into one item.
 * - Never silently behind: after a reconnect, a new leader or a new session, every watch is sent again
 *   (watches are the serving member's session state, not replicated) and its answer carries the version
 *   now, so a change whose push was lost is still seen. Versions only go up: a repeat or an older one is
 *   never delivered.
 */
import { type Changed, SegmemError, validateName } from '@segmem/protocol';
import type { Session } from './session.js';

/** What {@link Segment.watch} takes. */
export interface WatchOptions {
  /** Ends the iteration: the pending or next `next()` rejects with `ABORTED`, and the server stops pushing. */
  signal?: AbortSignal;
  /**
   * Deliver versions newer than this one: with a version the consumer saw before (say, before a restart),
   * the first item comes at once when the object changed since. Default: the version when the watch starts
   * (only later changes are delivered). A non-negative integer.
   */
  fromVersion?: number;
}

/** One item of a watch: the object's version after a committed change (the newest, when several coalesced). */
export interface WatchEvent {
  version: number;
}

/** One object this session watches, shared by every iterator of it in this process. */
interface Watched {
  readonly name: string;
  readonly objectId: number;
  /** Highest committed version known (WATCH answers and CHANGED pushes). */
  version: number;
  /** The object was deleted (or its name now belongs to another object): the server dropped the watch. */
  gone: boolean;
  readonly subs: Set<Subscription>;
}

/** One iterator's wake-up and its end. */
class Subscription {
  error: SegmemError | null = null;
  /** Rejects when the iterator is ended from outside (abort, close, a failed re-watch). */
  readonly stopped: Promise<never>;
  private stop!: (err: SegmemError) => void;
  private wake: (() => void) | null = null;

  constructor() {
    this.stopped = new Promise<never>((_, reject) => {
      this.stop = reject;
    });
    this.stopped.catch(() => {}); // observed through `error` as well
  }

  fail(err: SegmemError): void {
    if (this.error) return;
    this.error = err;
    this.stop(err);
    this.notify();
  }

  notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Resolves at the next notify (a newer version, the object's end, or a failure). */
  changed(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }
}

function aborted(): SegmemError {
  return new SegmemError('ABORTED', 'the watch was aborted');
}

/** INVALID_ARGUMENT for a bad name, options that are not an object, a bad `fromVersion` or `signal`. */
export function checkWatch(name: string, opts: WatchOptions): void {
  validateName(name);
  if (opts === null || typeof opts !== 'object')
    throw new SegmemError('INVALID_ARGUMENT', 'watch options must be an object');
  const { signal, fromVersion } = opts;
  if (fromVersion !== undefined && (!Number.isSafeInteger(fromVersion) || fromVersion < 0)) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `fromVersion must be a non-negative integer; got ${String(fromVersion)}`,
    );
  }
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw new SegmemError('INVALID_ARGUMENT', 'signal must be an AbortSignal');
}

export class Watches {
  private readonly byId = new Map<number, Watched>();
  private readonly byName = new Map<string, Watched>();
  private readonly subs = new Set<Subscription>();
  /** WATCH requests in flight: until their answers are handled, pushes for unknown objects are kept here. */
  private starting = 0;
  private readonly early = new Map<number, number>();
  private closed = false;

  constructor(
    private readonly session: Session,
    private readonly check: () => void,
  ) {}

  watch(name: string, opts: WatchOptions = {}): AsyncIterable<WatchEvent> {
    this.check();
    checkWatch(name, opts);
    const { signal, fromVersion } = opts;
    return this.events(name, fromVersion ?? null, signal);
  }

  private async *events(
    name: string,
    fromVersion: number | null,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<WatchEvent> {
    this.check();
    if (signal?.aborted) throw aborted();
    const sub = new Subscription();
    this.subs.add(sub);
    const onAbort = () => sub.fail(aborted());
    signal?.addEventListener('abort', onAbort, { once: true });
    let entry: Watched | null = null;
    try {
      const attached = await Promise.race([this.attach(name, sub), sub.stopped]);
      entry = attached.entry;
      let delivered = fromVersion ?? attached.baseline;
      for (;;) {
        if (sub.error) throw sub.error;
        if (entry.version > delivered) {
          delivered = entry.version;
          yield { version: delivered };
          continue;
        }
        if (entry.gone) throw new SegmemError('NOT_FOUND', `object "${name}" was deleted`);
        await sub.changed();
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.subs.delete(sub);
      if (entry) this.detach(entry, sub);
    }
  }

  /** Joins the watch of `name`, or starts one (WATCH); `baseline` is the version this iterator starts after. */
  private async attach(name: string, sub: Subscription): Promise<{ entry: Watched; baseline: number }> {
    const existing = this.byName.get(name);
    if (existing) {
      existing.subs.add(sub);
      return { entry: existing, baseline: existing.version };
    }
    this.starting++;
    let answer: { objectId: number; version: number };
    let early: number | undefined;
    try {
      answer = await this.session.call({ type: 'WATCH', name });
      // Read in the same turn as the answer: a push that followed it in the stream is already here.
      early = this.early.get(answer.objectId);
    } finally {
      if (--this.starting === 0) this.early.clear();
    }
    let entry = this.byId.get(answer.objectId);
    if (!entry) {
      entry = { name, objectId: answer.objectId, version: answer.version, gone: false, subs: new Set() };
      this.byId.set(entry.objectId, entry);
      this.byName.set(name, entry);
    }
    this.observe(entry, answer.version);
    if (early !== undefined) this.observe(entry, early);
    if (sub.error || this.closed) {
      // Ended while the WATCH was out: nobody else may want it.
      this.detach(entry, sub);
      throw sub.error ?? new SegmemError('CLOSED', 'the segment is closed');
    }
    entry.subs.add(sub);
    return { entry, baseline: answer.version };
  }

  private detach(entry: Watched, sub: Subscription): void {
    entry.subs.delete(sub);
    if (entry.subs.size > 0 || entry.gone) return;
    this.forget(entry);
    if (!this.closed) this.session.call({ type: 'UNWATCH', objectId: entry.objectId }).catch(() => {});
  }

  private forget(entry: Watched): void {
    if (this.byId.get(entry.objectId) === entry) this.byId.delete(entry.objectId);
    if (this.byName.get(entry.name) === entry) this.byName.delete(entry.name);
  }

  /** A version (0: deleted) learnt for the object: only ever moves forward. */
  private observe(entry: Watched, version: number): void {
    if (entry.gone) return;
    if (version === 0) {
      entry.gone = true;
      this.forget(entry);
    } else if (version > entry.version) {
      entry.version = version;
    } else {
      return;
    }
    for (const sub of entry.subs) sub.notify();
  }

  /** A CHANGED push. */
  onChanged(msg: Changed): void {
    for (const [id, version] of msg.objects) {
      const entry = this.byId.get(id);
      if (entry) {
        this.observe(entry, version);
      } else if (this.starting > 0) {
        const seen = this.early.get(id);
        // A deletion wins over any version; otherwise the newest.
        if (seen !== 0) this.early.set(id, version === 0 ? 0 : Math.max(seen ?? 0, version));
      }
    }
  }

  /**
   * The connection was lost and found again (same session or a new one), or a push was missed: send every
   * watch again, and learn from the answers the versions whose pushes went missing.
   */
  resync(): void {
    if (this.closed) return;
    for (const entry of [...this.byId.values()]) {
      this.session.call({ type: 'WATCH', name: entry.name }).then(
        (answer) => {
          if (answer.objectId === entry.objectId) {
            this.observe(entry, answer.version);
            return;
          }
          // The object was deleted and its name taken by another: the watch ends; the new object is not watched.
          this.observe(entry, 0);
          if (!this.byId.has(answer.objectId))
            this.session.call({ type: 'UNWATCH', objectId: answer.objectId }).catch(() => {});
        },
        (err: unknown) => {
          if (SegmemError.is(err, 'NOT_FOUND')) {
            this.observe(entry, 0);
            return;
          }
          if (this.closed) return;
          // The store cannot be reached (or refused the watch): the iterators end with that error.
          const e = SegmemError.is(err) ? err : new SegmemError('UNAVAILABLE', String(err));
          for (const sub of entry.subs) sub.fail(e);
        },
      );
    }
  }

  /** The segment closed: every iterator ends with CLOSED. */
  close(): void {
    this.closed = true;
    const err = new SegmemError('CLOSED', 'the segment is closed');
    for (const sub of this.subs) sub.fail(err);
    this.byId.clear();
    this.byName.clear();
  }
}
