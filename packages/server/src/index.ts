/**
 * @segmem/server: the segmem server and its building blocks.
 */
import { SegmemError } from '@segmem/protocol';
import { openClusterNode } from './cluster.js';
import {
  DEFAULT_CONFIG,
  loadConfigFile,
  parseConsolidatedIntervalMs,
  parseConsolidatedKeep,
  parseFsync,
  parseNonNegativeInteger,
  parseSegmentBytes,
  type ServerConfig,
} from './config.js';
import { SegmemNode } from './node.js';
import { RaftNode } from './raft/node.js';
import { listen, parseHostPort } from './shell/tcp.js';
import type { FsyncPolicy } from './storage/wal.js';

export { type Env, SegmemError, systemEnv } from '@segmem/protocol';
export { DEFAULT_CONFIG, loadConfigFile, parsePeers, type ServerConfig } from './config.js';
export type { Command, ObjectRecord, Outcome } from './core/commands.js';
export { StateMachine } from './core/state-machine.js';
export type { ApplyListener, ReplicatedLog } from './log/local-log.js';
export type { NodeLog, Port, Wire } from './node.js';
export { type NodeOptions, SegmemNode } from './node.js';
export type { Message, NodeId } from './raft/types.js';
export { connectLocal, type LocalEnd } from './shell/local.js';
export { DataDir } from './storage/datadir.js';
export type { FsyncPolicy, RecoveryReport } from './storage/wal.js';

export interface StartServerOptions {
  id: string;
  /** host:port to listen on (TCP, and UDP for invalidation hints). Port 0 picks a free port. */
  listen: string;
  /** All members of the group, id -> host:port, this server included. */
  peers?: Record<string, string>;
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
  /** Receives recovery reports and warnings, one line each. */
  log?: (line: string) => void;
}

export interface RunningServer {
  /** The address the server listens on, host:port. */
  address: string;
  close(): Promise<void>;
  /** Where this member stands (not part of the pinned API): leader or not, commands applied, state digest. */
  status(): ReturnType<SegmemNode['status']>;
}

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
  const peers = opts.peers ?? config.servers;
  const others = Object.keys(peers).filter((id) => id !== opts.id);
  for (const [id, address] of Object.entries(peers)) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) {
      throw new SegmemError('INVALID_ARGUMENT', `peer id ${JSON.stringify(id)} is not a valid server id`);
    }
    parseHostPort(address, `address of peer ${id}`);
  }
  const nodeOpts = {
    id: opts.id,
    dataDir: opts.dataDir,
    fsync: opts.fsync ? parseFsync(opts.fsync) : config.fsync,
    segmentBytes:
      opts.segmentBytes !== undefined ? parseSegmentBytes(opts.segmentBytes) : config.segmentBytes,
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
  };
  // One member: the single-member log. Several: a Raft group, every command committed on a majority.
  const node =
    others.length === 0
      ? await SegmemNode.open(nodeOpts)
      : await openClusterNode({
          ...nodeOpts,
          peers,
          makeCore: (cfg) => new RaftNode(cfg),
          ...(opts.join ? { join: true } : {}),
        });
  let listener: Awaited<ReturnType<typeof listen>>;
  try {
    listener = await listen(node, opts.listen);
  } catch (err) {
    await node.close();
    throw new SegmemError('UNAVAILABLE', `cannot listen on ${opts.listen}: ${(err as Error).message}`);
  }
  let closing: Promise<void> | null = null;
  return {
    address: listener.address,
    status: () => node.status(),
    close() {
      closing ??= (async () => {
        // Hand leadership over while the peer links still carry the acknowledgements the transfer needs.
        await node.handOff();
        await listener.close();
        await node.close();
      })();
      return closing;
    },
  };
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
