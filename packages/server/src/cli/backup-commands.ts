/** `segmem snapshot` and `segmem restore`: consolidated snapshots of a running cluster, and back. */
import { open, readFile, rename, rm } from 'node:fs/promises';
import { MAX_BARRIER_HOLD_MS, SegmemError } from '@segmem/protocol';
import { type GroupConfig, loadConfigFile } from '../config.js';
import { checkContent } from '../core/content-check.js';
import { describeGroupRange } from '../core/group-range.js';
import { decodeClusterFile, isClusterFile } from '../storage/cluster-file.js';
import { type Consolidated, ConsolidatedVerifier, decodeConsolidated } from '../storage/consolidated.js';
import { restoreConsolidated } from '../storage/restore.js';
import { restoreClusterMember } from '../storage/restore-cluster.js';
import { type AdminOptions, AdminSession } from './admin-client.js';
import { type Parsed, parseCount, UsageError } from './args.js';
import { DEFAULT_HOLD_MS, takeClusterCut } from './cluster-cut.js';
import {
  CONNECTION_OPTIONS,
  type Command,
  connectionOf,
  counted,
  escapeText,
  formatBytes,
  out,
  progress,
} from './common.js';
import { readExport, SNAPSHOT_BUILD_MS } from './export-reader.js';

/** `snapshot --out` fdatasyncs the file every this many bytes written. */
const SNAPSHOT_SYNC_EVERY_BYTES = 32 * 1024 * 1024;

export const snapshot: Command = {
  name: 'snapshot',
  args: [],
  summary: 'write a consolidated snapshot of the cluster into a file, or check one',
  description: `With --out, asks the leader for a consolidated snapshot of the whole segment (every object's
    bytes and every shared log, at one consistent point: everything acknowledged before the command started)
    and writes it into FILE, checking its checksum as the pieces arrive; FILE appears only once complete and
    verified (it is written as FILE.tmp-<pid> first). The leader may take up to 10 minutes to build it, on
    top of the timeout. On a terminal, a progress line on stderr. With --inspect, verifies FILE's checksum
    and content (the checks restore makes) and prints what it holds: header (with a shard group's range and
    slot table), content digest, objects (name, size, version, address), logs; no server is asked. Exactly
    one of --out or --inspect.

    With --config naming a config file with shard groups, --out takes one cluster snapshot of every group
    at one consistent cut: each group's leader holds back new writes for a moment (at most --hold-ms),
    and once every group holds, each is exported and released; the groups' snapshots go into one file
    with the group table and slot table. --inspect shows such a file group by group. A config without
    groups takes today's single snapshot from its servers.`,
  options: [
    { name: 'out', value: 'FILE', help: 'write a snapshot of the running cluster into FILE' },
    { name: 'inspect', value: 'FILE', help: 'verify FILE and print what it holds' },
    {
      name: 'config',
      value: 'FILE',
      help: "the cluster's config file: with shard groups, one consistent snapshot of all of them",
    },
    {
      name: 'hold-ms',
      value: 'MS',
      help: `how long each group may hold writes back for the cut (1..${MAX_BARRIER_HOLD_MS})`,
      default: String(DEFAULT_HOLD_MS),
    },
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const inspect = p.values.get('inspect');
    const file = p.values.get('out');
    if ((inspect === undefined) === (file === undefined))
      throw new UsageError('give exactly one of --out FILE or --inspect FILE', null);
    if (inspect !== undefined) return inspectFile(inspect);
    const configFile = p.values.get('config');
    const config = configFile !== undefined ? loadConfigFile(configFile) : null;
    if (config?.groups) {
      const holdMs = p.values.has('hold-ms')
        ? parseCount('--hold-ms', p.values.get('hold-ms')!, 1, MAX_BARRIER_HOLD_MS)
        : DEFAULT_HOLD_MS;
      return takeClusterSnapshot(p, config.groups, file!, holdMs, config.token ?? null);
    }
    const servers = config ? Object.values(config.servers) : undefined;
    return takeSnapshot(new AdminSession(connectionOf(p, servers)), file!);
  },
};

