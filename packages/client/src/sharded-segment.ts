/**
 * A segment over a cluster of several shard groups: every call that names an object or a log goes to the
 * group owning the name's hash slot (SlotRouter), through one SegmentImpl (with its own session) per
 * group, opened on first use. A MOVED redirect teaches the router a newer table and the call goes on at
 * the new owner. Object ids, sessions, grants and watches are per group, so keeping one SegmentImpl per
 * group keys them by (group, id); the groups' address ranges are disjoint, so they share one local mapped
 * segment, which this class opens once and unmaps once.
 */
import type { RemoteInfo } from 'node:dgram';
import { isIP } from 'node:net';
import {
  decodeInvalidationDatagram,
  type Env,
  type EnvTimer,
  ownerOf,
  parseHostPort,
  SegmemError,
  type SlotTable,
  slotOf,
  validateName,
  validatePrefix,
  validateSize,
} from '@segmem/protocol';
import type { MappedSegment } from './mapped-segment.js';
import { ProbeHub } from './probes.js';
import {
  type AcquireOptions,
  checkTimeoutMs,
  type Handle,
  holding,
  type ObjectInfo,
  type Segment,
  type SegmentImpl,
} from './segment.js';
import {
  checkLog,
  checkLogReadOptions,
  type LogInfo,
  type LogOptions,
  type LogReadOptions,
  type LogRecord,
  type SharedLog,
} from './shared-log.js';
import { SlotRouter } from './slot-router.js';
import { checkWatch, type WatchEvent, type WatchOptions } from './watch.js';

/**
 * How many MOVED redirects one call follows (each with a newer table than the one before); a slot moves
 * once per table version, so more means the groups disagree and the caller hears of it.
 */
export const MAX_REDIRECTS = 5;

/**
 * Opens a segment (a session) with group `group` at `servers` (the group's members, as the slot table lists
 * them; the array may be updated in place when a newer table lists other members). It shares the mapped
 * segment and must not unmap it when it closes.
 */
export type OpenGroup = (group: number, servers: string[]) => Promise<SegmentImpl>;

interface GroupEntry {
  servers: string[];
  segment: SegmentImpl | null;
  opening: Promise<SegmentImpl> | null;
}

/** The name sorting a single group's LIST uses (UTF-16 code units, as the state machine sorts). */
function byName(a: ObjectInfo, b: ObjectInfo): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

export class ShardedSegment implements Segment {
  /** @internal Deadlock detection across the groups: every group's segment takes part through it. */
  readonly probes: ProbeHub;
  private readonly router: SlotRouter;
  private readonly groups = new Map<number, GroupEntry>();
  private readonly logs = new Map<string, RoutedLog>();
  /** host:port of the table's members (IP literals only) -> their group: where a UDP hint came from. */
  private hintSources = new Map<string, number>();
  private closed = false;
  private closing: Promise<void> | null = null;

  constructor(
    table: SlotTable,
    /** The group of the session already open, and its segment. */
    first: { group: number; segment: SegmentImpl; servers: string[] },
    private readonly mapped: MappedSegment,
    private readonly openGroup: OpenGroup,
    private readonly env: Env,
    /** After every group's session closed and the mapped segment is unmapped (e.g. the UDP socket). */
    private readonly onClose: () => Promise<void> = async () => {},
  ) {
    this.router = new SlotRouter(table);
    this.probes = new ProbeHub(env);
    first.segment.attachProbes(this.probes);
    this.groups.set(first.group, { servers: first.servers, segment: first.segment, opening: null });
    this.tableChanged();
  }

  /** @internal This client's id across the groups, in probes of cycles of waits (random, from the Env). */
  get clientId(): string {
    return this.probes.clientId;
  }

  /** @internal Cycles of waits across groups this client broke by giving up one of its waits. */
  get cyclesBroken(): number {
    return this.probes.cyclesBroken;
  }

  /** The newest slot table seen (from SLOTS, or a MOVED redirect). Not pinned. */
  get table(): SlotTable {
    return this.router.table;
  }

