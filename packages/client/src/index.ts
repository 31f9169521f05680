/**
 * @segmem/client: persistent, replicated, shared memory for Node.js.
 *
 * `connect({ servers })` opens a session with a segmem server or cluster; `openEmbedded({ dir })` runs the
 * store inside this process. Both return a {@link Segment}: named objects you take read or write access
 * to, work on in place, and release. `@segmem/client/compat` has the C-style `p_*` functions.
 *
 * @example
 * ```ts
 * import { openEmbedded } from '@segmem/client';
 *
 * const seg = await openEmbedded({ dir: './segmem-data' });
 * await seg.create('counter', 4, { ifNotExists: true });
 * await seg.update('counter', (h) => h.bytes.writeInt32LE(h.bytes.readInt32LE(0) + 1));
 * await seg.close();
 * ```
 *
 * @module
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { ConnectionOptions } from 'node:tls';
import {
  DEFAULT_SESSION_TIMEOUT_MS,
  decodeInvalidationDatagram,
  MAX_SESSION_TIMEOUT_MS,
  MIN_SESSION_TIMEOUT_MS,
  parseHostPort,
  SegmemError,
  type SlotTable,
  systemEnv,
  validatePassword,
  validateUserName,
} from '@segmem/protocol';
import { connectLocal, type FsyncPolicy, SegmemNode } from '@segmem/server';
import { FollowerReads } from './follower-reads.js';
import { type MappedSegment, openMappedSegment, sharedMapping } from './mapped-segment.js';
import { type Segment, SegmentImpl } from './segment.js';
import { type Dial, Session, type Transport, tcpDial } from './session.js';
import { ShardedSegment } from './sharded-segment.js';

export { type ErrorCode, SegmemError } from '@segmem/protocol';
export type { AcquireOptions, Handle, ObjectInfo, Segment } from './segment.js';
export type { LogInfo, LogOptions, LogReadOptions, LogRecord, SharedLog } from './shared-log.js';
export type { WatchEvent, WatchOptions } from './watch.js';

/**
 * How {@link connect} reaches the servers.
 *
 * @example
 * ```ts
 * const options: ConnectOptions = {
 *   servers: ['10.0.0.1:7401', '10.0.0.2:7401', '10.0.0.3:7401'],
 *   sessionTimeoutMs: 5000,
 *   token: process.env.SEGMEM_TOKEN,
 * };
 * ```
 */
export interface ConnectOptions {
  /**
   * Server addresses, host:port. Any reachable one will do: the client dials them in order and a member
   * that does not lead redirects it to the leader. List several members of a cluster, ideally all. In a
   * cluster of several shard groups a server of any group will do: the client asks it for the slot table
   * and reaches each group at the members the table lists, when one of its names is first used.
   */
  servers: string[];
  /**
   * Locks are released, and unreleased writes discarded, this long after the client stops heart-beating.
   * An integer 200..600000; default 10000.
   */
  sessionTimeoutMs?: number;
  /** Directory for the local mapped segment file (sparse; unlinked at once). Default: the OS temp dir. */
  cacheDir?: string;
  /** Credential the server expects, if it has one (the `token` setting); a wrong one is `UNAUTHORIZED`. */
  token?: string;
  /**
   * Log in as this user (see `segmem user add`); with `password`. Every request is then held to the user's
   * ACL rules: one it has no right for is `UNAUTHORIZED` (details.reason 'FORBIDDEN'). A wrong user or
   * password is `UNAUTHORIZED`. The password travels in the handshake: use TLS on untrusted networks.
   */
  user?: string;
  /** The user's password (1..1024 bytes); required with `user`. */
  password?: string;
  /** Also receive invalidations as UDP datagrams (best effort, beside the TCP pushes). Default false. */
  udpHints?: boolean;
  /**
   * In a cluster, read the pages of large grants (64 KiB or more changed) from followers instead of the
   * leader, to spread the load. Default true; no effect with one server.
   */
  followerReads?: boolean;
  /**
   * Keep grants after release while no other session wants the object (delegations), so that acquiring it
   * again costs no round trip (a read) or one commit instead of two (a write). Default true. Another session's
   * acquire takes the grant back (the servers ask for it); see docs/consistency.md for the lease it rests on.
   */
  delegations?: boolean;
  /**
   * Connect over TLS (to servers started with `--tls-cert`); none: plain TCP. UDP hints (`udpHints`) stay
   * plain: they carry object ids and versions, never data.
   */
  tls?: TlsOptions;
}

