/**
 * A shared append-only log over a session: `append` batches concurrent records into few LOG_APPEND
 * requests and keeps several in flight; `read` pages through the records and, with `follow`, waits on
 * the server for new ones.
 *
 * Ordering: batches leave in the order their records were appended, over the session's one connection,
 * and are re-sent in that order with the same sequence numbers after a failover, so one process's
 * records keep their order in the log and none is applied twice.
 */
import {
  logRecords,
  MAX_LOG_BATCH_BYTES,
  MAX_LOG_BATCH_RECORDS,
  MAX_LOG_MAX_BYTES,
  MAX_LOG_READ_BYTES,
  MAX_LOG_RECORD_BYTES,
  SegmemError,
  validateName,
} from '@segmem/protocol';
import type { Session } from './session.js';

/**
 * One record of a shared log, as {@link SharedLog.read} yields it.
 *
 * @example
 * ```ts
 * for await (const { seq, data } of seg.log('events').read()) console.log(seq, data.toString());
 * ```
 */
export interface LogRecord {
  /** The record's sequence number: its place in the one order every reader sees. */
  seq: number;
  /** The record's bytes (a view into the received frame; copy it to keep it past the next records). */
  data: Buffer;
}

/**
 * Where {@link SharedLog.read} starts and whether it waits for new records.
 *
 * @example
 * ```ts
 * const stop = new AbortController();
 * const options: LogReadOptions = { from: 1000, follow: true, signal: stop.signal };
 * ```
 */
export interface LogReadOptions {
  /** First sequence number to read; default: the oldest record still retained. */
  from?: number;
  /**
   * Keep waiting for new records once the end is reached (until `signal` aborts or the segment closes). A
   * log that does not exist yet is waited for too: its first append creates it. Without `follow`, a
   * missing log rejects with `NOT_FOUND`.
   */
  follow?: boolean;
  /** Ends the read: the iteration rejects with `ABORTED`. */
  signal?: AbortSignal;
}

/**
 * Settings of a log, taken when an append through this handle creates it.
 *
 * @example
 * ```ts
 * const log = seg.log('audit', { maxBytes: 256 * 1024 * 1024 });
 * ```
 */
export interface LogOptions {
  /**
   * Retention if this handle's first append creates the log: oldest records are dropped beyond this many
   * bytes (1..1 GiB; default 64 MiB). Ignored for a log that exists.
   */
  maxBytes?: number;
}

/**
 * A log's bounds and size, from {@link SharedLog.info}.
 *
 * @example
 * ```ts
 * const { first, next, bytes } = await seg.log('events').info();
 * console.log(`${next - first} records, ${bytes} bytes`);
 * ```
 */
export interface LogInfo {
  /** Oldest retained sequence number (equal to `next` when the log is empty). */
  first: number;
  /** The sequence number the next record will get. */
  next: number;
  /** Bytes of the retained records. */
  bytes: number;
}

/**
 * A shared append-only log, from {@link Segment.log}: many processes append records, each append is
 * atomic and applied exactly once, and every reader sees the records in one order, by sequence number
 * (0, 1, 2, ... with no gaps).
 *
 * @example
 * ```ts
 * const log = seg.log('events');
 * await log.append('hello');
 * for await (const r of log.read({ follow: true, signal })) handle(r.seq, r.data);
 * ```
 */
export interface SharedLog {
  /**
   * Appends one record (a string is encoded as UTF-8; at most 1 MiB); resolves to its sequence number
   * once it is committed on a majority. Concurrent appends of a process share requests and keep their
   * call order.
   *
   * @example
   * ```ts
   * const seq = await log.append(Buffer.from([1, 2, 3]));
   * ```
   */
  append(record: Uint8Array | string): Promise<number>;
  /**
   * Appends records atomically and contiguously (all or none; at most 65536 records and 8 MiB); resolves
   * to their sequence numbers, which are consecutive.
   *
   * @example
   * ```ts
   * const [first, second] = await log.appendBatch(['debit 10', 'credit 10']);
   * ```
   */
  appendBatch(records: (Uint8Array | string)[]): Promise<number[]>;
  /**
   * The records in sequence order from `from`; with `follow`, waits for new ones. A record dropped by
   * retention or truncation before it is read rejects the iteration with `NOT_FOUND`.
   *
   * @example
   * ```ts
   * for await (const { seq, data } of log.read({ from: 0 })) console.log(seq, data.toString());
   * ```
   */
  read(opts?: LogReadOptions): AsyncIterable<LogRecord>;
  /**
   * Drops the records before `seq`; resolves to the oldest retained sequence number after it.
   *
   * @example
   * ```ts
   * await log.truncateBefore(lastProcessed + 1);
   * ```
   */
  truncateBefore(seq: number): Promise<number>;
  /**
   * The log's bounds and size.
   *
   * @example
   * ```ts
   * const { next } = await log.info();
   * ```
   */
  info(): Promise<LogInfo>;
}