  /** True when page rights guard the objects (the native addon is loaded). */
  get protectedPages(): boolean {
    return this.mapped.protectedPages;
  }

  private check(): void {
    if (this.closed) throw new SegmemError('CLOSED', 'the segment is closed');
  }

  /** Keeps `table` if it is newer; the open groups' server lists and the hint sources follow it. */
  private learn(table: SlotTable): void {
    if (this.router.learn(table)) this.tableChanged();
  }

  private tableChanged(): void {
    const sources = new Map<string, number>();
    for (const g of this.router.table.groups) {
      const addresses = g.members.map(([, address]) => address);
      const entry = this.groups.get(g.id);
      // A reconnection dials the members the newest table lists (tcpDial reads the array on every dial).
      if (entry && addresses.length > 0) entry.servers.splice(0, entry.servers.length, ...addresses);
      for (const address of addresses) {
        const { host, port } = parseHostPort(address, 'slot table member address');
        if (isIP(host) !== 0) sources.set(`${host}:${port}`, g.id);
      }
    }
    this.hintSources = sources;
  }

  /**
   * The segment of group `group`, opened on first use from the members the table lists. An open bounded by
   * `leftMs` or `signal` gives up on them (UNAVAILABLE or ABORTED); the open itself goes on, bounded by the
   * session's own deadline, and a later call uses it. A failed open is tried again by the next call.
   */
  private segmentOf(group: number, leftMs?: number, signal?: AbortSignal): Promise<SegmentImpl> {
    this.check();
    let entry = this.groups.get(group);
    if (entry?.segment) return Promise.resolve(entry.segment);
    if (!entry) {
      const members = this.router.table.groups.find((g) => g.id === group)?.members ?? [];
      entry = { servers: members.map(([, address]) => address), segment: null, opening: null };
      this.groups.set(group, entry);
    }
    if (!entry.opening) {
      if (entry.servers.length === 0) {
        return Promise.reject(
          new SegmemError('UNAVAILABLE', `the slot table lists no servers for group ${group}`, {
            reason: 'NO_GROUP_SERVERS',
            group,
          }),
        );
      }
      const opened = entry;
      opened.opening = this.openGroup(group, opened.servers).then(
        async (segment) => {
          opened.opening = null;
          if (this.closed) {
            await segment.close();
            throw new SegmemError('CLOSED', 'the segment is closed');
          }
          segment.attachProbes(this.probes);
          opened.segment = segment;
          return segment;
        },
        (err: unknown) => {
          opened.opening = null;
          throw err;
        },
      );
      opened.opening.catch(() => {}); // a caller that gave up on it does not wait for its outcome
    }
    if (leftMs === undefined && !signal) return entry.opening!;
    return this.bounded(entry.opening!, group, leftMs, signal);
  }