/** `snapshot --out FILE --config` of a config with shard groups: one consistent cut of them all. */
async function takeClusterSnapshot(
  p: Parsed,
  groups: GroupConfig[],
  file: string,
  holdMs: number,
  configToken: string | null,
): Promise<number> {
  const cut = await takeClusterCut({
    groups,
    connection: (servers) => withConfigToken(connectionOf(p, servers), configToken),
    file,
    fence: 0,
    holdMs,
    onProgress: (step) => progress(`snapshot: ${step}`),
  });
  progress('snapshot: done', true);
  await out(
    `cluster snapshot of cluster ${cut.clusterId}, ${counted(cut.groups.length, 'group')} (${cut.groups.map((g) => `group ${g.id} at index ${g.index}`).join(', ')}): ${cut.bytes} bytes in ${file}\n`,
  );
  return 0;
}

/** The config's token when neither --token nor SEGMEM_TOKEN gave one. */
export function withConfigToken(opts: AdminOptions, token: string | null): AdminOptions {
  return opts.token === null && token !== null ? { ...opts, token } : opts;
}

async function inspectFile(file: string): Promise<number> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    throw new SegmemError('NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`);
  }
  if (isClusterFile(bytes)) return inspectClusterFile(bytes, file);
  const snap = decodeConsolidated(bytes, file, `inspect ${file}`);
  // The checks restore makes: a file whose checksum matches may still hold what no state can (crafted).
  checkContent(snap.content, { what: `inspect ${file}` });
  const lines = [
    `consolidated snapshot ${file}: checksum OK, content OK, format ${snap.header.format}`,
    ...describeSnapshot(snap),
  ];
  await out(`${lines.join('\n')}\n`);
  return 0;
}

async function inspectClusterFile(bytes: Buffer, file: string): Promise<number> {
  const cluster = decodeClusterFile(bytes, file, `inspect ${file}`);
  const h = cluster.header;
  const lines = [
    `cluster snapshot ${file}: checksums OK, content OK, format ${h.format}`,
    `cluster ${h.clusterId}, taken ${h.createdAt}${h.fence > 0 ? ` by the snapshot agent holding fencing token ${h.fence}` : ''}; page ${h.pageBytes} B, segment ${h.segmentBytes} B`,
    `slot table version ${h.slots.version}: ${h.slots.ranges.map(([a, b, id]) => `${a}-${b} group ${id}`).join(', ')}`,
    `${counted(h.groups.length, 'group')}:`,
  ];
  for (const [i, g] of h.groups.entries()) {
    const snap = cluster.parts[i]!;
    checkContent(snap.content, { what: `inspect ${file} (group ${g.id})` });
    lines.push(
      `group ${g.id}: bytes [${g.start}, ${g.start + g.bytes}), members ${g.members.map(([id, a]) => `${id}=${a}`).join(',')}, index ${g.index}, term ${g.term}, part ${g.partBytes} bytes`,
      ...describeSnapshot(snap).map((l) => `  ${l}`),
    );
  }
  await out(`${lines.join('\n')}\n`);
  return 0;
}

/** What `snapshot --inspect` prints of one consolidated snapshot, below its first line. */
function describeSnapshot(snap: Consolidated): string[] {
  const h = snap.header;
  const { group: g, slotTable: t } = snap.content;
  return [
    `cluster ${h.clusterId}, taken ${h.createdAt}; page ${h.pageBytes} B, segment ${h.segmentBytes} B`,
    ...h.groups.map(([g, index, term]) => `group ${g}: index ${index}, term ${term}`),
    // Only a shard group's snapshot holds these: the range it serves and which group owns which slots.
    ...(g ? [`range of ${describeGroupRange(g)}`] : []),
    ...(t
      ? [
          `slot table version ${t.version}: ${t.ranges.map(([a, b, id]) => `${a}-${b} group ${id}`).join(', ')}`,
        ]
      : []),
    `content digest ${snap.contentDigest}`,
    `${counted(snap.content.objects.length, 'object')}:`,
    ...snap.content.objects.map(
      (o) =>
        `  ${escapeText(o.name)}  size ${o.size}  version ${o.version}  address ${o.firstPage * h.pageBytes}${o.data ? '' : '  (never written)'}`,
    ),
    `${counted(snap.content.logs.length, 'shared log')}:`,
    ...(snap.content.logs as [string, number, number, number][]).map(
      ([name, maxBytes, first, next]) =>
        `  ${escapeText(name)}  records ${first}..${next - 1}  retention ${maxBytes} B`,
    ),
  ];
}

