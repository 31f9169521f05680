/**
 * Cluster mode: a node whose log is a Raft group of several servers. Every command is committed on a
 * majority (each member fsyncs before acknowledging) before it is applied, so sessions, locks and
 * tokens survive the loss of any minority, and a restarted member simply catches up.
 */
import { createHash } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import { DEFAULT_SEGMENT_BYTES, type Env, PAGE_BYTES, SegmemError, systemEnv } from '@segmem/protocol';
import { parseSegmentBytes } from './config.js';
import { checkRestoredGroup, wholeSegment } from './core/group-range.js';
import { StateMachine } from './core/state-machine.js';
import { type PeerSender, type RaftCore, RaftLog } from './log/raft-log.js';
import { type NodeOptions, SegmemNode } from './node/index.js';
import type { NodeId, RaftStorage } from './raft/types.js';
import { clusterIdFromSecret, secretFingerprint } from './shell/peer-auth.js';
import { PeerTransport } from './shell/peers.js';
import { timedWalIo } from './stats.js';
import { DataDir } from './storage/datadir.js';
import { nodeFs, type StorageFs } from './storage/fs.js';
import { loadPeerAddresses, savePeerAddresses } from './storage/peer-addresses.js';
import { DiskRaftStorage } from './storage/raft-storage.js';

/** Ticks of the consensus clock. Election timeout: 10..20 ticks (0.5..1 s); heartbeats every tick. */
export const RAFT_TICK_MS = 50;
export const ELECTION_TICKS = 10;
export const HEARTBEAT_TICKS = 1;
export const SNAPSHOT_EVERY_ENTRIES = 10_000;

export interface CoreConfig {
  id: NodeId;
  storage: RaftStorage;
  electionTicks: number;
  heartbeatTicks: number;
  rand: () => number;
  /** See RaftConfig.rejoinTerm: set after the storage healed damage. */
  rejoinTerm: number;
}

export interface ClusterNodeOptions extends NodeOptions {
  /** Every member, this one included: id -> host:port. */
  peers: Record<NodeId, string>;
  makeCore: (cfg: CoreConfig) => RaftCore;
  /**
   * This server joins an existing group: it starts with the others as the membership (not itself), so it
   * never campaigns, and waits until a member adds it (`segmem cluster add`).
   */
  join?: boolean;
  /** The cluster secret was replaced on every member: record its fingerprint in place of the old one. */
  rotateClusterSecret?: boolean;
  /** @internal The peer links (default: TCP, shell/peers.ts); the simulator passes its own network's. */
  transport?: (opts: PeerTransportOptions) => PeerSender & { close(): void };
  /**
   * @internal The file system the data directory lives on: every file of it (WAL, snapshots, vote file,
   * peers.json, meta.json) and its lock (default: the real one; the simulator passes its disk).
   */
  fs?: StorageFs;
  /** Dial the other members over TLS with these options (the listen port serves TLS only); none: plain TCP. */
  peerTls?: ConnectionOptions;
}

export interface PeerTransportOptions {
  self: NodeId;
  clusterId: string;
  /** Known addresses, id -> host:port. */
  addresses: Record<NodeId, string>;
  token: string | null;
  env: Env;
  /** The cluster secret both ends of a peer link prove (shell/peer-auth.ts); null only in unit tests on the simulated clock. */
  secret?: Buffer | null;
  /** Dial the other members over TLS with these options; none: plain TCP. */
  tls?: ConnectionOptions;
  /** Where a link reports why a peer refused it or failed its proof. */
  log?: (line: string) => void;
}

function tcpTransport(opts: PeerTransportOptions): PeerTransport {
  return new PeerTransport(
    opts.self,
    opts.clusterId,
    opts.addresses,
    [],
    opts.token,
    opts.env,
    opts.secret ?? null,
    opts.tls,
    opts.log,
  );
}

/**
 * The cluster id members derived alike from the member list before cluster secrets existed; data
 * directories made then keep it (their meta records it). Anyone who knows the addresses can compute it,
 * so it is no credential; with a secret a new group's id comes from the secret (clusterIdFromSecret).
 */
export function defaultClusterId(peers: Record<NodeId, string>): string {
  const members = Object.keys(peers)
    .sort()
    .map((id) => `${id}=${peers[id]}`)
    .join(',');
  return `segmem-${createHash('sha256').update(members).digest('hex').slice(0, 16)}`;
}

