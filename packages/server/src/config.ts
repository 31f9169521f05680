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
import {
  elementPath,
  JsonSyntaxError,
  memberPath,
  type PositionedJson,
  parseJsonWithPositions,
} from './config-json.js';
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
  /** Server id -> host:port: with `groups`, every group's members. */
  servers: Record<string, string>;
  /** Shard groups, each a Raft group owning a range of the segment; unset: one group of `servers`. */
  groups?: GroupConfig[];
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

/** One shard group of the config file's `groups`. */
export interface GroupConfig {
  /** 1..65535; frames to and from the group carry it. */
  id: number;
  /** First byte of its range of the segment (page-aligned). */
  start: number;
  /** Bytes in its range (page-aligned). */
  bytes: number;
  /** Server id -> host:port: 1, 3 or 5 members. */
  members: Record<string, string>;
  /**
   * A group added to a running cluster: its servers start owning no slot (the other groups' first table,
   * listing it), until `segmem cluster add-group` moves slots to it. Absent: false.
   */
  joining?: boolean;
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
  const n = typeof value === 'string' ? parseSize(value) : value;
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

/** Every key the config file may hold. */
const CONFIG_KEYS = new Set([
  'clusterId',
  'pageBytes',
  'segmentBytes',
  'fsync',
  'token',
  'clusterSecretFile',
  'servers',
  'groups',
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

/**
 * Reads the config file. Every mistake is INVALID_ARGUMENT with a message that starts
 * `<file>:<line>: ` and names the key path (details: file, line, path); nothing is started.
 */
export function loadConfigFile(path: string): ServerConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw bad(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let doc: PositionedJson;
  try {
    doc = parseJsonWithPositions(text);
  } catch (err) {
    if (!(err instanceof JsonSyntaxError)) throw err;
    throw new SegmemError('INVALID_ARGUMENT', `${path}:${err.line}: ${err.problem}`, {
      file: path,
      line: err.line,
    });
  }
  const raw = doc.value;
  const mistake = configMistake(path, doc);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw mistake(
      '',
      `a config file holds a JSON object; got ${Array.isArray(raw) ? 'a list' : JSON.stringify(raw)}`,
    );
  const c = raw as Record<string, unknown>;
  for (const key of Object.keys(c)) if (!CONFIG_KEYS.has(key)) throw mistake(key, `unknown setting "${key}"`);
  // The existing checks' messages name their key: they gain the file and line.
  const located = <T>(key: string, read: () => T): T => {
    try {
      return read();
    } catch (err) {
      if (!SegmemError.is(err) || err.code !== 'INVALID_ARGUMENT') throw err;
      const line = doc.lineOf(key);
      throw new SegmemError('INVALID_ARGUMENT', `${path}:${line}: ${err.message}`, {
        file: path,
        line,
        path: key,
      });
    }
  };
  const config: ServerConfig = { ...DEFAULT_CONFIG, servers: {} };
  located('clusterId', () => {
    if (c.clusterId === undefined) return;
    if (typeof c.clusterId !== 'string' || c.clusterId.length === 0)
      throw bad('clusterId must be a non-empty string');
    config.clusterId = c.clusterId;
  });
  located('pageBytes', () => {
    if (c.pageBytes !== undefined && c.pageBytes !== PAGE_BYTES) throw bad(`pageBytes must be ${PAGE_BYTES}`);
  });
  if (c.segmentBytes !== undefined)
    config.segmentBytes = located('segmentBytes', () => parseSegmentBytes(c.segmentBytes));
  if (c.fsync !== undefined) config.fsync = located('fsync', () => parseFsync(c.fsync));
  for (const key of ['snapshotEveryEntries', 'snapshotIntervalMs'] as const) {
    if (c[key] !== undefined) config[key] = located(key, () => parseNonNegativeInteger(key, c[key]));
  }
  located('consolidatedDir', () => {
    if (c.consolidatedDir === undefined) return;
    if (typeof c.consolidatedDir !== 'string' || c.consolidatedDir.length === 0)
      throw bad('consolidatedDir must be a non-empty string');
    config.consolidatedDir = c.consolidatedDir;
  });
  if (c.consolidatedIntervalMs !== undefined)
    config.consolidatedIntervalMs = located('consolidatedIntervalMs', () =>
      parseConsolidatedIntervalMs(c.consolidatedIntervalMs),
    );
  if (c.consolidatedKeep !== undefined)
    config.consolidatedKeep = located('consolidatedKeep', () => parseConsolidatedKeep(c.consolidatedKeep));
  if (c.metrics !== undefined) config.metrics = located('metrics', () => parseMetricsAddress(c.metrics));
  if (c.maxMemory !== undefined)
    config.maxMemory = located('maxMemory', () =>
      parseMaxMemory('maxMemory', c.maxMemory, MIN_MAX_MEMORY_BYTES),
    );
  located('token', () => {
    if (c.token === undefined) return;
    if (typeof c.token !== 'string') throw bad('token must be a string');
    config.token = c.token;
  });
  located('clusterSecretFile', () => {
    if (c.clusterSecretFile === undefined) return;
    if (typeof c.clusterSecretFile !== 'string' || c.clusterSecretFile.length === 0)
      throw bad('clusterSecretFile must be a non-empty path');
    // A relative path starts at the config file's directory: the two are distributed together.
    config.clusterSecretFile = resolve(dirname(path), c.clusterSecretFile);
  });
  for (const key of ['tlsCert', 'tlsKey', 'tlsCa'] as const) {
    if (c[key] === undefined) continue;
    located(key, () => {
      if (typeof c[key] !== 'string' || c[key].length === 0)
        throw bad(`${key} must be a non-empty path (a PEM file)`);
      config[key] = c[key];
    });
  }
  located('tlsRequireClientCert', () => {
    if (c.tlsRequireClientCert === undefined) return;
    if (typeof c.tlsRequireClientCert !== 'boolean') throw bad('tlsRequireClientCert must be true or false');
    config.tlsRequireClientCert = c.tlsRequireClientCert;
  });
  located('dataDir', () => {
    if (c.dataDir === undefined) return;
    if (typeof c.dataDir !== 'string' || c.dataDir.length === 0)
      throw bad('dataDir must be a non-empty string');
    config.dataDir = c.dataDir;
  });
  if (c.servers !== undefined && c.groups !== undefined) {
    throw mistake(
      'groups',
      `cannot be used with servers (line ${doc.lineOf('servers')}): list every server under its group's members`,
    );
  }
  if (c.servers !== undefined) {
    located('servers', () => {
      if (typeof c.servers !== 'object' || c.servers === null || Array.isArray(c.servers))
        throw bad('servers must map server ids to host:port');
      for (const [id, addr] of Object.entries(c.servers)) {
        if (typeof addr !== 'string') throw bad(`${memberPath('servers', id)} must be a host:port string`);
        config.servers[id] = addr;
      }
    });
  }
  if (c.groups !== undefined) {
    config.groups = parseGroups(c.groups, config.segmentBytes, mistake);
    // Every member of every group, for whoever needs the whole cluster's addresses.
    for (const g of config.groups) Object.assign(config.servers, g.members);
  }
  return config;
}

/** Makes the error for a mistake at a key path: `<file>:<line>: <path>: <problem>`. */
type Mistake = (keyPath: string, problem: string) => SegmemError;

function configMistake(file: string, doc: PositionedJson): Mistake {
  return (keyPath, problem) => {
    const line = doc.lineOf(keyPath);
    const where = keyPath === '' ? '' : `${keyPath}: `;
    return new SegmemError('INVALID_ARGUMENT', `${file}:${line}: ${where}${problem}`, {
      file,
      line,
      path: keyPath,
    });
  };
}

const GROUP_KEYS = ['id', 'start', 'bytes', 'members'];
/** Replicas a group may have: an odd count, so a majority survives the loss of the others. */
export const GROUP_MEMBER_COUNTS = [1, 3, 5];
export const MAX_GROUP_ID = 65535;

/** The `groups` list: each group well-formed, ranges inside the segment and apart, members unique. */
function parseGroups(value: unknown, segmentBytes: number, mistake: Mistake): GroupConfig[] {
  if (!Array.isArray(value)) throw mistake('groups', 'must be a list of groups');
  if (value.length === 0) throw mistake('groups', 'must list at least one group');
  const groups: GroupConfig[] = [];
  const memberAt = new Map<string, string>(); // server id -> its key path
  const addressAt = new Map<string, string>(); // address -> key path of the member it belongs to
  value.forEach((g, i) => {
    const at = elementPath('groups', i);
    if (typeof g !== 'object' || g === null || Array.isArray(g))
      throw mistake(at, 'must be an object with id, start, bytes and members');
    const o = g as Record<string, unknown>;
    for (const key of Object.keys(o))
      if (!GROUP_KEYS.includes(key) && key !== 'joining')
        throw mistake(memberPath(at, key), `unknown key (a group has ${GROUP_KEYS.join(', ')}, joining)`);
    if (o.joining !== undefined && typeof o.joining !== 'boolean')
      throw mistake(`${at}.joining`, `must be true or false; got ${JSON.stringify(o.joining)}`);
    for (const key of GROUP_KEYS) if (o[key] === undefined) throw mistake(at, `missing "${key}"`);
    const id = o.id;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 1 || id > MAX_GROUP_ID)
      throw mistake(`${at}.id`, `must be an integer 1..${MAX_GROUP_ID}; got ${JSON.stringify(id)}`);
    const same = groups.findIndex((x) => x.id === id);
    if (same >= 0) throw mistake(`${at}.id`, `group id ${id} is already used by groups[${same}]`);
    const start = groupSize(o.start, `${at}.start`, mistake);
    const bytes = groupSize(o.bytes, `${at}.bytes`, mistake);
    if (bytes === 0) throw mistake(`${at}.bytes`, 'must be at least one page (4096)');
    if (start + bytes > segmentBytes) {
      throw mistake(
        `${at}.bytes`,
        `the range ${describeRange(start, bytes)} ends past the segment (segmentBytes ${segmentBytes})`,
      );
    }
    groups.forEach((other, j) => {
      if (start < other.start + other.bytes && other.start < start + bytes) {
        throw mistake(
          `${at}.start`,
          `group ${id}'s range ${describeRange(start, bytes)} overlaps group ${other.id}'s ${describeRange(other.start, other.bytes)} (groups[${j}])`,
        );
      }
    });
    const members = o.members;
    const membersAt = `${at}.members`;
    if (typeof members !== 'object' || members === null || Array.isArray(members))
      throw mistake(membersAt, 'must map server ids to host:port');
    const ids = Object.keys(members);
    if (!GROUP_MEMBER_COUNTS.includes(ids.length))
      throw mistake(membersAt, `a group has 1, 3 or 5 members; group ${id} has ${ids.length}`);
    const byId: Record<string, string> = {};
    for (const [serverId, address] of Object.entries(members)) {
      const here = memberPath(membersAt, serverId);
      if (!SERVER_ID.test(serverId)) throw mistake(here, 'a server id is 1..64 characters of [A-Za-z0-9._-]');
      if (typeof address !== 'string') throw mistake(here, 'must be a host:port string');
      try {
        parseHostPort(address, `address of ${serverId}`);
      } catch (err) {
        throw mistake(here, (err as Error).message);
      }
      const earlier = memberAt.get(serverId);
      if (earlier !== undefined) throw mistake(here, `server ${serverId} is already a member at ${earlier}`);
      const taken = addressAt.get(address);
      if (taken !== undefined) throw mistake(here, `address ${address} is already given to ${taken}`);
      memberAt.set(serverId, here);
      addressAt.set(address, here);
      byId[serverId] = address;
    }
    groups.push({ id, start, bytes, members: byId, ...(o.joining === true ? { joining: true } : {}) });
  });
  return groups;
}

/** A group's start or size: bytes, or a size string; page-aligned. */
function groupSize(value: unknown, keyPath: string, mistake: Mistake): number {
  const bytes = typeof value === 'number' || typeof value === 'string' ? parseSize(value) : undefined;
  if (bytes === undefined || !Number.isSafeInteger(bytes) || bytes < 0)
    throw mistake(
      keyPath,
      `must be a number of bytes or a size such as "1GiB"; got ${JSON.stringify(value)}`,
    );
  if (bytes % PAGE_BYTES !== 0)
    throw mistake(keyPath, `${bytes} is not a multiple of the page size (${PAGE_BYTES})`);
  return bytes;
}

function describeRange(start: number, bytes: number): string {
  return `[${start}, ${start + bytes})`;
}

const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** Where a server stands: its group's id, members and address range. */
export interface ServerGroup {
  /** 0: the one group of a cluster configured without `groups`. */
  id: number;
  /** First byte of the group's range in the segment. */
  start: number;
  bytes: number;
  members: Record<string, string>;
}

/**
 * The group of server `serverId` in `config`: its entry of `groups`, or without groups the one group 0
 * of `servers` over the whole segment. INVALID_ARGUMENT if `groups` has no member `serverId`.
 */
export function groupOf(config: ServerConfig, serverId: string, file: string): ServerGroup {
  if (!config.groups) return { id: 0, start: 0, bytes: config.segmentBytes, members: config.servers };
  const g = config.groups.find((x) => Object.hasOwn(x.members, serverId));
  if (!g) {
    const all = config.groups.flatMap((x) => Object.keys(x.members));
    throw bad(`server "${serverId}" is in no group of ${file} (its members: ${all.join(', ')})`);
  }
  return { id: g.id, start: g.start, bytes: g.bytes, members: { ...g.members } };
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
  const bytes = typeof value === 'number' || typeof value === 'string' ? parseSize(value) : undefined;
  if (bytes === undefined || !Number.isSafeInteger(bytes) || bytes < minBytes) {
    throw bad(
      `${name} must be a size of at least ${minBytes / 1024 / 1024} MiB (bytes, or with a unit: 512MiB, 2GiB) or "off"; got ${JSON.stringify(value)}`,
    );
  }
  return bytes;
}

/** Bytes as a number, digits, or a size with a binary unit ("512MiB", "1.5G"); undefined if it is none. */
export function parseSize(value: number | string): number | undefined {
  if (typeof value === 'number') return value;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  return m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : undefined;
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
