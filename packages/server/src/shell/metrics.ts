/**
 * The metrics and health endpoint of one server (`segmem-server --metrics HOST:PORT`): a small HTTP
 * server that answers GET /metrics with Prometheus text and GET /health with whether this member can
 * serve. docs/operations.md ("Metrics and health") lists every metric.
 *
 * Each server has its own prom-client registry, so several servers in one process do not clash. Events
 * (commits, grants, errors) are counted in plain numbers as they happen and copied into the registry when
 * scraped; latencies go straight into histograms (once per grant, WAL write or fsync); gauges are read
 * from the node when scraped. The HTTP side reads no request body, answers GET only, bounds its
 * connections and their time, and does no work between scrapes.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { ERROR_CODES, type ErrorCode, parseHostPort, SegmemError } from '@segmem/protocol';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Command, LockMode } from '../core/commands.js';
import type { Role } from '../raft/types.js';
import type { MetricsSink, NodeStats, SnapshotKind } from '../stats.js';
import type { ServerTls } from './tls.js';

/** A follower whose applied state is more than this many entries behind its leader's commit index is not healthy. */
export const HEALTH_MAX_LAG_ENTRIES = 1000;
/** Connections the HTTP server keeps open at once (scrapers and probes are few). */
const MAX_HTTP_CONNECTIONS = 32;
/** Time a client has to send its request headers, and its whole request. */
const HTTP_HEADERS_TIMEOUT_MS = 5_000;
const HTTP_REQUEST_TIMEOUT_MS = 10_000;
/** An idle keep-alive connection is closed after this long. */
const HTTP_KEEP_ALIVE_MS = 5_000;
const HTTP_MAX_HEADER_BYTES = 8 * 1024;

const ROLES: readonly Role[] = ['leader', 'follower', 'candidate', 'preCandidate'];
/** Every command, so that each has a commit series from the start (the compiler insists on all of them). */
const COMMAND_OPS = Object.keys({
  open: 0,
  close: 0,
  expire: 0,
  restart: 0,
  create: 0,
  delete: 0,
  acquire: 0,
  cancel: 0,
  release: 0,
  append: 0,
  truncate: 0,
  userAdd: 0,
  userRemove: 0,
  aclSet: 0,
  aclRemove: 0,
  slots: 0,
  moveFreeze: 0,
  moveImport: 0,
  moveSwitch: 0,
  moveAbort: 0,
} satisfies Record<Command['op'], 0>) as Command['op'][];
const S_PER_MS = 1e-3;
/** Sub-millisecond to a second: an fdatasync or a WAL write. */
const DISK_BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
/** A lock wait: none at all to minutes behind a holder. */
const WAIT_BUCKETS_S = [
  0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];
const SNAPSHOT_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** What a scrape reads: the node's state and the listener's byte counts. */
export interface ScrapeSource {
  stats(): NodeStats;
  readonly network: {
    readonly receivedBytes: number;
    readonly sentBytes: number;
    /** Connections open on the listen address. */
    readonly openConnections?: number;
    /** Connections closed before they logged in, by why (shell/tcp.ts). */
    readonly refused?: {
      readonly serverLimit: number;
      readonly addressLimit: number;
      readonly handshakeTimeout: number;
      readonly peerAuth?: number;
      readonly tlsRequired?: number;
    };
  };
}

export type HealthReason = 'STARTING' | 'NO_LEADER' | 'BEHIND' | 'LOG_FAILED' | 'WAL_STALLED';

/** Whether this member can serve (the body of /health), and why not. */
export interface Health {
  status: 'ok' | 'unavailable';
  id?: string;
  role?: Role;
  term?: number;
  leader?: string | null;
  appliedIndex?: number;
  /** How far this member's applied state is behind the leader's commit index, as far as it knows. */
  lagEntries?: number | null;
  reason?: HealthReason;
  message?: string;
}

/**
 * A member can serve when its log takes changes and it leads, or it follows a leader of its current term
 * and has applied that leader's commit index to within {@link HEALTH_MAX_LAG_ENTRIES} entries (it then
 * serves page reads and redirects the rest). A member that hears nothing from its leader for an election
 * timeout stops following it (pre-vote), so "knows a leader" is never older than about a second.
 */