/** A batch fills up to this many bytes before it is sent without waiting for the ones in flight. */
const BATCH_TARGET_BYTES = 1024 * 1024;
/** Batches of one log in flight at once: enough to keep the server's group commit fed. */
const MAX_INFLIGHT_BATCHES = 4;
/** Record bytes waiting to be sent before `append` callers wait (back-pressure). */
const MAX_QUEUED_BYTES = 32 * 1024 * 1024;
/** How long a follower's read waits on the server before asking again. */
const FOLLOW_WAIT_MS = 30_000;
/** Record bytes asked for per read. */
const READ_BYTES = Math.min(1024 * 1024, MAX_LOG_READ_BYTES);

interface Batch {
  readonly records: Buffer[];
  bytes: number;
  /** One per `append` call, or one for an `appendBatch` (which wants every number). */
  readonly waiters: { count: number; resolve: (first: number) => void; reject: (err: unknown) => void }[];
}

function toRecord(record: unknown, what: string): Buffer {
  let bytes: Buffer;
  if (typeof record === 'string') bytes = Buffer.from(record, 'utf8');
  else if (record instanceof Uint8Array)
    bytes = Buffer.from(record); // a copy: the caller may reuse its buffer
  else throw new SegmemError('INVALID_ARGUMENT', `${what} must be a Uint8Array or a string`);
  if (bytes.length > MAX_LOG_RECORD_BYTES) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `${what} is ${bytes.length} bytes; a log record holds at most ${MAX_LOG_RECORD_BYTES}`,
    );
  }
  return bytes;
}

/** INVALID_ARGUMENT for a bad log name or a `maxBytes` that is not an integer 1..MAX_LOG_MAX_BYTES. */
export function checkLog(name: string, opts: LogOptions): void {
  validateName(name);
  const maxBytes = opts.maxBytes;
  if (
    maxBytes !== undefined &&
    (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > MAX_LOG_MAX_BYTES)
  ) {
    throw new SegmemError('INVALID_ARGUMENT', `maxBytes must be an integer 1..${MAX_LOG_MAX_BYTES}`);
  }
}

/** INVALID_ARGUMENT for a `from` that is not a non-negative integer or a `follow` that is not a boolean. */
export function checkLogReadOptions(opts: LogReadOptions): void {
  const { from, follow = false } = opts;
  if (from !== undefined && (!Number.isSafeInteger(from) || from < 0)) {
    throw new SegmemError('INVALID_ARGUMENT', `from must be a non-negative integer; got ${from}`);
  }
  if (typeof follow !== 'boolean') throw new SegmemError('INVALID_ARGUMENT', 'follow must be a boolean');
}

function newBatch(): Batch {
  return { records: [], bytes: 0, waiters: [] };
}

export class SharedLogImpl implements SharedLog {
  private open = newBatch();
  private readonly sealed: Batch[] = [];
  private queuedBytes = 0;
  private inflight = 0;
  private scheduled = false;
  private readonly spaceWaiters: (() => void)[] = [];
  private readonly maxBytes: number | null;

  constructor(
    private readonly session: Session,
    readonly name: string,
    opts: LogOptions,
    private readonly check: () => void,
  ) {
    checkLog(name, opts);
    this.maxBytes = opts.maxBytes ?? null;
  }

  async append(record: Uint8Array | string): Promise<number> {
    this.check();
    const bytes = toRecord(record, 'record');
    if (this.queuedBytes > MAX_QUEUED_BYTES) await new Promise<void>((r) => this.spaceWaiters.push(r));
    if (
      this.open.bytes + bytes.length > BATCH_TARGET_BYTES ||
      this.open.records.length >= MAX_LOG_BATCH_RECORDS
    ) {
      this.seal();
    }
    return new Promise<number>((resolve, reject) => {
      this.open.records.push(bytes);
      this.open.bytes += bytes.length;
      this.open.waiters.push({ count: 1, resolve, reject });
      this.queuedBytes += bytes.length;
      this.schedule();
    });
  }

