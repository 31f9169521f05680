/**
 * The Segment API over a session: named objects in the local mapped segment, read/write access with
 * page rights, a cache of object pages validated by version, and write releases that ship only the
 * bytes that changed.
 */
import {
  type AcquireOk,
  type Changed,
  changedRanges,
  type EnvTimer,
  gatherRanges,
  type Invalidate,
  MAX_TIMEOUT_MS,
  type ObjectRecord,
  type Probed,
  type Revoke,
  SegmemError,
  type SlotsOk,
  validateName,
  validatePrefix,
  validateSize,
} from '@segmem/protocol';
import { checkPagesAnswer, FOLLOWER_READ_MIN_BYTES, type FollowerReads } from './follower-reads.js';
import { LocalLocks, type LocalTurn } from './local-locks.js';
import type { MappedSegment } from './mapped-segment.js';
import type { ProbeGroup, ProbeHub } from './probes.js';
import type { Session } from './session.js';
import { type LogOptions, type SharedLog, SharedLogImpl } from './shared-log.js';
import { type WatchEvent, Watches, type WatchOptions } from './watch.js';

/**
 * What the servers know of one object: its name, size, place in the segment and version.
 *
 * @example
 * ```ts
 * const { size, version } = await seg.stat('counter');
 * ```
 */
export interface ObjectInfo {
  /**
   * The object's name: 1..255 bytes of UTF-8 without control characters (U+0000..U+001F, U+007F..U+009F);
   * `/` is an ordinary character.
   */
  name: string;
  /** Its size in bytes, as created (1..32 MiB). */
  size: number;
  /** Where it starts in the segment's address space, in bytes (a multiple of the 4096-byte page). */
  address: number;
  /** Starts at 1 when the object is created and grows with every write release. */
  version: number;
}

/**
 * Access to one object, from {@link Segment.acquireRead} or {@link Segment.acquireWrite} until
 * {@link Handle.release}. Its `bytes` are the object's memory in this process: with the native addon,
 * touching them without holding the object aborts the process with a message naming it.
 *
 * @example
 * ```ts
 * const h = await seg.acquireWrite('counter');
 * try {
 *   h.view.setUint32(0, h.view.getUint32(0, true) + 1, true);
 * } finally {
 *   await h.release(); // ships the changed bytes; durable when it resolves
 * }
 * ```
 */
export interface Handle {
  /** The object's name. */
  readonly name: string;
  /** `'read'` (shared with other readers) or `'write'` (exclusive). */
  readonly mode: 'read' | 'write';
  /** The object's bytes, in the local segment; usable until release. */
  readonly bytes: Buffer;
  /** A DataView over the same memory as `bytes`. */
  readonly view: DataView;
  /** The object's version when access was granted. */
  readonly version: number;
  /**
   * Fencing token of this grant: strictly increasing per object, across leader changes too. The server
   * refuses a release under a stale token; pass it on to other systems the object's holder writes to.
   */
  readonly token: number;
  /**
   * Gives the access back. A write release sends the bytes that changed since the acquire and resolves
   * once they are committed (on a majority of the servers, durable under their fsync policy); the version
   * then grows by one. A read release resolves at once. Rejects with `LOCK_LOST` if the session lost the
   * object meanwhile (the write is then discarded), with `UNAVAILABLE` and `details.reason`
   * `'OUTCOME_UNKNOWN'` if the session ended while a write release was unanswered (it may or may not have
   * been applied: read the object to find out), and with `INVALID_ARGUMENT` if called twice.
   *
   * @example
   * ```ts
   * const h = await seg.acquireRead('config');
   * const flags = h.bytes.readUInt8(0);
   * await h.release();
   * ```
   */
  release(): Promise<void>;
}

/**
 * Limits on how long an acquire waits.
 *
 * @example
 * ```ts
 * const h = await seg.acquireWrite('jobs', { timeoutMs: 2000, signal: AbortSignal.timeout(5000) });
 * ```
 */
export interface AcquireOptions {
  /**
   * Give up after this many milliseconds with TIMEOUT; without it, wait as long as it takes. An integer
   * 0..2147483647; 0 gives up at once when the object is held.
   */
  timeoutMs?: number;
  /** Abort the wait with ABORTED; a grant that races the abort is released at once. */
  signal?: AbortSignal;
}

/**
 * A session with a segmem store, from {@link connect} or {@link openEmbedded}: named objects that
 * programs take read (shared) or write (exclusive) access to, and shared logs. Readers wait while a writer
 * holds an object; a writer waits while anyone holds it; waiters are served in FIFO order.
 *
 * @example
 * ```ts
 * const seg = await connect({ servers: ['127.0.0.1:7401'] });
 * await seg.create('compteur', 4, { ifNotExists: true });
 * await seg.update('compteur', (h) => h.bytes.writeInt32LE(h.bytes.readInt32LE(0) + 1));
 * console.log(await seg.read('compteur', (h) => h.bytes.readInt32LE(0)));
 * await seg.close();
 * ```
 */