export function healthOf(stats: NodeStats | null): Health {
  if (!stats) return { status: 'unavailable', reason: 'STARTING', message: 'the server is starting' };
  const log = stats.log;
  const lag = log.leaderCommitIndex === null ? null : Math.max(0, log.leaderCommitIndex - log.appliedIndex);
  const where = {
    id: stats.id,
    role: log.role,
    term: log.term,
    leader: log.leader,
    appliedIndex: log.appliedIndex,
    lagEntries: lag,
  };
  const down = (reason: HealthReason, message: string): Health => ({
    status: 'unavailable',
    ...where,
    reason,
    message,
  });
  if (log.problem) return down(log.problem.reason, log.problem.message);
  if (log.role !== 'leader') {
    if (log.leader === null) return down('NO_LEADER', `no leader known: this member is a ${log.role}`);
    if (lag === null) return down('BEHIND', `has not heard the commit index of leader ${log.leader} yet`);
    if (lag > HEALTH_MAX_LAG_ENTRIES) {
      return down(
        'BEHIND',
        `applied index ${log.appliedIndex} is ${lag} entries behind the commit index of leader ${log.leader} (at most ${HEALTH_MAX_LAG_ENTRIES} allowed)`,
      );
    }
  }
  return { status: 'ok', ...where };
}

/** One server's metrics: the sink its node reports events to, and the registry a scrape reads. */
export class ServerMetrics implements MetricsSink {
  readonly registry = new Registry();
  private source: ScrapeSource | null = null;
  /** The node's stats, read once per scrape (every collect callback of one scrape runs in the same turn). */
  private cached: NodeStats | null | undefined;

  private readonly commits = new Map<Command['op'], number>(COMMAND_OPS.map((op) => [op, 0]));
  private readonly grants: Record<LockMode, number> = { read: 0, write: 0 };
  private readonly errors = new Map<ErrorCode, number>(ERROR_CODES.map((code) => [code, 0]));
  private readonly snapshotBytes: Record<SnapshotKind, number> = { compact: 0, install: 0 };
  private readonly acquireWait: Record<LockMode, { observe(seconds: number): void }>;
  private readonly walSync: Histogram;
  private readonly walWrite: Histogram;
  private readonly snapshotWrite: Record<SnapshotKind, { observe(seconds: number): void }>;