export async function openClusterNode(opts: ClusterNodeOptions): Promise<SegmemNode> {
  if (!opts.peers[opts.id])
    throw new SegmemError('INVALID_ARGUMENT', `--peers must list this server (${opts.id})`);
  const segmentBytes = parseSegmentBytes(opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES);
  const env = opts.env ?? systemEnv;
  const secret = opts.clusterSecret ?? null;
  const fs = opts.fs ?? nodeFs;
  // An id given is insisted on; else a new directory takes one derived from the secret and an existing
  // one keeps what its meta records (a group made before secrets keeps its address-derived id).
  const dataDir = await DataDir.open({
    fs,
    dir: opts.dataDir,
    serverId: opts.id,
    pageBytes: PAGE_BYTES,
    segmentBytes,
    ...(opts.group ? { group: opts.group } : {}),
    ...(opts.clusterId !== undefined
      ? { clusterId: opts.clusterId }
      : { newClusterId: secret ? clusterIdFromSecret(secret) : defaultClusterId(opts.peers) }),
    ...(secret ? { secretFingerprint: secretFingerprint(secret) } : {}),
    ...(opts.rotateClusterSecret ? { replaceSecretFingerprint: true } : {}),
  });
  const clusterId = dataDir.meta.clusterId;
  let storage: DiskRaftStorage | undefined;
  try {
    storage = await DiskRaftStorage.open({
      dir: dataDir.dir,
      walDir: dataDir.walDir,
      onWalStarted: () => dataDir.walStarted(),
      fsync: opts.fsync ?? 'batch',
      id: opts.id,
      env,
      initialMembers: Object.keys(opts.peers)
        .filter((id) => !opts.join || id !== opts.id)
        .sort(),
      ...(opts.repair ? { repair: true } : {}),
      fs,
      ...(opts.metrics ? { walIo: timedWalIo(opts.metrics, env, fs) } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    });
    const report = storage.report;
    for (const line of [...dataDir.warnings, ...storage.recoveryLines()]) opts.log?.(line);
    const group = opts.group ?? wholeSegment(segmentBytes);
    const restored = storage.takeRestoredState();
    if (restored) checkRestoredGroup(restored.group, group, dataDir.dir);
    const sm =
      restored ??
      new StateMachine({
        pageBytes: PAGE_BYTES,
        segmentBytes,
        group,
        ...(opts.slotTable ? { slotTable: opts.slotTable } : {}),
      });
    const core = opts.makeCore({
      id: opts.id,
      storage,
      electionTicks: ELECTION_TICKS,
      heartbeatTicks: HEARTBEAT_TICKS,
      rand: () => env.random(),
      rejoinTerm: storage.rejoinTerm,
    });
    // Addresses learned from `add` entries survive the compaction of those entries in peers.json; the
    // command line's --peers wins for an id it names.
    const learned = await loadPeerAddresses(dataDir.dir, (line) => opts.log?.(line), fs);
    const peers = (opts.transport ?? tcpTransport)({
      self: opts.id,
      clusterId,
      addresses: { ...learned, ...opts.peers },
      token: opts.token ?? null,
      env,
      secret,
      ...(opts.peerTls ? { tls: opts.peerTls } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    });
    let saving = Promise.resolve();
    const remember = (id: string, address: string) => {
      if (learned[id] === address) return;
      learned[id] = address;
      const snapshot = { ...learned };
      saving = saving
        .then(() => savePeerAddresses(dataDir.dir, snapshot, fs))
        .catch((err: unknown) => opts.log?.(`cannot save member addresses: ${(err as Error).message}`));
    };
    let node: SegmemNode | undefined;
    let raftLog: RaftLog | undefined;
    const diskStorage = storage;
    node = SegmemNode.withLog(
      { ...opts, env },
      dataDir,
      (onApply) => {
        raftLog = new RaftLog(core, diskStorage, sm, peers, onApply, {
          tickMs: RAFT_TICK_MS,
          snapshotEveryEntries: opts.snapshotEveryEntries ?? SNAPSHOT_EVERY_ENTRIES,
          pageBytes: PAGE_BYTES,
          segmentBytes,
          env,
          onAddress: (id, address) => remember(id, address),
          onRoleChange: (role, leader, term) => {
            opts.log?.(`raft: ${role} in term ${term}${leader ? `, leader ${leader}` : ''}`);
            node?.roleChanged(role === 'leader');
          },
          ...(opts.log ? { log: opts.log } : {}),
          ...(opts.metrics ? { metrics: opts.metrics } : {}),
        });
        return raftLog;
      },
      report,
    );
    // Members added after start-up: their addresses are in the conf entries still in the log.
    for (const e of storage.entries(storage.firstIndex(), storage.lastIndex() + 1)) {
      if (e.type === 'conf') raftLog!.learnAddress(e.data);
    }
    peers.setMembers(core.members);
    node.peerHandler = (msg) => raftLog!.receive(msg);
    // Known: a member in this member's view, or named by its member list (--peers, learned addresses). A
    // member that missed an `add` while down must still hear from the added one, which may lead by then.
    node.peerIsMember = (id) => core.members.includes(id) || peers.addressOf(id) !== undefined;
    node.raftStatus = () => ({
      role: core.role,
      leader: core.leader,
      term: core.term,
      commitIndex: core.commitIndex,
      lastIndex: core.lastIndex,
      progress:
        core.role === 'leader'
          ? core.members.filter((id) => id !== opts.id).map((id) => [id, core.progress(id)?.match ?? 0])
          : [],
    });
    node.onClose(() => peers.close());
    raftLog!.start();
    return node;
  } catch (err) {
    await storage?.close().catch(() => {});
    await dataDir.close();
    throw err;
  }
}
