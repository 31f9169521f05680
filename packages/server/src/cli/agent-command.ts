/**
 * `segmem snapshot-agent`: a process (one per machine) that writes cluster snapshot files of a sharded
 * cluster on a schedule. Agents compete for a lease held in the cluster itself: each agent's session waits
 * for the write lock on the reserved object {@link LEASE_NAME} (created if missing) in the group that owns
 * its name. The holder coordinates; when it dies its session expires, its lock is released, and the next
 * waiting agent gets it. The lock's fencing token goes into each file's header.
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MAX_BARRIER_HOLD_MS, ownerOf, SegmemError, type SlotTable, slotOf } from '@segmem/protocol';
import { type GroupConfig, loadConfigFile } from '../config.js';
import { mkdirDurable, nodeFs } from '../storage/fs.js';
import { type AdminOptions, AdminSession } from './admin-client.js';
import { parseCount, UsageError } from './args.js';
import { withConfigToken } from './backup-commands.js';
import { DEFAULT_HOLD_MS, takeClusterCut } from './cluster-cut.js';
import { CONNECTION_OPTIONS, type Command, connectionOf, describe, formatBytes } from './common.js';

/** The reserved object whose write lock is the agents' lease; applications must not use it. */
export const LEASE_NAME = '.segmem/snapshot-agent';
/** How long one ACQUIRE of the lease waits on the server before it is asked again. */
const LEASE_WAIT_MS = 30_000;
/** `cluster-<UTC time to the millisecond>.segsnap`: names sort in the order they were taken. */
const FILE_NAME = /^cluster-\d{8}T\d{9}Z\.segsnap$/;

export function clusterFileName(at: Date): string {
  return `cluster-${at.toISOString().replace(/[-:.]/g, '')}.segsnap`;
}

export const snapshotAgent: Command = {
  name: 'snapshot-agent',
  args: [],
  summary: 'write cluster snapshots of a sharded cluster on a schedule (one agent coordinates)',
  description: `Runs in the foreground until SIGTERM or Ctrl-C. Run one on each of several machines: the
    agents compete for a lease held in the cluster (the write lock on the reserved object
    "${LEASE_NAME}", created if missing), so exactly one coordinates; when it dies its session expires and a
    waiting agent takes over. The coordinator takes a cluster snapshot at once and then every --every
    seconds (as snapshot --out --config does: one consistent cut of every group) into DIR as
    cluster-<UTC time>.segsnap (written as a temporary file, synced, then renamed), and deletes all but the
    --keep newest. Each file's header carries the lease's fencing token. Prints a line for each file and
    each change of role. Needs a config file with shard groups (a cluster without groups writes its
    snapshots with the servers' consolidatedDir schedule).`,
  options: [
    { name: 'config', value: 'FILE', help: "the cluster's config file, with shard groups (required)" },
    { name: 'dir', value: 'DIR', help: 'where the files go', default: '.' },
    { name: 'every', value: 'SECONDS', help: 'seconds between two snapshots (at least 1)', default: '3600' },
    { name: 'keep', value: 'N', help: 'how many files to keep, the newest', default: '3' },
    {
      name: 'hold-ms',
      value: 'MS',
      help: `how long each group may hold writes back for a cut (1..${MAX_BARRIER_HOLD_MS})`,
      default: String(DEFAULT_HOLD_MS),
    },
    // The servers are the config file's.
    ...CONNECTION_OPTIONS.filter((o) => o.name !== 'servers'),
  ],
  async run(p) {
    const configFile = p.values.get('config');
    if (configFile === undefined) throw new UsageError('snapshot-agent needs --config FILE', null);
    const config = loadConfigFile(configFile);
    if (!config.groups)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `${configFile} has no shard groups: a cluster without groups writes its snapshots with the servers' consolidatedDir setting`,
      );
    const groups = config.groups;
    const dir = p.values.get('dir') ?? '.';
    const everyMs = parseCount('--every', p.values.get('every') ?? '3600', 1, 2 ** 31 / 1000 - 1) * 1000;
    const keep = parseCount('--keep', p.values.get('keep') ?? '3', 1, 10_000);
    const holdMs = parseCount(
      '--hold-ms',
      p.values.get('hold-ms') ?? String(DEFAULT_HOLD_MS),
      1,
      MAX_BARRIER_HOLD_MS,
    );
    const connection = (servers: string[]) => withConfigToken(connectionOf(p, servers), config.token ?? null);
    await mkdirDurable(nodeFs, dir);
    const agent = new Agent(groups, connection, { dir, everyMs, keep, holdMs });
    const stop = () => agent.stop();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    try {
      await agent.run();
    } finally {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
    }
    return 0;
  },
};

function say(line: string): void {
  process.stdout.write(`snapshot-agent: ${line}\n`);
}

class Agent {
  private stopped = false;
  private wake: (() => void) | null = null;
  private lease: AdminSession | null = null;

