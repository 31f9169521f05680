/**
 * @segmem/server: the segmem server and its building blocks.
 */
import {
  initialSlotTable,
  SegmemError,
  type SlotTable,
  systemEnv,
  validateSlotTable,
} from '@segmem/protocol';
import { openClusterNode } from './cluster.js';
import {
  DEFAULT_CONFIG,
  type GroupConfig,
  groupOf,
  loadConfigFile,
  parseConsolidatedIntervalMs,
  parseConsolidatedKeep,
  parseFsync,
  parseMaxMemory,
  parseNonNegativeInteger,
  parseSegmentBytes,
  type ServerConfig,
} from './config.js';
import { defaultMaxMemory } from './memory-limit.js';
import { formatBytes, MIN_MAX_MEMORY_BYTES } from './node/budget.js';
import { SegmemNode } from './node/index.js';
import { RaftNode } from './raft/node.js';
import { readClusterSecretFile } from './secret-file.js';
import { ServerMetrics, serveMetrics } from './shell/metrics.js';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
  type ListenOptions,
  listen,
  parseHostPort,
} from './shell/tcp.js';
import type { ServerTls } from './shell/tls.js';
import type { FsyncPolicy } from './storage/wal.js';
import { loadServerTls, reloadServerTls, type TlsFiles } from './tls-files.js';

export { type Env, SegmemError, systemEnv } from '@segmem/protocol';
export { DEFAULT_CONFIG, loadConfigFile, parsePeers, type ServerConfig } from './config.js';
export type { Command, ObjectRecord, Outcome } from './core/commands.js';
export { StateMachine } from './core/state-machine.js';
export type { ApplyListener, NodeLog, ReplicatedLog } from './log/types.js';
export type { Port, Wire } from './node/index.js';
export { type NodeOptions, SegmemNode } from './node/index.js';
export type { Message, NodeId } from './raft/types.js';
export { connectLocal, type LocalEnd } from './shell/local.js';
export {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
} from './shell/tcp.js';
export { DataDir } from './storage/datadir.js';
export type { FsyncPolicy, RecoveryReport } from './storage/wal.js';
export type { TlsFiles } from './tls-files.js';

/**
 * How {@link startServer} starts a server. Only `id`, `listen` and `dataDir` are required; every other
 * setting comes from the config file named by `config`, else from the defaults (docs/operations.md).
 *
 * @example
 * ```ts
 * // One member of a three-server group; the others get the same peers and their own id, listen and dataDir.
 * const options: StartServerOptions = {
 *   id: 's1',
 *   listen: '127.0.0.1:7401',
 *   dataDir: './data/s1',
 *   peers: { s1: '127.0.0.1:7401', s2: '127.0.0.1:7402', s3: '127.0.0.1:7403' },
 *   clusterSecretFile: './cluster-secret', // the same file on every member (segmem secret new)
 *   fsync: 'batch',
 * };
 * ```
 */
