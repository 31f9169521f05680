/** `segmem snapshot` and `segmem restore`: consolidated snapshots of a running cluster, and back. */
import { open, readFile, rename, rm } from 'node:fs/promises';
import { SegmemError } from '@segmem/protocol';
import { checkContent } from '../core/content-check.js';
import { describeGroupRange } from '../core/group-range.js';
import { ConsolidatedVerifier, decodeConsolidated } from '../storage/consolidated.js';
import { restoreConsolidated } from '../storage/restore.js';
import { AdminSession } from './admin-client.js';
import { UsageError } from './args.js';
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

/** A chunk size well under the frame limit. */
const SNAPSHOT_CHUNK = 8 * 1024 * 1024;
/** `snapshot --out` keeps this many SNAPSHOT_READs in flight. */
const SNAPSHOT_READS_IN_FLIGHT = 4;
/** `snapshot --out` fdatasyncs the file every this many bytes written. */
const SNAPSHOT_SYNC_EVERY_BYTES = 32 * 1024 * 1024;
/** How long the leader may take to build the snapshot in memory (a gigabyte took about 10 s). */
const SNAPSHOT_BUILD_MS = 600_000;

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
    one of --out or --inspect.`,
  options: [
    { name: 'out', value: 'FILE', help: 'write a snapshot of the running cluster into FILE' },
    { name: 'inspect', value: 'FILE', help: 'verify FILE and print what it holds' },
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const inspect = p.values.get('inspect');
    const file = p.values.get('out');
    if ((inspect === undefined) === (file === undefined))
      throw new UsageError('give exactly one of --out FILE or --inspect FILE', null);
    if (inspect !== undefined) return inspectFile(inspect);
    return takeSnapshot(new AdminSession(connectionOf(p)), file!);
  },
};

async function inspectFile(file: string): Promise<number> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    throw new SegmemError('NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`);
  }
  const snap = decodeConsolidated(bytes, file, `inspect ${file}`);
  // The checks restore makes: a file whose checksum matches may still hold what no state can (crafted).
  checkContent(snap.content, { what: `inspect ${file}` });
  const h = snap.header;
  const { group: g, slotTable: t } = snap.content;
  const lines = [
    `consolidated snapshot ${file}: checksum OK, content OK, format ${h.format}`,
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
  await out(`${lines.join('\n')}\n`);
  return 0;
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
      // A few pieces in flight, so the leader serves the next while this one is checked and written.
      const read = (offset: number) =>
        session.call({ type: 'SNAPSHOT_READ', id: made.id, offset, length: SNAPSHOT_CHUNK });
      const ahead: Promise<Awaited<ReturnType<typeof read>>>[] = [];
      let asked = 0;
      const askMore = () => {
        while (ahead.length < SNAPSHOT_READS_IN_FLIGHT && asked < made.bytes) {
          const piece = read(asked);
          piece.catch(() => {}); // awaited in order below; an early failure must not go unhandled meanwhile
          ahead.push(piece);
          asked = Math.min(made.bytes, asked + SNAPSHOT_CHUNK);
        }
      };
      for (let offset = 0; offset < made.bytes; ) {
        askMore();
        const r = await ahead.shift()!;
        if (r.payload.byteLength !== Math.min(SNAPSHOT_CHUNK, made.bytes - offset))
          throw new SegmemError(
            'PROTOCOL',
            `a piece of ${r.payload.byteLength} bytes at ${offset} of ${made.bytes}`,
          );
        const chunk = Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
        verifier.push(chunk);
        await handle.write(chunk);
        offset += chunk.length;
        // Synced as it goes: a gigabyte of dirty pages flushed at once would stall every other fsync on
        // this disk (the servers' write-ahead logs among them) for as long.
        unsynced += chunk.length;
        if (unsynced >= SNAPSHOT_SYNC_EVERY_BYTES) {
          await handle.datasync();
          unsynced = 0;
        }
        progress(
          `snapshot: ${Math.floor((offset / made.bytes) * 100)}% (${formatBytes(offset)} of ${formatBytes(made.bytes)})`,
        );
      }
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

export const restore: Command = {
  name: 'restore',
  args: [{ name: 'FILE', hint: 'give it before --data, whose directories run up to the next option' }],
  summary: 'build fresh data directories from a consolidated snapshot',
  description: `Builds fresh data directories (missing or empty; anything else is refused) holding exactly
    FILE's content: one directory restores a single server, several a cluster, one member each, whose ids are
    s1, s2, ... in the order of the directories (or --ids). Each gets a new cluster id (or --cluster-id),
    which the command prints with the --peers form to start the members with. Give FILE before --data: the
    directories after --data run up to the next option. On a terminal, a progress line on stderr.`,
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
  ],
  async run(p) {
    const file = p.args[0]!;
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