async function takeSnapshot(session: AdminSession, file: string): Promise<number> {
  const tmp = `${file}.tmp-${process.pid}`;
  let created = false;
  const interrupted = () => {
    void Promise.all([created ? rm(tmp, { force: true }) : null, session.close()]).then(() =>
      process.exit(130),
    );
  };
  process.once('SIGINT', interrupted);
  try {
    progress('snapshot: the leader is building it...');
    const made = await session.call({ type: 'SNAPSHOT' }, SNAPSHOT_BUILD_MS);
    const handle = await open(tmp, 'wx', 0o644).catch((err: Error) => {
      throw new SegmemError('INVALID_ARGUMENT', `cannot create ${tmp}: ${err.message}`);
    });
    created = true;
    // The checksum is checked as the pieces arrive, before the file takes its name.
    const verifier = new ConsolidatedVerifier(made.bytes, tmp);
    try {
      let unsynced = 0;
      await readExport(session, made.id, made.bytes, async (chunk, at) => {
        verifier.push(chunk);
        await handle.write(chunk);
        // Synced as it goes: a gigabyte of dirty pages flushed at once would stall every other fsync on
        // this disk (the servers' write-ahead logs among them) for as long.
        unsynced += chunk.length;
        if (unsynced >= SNAPSHOT_SYNC_EVERY_BYTES) {
          await handle.datasync();
          unsynced = 0;
        }
        const done = at + chunk.length;
        progress(
          `snapshot: ${Math.floor((done / made.bytes) * 100)}% (${formatBytes(done)} of ${formatBytes(made.bytes)})`,
        );
      });
      progress(`snapshot: 100% (${formatBytes(made.bytes)})`, true);
      await handle.sync();
    } finally {
      await handle.close();
    }
    verifier.finish();
    await rename(tmp, file);
    await out(
      `snapshot of cluster ${session.clusterId} at index ${made.index} (term ${made.term}): ${made.bytes} bytes in ${file}\n`,
    );
    return 0;
  } catch (err) {
    if (created) await rm(tmp, { force: true });
    throw err;
  } finally {
    process.off('SIGINT', interrupted);
    await session.close();
  }
}

/** `restore FILE --config C --id ID --dir DIR`: one server's data directory of a (sharded) cluster. */
async function restoreMember(p: Parsed, file: string, configFile: string): Promise<number> {
  const id = p.values.get('id');
  const dir = p.values.get('dir');
  if (id === undefined || dir === undefined)
    throw new UsageError(
      'restore --config needs --id ID and --dir DIR (the server and its data directory)',
      null,
    );
  if (p.lists.has('data') || p.lists.has('ids'))
    throw new UsageError(
      'restore --config builds one directory: give --id and --dir, not --data or --ids',
      null,
    );
  const clusterId = p.values.get('cluster-id');
  const r = await restoreClusterMember(file, {
    config: loadConfigFile(configFile),
    configFile,
    id,
    dir,
    ...(clusterId ? { clusterId } : {}),
    onProgress: (step) => progress(`restore: ${step}`),
  });
  progress('restore: done', true);
  await out(
    `restored ${counted(r.objects, 'object')} and ${counted(r.logs, 'shared log')} of group ${r.group} into ${dir} (server ${id}, cluster ${r.clusterId}${r.placement === 'by-slot' ? ', placed anew by slot' : ''}); start it with --config ${configFile} --id ${id} --data ${dir}\n`,
  );
  return 0;
}