export interface StartServerOptions {
  /**
   * The server id, 1..64 characters of `[A-Za-z0-9._-]`. It is recorded in the data directory, which then
   * refuses to open under another id.
   */
  id: string;
  /** host:port to listen on (TCP, and UDP for invalidation hints). Port 0 picks a free port. */
  listen: string;
  /**
   * All members of the group, id -> host:port, this server included. Naming any other server makes this
   * server a member of a replicated (Raft) group; without peers (or with only itself) it runs alone.
   */
  peers?: Record<string, string>;
  /** The data directory: created if missing, and opened by one process at a time. */
  dataDir: string;
  /** Path of a JSON config file (see docs/operations.md). */
  config?: string;
  /** Overrides the config file's fsync policy. Default "batch". */
  fsync?: FsyncPolicy;
  /** Overrides the config file's segment size. */
  segmentBytes?: number;
  /** Truncate the WAL at a corrupt record instead of refusing to start. */
  repair?: boolean;
  /** Overrides the config file's snapshotEveryEntries (default 10000; 0: never by count). */
  snapshotEveryEntries?: number;
  /** Overrides the config file's snapshotIntervalMs (default 600000; 0: never by time; one server only). */
  snapshotIntervalMs?: number;
  /** Overrides the config file's consolidatedDir: the leader writes scheduled consolidated snapshots there. */
  consolidatedDir?: string;
  /** Overrides the config file's consolidatedIntervalMs (default 3600000, at least 1000). */
  consolidatedIntervalMs?: number;
  /** Overrides the config file's consolidatedKeep (default 3). */
  consolidatedKeep?: number;
  /** Join an existing group: wait to be added (segmem cluster add) instead of campaigning. */
  join?: boolean;
  /** The cluster id (overrides the config file's; a joining server needs the group's, see segmem cluster list). */
  clusterId?: string;
  /**
   * Path of the cluster secret file (`segmem secret new FILE`; mode 0600, at least 16 bytes), overriding the
   * config file's `clusterSecretFile`. Every member of a replicated group needs the same one: members prove
   * it to each other before any consensus message. A single server needs none.
   */
  clusterSecretFile?: string;
  /**
   * The cluster secret was replaced (every member stopped, the file replaced on each): record the new
   * secret's fingerprint in place of the one the data directory holds, instead of refusing it.
   */
  rotateClusterSecret?: boolean;
  /**
   * host:port to serve Prometheus metrics (GET /metrics) and health (GET /health) on, over HTTP (HTTPS,
   * with the same certificate, when the server has TLS); overrides the config file's `metrics`. Port 0
   * picks a free port. None when unset.
   */
  metrics?: string;
  /**
   * Close a connection that has not logged in (HELLO or PEER_HELLO accepted) this many ms after it was
   * accepted; default 10000, 0: never.
   */
  handshakeTimeoutMs?: number;
  /**
   * The memory budget (docs/operations.md "Memory"): bytes, a size such as "512MiB", or "off"; overrides
   * the config file's `maxMemory`. Default: 3/4 of the cgroup's memory limit, or of the machine's memory.
   */
  maxMemory?: number | string;
  /** Connections open at once; one more is refused. Default 1024. */
  maxConnections?: number;
  /** Connections open at once from one remote address; one more is refused. Default 64. */
  maxConnectionsPerAddress?: number;
  /**
   * Serve clients (and other members) over TLS only, with this certificate and key; overrides the config
   * file's `tlsCert`, `tlsKey`, `tlsCa` and `tlsRequireClientCert`. Members then dial each other over TLS,
   * checking certificates against `caFile` (else the system's roots). None: plain TCP.
   */
  tls?: TlsFiles;
  /** Receives recovery reports and warnings, one line each. */
  log?: (line: string) => void;
  /**
   * The cluster's first slot table: which shard group owns each hash slot, and each group's servers (see
   * `validateSlotTable` of `@segmem/protocol`, and docs/architecture.md "Hash slots"). It must list this
   * server's group (from the config file's `groups`; 0 without). Requests naming an object or log whose
   * slot another group owns are answered with a MOVED redirect. The table is only the first one: a data
   * directory that already holds a state keeps the table in it. Default: this group owning every slot.
   */
  slotTable?: SlotTable;
}

/**
 * A server started by {@link startServer}.
 *
 * @example
 * ```ts
 * const server = await startServer({ id: 's1', listen: '127.0.0.1:0', dataDir: './data/s1' });
 * console.log(`clients connect to ${server.address}`);
 * process.once('SIGTERM', () => server.close());
 * ```
 */
export interface RunningServer {
  /** The address the server listens on, host:port (with the port chosen when `listen` asked for 0). */
  address: string;
  /**
   * Stops the server cleanly: a cluster leader first hands leadership to the most caught-up follower, then
   * the listener and every connection close, the WAL is flushed (and synced, unless fsync is "none") and
   * the data directory's lock is removed. Calling it again returns the same promise.
   *
   * @example
   * ```ts
   * await server.close();
   * ```
   */
  close(): Promise<void>;
  /**
   * Where this member stands (not part of the pinned API): `leader` (whether it leads now), `applied`
   * (commands its state machine applied), `digest` (of its whole state: members that applied the same
   * commands show the same one), and counts of `sessions`, `objects`, `logs` and of the pages it served to
   * page readers (`pagesServed`). The digest serialises the whole state, so it costs a pause on a large one.
   *
   * @example
   * ```ts
   * const { leader, applied, digest } = server.status();
   * ```
   */
  status(): ReturnType<SegmemNode['status']>;
  /**
   * Installs a newer slot table in this member's shard group (not part of the pinned API): the `slots`
   * command, committed before it resolves. The member must lead its group (else `UNAVAILABLE`, reason
   * `NOT_LEADER`); a bad table, or one whose version is not above the installed one, is `INVALID_ARGUMENT`
   * and changes nothing.
   *
   * @example
   * ```ts
   * await server.installSlots({ ...table, version: table.version + 1, ranges: moved });
   * ```
   */
  installSlots(table: SlotTable): Promise<{ version: number }>;
  /** host:port of the metrics and health endpoint; null without one. */
  metricsAddress: string | null;
  /** Whether the listen port (and the metrics endpoint) serve TLS. */
  servesTls: boolean;
  /**
   * Reads the TLS files again (not part of the pinned API; `segmem-server` does it on SIGHUP) and checks
   * them exactly as at start; connections made from then on use the new certificate (and key and CA),
   * those open keep theirs. Returns the certificate now in use. Throws `INVALID_ARGUMENT` naming the file
   * when one does not check out (the material in use stays), or when the server serves no TLS.
   *
   * @example
   * ```ts
   * process.on('SIGHUP', () => console.log(`serial ${server.reloadTls().serialNumber}`));
   * ```
   */
  reloadTls(): { serialNumber: string; validTo: string; fingerprint256: string };
}