/**
 * TLS settings of {@link connect}: the server's certificate must chain to `ca` (else the system's roots)
 * and name the host dialled (or `servername`).
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const seg = await connect({ servers: ['10.0.0.1:7401'], tls: { ca: readFileSync('ca.pem') } });
 * ```
 */
export interface TlsOptions {
  /** CA certificate(s), PEM text or Buffer, the servers' certificates must chain to. Default: the system's roots. */
  ca?: string | Buffer | (string | Buffer)[];
  /** This client's certificate (PEM), for servers started with `--tls-require-client-cert`. */
  cert?: string | Buffer;
  /** The key of `cert` (PEM). */
  key?: string | Buffer;
  /** The name the servers' certificates must carry, instead of the host of each address. */
  servername?: string;
  /** Default true. false accepts any certificate: encryption without knowing who answers (tests only). */
  rejectUnauthorized?: boolean;
}

/** `tls` checked: an object of known fields of the right types. */
function tlsOption(value: unknown): ConnectionOptions | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new SegmemError(
      'INVALID_ARGUMENT',
      'tls must be an object ({ ca, cert, key, servername, rejectUnauthorized })',
    );
  const pem = (v: unknown) => typeof v === 'string' || Buffer.isBuffer(v);
  const out: ConnectionOptions = {};
  for (const [key, v] of Object.entries(value)) {
    if (v === undefined) continue;
    const ok =
      key === 'ca'
        ? pem(v) || (Array.isArray(v) && v.every(pem))
        : key === 'cert' || key === 'key'
          ? pem(v)
          : key === 'servername'
            ? typeof v === 'string' && v.length > 0
            : key === 'rejectUnauthorized'
              ? typeof v === 'boolean'
              : null;
    if (ok === null) throw new SegmemError('INVALID_ARGUMENT', `tls.${key} is not a TLS option`);
    if (!ok) throw new SegmemError('INVALID_ARGUMENT', `tls.${key} has the wrong type`);
    (out as Record<string, unknown>)[key] = v;
  }
  if ((out.cert === undefined) !== (out.key === undefined))
    throw new SegmemError('INVALID_ARGUMENT', 'tls.cert and tls.key go together');
  return out;
}

/**
 * How {@link openEmbedded} runs the store in this process.
 *
 * @example
 * ```ts
 * const options: EmbeddedOptions = { dir: './segmem-data', fsync: 'always', segmentBytes: 1 << 30 };
 * ```
 */
export interface EmbeddedOptions {
  /** Data directory of the store; created if missing. One process at a time may open it. */
  dir: string;
  /** As in {@link ConnectOptions.sessionTimeoutMs}: an integer 200..600000; default 10000. */
  sessionTimeoutMs?: number;
  /**
   * WAL durability policy: "batch" (default: group commit, a write release resolves once it is on disk),
   * "always" (one sync per record) or "none" (never synced; for tests).
   */
  fsync?: FsyncPolicy;
  /** Size of the segment's address space, for a fresh directory. Default 4 GiB (sparse). */
  segmentBytes?: number;
  /** Directory for the local mapped segment file (sparse; unlinked at once). Default: the OS temp dir. */
  cacheDir?: string;
  /** As in {@link ConnectOptions.delegations}. Default true. */
  delegations?: boolean;
}

function booleanOption(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new SegmemError('INVALID_ARGUMENT', `${name} must be a boolean`);
  return value;
}