  constructor() {
    // --- events, counted in the sink ---
    this.counter('segmem_commits_total', "Commands committed and applied to this member's state machine", {
      label: 'op',
      read: () => this.commits,
    });
    this.counter('segmem_lock_grants_total', 'Locks handed to clients by this member (as leader)', {
      label: 'mode',
      read: () => Object.entries(this.grants),
    });
    this.counter('segmem_errors_total', 'Requests this member answered with an error, by error code', {
      label: 'code',
      read: () => this.errors,
    });
    const acquireWait = this.histogram(
      'segmem_acquire_wait_seconds',
      'Time from an ACQUIRE reaching this member (as leader) to its grant being sent',
      WAIT_BUCKETS_S,
      'mode',
    );
    this.acquireWait = { read: acquireWait.labels('read'), write: acquireWait.labels('write') };
    // Series that exist from the start, so rates work from the first scrape.
    for (const mode of ['read', 'write']) acquireWait.zero({ mode });
    this.walSync = this.histogram(
      'segmem_wal_fsync_seconds',
      'Duration of each fdatasync of a WAL file',
      DISK_BUCKETS_S,
    );
    this.walWrite = this.histogram(
      'segmem_wal_write_seconds',
      'Duration of each write of a batch of WAL records to its file',
      DISK_BUCKETS_S,
    );
    const snapshotWrite = this.histogram(
      'segmem_snapshot_write_seconds',
      'Duration of writing a snapshot file (kind compact: taken here; install: sent by the leader)',
      SNAPSHOT_BUCKETS_S,
      'kind',
    );
    this.snapshotWrite = {
      compact: snapshotWrite.labels('compact'),
      install: snapshotWrite.labels('install'),
    };
    for (const kind of ['compact', 'install']) snapshotWrite.zero({ kind });
    this.counter('segmem_snapshot_written_bytes_total', 'Bytes of snapshot files written', {
      label: 'kind',
      read: () => Object.entries(this.snapshotBytes),
    });

    // --- counters the node and listener keep, read at scrape time ---
    this.counter('segmem_wal_appends_total', 'Records appended to the WAL', {
      read: () => this.view()?.log.wal.appends ?? 0,
    });
    this.counter(
      'segmem_wal_written_bytes_total',
      'Bytes written to WAL files, record and file headers included',
      {
        read: () => this.view()?.log.wal.bytes ?? 0,
      },
    );
    this.counter(
      'segmem_network_received_bytes_total',
      'Bytes read from connections accepted on the listen address (client requests, and Raft messages from other members)',
      { read: () => this.source?.network.receivedBytes ?? 0 },
    );
    this.counter(
      'segmem_network_sent_bytes_total',
      'Bytes sent: to clients (link client), to other members (link peer)',
      {
        label: 'link',
        read: () => [
          ['client', this.source?.network.sentBytes ?? 0],
          ['peer', this.view()?.log.peerLinks.sentBytes ?? 0],
        ],
      },
    );
    this.counter(
      'segmem_connections_refused_total',
      'Connections closed before they logged in: over --max-connections (reason server_limit), over --max-connections-per-address (address_limit), not logged in within --handshake-timeout-ms (handshake_timeout), a peer link that did not prove the cluster secret (peer_auth), a plain connection on a TLS port (tls_required)',
      {
        label: 'reason',
        read: () => {
          const r = this.source?.network.refused;
          return [
            ['server_limit', r?.serverLimit ?? 0],
            ['address_limit', r?.addressLimit ?? 0],
            ['handshake_timeout', r?.handshakeTimeout ?? 0],
            // Both ends: peers whose proof this member refused, and peers it dialled that had no proof.
            ['peer_auth', (r?.peerAuth ?? 0) + (this.view()?.log.peerLinks.authFailures ?? 0)],
            ['tls_required', r?.tlsRequired ?? 0],
          ];
        },
      },
    );
    this.counter(
      'segmem_raft_messages_dropped_total',
      'Raft messages to other members dropped because the link was down or backed up (the core sends again)',
      { read: () => this.view()?.log.peerLinks.droppedMessages ?? 0 },
    );
    this.counter('segmem_pages_served_total', 'Pages this member served to READ_PAGES (follower reads)', {
      read: () => this.view()?.pagesServed ?? 0,
    });

    // --- gauges, read at scrape time ---
    this.gauge('segmem_server_info', 'Always 1; the labels name this server and its cluster', {
      labels: ['id', 'cluster_id'],
      read: () => {
        const s = this.view();
        return s ? [[{ id: s.id, cluster_id: s.clusterId }, 1]] : [];
      },
    });
    this.gauge('segmem_health', 'Whether /health answers 200 (1) or 503 (0)', {
      read: () => [[{}, healthOf(this.view()).status === 'ok' ? 1 : 0]],
    });
    this.gauge('segmem_sessions', 'Client sessions open', { read: one(() => this.view()?.sessions) });
    this.gauge(
      'segmem_connections_open',
      'Connections open on the listen address (clients and other members)',
      {
        read: one(() => this.source?.network.openConnections),
      },
    );
    this.gauge('segmem_objects', 'Named objects in the segment', { read: one(() => this.view()?.objects) });
    this.gauge('segmem_shared_logs', 'Shared logs', { read: one(() => this.view()?.logs) });
    this.gauge('segmem_memory_used_bytes', 'What the memory budget counts now (--max-memory)', {
      read: one(() => this.view()?.memory?.usedBytes),
    });
    this.gauge(
      'segmem_memory_counted_bytes',
      'What the memory budget counts, by part (they add up to segmem_memory_used_bytes)',
      {
        labels: ['part'],
        read: () => {
          const counted = this.view()?.memory?.counted;
          return counted ? Object.entries(counted).map(([part, bytes]) => [{ part }, bytes]) : [];
        },
      },
    );
    this.gauge(
      'segmem_memory_paused_connections',
      'Client connections not read while the memory budget is over its limit',
      { read: one(() => this.view()?.memory?.waitingForRoom) },
    );
    this.gauge('segmem_memory_limit_bytes', 'The memory budget (--max-memory); absent when off', {
      read: one(() => this.view()?.memory?.limitBytes ?? undefined),
    });
    this.gauge('segmem_locks_held', 'Locks held: read grants outstanding, and objects held for writing', {
      labels: ['mode'],
      read: () => {
        const s = this.view();
        return s
          ? [
              [{ mode: 'read' }, s.locks.readHolds],
              [{ mode: 'write' }, s.locks.writeHolds],
            ]
          : [];
      },
    });
    this.gauge('segmem_lock_waiters', 'Acquires queued behind a holder', {
      read: one(() => this.view()?.locks.waiters),
    });
    this.gauge(
      'segmem_raft_role',
      "This member's role: 1 for the current one, 0 for the others (a single server leads)",
      {
        labels: ['role'],
        read: () => {
          const s = this.view();
          return s ? ROLES.map((role) => [{ role }, s.log.role === role ? 1 : 0]) : [];
        },
      },
    );
    this.gauge('segmem_raft_term', 'Raft term this member is in (0 for a single server)', {
      read: one(() => this.view()?.log.term),
    });
    this.gauge('segmem_raft_commit_index', 'Highest log index this member knows committed', {
      read: one(() => this.view()?.log.commitIndex),
    });
    this.gauge('segmem_raft_applied_index', "Highest log index applied to this member's state machine", {
      read: one(() => this.view()?.log.appliedIndex),
    });
    this.gauge('segmem_raft_last_index', "Highest index in this member's log", {
      read: one(() => this.view()?.log.lastIndex),
    });
    this.gauge(
      'segmem_raft_apply_lag_entries',
      "How far this member's applied index is behind its leader's commit index (absent while unknown)",
      {
        read: one(() => {
          const log = this.view()?.log;
          return log && log.leaderCommitIndex !== null
            ? Math.max(0, log.leaderCommitIndex - log.appliedIndex)
            : undefined;
        }),
      },
    );
    this.gauge(
      'segmem_raft_peer_match_index',
      "Leader only: each other member's highest log index known replicated",
      {
        labels: ['peer'],
        read: () => (this.view()?.log.peers ?? []).map((p) => [{ peer: p.id }, p.matchIndex]),
      },
    );
    this.gauge(
      'segmem_raft_peer_lag_entries',
      "Leader only: entries of the leader's log each other member lacks",
      {
        labels: ['peer'],
        read: () => {
          const log = this.view()?.log;
          return (log?.peers ?? []).map((p) => [{ peer: p.id }, Math.max(0, log!.lastIndex - p.matchIndex)]);
        },
      },
    );
  }