  /** `opening`, or UNAVAILABLE/ABORTED once `leftMs` or `signal` run out first. */
  private bounded(
    opening: Promise<SegmentImpl>,
    group: number,
    leftMs: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<SegmentImpl> {
    if (signal?.aborted) return Promise.reject(new SegmemError('ABORTED', 'the call was aborted'));
    return new Promise<SegmentImpl>((resolve, reject) => {
      let timer: EnvTimer | undefined;
      const done = () => {
        this.env.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        done();
        reject(new SegmemError('ABORTED', 'the call was aborted'));
      };
      if (leftMs !== undefined) {
        timer = this.env.setTimeout(() => {
          done();
          reject(
            new SegmemError('UNAVAILABLE', `no server of group ${group} answered within ${leftMs} ms`, {
              reason: 'GROUP_UNREACHABLE',
              group,
            }),
          );
        }, leftMs);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      opening.then(
        (segment) => {
          done();
          resolve(segment);
        },
        (err: unknown) => {
          done();
          reject(err);
        },
      );
    });
  }

  /**
   * @internal The segment of the group owning `name` now, and the table version that said so (for
   * {@link followRedirect}).
   */
  async segmentFor(
    name: string,
    leftMs?: number,
    signal?: AbortSignal,
  ): Promise<{ segment: SegmentImpl; version: number }> {
    const version = this.router.table.version;
    const segment = await this.segmentOf(this.router.route(name).group, leftMs, signal);
    return { segment, version };
  }

  /**
   * @internal Whether a call that failed with `err` after being routed by table `version` goes on at the
   * new owner: `err` is a MOVED redirect carrying a newer table (now learnt), and fewer than MAX_REDIRECTS
   * were followed. PROTOCOL when a redirect carries no table or a bad one.
   */
  followRedirect(err: unknown, version: number, redirects: number): boolean {
    const table = this.router.fromRedirect(err);
    if (table === null) return false;
    this.tableChanged();
    return table.version > version && redirects < MAX_REDIRECTS && !this.closed;
  }

  /**
   * `call` at the group owning `name`, following MOVED redirects. `timeoutMs` is the budget of the whole
   * call: each attempt gets what is left of it.
   */
  private async routed<T>(
    name: string,
    opts: { timeoutMs?: number | undefined; signal?: AbortSignal | undefined },
    call: (segment: SegmentImpl, leftMs: number | undefined) => Promise<T>,
  ): Promise<T> {
    const startMs = this.env.now();
    const left = () =>
      opts.timeoutMs === undefined
        ? undefined
        : Math.max(0, opts.timeoutMs - Math.floor(this.env.now() - startMs));
    for (let redirects = 0; ; redirects++) {
      const { segment, version } = await this.segmentFor(name, left(), opts.signal);
      try {
        return await call(segment, left());
      } catch (err) {
        if (!this.followRedirect(err, version, redirects)) throw err;
      }
    }
  }

  async create(name: string, size: number, opts: { ifNotExists?: boolean } = {}): Promise<ObjectInfo> {
    this.check();
    validateName(name);
    validateSize(size);
    return this.routed(name, {}, (segment) => segment.create(name, size, opts));
  }

  async stat(name: string): Promise<ObjectInfo> {
    this.check();
    validateName(name);
    return this.routed(name, {}, (segment) => segment.stat(name));
  }

  async delete(name: string, opts: AcquireOptions = {}): Promise<void> {
    this.check();
    validateName(name);
    checkTimeoutMs(opts.timeoutMs);
    return this.routed(name, opts, (segment, leftMs) => segment.delete(name, { ...opts, timeoutMs: leftMs }));
  }

  acquireRead(name: string, opts?: AcquireOptions): Promise<Handle> {
    return this.acquire(name, 'read', opts);
  }

  acquireWrite(name: string, opts?: AcquireOptions): Promise<Handle> {
    return this.acquire(name, 'write', opts);
  }

  private acquire(name: string, mode: 'read' | 'write', opts: AcquireOptions = {}): Promise<Handle> {
    try {
      this.check();
      // The group's segment validates the name in full; routing needs only a string (the hot path).
      if (typeof name !== 'string') validateName(name);
      checkTimeoutMs(opts.timeoutMs);
      if (opts.signal?.aborted) throw new SegmemError('ABORTED', `acquire of "${name}" was aborted`);
    } catch (err) {
      return Promise.reject(err);
    }
    const at = (segment: SegmentImpl, leftMs: number | undefined) =>
      mode === 'read'
        ? segment.acquireRead(name, { ...opts, timeoutMs: leftMs })
        : segment.acquireWrite(name, { ...opts, timeoutMs: leftMs });
    // The owner's session is open (the common case): the segment's own call and promise, as fast as a
    // single group's (a read under a kept grant sends nothing); the redirect machinery only on MOVED.
    const version = this.router.table.version;
    const open = this.groups.get(this.router.groupOf(name))?.segment;
    if (!open) return this.routed(name, opts, at);
    const startMs = opts.timeoutMs === undefined ? 0 : this.env.now();
    const granted = mode === 'read' ? open.acquireRead(name, opts) : open.acquireWrite(name, opts);
    return granted.catch((err: unknown) => {
      if (!this.followRedirect(err, version, 0)) throw err;
      const timeoutMs =
        opts.timeoutMs === undefined
          ? undefined
          : Math.max(0, opts.timeoutMs - Math.floor(this.env.now() - startMs));
      return this.routed(name, { ...opts, timeoutMs }, at);
    });
  }

  async read<T>(name: string, fn: (h: Handle) => T | Promise<T>): Promise<T> {
    return holding(await this.acquireRead(name), fn);
  }

  async update<T>(name: string, fn: (h: Handle) => T | Promise<T>): Promise<T> {
    return holding(await this.acquireWrite(name), fn);
  }

  /**
   * Every group owning slots is asked, in parallel, for its slot table and its objects under `prefix`; an
   * object is kept only from the group the newest table says owns it (one mid-move is listed once). A
   * group that does not answer fails the list with its error.
   */
  async list(prefix = ''): Promise<ObjectInfo[]> {
    this.check();
    validatePrefix(prefix);
    const asked = new Map<number, Promise<ObjectInfo[]>>();
    for (;;) {
      const owners = new Set(this.router.table.ranges.map(([, , group]) => group));
      const fresh = [...owners].filter((g) => !asked.has(g));
      if (fresh.length === 0) break;
      for (const group of fresh) {
        asked.set(
          group,
          this.segmentOf(group).then(async (segment) => {
            const [slots, objects] = await Promise.all([segment.slots(), segment.list(prefix)]);
            this.learn(slots.table);
            return objects;
          }),
        );
      }
      // Answers may carry a newer table naming groups not asked yet: those are asked too.
      await Promise.all(asked.values());
    }
    const table = this.router.table;
    const out: ObjectInfo[] = [];
    for (const [group, answer] of asked) {
      for (const o of await answer) if (ownerOf(table, slotOf(o.name)) === group) out.push(o);
    }
    return out.sort(byName);
  }

  log(name: string, opts: LogOptions = {}): SharedLog {
    this.check();
    checkLog(name, opts);
    let log = this.logs.get(name);
    if (!log) {
      log = new RoutedLog(this, name, opts, () => this.check());
      this.logs.set(name, log);
    }
    return log;
  }

  watch(name: string, opts: WatchOptions = {}): AsyncIterable<WatchEvent> {
    this.check();
    checkWatch(name, opts);
    return this.watchEvents(name, opts);
  }

  /** A group's watch of `name`; a MOVED redirect resumes it at the new owner after the last version seen. */
  private async *watchEvents(name: string, opts: WatchOptions): AsyncGenerator<WatchEvent> {
    let fromVersion = opts.fromVersion;
    for (let redirects = 0; ; redirects++) {
      const { segment, version } = await this.segmentFor(name, undefined, opts.signal);
      try {
        for await (const event of segment.watch(name, { ...opts, fromVersion })) {
          fromVersion = event.version;
          yield event;
        }
        return;
      } catch (err) {
        if (!this.followRedirect(err, version, redirects)) throw err;
      }
    }
  }

  /** UDP hint: to the segment of the group it came from whose session it names (see docs/architecture.md). */
  onDatagram(buf: Buffer, from: RemoteInfo): void {
    let hint: ReturnType<typeof decodeInvalidationDatagram>;
    try {
      hint = decodeInvalidationDatagram(buf);
    } catch {
      return; // not ours, or damaged: hints are best effort
    }
    // Session ids of two groups can be equal: the sender's address says which group it is. From an address
    // the table does not spell as an IP, every group with that session id drops the pages (only a refetch).
    const group = this.hintSources.get(`${from.address}:${from.port}`);
    for (const [id, entry] of this.groups) {
      if (group !== undefined && id !== group) continue;
      if (entry.segment && entry.segment.sessionId === hint.sessionId) entry.segment.onHint(hint.objects);
    }
  }

  /** The open groups' segments. */
  private openSegments(): SegmentImpl[] {
    const out: SegmentImpl[] = [];
    for (const entry of this.groups.values()) if (entry.segment) out.push(entry.segment);
    return out;
  }

  /** Bytes and requests every group session moved so far, summed (not part of the pinned API). */
  stats(): ReturnType<SegmentImpl['stats']> {
    const sum: ReturnType<SegmentImpl['stats']> = {
      bytesSent: 0,
      bytesReceived: 0,
      requests: 0,
      pageReads: { fromFollowers: 0, fromLeader: 0 },
    };
    for (const segment of this.openSegments()) {
      const s = segment.stats();
      sum.bytesSent += s.bytesSent;
      sum.bytesReceived += s.bytesReceived;
      sum.requests += s.requests;
      sum.pageReads.fromFollowers += s.pageReads.fromFollowers;
      sum.pageReads.fromLeader += s.pageReads.fromLeader;
    }
    return sum;
  }

  /** How many objects the group sessions keep a grant of, in all. */
  keptGrants(): number {
    let n = 0;
    for (const segment of this.openSegments()) n += segment.keptGrants();
    return n;
  }

  /** What the local cache holds for `name`, in the segment of the group owning it (diagnostic). */
  cacheInfo(name: string): { id: number; version: number } | undefined {
    return this.groups.get(this.router.route(name).group)?.segment?.cacheInfo(name);
  }

  /** @internal The segments of the groups with a session open now (diagnostics; the simulator). */
  groupSegments(): SegmentImpl[] {
    return this.openSegments();
  }

  /** The ids of the groups with a session open now (diagnostic). */
  openGroups(): number[] {
    return [...this.groups].filter(([, e]) => e.segment !== null).map(([id]) => id);
  }

  /**
   * Ends every group session (their locks are released at once), then unmaps the local segment. An open
   * still under way is closed as soon as it completes.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      this.probes.close();
      await Promise.all(this.openSegments().map((segment) => segment.close()));
      this.mapped.close();
      await this.onClose();
    })();
    return this.closing;
  }
}

/** A shared log whose calls go to the group owning its name, following MOVED redirects. */
class RoutedLog implements SharedLog {
  constructor(
    private readonly owner: ShardedSegment,
    readonly name: string,
    private readonly opts: LogOptions,
    private readonly check: () => void,
  ) {}

  private async routed<T>(call: (log: SharedLog) => Promise<T>): Promise<T> {
    for (let redirects = 0; ; redirects++) {
      const { segment, version } = await this.owner.segmentFor(this.name);
      try {
        return await call(segment.log(this.name, this.opts));
      } catch (err) {
        // A refused append was not applied (the group refuses before proposing): sending it again is safe.
        if (!this.owner.followRedirect(err, version, redirects)) throw err;
      }
    }
  }

  async append(record: Uint8Array | string): Promise<number> {
    this.check();
    return this.routed((log) => log.append(record));
  }

  async appendBatch(records: (Uint8Array | string)[]): Promise<number[]> {
    this.check();
    return this.routed((log) => log.appendBatch(records));
  }

  async truncateBefore(seq: number): Promise<number> {
    this.check();
    return this.routed((log) => log.truncateBefore(seq));
  }

  async info(): Promise<LogInfo> {
    this.check();
    return this.routed((log) => log.info());
  }

  read(opts: LogReadOptions = {}): AsyncIterable<LogRecord> {
    this.check();
    checkLogReadOptions(opts);
    return this.records(opts);
  }

  /** The group's records; a MOVED redirect resumes the read at the new owner after the last record seen. */
  private async *records(opts: LogReadOptions): AsyncGenerator<LogRecord> {
    let from = opts.from;
    for (let redirects = 0; ; redirects++) {
      const { segment, version } = await this.owner.segmentFor(this.name, undefined, opts.signal);
      try {
        for await (const record of segment.log(this.name, this.opts).read({ ...opts, from })) {
          from = record.seq + 1;
          yield record;
        }
        return;
      } catch (err) {
        if (!this.owner.followRedirect(err, version, redirects)) throw err;
      }
    }
  }
}