/**
 * Starts a segmem server in this process: it recovers its data directory, listens for clients on
 * `listen` and resolves once it can serve them. With `peers` naming other servers it is one member of a
 * Raft group, and the group elects a leader once a majority of its members are up.
 *
 * Rejects with a {@link SegmemError}: `INVALID_ARGUMENT` for a bad id, data directory, peer list or config
 * file, or a data directory made for another server, cluster or geometry; `UNAVAILABLE` when the data
 * directory is in use by another process, its write-ahead log is corrupt (see `repair`), or the address
 * cannot be listened on.
 *
 * @example
 * ```ts
 * import { startServer } from '@segmem/server';
 *
 * const server = await startServer({ id: 's1', listen: '127.0.0.1:7401', dataDir: './data/s1' });
 * // clients: connect({ servers: [server.address] })
 * process.once('SIGTERM', () => server.close());
 * ```
 */
export async function startServer(opts: StartServerOptions): Promise<RunningServer> {
  if (typeof opts.id !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(opts.id)) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `server id must be 1..64 characters of [A-Za-z0-9._-]; got ${JSON.stringify(opts.id)}`,
    );
  }
  if (typeof opts.dataDir !== 'string' || opts.dataDir.length === 0) {
    throw new SegmemError('INVALID_ARGUMENT', 'dataDir must be a non-empty path');
  }
  const config = opts.config ? loadConfigFile(opts.config) : { ...DEFAULT_CONFIG };
  const listenOpts = listenOptions(opts);
  // Bad certificate files stop the start here, before the data directory is opened or anything listens.
  const tlsFiles = opts.tls ?? tlsFilesOf(config);
  const tls: ServerTls | undefined = tlsFiles ? loadServerTls(tlsFiles, systemEnv.now()) : undefined;
  // A grouped config file: this server's group gives its peers and range (--peers still wins for peers).
  const group = opts.config && config.groups ? groupOf(config, opts.id, opts.config) : undefined;
  const peers = opts.peers ?? group?.members ?? config.servers;
  const others = Object.keys(peers).filter((id) => id !== opts.id);
  for (const [id, address] of Object.entries(peers)) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) {
      throw new SegmemError('INVALID_ARGUMENT', `peer id ${JSON.stringify(id)} is not a valid server id`);
    }
    parseHostPort(address, `address of peer ${id}`);
  }
  const secretFile = opts.clusterSecretFile ?? config.clusterSecretFile;
  if (others.length > 0 && secretFile === undefined) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      'a member of a replicated group needs the cluster secret: --cluster-secret-file FILE (create it once with segmem secret new FILE and give every member a copy)',
    );
  }
  const clusterSecret = secretFile === undefined ? undefined : readClusterSecretFile(secretFile);
  const budget = maxMemoryBytes(opts, config);
  const segmentBytes =
    opts.segmentBytes !== undefined ? parseSegmentBytes(opts.segmentBytes) : config.segmentBytes;
  if (group && group.start + group.bytes > segmentBytes) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `group ${group.id}'s range [${group.start}, ${group.start + group.bytes}) ends past the segment (${segmentBytes} bytes)`,
    );
  }
  // A grouped config file places every name: its groups split the slots evenly, in group-id order (the
  // same table on every server, as the file is the same everywhere). A table given here wins.
  const slotTable =
    opts.slotTable !== undefined
      ? slotTableOption(opts.slotTable, group?.id ?? 0)
      : config.groups && group
        ? firstSlotTable(config.groups)
        : undefined;
  const nodeOpts = {
    id: opts.id,
    ...(clusterSecret ? { clusterSecret } : {}),
    dataDir: opts.dataDir,
    fsync: opts.fsync ? parseFsync(opts.fsync) : config.fsync,
    segmentBytes,
    ...(group ? { group: { id: group.id, start: group.start, bytes: group.bytes } } : {}),
    ...((opts.clusterId ?? config.clusterId) ? { clusterId: opts.clusterId ?? config.clusterId } : {}),
    snapshotEveryEntries: parseNonNegativeInteger(
      'snapshotEveryEntries',
      opts.snapshotEveryEntries ?? config.snapshotEveryEntries,
    ),
    snapshotIntervalMs: parseNonNegativeInteger(
      'snapshotIntervalMs',
      opts.snapshotIntervalMs ?? config.snapshotIntervalMs,
    ),
    ...consolidatedOptions(opts, config),
    ...(config.token ? { token: config.token } : {}),
    ...(opts.repair ? { repair: true } : {}),
    ...(opts.log ? { log: opts.log } : {}),
    maxMemoryBytes: budget.limitBytes,
    ...(slotTable ? { slotTable } : {}),
  };
  // Listening first: /health answers (STARTING) while the data directory is recovered.
  const metricsAt = metricsAddressFor(opts, config);
  const metrics = metricsAt === undefined ? null : new ServerMetrics();
  // With TLS on the listen port, metrics are served over HTTPS with the same certificate.
  const metricsServer = metrics && metricsAt ? await serveMetrics(metrics, metricsAt, tls) : null;
  if (metricsServer)
    opts.log?.(`metrics on ${metricsServer.scheme}://${metricsServer.address}/metrics, health on /health`);
  // One member: the single-member log. Several: a Raft group, every command committed on a majority.
  const opening =
    others.length === 0
      ? SegmemNode.open({ ...nodeOpts, ...(metrics ? { metrics } : {}) })
      : openClusterNode({
          ...nodeOpts,
          ...(metrics ? { metrics } : {}),
          peers,
          makeCore: (cfg) => new RaftNode(cfg),
          ...(tls ? { peerTls: tls.peerOptions } : {}),
          ...(opts.join ? { join: true } : {}),
          ...(opts.rotateClusterSecret ? { rotateClusterSecret: true } : {}),
        });
  const node = await opening.catch(async (err: unknown) => {
    await metricsServer?.close();
    throw err;
  });
  let listener: Awaited<ReturnType<typeof listen>>;
  try {
    listener = await listen(node, opts.listen, { ...listenOpts, ...(tls ? { tls } : {}) });
  } catch (err) {
    await node.close();
    await metricsServer?.close();
    throw new SegmemError('UNAVAILABLE', `cannot listen on ${opts.listen}: ${(err as Error).message}`);
  }
  metrics?.attach({ stats: () => node.stats(), network: listener });
  // Said once the server runs: a failure to start stays the one line it is.
  if (budget.derivedFrom)
    opts.log?.(
      `memory budget ${formatBytes(budget.limitBytes!)}, 3/4 of ${budget.derivedFrom} (set it with --max-memory)`,
    );
  let closing: Promise<void> | null = null;
  return {
    address: listener.address,
    metricsAddress: metricsServer?.address ?? null,
    status: () => node.status(),
    installSlots: (table) => node.installSlots(table),
    servesTls: tls !== undefined,
    reloadTls() {
      if (!tls || !tlsFiles)
        throw new SegmemError('INVALID_ARGUMENT', 'this server serves no TLS: nothing to reload');
      reloadServerTls(tls, tlsFiles, systemEnv.now());
      metricsServer?.tlsReloaded();
      return { ...tls.certificate };
    },
    close() {
      closing ??= (async () => {
        await metricsServer?.close();
        // Hand leadership over while the peer links still carry the acknowledgements the transfer needs.
        await node.handOff();
        await listener.close();
        await node.close();
      })();
      return closing;
    },
  };
}