export interface Segment {
  /**
   * Creates a zero-filled, page-aligned object of `size` bytes (1..32 MiB). Rejects with `ALREADY_EXISTS`
   * if the name is taken, unless `ifNotExists` is true (then it resolves with the existing object), and
   * with `NO_SPACE` when the segment has no room left. Durable when it resolves. A name is 1..255 bytes of
   * UTF-8 without control characters (U+0000..U+001F, U+007F..U+009F); another is `INVALID_ARGUMENT`.
   *
   * @example
   * ```ts
   * const info = await seg.create('jobs/42', 4096, { ifNotExists: true });
   * ```
   */
  create(name: string, size: number, opts?: { ifNotExists?: boolean }): Promise<ObjectInfo>;
  /**
   * Takes shared access: waits while a writer holds the object (or a writer is queued before this call).
   * The handle sees every write release that resolved before this call. Rejects with `NOT_FOUND`,
   * `TIMEOUT`, `ABORTED`, or `UNAVAILABLE` once no server has been reachable for `sessionTimeoutMs`.
   *
   * @example
   * ```ts
   * const h = await seg.acquireRead('config', { timeoutMs: 1000 });
   * ```
   */
  acquireRead(name: string, opts?: AcquireOptions): Promise<Handle>;
  /**
   * Takes exclusive access: waits while anyone holds the object, this session included (a second acquire
   * of an object the session holds waits for the first release). Rejects as {@link Segment.acquireRead}.
   *
   * @example
   * ```ts
   * const h = await seg.acquireWrite('counter');
   * h.bytes.writeInt32LE(h.bytes.readInt32LE(0) + 1);
   * await h.release();
   * ```
   */
  acquireWrite(name: string, opts?: AcquireOptions): Promise<Handle>;
  /**
   * Read access around `fn`: acquires, calls `fn` with the handle, releases (also when `fn` throws) and
   * resolves with what `fn` returned.
   *
   * @example
   * ```ts
   * const value = await seg.read('counter', (h) => h.bytes.readInt32LE(0));
   * ```
   */
  read<T>(name: string, fn: (h: Handle) => T | Promise<T>): Promise<T>;
  /**
   * Write access around `fn`: acquires, calls `fn`, releases, and resolves with what `fn` returned once
   * the change is durable. If `fn` throws, its changes are undone and nothing is written.
   *
   * @example
   * ```ts
   * await seg.update('counter', (h) => h.bytes.writeInt32LE(h.bytes.readInt32LE(0) + 1));
   * ```
   */
  update<T>(name: string, fn: (h: Handle) => T | Promise<T>): Promise<T>;
  /**
   * The object's size, address and current version, without taking access. Rejects with `NOT_FOUND`.
   *
   * @example
   * ```ts
   * const { version } = await seg.stat('counter');
   * ```
   */
  stat(name: string): Promise<ObjectInfo>;
  /**
   * The objects whose name starts with `prefix` (all of them by default).
   *
   * @example
   * ```ts
   * for (const o of await seg.list('jobs/')) console.log(o.name, o.size);
   * ```
   */
  list(prefix?: string): Promise<ObjectInfo[]>;
  /**
   * Deletes the object (or shared log) and frees its pages. An object is deleted once its holders have
   * released it: the delete waits in the object's queue like a writer (first in, first out), and the
   * acquires queued behind it then fail with `NOT_FOUND`. A shared log is deleted at once. `opts` bound
   * the wait as for an acquire (`TIMEOUT`, `ABORTED`; the object then stays). Handles of this process
   * count as holders too (its tasks share the session): the delete waits for them like a writer, so a task
   * that deletes an object it holds waits for itself. Rejects with `NOT_FOUND`, and with `DEADLOCK` when the
   * wait would close a cycle of waits between sessions.
   *
   * @example
   * ```ts
   * await seg.delete('jobs/42', { timeoutMs: 1000 });
   * ```
   */
  delete(name: string, opts?: AcquireOptions): Promise<void>;
  /**
   * The shared log `name` (created by its first append; `opts.maxBytes` sets its retention then). One
   * handle per name per segment, so appends from anywhere in the process share its batches.
   *
   * @example
   * ```ts
   * const seq = await seg.log('events').append(JSON.stringify({ kind: 'started' }));
   * ```
   */
  log(name: string, opts?: LogOptions): SharedLog;
  /**
   * The committed changes of object `name`, as they happen: one item per write release, carrying the
   * object's version after it, in increasing version order. A consumer slower than the writers is not
   * queued for: it gets the newest version when it asks again (versions increase by one per write release,
   * so a jump counts the changes folded into one item). Across a reconnect, a leader change or a new
   * session the watch goes on from the last version seen, without repeats. When the object is deleted the
   * iteration rejects with `NOT_FOUND` (after the last version before it). `break`, `signal` (then
   * `ABORTED`) and {@link Segment.close} (then `CLOSED`) end it, on the server too. The first `next()`
   * rejects with `NOT_FOUND` when there is no such object, and with `INVALID_ARGUMENT` when this session
   * already watches MAX_WATCHES_PER_SESSION (1024) objects.
   *
   * @example
   * ```ts
   * const stop = new AbortController();
   * for await (const { version } of seg.watch('config', { signal: stop.signal })) {
   *   const text = await seg.read('config', (h) => h.bytes.toString('utf8'));
   *   console.log(`config is now version ${version}: ${text}`);
   * }
   * ```
   */
  watch(name: string, opts?: WatchOptions): AsyncIterable<WatchEvent>;
  /**
   * Ends the session at once: every lock it holds is released, unreleased writes are discarded, and later
   * calls reject with `CLOSED`. An embedded segment also closes its store.
   *
   * @example
   * ```ts
   * process.once('SIGTERM', () => seg.close());
   * ```
   */
  close(): Promise<void>;
}

/** What the client knows of one object it has seen. */
interface CachedObject {
  id: number;
  name: string;
  size: number;
  address: number;
  /** Version of the local copy; 0 when the local copy is not trustworthy. */
  version: number;
  readHolds: number;
  writeHeld: boolean;
  /** Acquires sent for this object and not answered yet: their grants are deltas against the local bytes. */
  inflight: number;
  /**
   * This process's write release of the object, until its answer is in. Until then the local bytes hold a
   * write the group may still refuse, so a grant that arrives meanwhile waits for the outcome.
   */
  releasing: Promise<unknown> | null;
  /**
   * The grant this session keeps at the servers to share among its handles and to serve later acquires
   * locally (a delegation): a read grant serves reads, a write grant serves both. Null: none held.
   */
  grant: CachedGrant | null;
  /** Handles using `grant` now. */
  grantUsers: number;
  /**
   * Another session waits for the object: `grant` goes back as soon as no handle uses it, and until this
   * session holds nothing of the object, its new acquires wait (a waiting writer is not starved by this
   * session's overlapping reads, which the servers would grant past it).
   */
  revoked: boolean;
  /** Acquires waiting for this session to hold nothing of the object (see `revoked`). */
  drainWaiters: (() => void)[];
  /** After a revocation, grants of this object are not kept until then (this process's clock): no thrashing. */
  noKeepUntilMs: number;
}

/** A grant a session keeps (see CachedObject.grant). */
interface CachedGrant {
  mode: 'read' | 'write';
  token: number;
  /** The session's lease stamp when the grant came (see Session.leaseStamp). */
  stamp: number;
}

/** How long an object's grants are not kept after it was revoked (another session wanted it). */
const REVOKED_NO_KEEP_MS = 1000;

/** How long past its timeoutMs an acquire waits for the server's own TIMEOUT before giving up locally. */
const ACQUIRE_GUARD_GRACE_MS = 1000;

/** INVALID_ARGUMENT unless `timeoutMs` is absent or an integer 0..MAX_TIMEOUT_MS. */
export function checkTimeoutMs(timeoutMs: number | undefined): void {
  if (
    timeoutMs !== undefined &&
    !(Number.isInteger(timeoutMs) && timeoutMs >= 0 && timeoutMs <= MAX_TIMEOUT_MS)
  ) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `timeoutMs must be an integer 0..${MAX_TIMEOUT_MS}; got ${String(timeoutMs)}`,
    );
  }
}

