/**
 * Server configuration: every option with its default in one place, and the universal config file
 * (seed 003): one JSON file naming the cluster's servers, page size, segment size and policies.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import {
  DEFAULT_SEGMENT_BYTES,
  MAX_SEGMENT_BYTES,
  PAGE_BYTES,
  parseHostPort,
  SegmemError,
} from '@segmem/protocol';
import { MIN_MAX_MEMORY_BYTES } from './node/budget.js';
import { FSYNC_POLICIES, type FsyncPolicy } from './storage/wal.js';

export interface ServerConfig {
  /** Cluster id to create a fresh data directory with, or to insist on for an existing one. */
  clusterId?: string;
  /** Page size; must equal the OS page size for page rights to work. Only 4096 is supported. */
  pageBytes: number;
  /** Size of the segment's address space. Sparse: unused pages cost nothing. */
  segmentBytes: number;
  /** WAL durability policy. */
  fsync: FsyncPolicy;
  /** Credential clients present in HELLO. */
  token?: string;
  /** Path of the cluster secret members prove to each other (every member of a group needs it). */
  clusterSecretFile?: string;
  /** Server id -> host:port. */
  servers: Record<string, string>;
  /** Data directory per server; `{id}` is replaced by the server id. */
  dataDir: string;
  /** Snapshot the state machine every this many log entries, then cut the WAL (0: never by count). */
  snapshotEveryEntries: number;
  /** One server: also snapshot this often if anything changed (0: never by time). */
  snapshotIntervalMs: number;
  /** Where the leader writes scheduled consolidated snapshots (`{id}` is replaced); none when unset. */
  consolidatedDir?: string;
  /** How often the leader writes a consolidated snapshot into `consolidatedDir` (at least 1000). */
  consolidatedIntervalMs: number;
  /** How many consolidated snapshots to keep there, the newest (at least 1). */
  consolidatedKeep: number;
  /**
   * host:port of the HTTP metrics and health endpoint, or one per server id (servers sharing a host need
   * their own ports); none when unset.
   */
  metrics?: string | Record<string, string>;
  /**
   * The memory budget in bytes (node/budget.ts), or 'off'; unset: derived from the cgroup or machine
   * memory. In the file a number of bytes or a size string such as "512MiB".
   */
  maxMemory?: number | 'off';
  /** TLS on the listen port: the server's certificate and key (PEM files); none: plain TCP. */
  tlsCert?: string;
  /** The private key of `tlsCert` (PEM file). */
  tlsKey?: string;
  /** CA certificates (PEM file) client and member certificates must chain to. */
  tlsCa?: string;
  /** Refuse clients without a certificate signed by `tlsCa`. */
  tlsRequireClientCert?: boolean;
}

export const DEFAULT_CONFIG: ServerConfig = {
  pageBytes: PAGE_BYTES,
  segmentBytes: DEFAULT_SEGMENT_BYTES,
  fsync: 'batch',
  servers: {},
  dataDir: './data/{id}',
  snapshotEveryEntries: 10_000,
  snapshotIntervalMs: 600_000,
  consolidatedIntervalMs: 3_600_000,
  consolidatedKeep: 3,
};

function bad(message: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', message);
}

export function parseFsync(value: unknown): FsyncPolicy {
  if (typeof value === 'string' && (FSYNC_POLICIES as readonly string[]).includes(value))
    return value as FsyncPolicy;
  throw bad(`fsync must be one of ${FSYNC_POLICIES.join(', ')}; got ${JSON.stringify(value)}`);
}

export function parseSegmentBytes(value: unknown): number {
  const n = typeof value === 'string' ? Number(value) : value;
  if (
    typeof n !== 'number' ||
    !Number.isSafeInteger(n) ||
    n < PAGE_BYTES ||
    n % PAGE_BYTES !== 0 ||
    n > MAX_SEGMENT_BYTES
  ) {
    throw bad(
      `segmentBytes must be a multiple of ${PAGE_BYTES} between ${PAGE_BYTES} and ${MAX_SEGMENT_BYTES}; got ${String(value)}`,
    );
  }
  return n;
}

/** A non-negative integer setting (a count or a duration); strings of digits are accepted (CLI flags). */
export function parseNonNegativeInteger(name: string, value: unknown): number {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
    throw bad(`${name} must be a non-negative integer; got ${JSON.stringify(value)}`);
  return n;
}

export function parseConsolidatedIntervalMs(value: unknown): number {
  const n = parseNonNegativeInteger('consolidatedIntervalMs', value);
  if (n < 1000) throw bad(`consolidatedIntervalMs must be at least 1000; got ${n}`);
  return n;
}

export function parseConsolidatedKeep(value: unknown): number {
  const n = parseNonNegativeInteger('consolidatedKeep', value);
  if (n < 1) throw bad(`consolidatedKeep must be at least 1; got ${n}`);
  return n;
}