export const restore: Command = {
  name: 'restore',
  args: [{ name: 'FILE', hint: 'give it before --data, whose directories run up to the next option' }],
  summary: 'build fresh data directories from a consolidated snapshot',
  description: `Builds fresh data directories (missing or empty; anything else is refused) holding exactly
    FILE's content: one directory restores a single server, several a cluster, one member each, whose ids are
    s1, s2, ... in the order of the directories (or --ids). Each gets a new cluster id (or --cluster-id),
    which the command prints with the --peers form to start the members with. Give FILE before --data: the
    directories after --data run up to the next option. On a terminal, a progress line on stderr.

    With --config, --id and --dir instead: builds server ID's data directory DIR (missing or empty) from a
    cluster snapshot (snapshot --out --config), for the cluster the config file describes. Same groups
    (ids and ranges) as the file: the server's group gets its part of the file. Other groups (another
    count, other ranges): every object and shared log goes to the group that owns its name's slot in the
    config's initial slot table, keeping its bytes, version and fencing token floor, at a new address in
    that group's range. Run it once per server of the config. The cluster id is --cluster-id, else the
    config's clusterId, else the file's. A file whose page or segment size is not the config's is refused.`,
  options: [
    {
      name: 'data',
      value: 'DIR...',
      multi: true,
      help: 'the data directories to build, one per server: --data D1 D2 D3, --data D1,D2,D3 or --data D1 --data D2 ... (required)',
    },
    {
      name: 'ids',
      value: 'ID...',
      multi: true,
      help: "the servers' ids, one per directory, in the same order and spellings as --data",
      default: 's1, s2, ...',
    },
    { name: 'cluster-id', value: 'ID', help: "the restored cluster's id", default: 'a new random id' },
    {
      name: 'config',
      value: 'FILE',
      help: 'the config file of the cluster to restore into (with --id, --dir)',
    },
    { name: 'id', value: 'ID', help: 'with --config: the server whose data directory to build' },
    { name: 'dir', value: 'DIR', help: "with --config: that server's data directory" },
  ],
  async run(p) {
    const file = p.args[0]!;
    const configFile = p.values.get('config');
    if (configFile !== undefined) return restoreMember(p, file, configFile);
    for (const option of ['id', 'dir'])
      if (p.values.has(option)) throw new UsageError(`--${option} goes with --config FILE`, null);
    const dirs = p.lists.get('data') ?? [];
    if (dirs.length === 0)
      throw new UsageError('restore needs --data DIR... (one directory per server)', null);
    const ids = p.lists.get('ids');
    if (ids && ids.length !== dirs.length)
      throw new UsageError(
        `--data names ${dirs.length} directories but --ids ${ids.length} server ids`,
        null,
      );
    const clusterId = p.values.get('cluster-id');
    const r = await restoreConsolidated(file, {
      dirs,
      ...(ids ? { ids } : {}),
      ...(clusterId ? { clusterId } : {}),
      onProgress: (step) => progress(`restore: ${step}`),
    });
    progress('restore: done', true);
    const c = r.snapshot.content;
    let text = `restored ${counted(c.objects.length, 'object')} and ${counted(c.logs.length, 'shared log')} into ${dirs.length} data director${dirs.length === 1 ? 'y' : 'ies'} (cluster ${r.clusterId}, servers ${r.ids.join(', ')})\n`;
    if (c.group) {
      text += `the directories are ${describeGroupRange(c.group)}: start them with the grouped config file it came from\n`;
    }
    if (dirs.length > 1) {
      text += `start each member with --id ID --data DIR --peers ${r.ids.map((id) => `${id}=HOST:PORT`).join(',')} --cluster-id ${r.clusterId} --cluster-secret-file FILE (segmem secret new FILE; one for all)\n`;
    }
    await out(text);
    return 0;
  },
};