function info(r: ObjectRecord): ObjectInfo {
  return { name: r.name, size: r.size, address: r.address, version: r.version };
}

/**
 * Runs `fn` with the handle `h` and releases it, also when `fn` throws; a write handle's changes are undone
 * first then, so the release ships nothing (what {@link Segment.read} and {@link Segment.update} do). The
 * ShardedSegment's read and update use it; SegmentImpl keeps its own bodies, whose exact sequence of awaits
 * the simulator's recorded seeds depend on.
 */
export async function holding<T>(h: Handle, fn: (h: Handle) => T | Promise<T>): Promise<T> {
  let value: T;
  try {
    value = await fn(h);
  } catch (err) {
    (h as HandleImpl).rollback();
    await h.release();
    throw err;
  }
  await h.release();
  return value;
}

export class SegmentImpl implements Segment, ProbeGroup {
  private readonly byName = new Map<string, CachedObject>();
  private readonly byId = new Map<number, CachedObject>();
  private readonly handles = new Set<HandleImpl>();
  private readonly logs = new Map<string, SharedLogImpl>();
  /** This process's tasks queue here before the server (see local-locks.ts); a held handle's turn. */
  private readonly localLocks = new LocalLocks();
  private readonly localTurns = new Map<HandleImpl, LocalTurn>();
  private lastInvalidationSeq = 0;
  private readonly watches: Watches;
  private closed = false;
  private closing: Promise<void> | null = null;
  /**
   * @internal The simulator's broken variant only (never set otherwise): a copy that a lost write handle
   * could have written stays trusted, as before dropUncommitted existed, so the checkers can show they catch it.
   */
  keepUncommittedCopies = false;
  /**
   * @internal The simulator's broken variant only: a kept grant is used whatever the lease says, so the
   * checkers can show they catch a client that reads its cached copy after its session may have ended.
   */
  ignoreLease = false;
  /** Revocations of objects not cached yet (their grant is on its way): the grant is then not kept. */
  private readonly earlyRevokes = new Set<number>();
  private leaseTimer: EnvTimer | null = null;
  /** Deadlock detection across shard groups (a sharded client's); none for one group. */
  private probes: ProbeHub | null = null;

  constructor(
    private readonly session: Session,
    private readonly mapped: MappedSegment,
    private readonly pageBytes: number,
    private readonly onClose: () => Promise<void> = async () => {},
    /** Where deferred grants get their pages (a cluster's followers); none for one server or embedded. */
    private readonly followerReads: FollowerReads | null = null,
    /** Keep grants after release to serve later acquires locally (delegations). */
    private readonly delegations = true,
  ) {
    this.watches = new Watches(session, () => this.check());
    if (delegations) {
      // While grants are kept, the lease is renewed well before it runs out.
      const everyMs = Math.max(20, Math.floor(session.leaseMs / 3));
      this.leaseTimer = session.env.setInterval(() => {
        if (!this.closed && this.keepsAnyGrant()) this.session.renewLease(this.session.leaseStamp());
      }, everyMs);
      this.leaseTimer.unref();
    }
  }

  /** @internal The objects this session keeps a read grant of and no handle uses (for a simulation's faults). */
  idleReadGrants(): string[] {
    const out: string[] = [];
    for (const c of this.byId.values())
      if (c.grant?.mode === 'read' && c.grantUsers === 0 && !c.revoked) out.push(c.name);
    return out;
  }

  /** Whether this session keeps any grant (stops at the first: the lease timer asks every few hundred ms). */
  private keepsAnyGrant(): boolean {
    for (const c of this.byId.values()) if (c.grant) return true;
    return false;
  }

  /** How many objects this session keeps a grant of. */
  keptGrants(): number {
    let n = 0;
    for (const c of this.byId.values()) if (c.grant) n++;
    return n;
  }

  /** Bytes and requests this segment's session moved so far (not part of the pinned API). */
  stats(): {
    bytesSent: number;
    bytesReceived: number;
    requests: number;
    /** Pages of deferred grants read from followers and from the leader. */
    pageReads: { fromFollowers: number; fromLeader: number };
  } {
    const t = { ...this.session.traffic };
    const f = this.followerReads;
    if (f) {
      const r = f.traffic();
      t.bytesSent += r.bytesSent;
      t.bytesReceived += r.bytesReceived;
      t.requests += r.requests;
    }
    return { ...t, pageReads: { ...(f?.stats ?? { fromFollowers: 0, fromLeader: 0 }) } };
  }

  /** The id of this segment's session at its group (UDP hints name it). */
  /** @internal The shard group this segment's session belongs to (0: a cluster without groups). */
  get groupId(): number {
    return this.session.hello.groupId ?? 0;
  }

  get sessionId(): number {
    return this.session.sessionId;
  }

  /** The slot table the group holds, and the group's id (SLOTS). Not pinned. */
  async slots(): Promise<SlotsOk> {
    this.check();
    return this.session.call({ type: 'SLOTS' });
  }

  /** The group's members and their addresses (a single server lists itself without one). Not pinned. */
  async members(): Promise<[string, string | null][]> {
    this.check();
    return (await this.session.call({ type: 'MEMBERSHIP', op: 'list', id: null, address: null })).members;
  }

  /** What the local cache holds for `name` (version 0: dropped, refetched on the next acquire). Diagnostic. */
  cacheInfo(name: string): { id: number; version: number } | undefined {
    const c = this.byName.get(name);
    return c ? { id: c.id, version: c.version } : undefined;
  }

  /** @internal What this process holds, keeps and waits for, per object (for a simulation's liveness report). */
  localState(): string[] {
    const out: string[] = [];
    for (const c of this.byId.values()) {
      const l = this.localLocks.count(c.name);
      if (!holdsAny(c) && c.drainWaiters.length === 0 && l.holders + l.waiting === 0) continue;
      out.push(
        `${c.name}: ${c.readHolds} read ${c.writeHeld ? '1' : '0'} write handles, kept ${c.grant ? `${c.grant.mode} used by ${c.grantUsers}` : 'none'}${c.revoked ? ' revoked' : ''}, ${c.drainWaiters.length} waiting to drain, turns ${l.holders} held ${l.waiting} waiting${c.releasing ? ', releasing' : ''}`,
      );
    }
    return out;
  }

  /** True when page rights guard the objects (the native addon is loaded). */
  get protectedPages(): boolean {
    return this.mapped.protectedPages;
  }

  private check(): void {
    if (this.closed) throw new SegmemError('CLOSED', 'the segment is closed');
  }