export function loadConfigFile(path: string): ServerConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw bad(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw bad(`config file ${path} must hold a JSON object`);
  const c = raw as Record<string, unknown>;
  const known = new Set([
    'clusterId',
    'pageBytes',
    'segmentBytes',
    'fsync',
    'token',
    'clusterSecretFile',
    'servers',
    'dataDir',
    'snapshotEveryEntries',
    'snapshotIntervalMs',
    'consolidatedDir',
    'consolidatedIntervalMs',
    'consolidatedKeep',
    'metrics',
    'maxMemory',
    'tlsCert',
    'tlsKey',
    'tlsCa',
    'tlsRequireClientCert',
  ]);
  for (const key of Object.keys(c))
    if (!known.has(key)) throw bad(`config file ${path}: unknown setting "${key}"`);
  const config: ServerConfig = { ...DEFAULT_CONFIG, servers: {} };
  if (c.clusterId !== undefined) {
    if (typeof c.clusterId !== 'string' || c.clusterId.length === 0)
      throw bad('clusterId must be a non-empty string');
    config.clusterId = c.clusterId;
  }
  if (c.pageBytes !== undefined && c.pageBytes !== PAGE_BYTES) throw bad(`pageBytes must be ${PAGE_BYTES}`);
  if (c.segmentBytes !== undefined) config.segmentBytes = parseSegmentBytes(c.segmentBytes);
  if (c.fsync !== undefined) config.fsync = parseFsync(c.fsync);
  for (const key of ['snapshotEveryEntries', 'snapshotIntervalMs'] as const) {
    if (c[key] !== undefined) config[key] = parseNonNegativeInteger(key, c[key]);
  }
  if (c.consolidatedDir !== undefined) {
    if (typeof c.consolidatedDir !== 'string' || c.consolidatedDir.length === 0)
      throw bad('consolidatedDir must be a non-empty string');
    config.consolidatedDir = c.consolidatedDir;
  }
  if (c.consolidatedIntervalMs !== undefined)
    config.consolidatedIntervalMs = parseConsolidatedIntervalMs(c.consolidatedIntervalMs);
  if (c.consolidatedKeep !== undefined) config.consolidatedKeep = parseConsolidatedKeep(c.consolidatedKeep);
  if (c.metrics !== undefined) config.metrics = parseMetricsAddress(c.metrics);
  if (c.maxMemory !== undefined)
    config.maxMemory = parseMaxMemory('maxMemory', c.maxMemory, MIN_MAX_MEMORY_BYTES);
  if (c.token !== undefined) {
    if (typeof c.token !== 'string') throw bad('token must be a string');
    config.token = c.token;
  }
  if (c.clusterSecretFile !== undefined) {
    if (typeof c.clusterSecretFile !== 'string' || c.clusterSecretFile.length === 0)
      throw bad('clusterSecretFile must be a non-empty path');
    // A relative path starts at the config file's directory: the two are distributed together.
    config.clusterSecretFile = resolve(dirname(path), c.clusterSecretFile);
  }
  for (const key of ['tlsCert', 'tlsKey', 'tlsCa'] as const) {
    if (c[key] === undefined) continue;
    if (typeof c[key] !== 'string' || c[key].length === 0)
      throw bad(`${key} must be a non-empty path (a PEM file)`);
    config[key] = c[key];
  }
  if (c.tlsRequireClientCert !== undefined) {
    if (typeof c.tlsRequireClientCert !== 'boolean') throw bad('tlsRequireClientCert must be true or false');
    config.tlsRequireClientCert = c.tlsRequireClientCert;
  }
  if (c.dataDir !== undefined) {
    if (typeof c.dataDir !== 'string' || c.dataDir.length === 0)
      throw bad('dataDir must be a non-empty string');
    config.dataDir = c.dataDir;
  }
  if (c.servers !== undefined) {
    if (typeof c.servers !== 'object' || c.servers === null)
      throw bad('servers must map server ids to host:port');
    for (const [id, addr] of Object.entries(c.servers)) {
      if (typeof addr !== 'string') throw bad(`servers.${id} must be a host:port string`);
      config.servers[id] = addr;
    }
  }
  return config;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

/**
 * A memory budget: bytes as a number or digits, or a size with a binary unit ("512MiB", "2G", "1.5GiB":
 * K, M, G and T are all powers of 1024), or "off". At least `minBytes`.
 */
export function parseMaxMemory(name: string, value: unknown, minBytes: number): number | 'off' {
  if (value === 'off') return 'off';
  let bytes: number | undefined;
  if (typeof value === 'number') bytes = value;
  else if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
    const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
    if (m && unit !== undefined) bytes = Math.floor(Number(m[1]) * unit);
  }
  if (bytes === undefined || !Number.isSafeInteger(bytes) || bytes < minBytes) {
    throw bad(
      `${name} must be a size of at least ${minBytes / 1024 / 1024} MiB (bytes, or with a unit: 512MiB, 2GiB) or "off"; got ${JSON.stringify(value)}`,
    );
  }
  return bytes;
}

/** The metrics endpoint's host:port, or a map of them by server id. */
export function parseMetricsAddress(value: unknown): string | Record<string, string> {
  if (typeof value === 'string') {
    parseHostPort(value, 'metrics address');
    return value;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw bad(`metrics must be host:port or a map of server id to host:port; got ${JSON.stringify(value)}`);
  const byId: Record<string, string> = {};
  for (const [id, address] of Object.entries(value)) {
    if (typeof address !== 'string') throw bad(`metrics.${id} must be a host:port string`);
    parseHostPort(address, `metrics address of ${id}`);
    byId[id] = address;
  }
  return byId;
}

/** Parses `s1=127.0.0.1:7401,s2=...` into a map. */
export function parsePeers(value: string): Record<string, string> {
  const peers: Record<string, string> = {};
  for (const item of value.split(',').filter(Boolean)) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw bad(`--peers entries must be id=host:port; got ${JSON.stringify(item)}`);
    peers[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return peers;
}