  /** Connects the scrape to the node and listener once they exist (before that, /health says STARTING). */
  attach(source: ScrapeSource): void {
    this.source = source;
  }

  /** The /health answer now. */
  health(): Health {
    return healthOf(this.view());
  }

  /** The /metrics answer now. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  // --- MetricsSink: O(1) each ---

  applied(op: Command['op']): void {
    this.commits.set(op, (this.commits.get(op) ?? 0) + 1);
  }

  granted(mode: LockMode, waitMs: number): void {
    this.grants[mode]++;
    this.acquireWait[mode].observe(waitMs * S_PER_MS);
  }

  failed(code: ErrorCode): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  walWritten(ms: number): void {
    this.walWrite.observe(ms * S_PER_MS);
  }

  walSynced(ms: number): void {
    this.walSync.observe(ms * S_PER_MS);
  }

  snapshotWritten(kind: SnapshotKind, bytes: number, ms: number): void {
    this.snapshotBytes[kind] += bytes;
    this.snapshotWrite[kind].observe(ms * S_PER_MS);
  }

  // --- building the registry ---

  private view(): NodeStats | null {
    if (this.cached === undefined) {
      this.cached = this.source?.stats() ?? null;
      queueMicrotask(() => {
        this.cached = undefined;
      });
    }
    return this.cached;
  }

  /** A counter whose value(s) `read` gives at scrape time: one number, or [label value, count] pairs. */
  private counter(
    name: string,
    help: string,
    spec: { read: () => number } | { label: string; read: () => Iterable<[string, number]> },
  ): void {
    new Counter({
      name,
      help,
      labelNames: 'label' in spec ? [spec.label] : [],
      registers: [this.registry],
      collect() {
        this.reset();
        if ('label' in spec) for (const [value, n] of spec.read()) this.labels(value).inc(n);
        else this.inc(spec.read());
      },
    });
  }