  async create(name: string, size: number, opts: { ifNotExists?: boolean } = {}): Promise<ObjectInfo> {
    this.check();
    validateName(name);
    validateSize(size);
    const ifNotExists = opts.ifNotExists ?? false;
    if (typeof ifNotExists !== 'boolean')
      throw new SegmemError('INVALID_ARGUMENT', 'ifNotExists must be a boolean');
    const r = await this.session.call({ type: 'CREATE', seq: this.session.seq(), name, size, ifNotExists });
    return info(r.object);
  }

  async stat(name: string): Promise<ObjectInfo> {
    this.check();
    validateName(name);
    return info((await this.session.call({ type: 'STAT', name })).object);
  }

  async list(prefix = ''): Promise<ObjectInfo[]> {
    this.check();
    validatePrefix(prefix);
    return (await this.session.call({ type: 'LIST', prefix })).objects.map(info);
  }

  async delete(name: string, opts: AcquireOptions = {}): Promise<void> {
    this.check();
    validateName(name);
    const { timeoutMs, signal } = opts;
    checkTimeoutMs(timeoutMs);
    const aborted = () => new SegmemError('ABORTED', `delete of "${name}" was aborted`);
    if (signal?.aborted) throw aborted();
    // Like a writer: after this process's holders of the object (tasks share the session, and the servers
    // refuse a delete from a session holding the object), and without the grant the session keeps of it.
    const env = this.session.env;
    const startMs = env.now();
    const turn = await this.localLocks.enter(name, 'write', { timeoutMs, signal }, env);
    try {
      const kept = this.byName.get(name);
      if (kept) this.returnGrant(kept);
      const leftMs =
        timeoutMs === undefined ? null : Math.max(0, timeoutMs - Math.floor(env.now() - startMs));
      const { requestId, promise } = this.session.start({
        type: 'DELETE',
        seq: this.session.seq(),
        name,
        timeoutMs: leftMs,
      });
      this.probing(requestId, promise);
      if (signal) {
        // The server answers the cancelled wait with ABORTED; a delete applied meanwhile stays applied.
        const onAbort = () =>
          this.session.start({ type: 'CANCEL', requestId, reason: 'ABORTED' }).promise.catch(() => {});
        signal.addEventListener('abort', onAbort, { once: true });
        await promise.finally(() => signal.removeEventListener('abort', onAbort));
      } else await promise;
      const cached = this.byName.get(name);
      if (cached) this.retire(cached);
    } finally {
      turn.leave();
    }
  }

  log(name: string, opts: LogOptions = {}): SharedLog {
    this.check();
    // One handle per name, so appends from anywhere in the process share its batches.
    let log = this.logs.get(name);
    if (!log) {
      log = new SharedLogImpl(this.session, name, opts, () => this.check());
      this.logs.set(name, log);
    }
    return log;
  }

  watch(name: string, opts?: WatchOptions): AsyncIterable<WatchEvent> {
    return this.watches.watch(name, opts);
  }

  /** @internal Takes part in deadlock detection across shard groups through `hub` (a sharded client's). */
  attachProbes(hub: ProbeHub): void {
    this.probes = hub;
  }

  /** A PROBED push: a probe of a cycle of waits across shard groups reached this session. */
  onProbed(msg: Probed): void {
    this.probes?.onProbed(this, msg);
  }

  sendProbe(initiator: string, probeId: number, hops: number): void {
    if (this.closed) return;
    this.session.start({ type: 'PROBE', initiator, probeId, hops }).promise.catch(() => {});
  }

  cancelForDeadlock(requestId: number): void {
    if (this.closed) return;
    this.session.start({ type: 'CANCEL', requestId, reason: 'DEADLOCK' }).promise.catch(() => {});
  }

  keepsIdleGrant(name: string): boolean {
    const c = this.byName.get(name);
    return c?.grant !== undefined && c.grant !== null && c.grantUsers === 0;
  }

  /** Tells the probe hub, if any, that the wait `requestId` lasts until `answered` settles. */
  private probing(requestId: number, answered: Promise<unknown>): void {
    if (!this.probes) return;
    const ended = this.probes.waitStarted(this, requestId);
    answered.then(ended, ended);
  }

  /** A CHANGED push: objects this session watches changed. */
  onChanged(msg: Changed): void {
    this.watches.onChanged(msg);
  }

  acquireRead(name: string, opts?: AcquireOptions): Promise<Handle> {
    return this.acquire(name, 'read', opts);
  }

  acquireWrite(name: string, opts?: AcquireOptions): Promise<Handle> {
    return this.acquire(name, 'write', opts);
  }

  async read<T>(name: string, fn: (h: Handle) => T | Promise<T>): Promise<T> {
    const h = await this.acquireRead(name);
    try {
      return await fn(h);
    } finally {
      await h.release();
    }
  }

  /** Write access around `fn`. If `fn` throws, its changes are undone and the release ships nothing. */
  async update<T>(name: string, fn: (h: Handle) => T | Promise<T>): Promise<T> {
    const h = (await this.acquireWrite(name)) as HandleImpl;
    let value: T;
    try {
      value = await fn(h);
    } catch (err) {
      h.rollback();
      await h.release();
      throw err;
    }
    await h.release();
    return value;
  }

  private async acquire(name: string, mode: 'read' | 'write', opts: AcquireOptions = {}): Promise<Handle> {
    this.check();
    validateName(name);
    const { timeoutMs, signal } = opts;
    checkTimeoutMs(timeoutMs);
    if (signal?.aborted) throw new SegmemError('ABORTED', `acquire of "${name}" was aborted`);
    const env = this.session.env;
    const startMs = env.now();
    const turn = await this.localLocks.enter(name, mode, opts, env);
    // Whole milliseconds: the wire takes integers.
    const waitedMs = Math.floor(env.now() - startMs);
    const leftMs = timeoutMs === undefined ? undefined : Math.max(0, timeoutMs - waitedMs);
    try {
      let handle: Handle;
      try {
        handle = await this.acquireAtServer(name, mode, leftMs, signal);
      } catch (err) {
        // A cycle of waits may pass through a grant this session keeps with no handle using it: the servers
        // cannot tell it from one in use. Those go back (ahead of the retry, on the same session), and the
        // acquire is asked once more; a cycle through handles in use is refused again.
        if (!SegmemError.is(err, 'DEADLOCK') || !this.returnIdleGrants()) throw err;
        const again =
          timeoutMs === undefined ? undefined : Math.max(0, timeoutMs - Math.floor(env.now() - startMs));
        handle = await this.acquireAtServer(name, mode, again, signal);
      }
      this.localTurns.set(handle as HandleImpl, turn);
      return handle;
    } catch (err) {
      turn.leave();
      throw err;
    }
  }