/**
 * The table a grouped config file starts a new state with: its groups split the slots evenly in group-id
 * order, except groups marked `joining` (added to a running cluster), which are listed but own no slot.
 */
function firstSlotTable(groups: GroupConfig[]): SlotTable {
  const listed = (g: GroupConfig) => ({ id: g.id, members: Object.entries(g.members) });
  const owners = groups.filter((g) => !g.joining);
  const table = initialSlotTable((owners.length > 0 ? owners : groups).map(listed));
  const joining = groups.filter((g) => g.joining && owners.length > 0).map(listed);
  return validateSlotTable({ ...table, groups: [...table.groups, ...joining] });
}

/** The `slotTable` option, checked: a valid table that lists this server's group. */
function slotTableOption(given: unknown, groupId: number): SlotTable {
  const table = validateSlotTable(given);
  if (!table.groups.some((g) => g.id === groupId))
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `slotTable does not list group ${groupId}, the group of this server`,
    );
  return table;
}

/** The connection bounds, checked before anything starts. */
function listenOptions(opts: StartServerOptions): Required<Omit<ListenOptions, 'tls'>> {
  const atLeastOne = (name: string, value: number) => {
    const n = parseNonNegativeInteger(name, value);
    if (n < 1) throw new SegmemError('INVALID_ARGUMENT', `${name} must be at least 1; got ${n}`);
    return n;
  };
  return {
    handshakeTimeoutMs: parseNonNegativeInteger(
      'handshakeTimeoutMs',
      opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    ),
    maxConnections: atLeastOne('maxConnections', opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS),
    maxConnectionsPerAddress: atLeastOne(
      'maxConnectionsPerAddress',
      opts.maxConnectionsPerAddress ?? DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    ),
  };
}