  constructor(
    private readonly groups: GroupConfig[],
    private readonly connection: (servers: string[]) => AdminOptions,
    private readonly opts: { dir: string; everyMs: number; keep: number; holdMs: number },
  ) {}

  stop(): void {
    this.stopped = true;
    this.wake?.();
    // Closing the lease's session says GOODBYE: its lock goes to the next agent at once.
    void this.lease?.close();
  }

  async run(): Promise<void> {
    // Fails in one line when no group answers: nothing to coordinate.
    const owner = this.leaseGroup(await this.slotTable());
    while (!this.stopped) {
      const session = new AdminSession(this.connection(Object.values(owner.members)));
      this.lease = session;
      try {
        const fence = await this.acquire(session, owner);
        if (fence === null) break;
        say(
          `coordinating (lease fencing token ${fence}); a snapshot every ${this.opts.everyMs / 1000} s into ${this.opts.dir}`,
        );
        await this.coordinate(session, fence);
      } catch (err) {
        if (this.stopped) break;
        say(`lost the lease or could not reach group ${owner.id}: ${describe(err)}; waiting for it again`);
        await this.pause(1000);
      } finally {
        await session.close();
        this.lease = null;
      }
    }
  }

  /** The slot table of the first group that answers SLOTS; the config's initial table when none does. */
  private async slotTable(): Promise<SlotTable> {
    let last: unknown = null;
    for (const g of this.groups) {
      const s = new AdminSession(this.connection(Object.values(g.members)));
      try {
        return (await s.call({ type: 'SLOTS' })).table;
      } catch (err) {
        last = err;
      } finally {
        await s.close();
      }
    }
    if (SegmemError.is(last) && last.code !== 'UNAVAILABLE') throw last;
    throw new SegmemError('UNAVAILABLE', `no group of the cluster answers: ${describe(last)}`);
  }

  private leaseGroup(table: SlotTable): GroupConfig {
    const id = ownerOf(table, slotOf(LEASE_NAME));
    const g = this.groups.find((x) => x.id === id);
    if (!g)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `the cluster's slot table gives "${LEASE_NAME}" to group ${id}, which the config file does not list: not this cluster's config`,
      );
    return g;
  }

  /** Waits for the lease's write lock; its fencing token, or null when stopped first. */
  private async acquire(session: AdminSession, owner: GroupConfig): Promise<number | null> {
    await session.call({
      type: 'CREATE',
      seq: session.nextSeq(),
      name: LEASE_NAME,
      size: 1,
      ifNotExists: true,
    });
    say(`waiting for the lease (write lock on "${LEASE_NAME}" in group ${owner.id})`);
    while (!this.stopped) {
      try {
        const grant = await session.call(
          {
            type: 'ACQUIRE',
            seq: session.nextSeq(),
            name: LEASE_NAME,
            mode: 'write',
            cachedId: 0,
            cachedVersion: 0,
            timeoutMs: LEASE_WAIT_MS,
            inlineMaxBytes: 0,
          },
          LEASE_WAIT_MS,
        );
        return grant.token;
      } catch (err) {
        if (SegmemError.is(err) && err.code === 'TIMEOUT') continue;
        throw err;
      }
    }
    return null;
  }

  /** Takes a cut now and every `everyMs`, while the lease's session lives. */
  private async coordinate(session: AdminSession, fence: number): Promise<void> {
    while (!this.stopped) {
      // A session that expired while away has lost its lock: another agent may coordinate now.
      await session.call({ type: 'KEEPALIVE', lease: false });
      if (session.lost) throw new SegmemError('LOCK_LOST', 'the lease session expired');
      const started = Date.now();
      await this.takeOne(fence);
      await this.pause(Math.max(0, this.opts.everyMs - (Date.now() - started)));
    }
  }

  private async takeOne(fence: number): Promise<void> {
    const file = join(this.opts.dir, clusterFileName(new Date()));
    try {
      const cut = await takeClusterCut({
        groups: this.groups,
        connection: this.connection,
        file,
        fence,
        holdMs: this.opts.holdMs,
      });
      say(
        `wrote ${file} (${formatBytes(cut.bytes)}, ${cut.groups.map((g) => `group ${g.id} at index ${g.index}`).join(', ')})`,
      );
      await this.prune();
    } catch (err) {
      // One failed cut (a leader change, a lapsed hold) is retried at the next tick.
      say(`snapshot failed: ${describe(err)}`);
    }
  }

  /** Deletes all but the `keep` newest files. */
  private async prune(): Promise<void> {
    const names = (await readdir(this.opts.dir)).filter((n) => FILE_NAME.test(n)).sort();
    for (const n of names.slice(0, Math.max(0, names.length - this.opts.keep)))
      await rm(join(this.opts.dir, n), { force: true });
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
    });
  }
}