  /** Gives back every kept grant no handle uses; true if there was one. */
  private returnIdleGrants(): boolean {
    let returned = false;
    for (const c of this.byName.values()) {
      if (c.grant && c.grantUsers === 0) {
        this.returnGrant(c);
        returned = true;
      }
    }
    return returned;
  }

  private async acquireAtServer(
    name: string,
    mode: 'read' | 'write',
    timeoutMs: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Handle> {
    if (signal?.aborted) throw new SegmemError('ABORTED', `acquire of "${name}" was aborted`);
    if (this.delegations) {
      const local = await this.acquireLocally(name, mode, timeoutMs, signal);
      if (local) return local;
    }
    const revoked = this.byName.get(name);
    if (revoked?.revoked && holdsAny(revoked)) {
      await this.bounded(new Promise<void>((r) => revoked.drainWaiters.push(r)), name, timeoutMs, signal);
    }
    const cached = this.byName.get(name);
    const fresh = cached && cached.version > 0;
    // While this acquire is out, an invalidation must not wipe the bytes its grant will be a delta against.
    if (fresh) cached.inflight++;
    const seq = this.session.seq();
    const { requestId, promise } = this.session.start({
      type: 'ACQUIRE',
      seq,
      name,
      mode,
      cachedId: fresh ? cached.id : 0,
      cachedVersion: fresh ? cached.version : 0,
      timeoutMs: timeoutMs ?? null,
      inlineMaxBytes: this.followerReads?.active ? FOLLOWER_READ_MIN_BYTES : null,
    });
    this.probing(requestId, promise);
    // The copy this grant will be a delta against (null: none, the grant carries every page that is not zero).
    const base = fresh ? cached : null;
    // Held until the grant is installed (or the acquire failed), not merely answered: an invalidation
    // processed in between would zero the bytes the grant's delta leaves out.
    const settled = () => {
      if (fresh) cached.inflight--;
    };
    if (!signal && timeoutMs === undefined) {
      try {
        return await this.installGrant((await promise) as AcquireOk, mode, base);
      } finally {
        settled();
      }
    }
    return new Promise<Handle>((resolve, reject) => {
      let gaveUp = false;
      const env = this.session.env;
      let guard: EnvTimer | undefined;
      const giveUp = (err: SegmemError, reason: 'TIMEOUT' | 'ABORTED') => {
        if (gaveUp) return;
        gaveUp = true;
        env.clearTimeout(guard);
        signal?.removeEventListener('abort', onAbort);
        this.session.start({ type: 'CANCEL', requestId, reason }).promise.catch(() => {});
        reject(err);
      };
      const onAbort = () => giveUp(new SegmemError('ABORTED', `acquire of "${name}" was aborted`), 'ABORTED');
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        // The server times the wait out itself; this guard bounds it when no server answers at all.
        guard = env.setTimeout(() => {
          const err = this.session.isConnected
            ? new SegmemError('TIMEOUT', `acquire of "${name}" timed out after ${timeoutMs} ms`)
            : new SegmemError(
                'UNAVAILABLE',
                `acquire of "${name}": no server reachable within ${timeoutMs} ms`,
              );
          giveUp(err, 'TIMEOUT');
        }, timeoutMs + ACQUIRE_GUARD_GRACE_MS);
        guard.unref();
      }
      promise.then(
        async (ok) => {
          env.clearTimeout(guard);
          signal?.removeEventListener('abort', onAbort);
          let handle: Handle;
          try {
            handle = await this.installGrant(ok as AcquireOk, mode, base);
          } catch (err) {
            if (!gaveUp) reject(err);
            return;
          } finally {
            settled();
          }
          // The grant raced the abort or the guard: give it straight back.
          if (gaveUp) handle.release().catch(() => {});
          else resolve(handle);
        },
        (err) => {
          settled();
          env.clearTimeout(guard);
          signal?.removeEventListener('abort', onAbort);
          if (!gaveUp) reject(err);
        },
      );
    });
  }