/** `user` and `password`: both valid or both absent. */
function loginOption(user: unknown, password: unknown): { user: string; password: string } | undefined {
  if (user === undefined && password === undefined) return undefined;
  if (user === undefined || password === undefined)
    throw new SegmemError('INVALID_ARGUMENT', 'user and password come together: give both or neither');
  return { user: validateUserName(user), password: validatePassword(password) };
}

function sessionTimeout(value: number | undefined): number {
  const ms = value ?? DEFAULT_SESSION_TIMEOUT_MS;
  if (!Number.isInteger(ms) || ms < MIN_SESSION_TIMEOUT_MS || ms > MAX_SESSION_TIMEOUT_MS) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `sessionTimeoutMs must be an integer ${MIN_SESSION_TIMEOUT_MS}..${MAX_SESSION_TIMEOUT_MS}; got ${String(value)}`,
    );
  }
  return ms;
}

/** What a segment's session is opened with (shared by every group session of a sharded cluster). */
interface SegmentOptions {
  sessionTimeoutMs: number;
  token?: string;
  login?: { user: string; password: string };
  cacheDir?: string;
  reconnect: boolean;
  udp?: UdpSocket;
  followerReads?: boolean;
  delegations: boolean;
  tls?: ConnectionOptions;
}

/** Where a session's pushes go: its segment, once built (none arrive for objects before). */
interface PushTarget {
  segment?: SegmentImpl;
}

/** Opens a session through `dial` whose pushes go to `target.segment`. */
function openSession(dial: Dial, opts: SegmentOptions, target: PushTarget): Promise<Session> {
  return Session.open({
    dial,
    env: systemEnv,
    sessionTimeoutMs: opts.sessionTimeoutMs,
    ...(opts.token !== undefined ? { token: opts.token } : {}),
    ...(opts.login ? { login: opts.login } : {}),
    ...(opts.udp ? { udpPort: opts.udp.address().port } : {}),
    reconnect: opts.reconnect,
    ...(opts.tls ? { tls: true } : {}),
    onInvalidate: (msg) => target.segment?.onInvalidate(msg),
    onRevoke: (msg) => target.segment?.onRevoke(msg),
    onChanged: (msg) => target.segment?.onChanged(msg),
    onProbed: (msg) => target.segment?.onProbed(msg),
    onSessionLost: () => target.segment?.sessionLost(),
    onResumed: () => target.segment?.revalidate(),
  });
}

/** The mapped segment sized by the session's HELLO answer. */
function mapSegment(session: Session, opts: SegmentOptions): MappedSegment {
  return openMappedSegment({
    segmentBytes: session.hello.segmentBytes,
    pageBytes: session.hello.pageBytes,
    ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}),
  });
}

/** The segment over an open session and the mapped segment it uses (which it unmaps when it closes). */
function segmentOver(
  session: Session,
  mapped: MappedSegment,
  opts: SegmentOptions,
  onClose: () => Promise<void>,
): SegmentImpl {
  const followerReads = opts.followerReads
    ? new FollowerReads(session, {
        sessionTimeoutMs: opts.sessionTimeoutMs,
        ...(opts.token !== undefined ? { token: opts.token } : {}),
        ...(opts.login ? { login: opts.login } : {}),
        ...(opts.tls ? { tls: opts.tls } : {}),
      })
    : null;
  return new SegmentImpl(
    session,
    mapped,
    session.hello.pageBytes,
    async () => {
      followerReads?.close();
      await onClose();
    },
    followerReads,
    opts.delegations,
  );
}

/** UDP hints of the one session of a segment that talks to one group. */
function hintsTo(udp: UdpSocket, segment: SegmentImpl): void {
  udp.on('message', (buf) => {
    try {
      const d = decodeInvalidationDatagram(buf);
      if (d.sessionId === segment.sessionId) segment.onHint(d.objects);
    } catch {
      // not ours, or damaged: hints are best effort
    }
  });
}