/** The config file's TLS settings; none unless it names a certificate or key. */
function tlsFilesOf(config: ServerConfig): TlsFiles | undefined {
  if (config.tlsCert === undefined && config.tlsKey === undefined) {
    if (config.tlsCa !== undefined || config.tlsRequireClientCert)
      throw new SegmemError('INVALID_ARGUMENT', 'tlsCa and tlsRequireClientCert need tlsCert and tlsKey');
    return undefined;
  }
  if (config.tlsCert === undefined || config.tlsKey === undefined)
    throw new SegmemError('INVALID_ARGUMENT', 'TLS needs both tlsCert and tlsKey');
  return {
    certFile: config.tlsCert,
    keyFile: config.tlsKey,
    ...(config.tlsCa !== undefined ? { caFile: config.tlsCa } : {}),
    ...(config.tlsRequireClientCert ? { requireClientCert: true } : {}),
  };
}

/** This server's metrics address: the option, else the config file's (one for all, or this id's). */
function metricsAddressFor(opts: StartServerOptions, config: ServerConfig): string | undefined {
  if (opts.metrics !== undefined) {
    if (typeof opts.metrics !== 'string')
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `metrics must be a host:port string; got ${JSON.stringify(opts.metrics)}`,
      );
    parseHostPort(opts.metrics, 'metrics address');
    return opts.metrics;
  }
  const m = config.metrics;
  return typeof m === 'string' ? m : m?.[opts.id];
}

/**
 * The memory budget in bytes (null: off): the option over the config file's, else derived from the cgroup
 * or machine memory (node/budget.ts; `derivedFrom` says which).
 */
function maxMemoryBytes(
  opts: StartServerOptions,
  config: ServerConfig,
): { limitBytes: number | null; derivedFrom?: string } {
  const given =
    opts.maxMemory !== undefined
      ? parseMaxMemory('maxMemory', opts.maxMemory, MIN_MAX_MEMORY_BYTES)
      : config.maxMemory;
  if (given === 'off') return { limitBytes: null };
  if (given !== undefined) return { limitBytes: given };
  const derived = defaultMaxMemory();
  return { limitBytes: derived.limitBytes, derivedFrom: derived.source };
}

/** The scheduled consolidated snapshot settings: the options over the config file's; none without a dir. */
function consolidatedOptions(
  opts: StartServerOptions,
  config: ServerConfig,
): { consolidatedDir?: string; consolidatedIntervalMs?: number; consolidatedKeep?: number } {
  const dir = opts.consolidatedDir ?? config.consolidatedDir?.replaceAll('{id}', opts.id);
  if (dir === undefined) return {};
  if (typeof dir !== 'string' || dir.length === 0)
    throw new SegmemError('INVALID_ARGUMENT', 'consolidatedDir must be a non-empty path');
  return {
    consolidatedDir: dir,
    consolidatedIntervalMs: parseConsolidatedIntervalMs(
      opts.consolidatedIntervalMs ?? config.consolidatedIntervalMs,
    ),
    consolidatedKeep: parseConsolidatedKeep(opts.consolidatedKeep ?? config.consolidatedKeep),
  };
}