  /**
   * An acquire served by the grant this session keeps, with no message to the servers, while its lease
   * covers the grant (the session is surely alive at the servers, so no other session can have been granted
   * the object). Null when it must go to the servers: no grant kept, revoked, one this acquire's mode
   * exceeds (a kept read grant then goes back first), or held in a conflicting mode by another handle here.
   */
  private async acquireLocally(
    name: string,
    mode: 'read' | 'write',
    timeoutMs: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Handle | null> {
    const c = this.byName.get(name);
    if (!c) return null;
    for (let renewed = false; ; renewed = true) {
      // A write release under the kept grant is still out: whether the grant is kept is in its answer.
      if (c.releasing) await c.releasing.catch(() => {});
      const g = c.grant;
      if (!g || c.revoked || c.inflight > 0) return null;
      if (!this.intact(c) || c.version === 0) {
        // No usable copy under the kept grant: give it back first (same connection, applied before this
        // acquire), or the servers would take the acquire for a second hold by this session.
        if (c.grantUsers === 0) this.returnGrant(c);
        return null;
      }
      if (mode === 'write' && g.mode === 'read') {
        // Given back on the same connection, so the servers apply it before this acquire.
        if (c.grantUsers === 0) this.returnGrant(c);
        return null;
      }
      if (mode === 'write' ? c.writeHeld || c.readHolds > 0 : c.writeHeld) return null;
      if (this.ignoreLease || this.session.leaseCovers(g.stamp)) return this.grantLocally(c, g, mode);
      if (renewed) {
        // The lease could not be confirmed: the grant goes back and the servers decide.
        if (c.grantUsers === 0) this.returnGrant(c);
        return null;
      }
      if (!(await this.bounded(this.session.renewLease(g.stamp), name, timeoutMs, signal))) {
        // No lease (no server reachable, or the session was replaced): the servers decide, without it.
        if (c.grant === g && c.grantUsers === 0) this.returnGrant(c);
        return null;
      }
    }
  }

  /** `promise`, or TIMEOUT/ABORTED for an acquire of `name` whose own limits run out first. */
  private bounded<T>(
    promise: Promise<T>,
    name: string,
    timeoutMs: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<T> {
    if (timeoutMs === undefined && !signal) return promise;
    return new Promise<T>((resolve, reject) => {
      const env = this.session.env;
      const done = () => {
        env.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        done();
        reject(new SegmemError('ABORTED', `acquire of "${name}" was aborted`));
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : env.setTimeout(() => {
              done();
              reject(new SegmemError('TIMEOUT', `acquire of "${name}" timed out after ${timeoutMs} ms`));
            }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      promise.then(
        (v) => {
          done();
          resolve(v);
        },
        (err) => {
          done();
          reject(err);
        },
      );
    });
  }

  /** A handle on the kept grant `g` of `c`: the local bytes are the object's current ones. */
  private grantLocally(c: CachedObject, g: CachedGrant, mode: 'read' | 'write'): Handle {
    const bytes = this.mapped.bytes(c.address, c.size, c.name);
    if (mode === 'write') c.writeHeld = true;
    else c.readHolds++;
    c.grantUsers++;
    this.mapped.setAccess(c.address, c.size, c.writeHeld ? 'write' : 'read');
    const handle = new HandleImpl(this, c, mode, bytes, c.version, g.token, this.mapped.protectedPages);
    handle.shared = true;
    this.handles.add(handle);
    return handle;
  }

  /** Whether `c`'s grant may stay with this session once no handle uses it. */
  private keepable(c: CachedObject): boolean {
    return !this.closed && !c.revoked && this.session.env.now() >= c.noKeepUntilMs && this.intact(c);
  }

  /** Gives `c`'s kept grant back if no handle uses it and it may not stay. */
  private maybeReturn(c: CachedObject): void {
    if (c.grant && c.grantUsers === 0 && !this.keepable(c)) this.returnGrant(c);
  }

  /** Gives `c`'s kept grant back to the servers (pipelined; nothing to wait for). */
  private returnGrant(c: CachedObject): void {
    const g = c.grant;
    if (!g) return;
    c.grant = null;
    if (!this.closed) this.session.giveBack(c.name, g.mode, g.token);
    this.checkDrained(c);
  }

  /** Once this session holds nothing of `c`, the acquires waiting for that go on (to the servers' queue). */
  private checkDrained(c: CachedObject): void {
    if (holdsAny(c)) return;
    c.revoked = false;
    for (const wake of c.drainWaiters.splice(0)) wake();
  }

  /** REVOKE: another session waits for the object; its kept grant goes back once no handle uses it. */
  onRevoke(msg: Revoke): void {
    const c = this.byId.get(msg.objectId);
    if (!c || !holdsAny(c)) {
      // Its grant may be on its way: it will not be kept. Bounded: a stale entry costs one uncached grant.
      if (this.earlyRevokes.size >= 1024) this.earlyRevokes.clear();
      this.earlyRevokes.add(msg.objectId);
      return;
    }
    c.revoked = true;
    c.noKeepUntilMs = this.session.env.now() + REVOKED_NO_KEEP_MS;
    this.maybeReturn(c);
  }

  /**
   * Installs a grant and returns its handle. The page bytes of a deferred grant are read first (from a
   * follower, or the leader). When the copy the grant is a delta against stopped being trustworthy while the
   * acquire was out (a write to it was discarded), every page is read instead and the copy starts again from
   * zeros. The grant is given back if its bytes cannot be had.
   */
  private async installGrant(
    grant: AcquireOk,
    mode: 'read' | 'write',
    base: CachedObject | null,
  ): Promise<Handle> {
    let baseId = base?.id ?? 0;
    // The session the grant was made to: if it is replaced while the grant's bytes are being fetched, the
    // grant went with it (and a newer grant may hold the copy already: installing this one would overwrite
    // the pages a write handle is working on).
    const sessionId = this.session.sessionId;
    if (base) base.inflight++;
    try {
      // A write release of this process still unanswered: its outcome decides whether the copy is valid.
      const releasing = base?.releasing ?? this.byId.get(grant.object.id)?.releasing;
      if (releasing) await releasing.catch(() => {});
      if (grant.deferred) grant = { ...grant, payload: await this.fetchPages(grant), deferred: false };
      if (base && base.id === grant.object.id && !this.intact(base)) {
        const pages = Array.from({ length: Math.ceil(grant.object.size / this.pageBytes) }, (_, i) => i);
        grant = { ...grant, pages, payload: await this.fetchPages({ ...grant, pages }) };
        baseId = 0;
      }
    } catch (err) {
      this.session.giveBack(grant.object.name, mode, grant.token);
      throw err;
    } finally {
      if (base) base.inflight--;
    }
    if (this.session.sessionId !== sessionId || this.byId.get(grant.object.id)?.writeHeld)
      throw new SegmemError(
        'LOCK_LOST',
        `the session lost its ${mode} access to "${grant.object.name}" while its pages were being read`,
      );
    // No await from the checks above to here: the copy cannot change in between.
    return this.install(grant, mode, baseId);
  }

  /** The bytes of a grant's pages at its version: from a follower when there are any, else the leader. */
  private async fetchPages(grant: AcquireOk): Promise<Buffer> {
    if (this.followerReads) return this.followerReads.fetch(grant);
    const answer = await this.session.call({
      type: 'READ_PAGES',
      objectId: grant.object.id,
      version: grant.object.version,
      pages: grant.pages,
      waitMs: 0,
    });
    checkPagesAnswer(grant, answer.object.version);
    return Buffer.from(answer.payload.buffer, answer.payload.byteOffset, answer.payload.byteLength);
  }

  /** Whether the local copy `c` is still the one the cache knows (not dropped or replaced since). */
  private intact(c: CachedObject): boolean {
    return this.byId.get(c.id) === c;
  }

  /** {@link granted}, giving the grant back to the server if it cannot be installed locally. */
  private install(grant: AcquireOk, mode: 'read' | 'write', baseId: number): Handle {
    try {
      return this.granted(grant, mode, baseId);
    } catch (err) {
      this.session
        .call({
          type: 'RELEASE',
          seq: this.session.seq(),
          name: grant.object.name,
          mode,
          token: grant.token,
          ranges: [],
          payload: Buffer.alloc(0),
        })
        .catch(() => {});
      if (SegmemError.is(err)) throw err;
      throw new SegmemError(
        'NO_SPACE',
        `cannot map "${grant.object.name}" locally: ${(err as Error).message}`,
      );
    }
  }

  /** Installs a grant in the local segment and returns its handle. */
  private granted(grant: AcquireOk, mode: 'read' | 'write', baseId: number): Handle {
    const rec = grant.object;
    let cached = this.byName.get(rec.name);
    if (cached && (cached.id !== rec.id || cached.address !== rec.address || cached.size !== rec.size)) {
      this.retire(cached);
      cached = undefined;
    }
    const stale = this.byId.get(rec.id);
    if (stale && stale !== cached) this.retire(stale);
    if (!cached) {
      cached = {
        id: rec.id,
        name: rec.name,
        size: rec.size,
        address: rec.address,
        version: 0,
        readHolds: 0,
        writeHeld: false,
        inflight: 0,
        releasing: null,
        grant: null,
        grantUsers: 0,
        revoked: false,
        drainWaiters: [],
        noKeepUntilMs: 0,
      };
      this.byName.set(rec.name, cached);
      this.byId.set(rec.id, cached);
    }
    const bytes = this.mapped.bytes(rec.address, rec.size, rec.name);
    const needsFill = grant.pages.length > 0 || baseId !== rec.id || cached.version === 0;
    if (needsFill) {
      this.mapped.setAccess(rec.address, rec.size, 'write');
      // The server sent pages relative to what we said we held: with nothing valid held, start from zeros.
      if (baseId !== rec.id) this.mapped.zero(rec.address, rec.size);
      const payload = grant.payload;
      let at = 0;
      for (const p of grant.pages) {
        const start = p * this.pageBytes;
        const n = Math.min(this.pageBytes, rec.size - start);
        bytes.set(payload.subarray(at, at + n), start);
        at += n;
      }
    }
    cached.version = rec.version;
    if (mode === 'write') cached.writeHeld = true;
    else cached.readHolds++;
    this.mapped.setAccess(rec.address, rec.size, cached.writeHeld ? 'write' : 'read');
    const handle = new HandleImpl(
      this,
      cached,
      mode,
      bytes,
      rec.version,
      grant.token,
      this.mapped.protectedPages,
    );
    this.handles.add(handle);
    if (this.delegations) this.keepGrant(cached, grant, mode, handle);
    return handle;
  }

  /** Makes a fresh grant the one the session keeps, unless others want the object or one is kept already. */
  private keepGrant(c: CachedObject, grant: AcquireOk, mode: 'read' | 'write', handle: HandleImpl): void {
    const revokedEarly = this.earlyRevokes.delete(c.id);
    if (grant.contended || revokedEarly) {
      c.noKeepUntilMs = this.session.env.now() + REVOKED_NO_KEEP_MS;
      return;
    }
    if (c.grant || this.session.env.now() < c.noKeepUntilMs) return;
    c.grant = { mode, token: grant.token, stamp: this.session.leaseStamp() };
    c.grantUsers = 1;
    c.revoked = false;
    handle.shared = true;
  }

  /** Called by a handle's release(). */
  async releaseHandle(h: HandleImpl, cached: CachedObject): Promise<void> {
    // The next local acquire goes out once the server has this release: it would otherwise meet our own grant.
    const turn = this.localTurns.get(h);
    this.localTurns.delete(h);
    const leave = () => turn?.leave();
    if (h.mode === 'read') {
      // Without page rights nothing stopped a write through a read handle: it must not pass unseen.
      const misuse = h.twin !== null && !h.bytes.equals(h.twin);
      this.endHold(h, cached);
      if (misuse) this.dropUncommitted(cached);
      if (h.shared) {
        // The kept grant serves on; it goes back only if it may not stay.
        cached.grantUsers--;
        this.maybeReturn(cached);
        leave();
      } else if (!this.closed) {
        // Pipelined: the server handles it before anything this session sends later; nothing to wait for.
        this.session
          .call({
            type: 'RELEASE',
            seq: this.session.seq(),
            name: cached.name,
            mode: 'read',
            token: h.token,
            ranges: [],
            payload: Buffer.alloc(0),
          })
          .catch(() => {})
          .finally(leave);
      } else leave();
      if (misuse) {
        throw new SegmemError(
          'INVALID_ARGUMENT',
          `"${cached.name}" was written through a read handle; the change is discarded (page protection is off: the native addon is not loaded)`,
          { reason: 'WRITE_THROUGH_READ_HANDLE', name: cached.name },
        );
      }
      return;
    }
    return this.releaseWrite(h, cached).finally(leave);
  }

  private async releaseWrite(h: HandleImpl, cached: CachedObject): Promise<void> {
    if (this.closed) {
      this.abandon(h, cached);
      throw new SegmemError('CLOSED', 'the segment was closed before the release: the write is discarded');
    }
    // After a silence, the session first: if the group ended it, the release is never sent (LOCK_LOST is
    // then exact). Any other failure is the release's own to meet: it may still free a lock the session holds.
    const confirming = this.session.confirmAliveAfterSilence();
    if (confirming) await confirming.catch(() => {});
    // Lost while the session was being confirmed: sessionLost() ended the handle already.
    if (h.lost) throw new SegmemError('LOCK_LOST', `the session lost its write access to "${cached.name}"`);
    const ranges = h.twin ? changedRanges(h.bytes, h.twin, this.pageBytes) : [];
    const payload = ranges.length > 0 ? gatherRanges(h.bytes, ranges) : Buffer.alloc(0);
    this.endHold(h, cached);
    // Under the kept grant, the lock stays with the session unless someone waits (the answer says).
    const keep = h.shared && this.keepable(cached);
    const releasing = this.session.call({
      type: 'RELEASE',
      seq: this.session.seq(),
      name: cached.name,
      mode: 'write',
      token: h.token,
      ranges,
      payload,
      ...(keep ? { keep: true } : {}),
    });
    cached.releasing = releasing;
    try {
      const r = await releasing;
      if (cached.version > 0) cached.version = r.version;
      h.bytesSent = payload.length;
      if (h.shared) {
        cached.grantUsers--;
        if (r.kept === true) this.maybeReturn(cached);
        else cached.grant = null;
      }
    } catch (err) {
      if (h.shared) {
        cached.grantUsers--;
        cached.grant = null; // lost, or of unknown fate: never used again
      }
      // Refused, lost or of unknown outcome: the local bytes hold a write the group may not have.
      this.dropUncommitted(cached);
      throw err;
    } finally {
      if (cached.releasing === releasing) cached.releasing = null;
    }
  }

  /** Gives up a hold in the local bookkeeping: the handle is gone, and so are the page rights it needed. */
  private endHold(h: HandleImpl, cached: CachedObject): void {
    if (!this.handles.delete(h)) return; // ended already
    if (h.mode === 'read') cached.readHolds--;
    else cached.writeHeld = false;
    this.checkDrained(cached);
    // An object deleted (and its pages maybe reused) while held: its pages are not ours to protect any more.
    if (this.byId.get(cached.id) !== cached) return;
    const access = cached.writeHeld ? 'write' : cached.readHolds > 0 ? 'read' : 'none';
    this.mapped.setAccess(cached.address, cached.size, access);
  }

  /**
   * Ends a handle whose access is gone without a commit (its session was lost, or the segment closed). A
   * write handle's bytes may hold changes the group never got: they are dropped at once.
   */
  private abandon(h: HandleImpl, cached: CachedObject): void {
    this.localTurns.get(h)?.leave();
    this.localTurns.delete(h);
    h.lost = true;
    if (h.shared && this.handles.has(h)) cached.grantUsers--;
    this.endHold(h, cached);
    if (h.mode === 'write') this.dropUncommitted(cached);
  }

  /**
   * The one way out for a copy that a handle could have written to without a commit (a lost lock, a lost
   * session, a failed or abandoned write release, a write through a read handle): the copy is never trusted
   * again. Its pages are dropped before anything else in the process can see them, page rights go with them,
   * and the next grant of the object carries every page; a grant already on its way that is a delta against
   * this copy sees it is gone and reads every page instead.
   */
  private dropUncommitted(cached: CachedObject): void {
    if (this.keepUncommittedCopies) return;
    cached.version = 0;
    this.retire(cached);
  }

  onInvalidate(msg: Invalidate): void {
    if (this.lastInvalidationSeq !== 0 && msg.seq !== this.lastInvalidationSeq + 1) {
      this.revalidate();
    }
    this.lastInvalidationSeq = msg.seq;
    this.invalidateObjects(msg.objects);
  }

  /** UDP hints: best effort and unordered, so they only drop pages, never move the sequence. */
  onHint(objects: [number, number][]): void {
    this.invalidateObjects(objects);
  }

  private invalidateObjects(objects: [number, number][]): void {
    for (const [id, version] of objects) {
      const cached = this.byId.get(id);
      if (!cached) continue;
      if (version === 0) {
        this.retire(cached); // deleted: its pages may soon belong to another object
        continue;
      }
      // Held, or a grant is on its way (a delta against these bytes): keep them.
      if (cached.readHolds > 0 || cached.writeHeld || cached.inflight > 0) continue;
      if (cached.version !== 0 && cached.version < version) {
        cached.version = 0;
        this.mapped.zero(cached.address, cached.size); // free the stale pages now
      }
    }
  }

  /** After a missed push or a reconnect: ask the server which cached copies are stale. */
  revalidate(): void {
    this.lastInvalidationSeq = 0;
    // A REVOKE may have been missed too: kept grants go back (each as soon as no handle uses it).
    for (const c of this.byId.values()) {
      if (!c.grant) continue;
      c.revoked = true;
      this.maybeReturn(c);
    }
    this.watches.resync();
    const objects: [number, number][] = [];
    for (const c of this.byId.values()) if (c.version > 0) objects.push([c.id, c.version]);
    if (objects.length === 0) return;
    this.session
      .call({ type: 'VALIDATE', objects })
      // The answer names each stale object's version at the server. A copy refreshed since the request
      // left (by this client's own grant or release) may already be that new: only older copies are dropped.
      .then((r) => this.invalidateObjects(r.stale))
      .catch(() => {});
  }

  /**
   * The session was replaced: every handle lost its lock (write handles lose their uncommitted bytes and
   * every handle its page rights now), and no cached version can be trusted.
   */
  sessionLost(): void {
    this.lastInvalidationSeq = 0;
    // The servers released every grant of the old session: none is kept any more.
    for (const h of this.handles) h.entry.grant = null;
    for (const c of this.byId.values()) c.grant = null;
    this.watches.resync();
    for (const h of [...this.handles]) this.abandon(h, h.entry);
    for (const c of this.byId.values()) {
      c.version = 0;
      c.grantUsers = 0;
      this.checkDrained(c);
    }
  }

  /** An entry replaced by a newer object: forgotten, and its pages freed unless a handle still holds them. */
  private retire(cached: CachedObject): void {
    if (cached.readHolds === 0 && !cached.writeHeld) {
      this.drop(cached);
      return;
    }
    // Still held: leave the pages alone (the new object may live there); the handle's release sees it is not current.
    if (this.byName.get(cached.name) === cached) this.byName.delete(cached.name);
    if (this.byId.get(cached.id) === cached) this.byId.delete(cached.id);
  }

  private drop(cached: CachedObject): void {
    this.returnGrant(cached);
    this.byName.delete(cached.name);
    this.byId.delete(cached.id);
    this.mapped.forget(cached.address, cached.size);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      this.session.env.clearInterval(this.leaseTimer);
      this.watches.close();
      await this.session.close();
      for (const h of [...this.handles]) this.abandon(h, h.entry);
      this.mapped.close();
      await this.onClose();
    })();
    return this.closing;
  }
}

/** Whether this session holds anything of `c`: a handle, or a kept grant. */
function holdsAny(c: CachedObject): boolean {
  return c.readHolds > 0 || c.writeHeld || c.grant !== null;
}

export class HandleImpl implements Handle {
  readonly view: DataView;
  /** The bytes at acquire: what a write changed, or (without page rights) whether a read handle was written. */
  twin: Buffer | null;
  released = false;
  lost = false;
  /** Uses its segment's kept grant of the object (see CachedObject.grant) instead of a grant of its own. */
  shared = false;
  /** Bytes the write release shipped (for benchmarks and tests). */
  bytesSent = 0;

  constructor(
    private readonly segment: SegmentImpl,
    /** The cache entry of the object this handle holds. */
    readonly entry: CachedObject,
    readonly mode: 'read' | 'write',
    readonly bytes: Buffer,
    readonly version: number,
    readonly token: number,
    /** Whether page rights guard the bytes; without them a read handle keeps a twin to catch writes. */
    protectedPages: boolean,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.twin = mode === 'write' || !protectedPages ? Buffer.from(bytes) : null;
  }

  get name(): string {
    return this.entry.name;
  }

  /** Restores the bytes as they were at acquire. */
  rollback(): void {
    if (this.mode === 'write' && this.twin && !this.released) this.twin.copy(this.bytes);
  }

  release(): Promise<void> {
    if (this.released) {
      return Promise.reject(
        new SegmemError(
          'INVALID_ARGUMENT',
          `this ${this.mode} handle on "${this.name}" was already released`,
        ),
      );
    }
    this.released = true;
    if (this.lost) {
      return Promise.reject(
        new SegmemError('LOCK_LOST', `the session lost its ${this.mode} access to "${this.name}"`),
      );
    }
    return this.segment.releaseHandle(this, this.entry);
  }
}