  /** A gauge set at scrape time from `read`'s [labels, value] pairs (series not returned disappear). */
  private gauge(
    name: string,
    help: string,
    spec: { labels?: string[]; read: () => Iterable<[Record<string, string>, number]> },
  ): void {
    new Gauge({
      name,
      help,
      labelNames: spec.labels ?? [],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [labels, value] of spec.read()) this.set(labels, value);
      },
    });
  }

  private histogram(name: string, help: string, buckets: number[], label?: string): Histogram {
    return new Histogram({
      name,
      help,
      buckets,
      labelNames: label ? [label] : [],
      registers: [this.registry],
    });
  }
}

/** A single unlabelled gauge value; none when `get` has nothing (the series is then absent). */
function one(get: () => number | undefined): () => [Record<string, string>, number][] {
  return () => {
    const v = get();
    return v === undefined ? [] : [[{}, v]];
  };
}

export interface MetricsServer {
  /** host:port it listens on. */
  readonly address: string;
  /** `https` when it serves TLS, else `http`. */
  readonly scheme: 'http' | 'https';
  /** The server's TLS material was reloaded: connections made from now on use it. */
  tlsReloaded(): void;
  close(): Promise<void>;
}

/**
 * Serves `metrics` over HTTP at `listen` (host:port; port 0 picks one): GET /metrics and GET /health
 * (200 or 503, JSON); another path is 404, another method 405, a request with a body 400. With `tls`
 * (the listen port's material), over HTTPS only, with the same certificate, and asking for a client
 * certificate of the CA when the listen port does.
 */
export async function serveMetrics(
  metrics: ServerMetrics,
  listen: string,
  tls?: ServerTls,
): Promise<MetricsServer> {
  const { host, port } = parseHostPort(listen, 'metrics address');
  const httpOptions = {
    maxHeaderSize: HTTP_MAX_HEADER_BYTES,
    headersTimeout: HTTP_HEADERS_TIMEOUT_MS,
    requestTimeout: HTTP_REQUEST_TIMEOUT_MS,
    keepAliveTimeout: HTTP_KEEP_ALIVE_MS,
  };
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    answer(metrics, req, res).catch((err: unknown) => {
      if (!res.headersSent)
        reply(res, 500, 'text/plain', `cannot collect metrics: ${(err as Error).message}\n`);
      else res.destroy();
    });
  };
  const https = tls
    ? createHttpsServer(
        {
          ...httpOptions,
          ...pemOf(tls),
          requestCert: tls.requireClientCert,
          rejectUnauthorized: tls.requireClientCert,
          handshakeTimeout: HTTP_HEADERS_TIMEOUT_MS,
        },
        onRequest,
      )
    : null;
  const server: Server = https ?? createServer(httpOptions, onRequest);
  server.maxConnections = MAX_HTTP_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new SegmemError('UNAVAILABLE', `cannot listen for metrics on ${listen}: ${err.message}`)),
    );
    server.listen(port, host, () => resolve());
  });
  server.on('error', () => {});
  const bound = server.address();
  const boundPort = typeof bound === 'object' && bound ? bound.port : port;
  return {
    address: `${host.includes(':') ? `[${host}]` : host}:${boundPort}`,
    scheme: https ? 'https' : 'http',
    tlsReloaded() {
      if (https && tls) https.setSecureContext(pemOf(tls));
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** The PEM text of the certificate, key and CA in use, which `peerOptions` holds (see ServerTls). */
function pemOf(tls: ServerTls) {
  const { cert, key, ca } = tls.peerOptions;
  return { cert, key, ...(ca !== undefined ? { ca } : {}) };
}

async function answer(metrics: ServerMetrics, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    reply(res, 405, 'text/plain', 'only GET is served here\n', true);
    return;
  }
  // Nothing here takes a body: refuse one rather than read it.
  if (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0) {
    reply(res, 400, 'text/plain', 'a request body is not accepted\n', true);
    return;
  }
  const path = (req.url ?? '/').split('?', 1)[0];
  if (path === '/metrics') {
    reply(res, 200, metrics.registry.contentType, await metrics.text());
  } else if (path === '/health') {
    const health = metrics.health();
    reply(res, health.status === 'ok' ? 200 : 503, 'application/json', `${JSON.stringify(health)}\n`);
  } else {
    reply(res, 404, 'text/plain', 'not found: this server serves /metrics and /health\n');
  }
}

function reply(res: ServerResponse, status: number, contentType: string, body: string, close = false): void {
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  if (close) res.setHeader('Connection', 'close');
  res.end(body);
}