async function openSegment(
  dial: Dial,
  opts: SegmentOptions,
  onClose: () => Promise<void>,
): Promise<SegmentImpl> {
  const target: PushTarget = {};
  const session = await openSession(dial, opts, target);
  const segment = segmentOver(session, mapSegment(session, opts), opts, onClose);
  target.segment = segment;
  if (opts.udp) hintsTo(opts.udp, segment);
  return segment;
}

/**
 * The segment of a cluster whose slot table lists several groups: `first` (a session with the group of the
 * server that answered, dialled through `servers`, its pushes going to `target`) becomes that group's
 * segment, and the other groups' sessions are opened on first use, each from its members in the table.
 */
function shardedSegment(
  first: Session,
  target: PushTarget,
  servers: string[],
  table: SlotTable,
  opts: SegmentOptions,
  onClose: () => Promise<void>,
): ShardedSegment {
  const mapped = mapSegment(first, opts);
  const shared = sharedMapping(mapped);
  const { segmentBytes, pageBytes } = first.hello;
  const openGroup = async (group: number, members: string[]): Promise<SegmentImpl> => {
    const pushes: PushTarget = {};
    const session = await openSession(tcpDial(members, systemEnv, opts.tls), opts, pushes);
    const hello = session.hello;
    // One segment, one layout: a server of another group (or cluster) would place objects elsewhere.
    const mismatch =
      hello.groupId !== group
        ? `answered as group ${String(hello.groupId)}`
        : hello.segmentBytes !== segmentBytes || hello.pageBytes !== pageBytes
          ? `has a segment of ${hello.segmentBytes} bytes in pages of ${hello.pageBytes}, not ${segmentBytes} in pages of ${pageBytes}`
          : null;
    if (mismatch !== null) {
      await session.close();
      throw new SegmemError(
        'PROTOCOL',
        `a server of group ${group} (${members.join(', ')}) ${mismatch}, unlike what the slot table says`,
        { group },
      );
    }
    pushes.segment = segmentOver(session, shared, opts, async () => {});
    return pushes.segment;
  };
  target.segment = segmentOver(first, shared, opts, async () => {});
  const sharded = new ShardedSegment(
    table,
    { group: first.hello.groupId ?? 0, segment: target.segment, servers },
    mapped,
    openGroup,
    systemEnv,
    onClose,
  );
  opts.udp?.on('message', (buf, from) => sharded.onDatagram(buf, from));
  return sharded;
}

/**
 * Opens a session with a segmem server or cluster. The session keeps itself alive, follows the leader
 * across failovers (re-sending what was unanswered, applied once) and ends with {@link Segment.close}.
 * In a cluster of several shard groups it is one session per group, each opened on first use, and every
 * call goes to the group owning the name's hash slot.
 *
 * Rejects with `INVALID_ARGUMENT` for bad options, `UNAVAILABLE` when no listed server answers, and
 * `UNAUTHORIZED` for a wrong token.
 *
 * @example
 * ```ts
 * import { connect } from '@segmem/client';
 *
 * const seg = await connect({ servers: ['127.0.0.1:7401', '127.0.0.1:7402', '127.0.0.1:7403'] });
 * const info = await seg.stat('counter');
 * console.log(info.version);
 * await seg.close();
 * ```
 */