  async appendBatch(records: (Uint8Array | string)[]): Promise<number[]> {
    this.check();
    if (!Array.isArray(records) || records.length === 0) {
      throw new SegmemError('INVALID_ARGUMENT', 'appendBatch takes a non-empty array of records');
    }
    if (records.length > MAX_LOG_BATCH_RECORDS) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `a batch holds at most ${MAX_LOG_BATCH_RECORDS} records; got ${records.length}`,
      );
    }
    const batch = newBatch();
    for (let i = 0; i < records.length; i++) {
      const bytes = toRecord(records[i], `records[${i}]`);
      batch.records.push(bytes);
      batch.bytes += bytes.length;
    }
    if (batch.bytes > MAX_LOG_BATCH_BYTES) {
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `a batch holds at most ${MAX_LOG_BATCH_BYTES} bytes; these records are ${batch.bytes}`,
      );
    }
    if (this.queuedBytes > MAX_QUEUED_BYTES) await new Promise<void>((r) => this.spaceWaiters.push(r));
    const first = await new Promise<number>((resolve, reject) => {
      batch.waiters.push({ count: records.length, resolve, reject });
      // Records appended before this batch go first; the batch goes whole, as one request.
      this.seal();
      this.sealed.push(batch);
      this.queuedBytes += batch.bytes;
      this.schedule();
    });
    return Array.from({ length: records.length }, (_, i) => first + i);
  }

  async truncateBefore(seq: number): Promise<number> {
    this.check();
    if (!Number.isSafeInteger(seq) || seq < 0) {
      throw new SegmemError('INVALID_ARGUMENT', `seq must be a non-negative integer; got ${seq}`);
    }
    const r = await this.session.call({
      type: 'LOG_TRUNCATE',
      seq: this.session.seq(),
      name: this.name,
      before: seq,
    });
    return r.first;
  }

  async info(): Promise<LogInfo> {
    this.check();
    const r = await this.session.call({
      type: 'LOG_READ',
      name: this.name,
      from: null,
      maxBytes: 0,
      waitMs: 0,
    });
    return { first: r.first, next: r.next, bytes: r.bytes };
  }

  read(opts: LogReadOptions = {}): AsyncIterable<LogRecord> {
    this.check();
    checkLogReadOptions(opts);
    const { from, follow = false, signal } = opts;
    return this.records(from ?? null, follow, signal);
  }

  private async *records(
    start: number | null,
    follow: boolean,
    signal?: AbortSignal,
  ): AsyncGenerator<LogRecord> {
    let from = start;
    for (;;) {
      this.check();
      let r: Awaited<ReturnType<typeof this.readOnce>>;
      try {
        r = await this.readOnce(from, follow ? FOLLOW_WAIT_MS : 0, signal);
      } catch (err) {
        // Following a log that does not exist yet: the server held the read for its first record and
        // none came within the wait; ask again.
        if (follow && SegmemError.is(err, 'NOT_FOUND')) continue;
        throw err;
      }
      const records = logRecords(r);
      for (let i = 0; i < records.length; i++) yield { seq: r.from + i, data: records[i]! };
      from = r.from + r.sizes.length;
      if (!follow && from >= r.next) return;
    }
  }

  /** One LOG_READ; an abort gives up on it at once (the server's wait ends by itself). */
  private readOnce(from: number | null, waitMs: number, signal?: AbortSignal) {
    if (signal?.aborted) return Promise.reject(aborted());
    const { requestId, promise } = this.session.start({
      type: 'LOG_READ',
      name: this.name,
      from,
      maxBytes: READ_BYTES,
      waitMs,
    });
    const answer = promise as Promise<{ from: number; next: number; sizes: number[]; payload: Uint8Array }>;
    if (!signal) return answer;
    return new Promise<Awaited<typeof answer>>((resolve, reject) => {
      const onAbort = () => {
        this.session.abandon(requestId);
        reject(aborted());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      answer.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  // --- batching ---

  private seal(): void {
    if (this.open.records.length === 0) return;
    this.sealed.push(this.open);
    this.open = newBatch();
  }

  /** Sends on the next turn of the loop, so appends made together share a batch. */
  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    this.session.env.setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (this.inflight < MAX_INFLIGHT_BATCHES) {
      if (this.sealed.length === 0) this.seal();
      const batch = this.sealed.shift();
      if (!batch) return;
      this.send(batch);
    }
  }

  private send(batch: Batch): void {
    this.inflight++;
    const sizes = batch.records.map((r) => r.length);
    const payload =
      batch.records.length === 1 ? batch.records[0]! : Buffer.concat(batch.records, batch.bytes);
    this.session
      .call({
        type: 'LOG_APPEND',
        seq: this.session.seq(),
        name: this.name,
        sizes,
        maxBytes: this.maxBytes,
        payload,
      })
      .then(
        (ok) => {
          let seq = ok.first;
          for (const w of batch.waiters) {
            w.resolve(seq);
            seq += w.count;
          }
        },
        (err: unknown) => {
          for (const w of batch.waiters) w.reject(err);
        },
      )
      .finally(() => {
        this.inflight--;
        this.queuedBytes -= batch.bytes;
        while (this.spaceWaiters.length > 0 && this.queuedBytes <= MAX_QUEUED_BYTES)
          this.spaceWaiters.shift()!();
        // What accumulated while this batch was out goes now: the batch size follows the load.
        this.pump();
      });
  }
}

function aborted(): SegmemError {
  return new SegmemError('ABORTED', 'the log read was aborted');
}