export async function connect(opts: ConnectOptions): Promise<Segment> {
  if (
    !opts ||
    !Array.isArray(opts.servers) ||
    opts.servers.length === 0 ||
    !opts.servers.every((s) => typeof s === 'string')
  ) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      'connect needs servers: a non-empty array of "host:port" strings',
    );
  }
  // A mistyped address is the caller's mistake, not a server down: say so before dialling anything.
  for (const s of opts.servers) parseHostPort(s, 'server address');
  const sessionTimeoutMs = sessionTimeout(opts.sessionTimeoutMs);
  const delegations = booleanOption(opts.delegations, 'delegations', true);
  const login = loginOption(opts.user, opts.password);
  const tls = tlsOption(opts.tls);
  let udp: UdpSocket | undefined;
  if (opts.udpHints) {
    udp = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      udp!.once('error', reject);
      udp!.bind(0, () => resolve());
    });
    udp.unref();
  }
  const servers = [...opts.servers];
  const segmentOptions: SegmentOptions = {
    sessionTimeoutMs,
    reconnect: true,
    delegations,
    followerReads: opts.followerReads ?? true,
    ...(opts.token !== undefined ? { token: opts.token } : {}),
    ...(login ? { login } : {}),
    ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}),
    ...(udp ? { udp } : {}),
    ...(tls ? { tls } : {}),
  };
  const closeUdp = async () => {
    udp?.close();
  };
  try {
    const target: PushTarget = {};
    const session = await openSession(tcpDial(servers, systemEnv, tls), segmentOptions, target);
    let segment: SegmentImpl;
    try {
      // A member of a shard group: the slot table says whether other groups own names too.
      const table =
        session.hello.groupId === undefined ? null : (await session.call({ type: 'SLOTS' })).table;
      if (table !== null && table.groups.length > 1) {
        // This session stays with its group: it re-dials that group's members only.
        const own = table.groups.find((g) => g.id === session.hello.groupId)?.members ?? [];
        if (own.length > 0) servers.splice(0, servers.length, ...own.map(([, address]) => address));
        return shardedSegment(session, target, servers, table, segmentOptions, closeUdp);
      }
      segment = segmentOver(session, mapSegment(session, segmentOptions), segmentOptions, closeUdp);
    } catch (err) {
      await session.close();
      throw err;
    }
    target.segment = segment;
    if (udp) hintsTo(udp, segment);
    // Learn the whole membership, so failover can reach members the caller did not list (best effort).
    segment
      .members()
      .then((members) => {
        for (const [, address] of members) if (address && !servers.includes(address)) servers.push(address);
      })
      .catch(() => {});
    return segment;
  } catch (err) {
    udp?.close();
    throw err;
  }
}

/**
 * Runs the store inside this process, durable in `dir`, with no server to start. The returned segment
 * behaves as one from {@link connect}; closing it also closes the store.
 *
 * Rejects with `INVALID_ARGUMENT` for bad options and `UNAVAILABLE` when another process (or this one)
 * has the directory open.
 *
 * @example
 * ```ts
 * import { openEmbedded } from '@segmem/client';
 *
 * const seg = await openEmbedded({ dir: './segmem-data' });
 * await seg.create('matrix', 8 * 100 * 100, { ifNotExists: true });
 * const sum = await seg.read('matrix', (h) => h.view.getFloat64(0, true));
 * await seg.close();
 * ```
 */
export async function openEmbedded(opts: EmbeddedOptions): Promise<Segment> {
  if (!opts || typeof opts.dir !== 'string' || opts.dir.length === 0) {
    throw new SegmemError('INVALID_ARGUMENT', 'openEmbedded needs dir: the path of the data directory');
  }
  const sessionTimeoutMs = sessionTimeout(opts.sessionTimeoutMs);
  const delegations = booleanOption(opts.delegations, 'delegations', true);
  const node = await SegmemNode.open({
    id: 'embedded',
    dataDir: opts.dir,
    fsync: opts.fsync ?? 'batch',
    ...(opts.segmentBytes !== undefined ? { segmentBytes: opts.segmentBytes } : {}),
  });
  const dial: Dial = async () => {
    const end = connectLocal(node);
    const transport: Transport = {
      write: (parts) => end.write(parts),
      close: () => end.close(),
      onData: () => {},
      onClose: () => {},
    };
    end.onData = (chunk) => transport.onData(chunk);
    end.onClose = () => transport.onClose();
    return transport;
  };
  try {
    return await openSegment(
      dial,
      {
        sessionTimeoutMs,
        reconnect: false,
        delegations,
        ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}),
      },
      () => node.close(),
    );
  } catch (err) {
    await node.close();
    throw err;
  }
}
