/**
 * segmem: the operator's command. `segmem up` starts a local cluster in the foreground.
 */
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { logRecords, MAX_LOG_READ_BYTES, SegmemError, validateName } from '@segmem/protocol';
import { ConsolidatedVerifier, decodeConsolidated, verifyConsolidated } from '../storage/consolidated.js';
import { restoreConsolidated } from '../storage/restore.js';
import { AdminSession, adminCall } from './admin-client.js';
import { parseArgs } from './args.js';

const USAGE = `usage: segmem up [--servers N] [--dir DIR] [--port PORT] [--fsync always|batch|none]
         Starts N segmem-server processes on 127.0.0.1 (ports PORT, PORT+1, ...; data under DIR, default
         .segmem) as one group and prints the SEGMEM_SERVERS value clients use. Ctrl-C or SIGTERM stops them.
       segmem cluster list --servers HOST:PORT,...
       segmem cluster add ID HOST:PORT --servers HOST:PORT,...
       segmem cluster remove ID --servers HOST:PORT,...
         Shows or changes the group's membership, one server at a time (start a new server with --join first).
       segmem log tail NAME [--from SEQ] [--follow] [--json] --servers HOST:PORT,...
         Prints the records of shared log NAME from SEQ (default: the oldest kept), one per line as
         "SEQ TEXT" (TEXT is the record as UTF-8 with \\, \\n and \\r escaped) or, with --json, as
         {"seq":N,"data":"<base64>"}; --follow keeps waiting for new records until Ctrl-C.
       segmem log info NAME --servers HOST:PORT,...
         Prints the log's first and next sequence numbers and its retained bytes.
       segmem snapshot --out FILE --servers HOST:PORT,...
         Writes a consolidated snapshot of the whole segment (every object's bytes and every shared log, at
         one consistent point) into FILE.
       segmem snapshot --inspect FILE
         Verifies FILE's checksum and prints what it holds: objects, sizes, versions, logs.
       segmem restore FILE --data DIR[,DIR...] [--ids s1,s2,...] [--cluster-id ID]
         Builds fresh data directories from FILE: one directory restores a single server, several a
         cluster (one member each). Start the servers on them as usual.`;

const SERVER_BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/segmem-server.mjs');

export async function segmemMain(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    if (command === 'up') await up(rest);
    else if (command === 'cluster') await cluster(rest);
    else if (command === 'log') await logCommand(rest);
    else if (command === 'snapshot') await snapshotCommand(rest);
    else if (command === 'restore') await restoreCommand(rest);
    else if (command === undefined || command === 'help' || command === '--help')
      process.stdout.write(`${USAGE}\n`);
    else throw new SegmemError('INVALID_ARGUMENT', `unknown command ${JSON.stringify(command)}`);
  } catch (err) {
    const message = SegmemError.is(err) ? err.message : String((err as Error)?.stack ?? err);
    process.stderr.write(`segmem: ${message}\n${USAGE}\n`);
    process.exitCode = 1;
  }
}

function serversOf(args: { values: Map<string, string> }): string[] {
  const servers = (args.values.get('servers') ?? process.env.SEGMEM_SERVERS ?? '').split(',').filter(Boolean);
  if (servers.length === 0)
    throw new SegmemError('INVALID_ARGUMENT', '--servers (or SEGMEM_SERVERS) is required');
  return servers;
}

/** How long a followed read waits on the server before asking again. */
const TAIL_WAIT_MS = 10_000;

async function logCommand(argv: string[]): Promise<void> {
  const args = parseArgs(argv, { values: ['servers', 'from'], flags: ['follow', 'json'], positional: true });
  const [op, name] = args.positional;
  if (op !== 'tail' && op !== 'info') {
    throw new SegmemError('INVALID_ARGUMENT', `log needs tail or info; got ${JSON.stringify(op)}`);
  }
  if (!name) throw new SegmemError('INVALID_ARGUMENT', `log ${op} needs a log name`);
  validateName(name);
  const session = new AdminSession(serversOf(args));
  try {
    if (op === 'info') {
      const r = await session.call({ type: 'LOG_READ', name, from: null, maxBytes: 0, waitMs: 0 });
      process.stdout.write(`log ${name}: first ${r.first}, next ${r.next}, ${r.bytes} bytes\n`);
      return;
    }
    const fromArg = args.values.get('from');
    let from: number | null = null;
    if (fromArg !== undefined) {
      from = Number(fromArg);
      if (!/^\d+$/.test(fromArg) || !Number.isSafeInteger(from))
        throw new SegmemError('INVALID_ARGUMENT', `--from must be a sequence number; got ${fromArg}`);
    }
    const follow = args.flags.has('follow');
    const json = args.flags.has('json');
    let stop = false;
    process.once('SIGINT', () => {
      stop = true;
      void session.close().then(() => process.exit(0));
    });
    while (!stop) {
      const r = await session.call(
        { type: 'LOG_READ', name, from, maxBytes: MAX_LOG_READ_BYTES, waitMs: follow ? TAIL_WAIT_MS : 0 },
        TAIL_WAIT_MS + 15_000,
      );
      let out = '';
      for (const [i, data] of logRecords(r).entries()) {
        out += json
          ? `${JSON.stringify({ seq: r.from + i, data: data.toString('base64') })}\n`
          : `${r.from + i} ${escapeText(data.toString('utf8'))}\n`;
      }
      if (out && !process.stdout.write(out)) await new Promise((r) => process.stdout.once('drain', r));
      from = r.from + r.sizes.length;
      if (!follow && from >= r.next) break;
    }
  } finally {
    await session.close();
  }
}

/** A chunk size well under the frame limit. */
const SNAPSHOT_CHUNK = 8 * 1024 * 1024;
/** `snapshot --out` keeps this many SNAPSHOT_READs in flight. */
const SNAPSHOT_READS_IN_FLIGHT = 4;
/** `snapshot --out` fdatasyncs the file every this many bytes written. */
const SNAPSHOT_SYNC_EVERY_BYTES = 32 * 1024 * 1024;

async function snapshotCommand(argv: string[]): Promise<void> {
  const args = parseArgs(argv, { values: ['servers', 'out', 'inspect'], flags: [] });
  const inspect = args.values.get('inspect');
  if (inspect !== undefined) {
    const snap = decodeConsolidated(await readFile(inspect), inspect);
    const h = snap.header;
    const out = [
      `consolidated snapshot ${inspect}: checksum OK, format ${h.format}`,
      `cluster ${h.clusterId}, taken ${h.createdAt}; page ${h.pageBytes} B, segment ${h.segmentBytes} B`,
      ...h.groups.map(([g, index, term]) => `group ${g}: index ${index}, term ${term}`),
      `content digest ${snap.contentDigest}`,
      `${snap.content.objects.length} objects:`,
      ...snap.content.objects.map(
        (o) =>
          `  ${o.name}  size ${o.size}  version ${o.version}  address ${o.firstPage * h.pageBytes}${o.data ? '' : '  (never written)'}`,
      ),
      `${snap.content.logs.length} shared logs:`,
      ...(snap.content.logs as [string, number, number, number][]).map(
        ([name, maxBytes, first, next]) =>
          `  ${name}  records ${first}..${next - 1}  retention ${maxBytes} B`,
      ),
    ];
    process.stdout.write(`${out.join('\n')}\n`);
    return;
  }
  const file = args.values.get('out');
  if (!file) throw new SegmemError('INVALID_ARGUMENT', 'snapshot needs --out FILE or --inspect FILE');
  const session = new AdminSession(serversOf(args));
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    const made = await session.call({ type: 'SNAPSHOT' }, 120_000);
    const handle = await open(tmp, 'wx', 0o644);
    // The checksum is checked as the pieces arrive, before the file takes its name.
    const verifier = new ConsolidatedVerifier(made.bytes, tmp);
    try {
      const tty = process.stderr.isTTY;
      let unsynced = 0;
      // A few pieces in flight, so the leader serves the next while this one is checked and written.
      const read = (offset: number) =>
        session.call({ type: 'SNAPSHOT_READ', id: made.id, offset, length: SNAPSHOT_CHUNK });
      const ahead: Promise<Awaited<ReturnType<typeof read>>>[] = [];
      let asked = 0;
      const askMore = () => {
        while (ahead.length < SNAPSHOT_READS_IN_FLIGHT && asked < made.bytes) {
          const p = read(asked);
          p.catch(() => {}); // awaited in order below; an early failure must not go unhandled meanwhile
          ahead.push(p);
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
        if (tty) {
          const pct = Math.floor((offset / made.bytes) * 100);
          process.stderr.write(`\rsnapshot: ${pct}% (${offset} of ${made.bytes} bytes)`);
        }
      }
      if (tty) process.stderr.write('\n');
      await handle.sync();
    } finally {
      await handle.close();
    }
    verifier.finish();
    await rename(tmp, file);
    process.stdout.write(
      `snapshot of cluster ${made.clusterId} at index ${made.index} (term ${made.term}): ${made.bytes} bytes in ${file}\n`,
    );
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await session.close();
  }
}

async function restoreCommand(argv: string[]): Promise<void> {
  const args = parseArgs(argv, { values: ['data', 'ids', 'cluster-id'], flags: [], positional: true });
  const [file] = args.positional;
  if (!file) throw new SegmemError('INVALID_ARGUMENT', 'restore needs a snapshot FILE');
  const dirs = (args.values.get('data') ?? '').split(',').filter(Boolean);
  const ids = args.values.get('ids')?.split(',').filter(Boolean);
  const clusterId = args.values.get('cluster-id');
  const r = await restoreConsolidated(file, {
    dirs,
    ...(ids ? { ids } : {}),
    ...(clusterId ? { clusterId } : {}),
  });
  const c = r.snapshot.content;
  process.stdout.write(
    `restored ${c.objects.length} objects and ${c.logs.length} shared logs into ${dirs.length} data director${dirs.length === 1 ? 'y' : 'ies'} (cluster ${r.clusterId}, servers ${r.ids.join(', ')})\n`,
  );
  if (dirs.length > 1) {
    process.stdout.write(
      `start each member with --id ID --data DIR --peers ${r.ids.map((id) => `${id}=HOST:PORT`).join(',')} --cluster-id ${r.clusterId}\n`,
    );
  }
}

function escapeText(s: string): string {
  return s.replace(/[\\\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\n' ? '\\n' : '\\r'));
}

async function cluster(argv: string[]): Promise<void> {
  const args = parseArgs(argv, { values: ['servers'], flags: [], positional: true });
  const [op, id, address] = args.positional;
  const servers = serversOf(args);
  if (op !== 'list' && op !== 'add' && op !== 'remove') {
    throw new SegmemError('INVALID_ARGUMENT', `cluster needs list, add or remove; got ${JSON.stringify(op)}`);
  }
  if (op !== 'list' && !id) throw new SegmemError('INVALID_ARGUMENT', `cluster ${op} needs a server id`);
  if (op === 'add' && !address)
    throw new SegmemError('INVALID_ARGUMENT', "cluster add needs the new server's HOST:PORT");
  let r: Awaited<ReturnType<typeof adminCall<'MEMBERSHIP'>>>;
  try {
    r = await adminCall(servers, { type: 'MEMBERSHIP', op, id: id ?? null, address: address ?? null });
  } catch (err) {
    // A leader that removes itself steps down as the change commits and may drop the connection before
    // answering; the retry then finds the change done. Show the membership instead of an error.
    const retried = SegmemError.is(err) && err.details?.retried === true;
    const done = retried && /is not a member|is already a member/.test((err as Error).message);
    if (!done) throw err;
    r = await adminCall(servers, { type: 'MEMBERSHIP', op: 'list', id: null, address: null });
  }
  process.stdout.write(`cluster ${r.clusterId}\n`);
  for (const [member, addr] of r.members) {
    process.stdout.write(`${member} ${addr ?? '?'}${member === r.leader ? ' leader' : ''}\n`);
  }
}

async function up(argv: string[]): Promise<void> {
  const args = parseArgs(argv, { values: ['servers', 'dir', 'port', 'fsync'], flags: [] });
  const count = Number(args.values.get('servers') ?? '1');
  const port = Number(args.values.get('port') ?? '7401');
  const dir = resolve(args.values.get('dir') ?? '.segmem');
  if (!Number.isInteger(count) || count < 1 || count > 7)
    throw new SegmemError('INVALID_ARGUMENT', '--servers must be 1..7');
  if (!Number.isInteger(port) || port < 1 || port + count - 1 > 65535)
    throw new SegmemError('INVALID_ARGUMENT', '--port must be 1..65535');
  const fsync = args.values.get('fsync');
  const children: ReturnType<typeof spawn>[] = [];
  const addresses: string[] = [];
  const stopAll = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  };
  process.on('SIGINT', stopAll);
  process.on('SIGTERM', stopAll);
  // More than one server: one Raft group, every member listed in --peers.
  const members = Array.from({ length: count }, (_, i) => `s${i + 1}=127.0.0.1:${port + i}`).join(',');
  for (let i = 0; i < count; i++) {
    const id = `s${i + 1}`;
    const listen = `127.0.0.1:${port + i}`;
    const data = join(dir, id);
    mkdirSync(data, { recursive: true });
    const peers = count > 1 ? ['--peers', members] : [];
    const child = spawn(
      process.execPath,
      [
        SERVER_BIN,
        '--id',
        id,
        '--listen',
        listen,
        '--data',
        data,
        ...peers,
        ...(fsync ? ['--fsync', fsync] : []),
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    children.push(child);
    const ready = await new Promise<string>((resolveReady, reject) => {
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (line) => {
        const m = / ready on (\S+)$/.exec(line);
        if (m) resolveReady(m[1]!);
        process.stdout.write(`${line}\n`);
      });
      child.once('exit', (code) =>
        reject(new SegmemError('UNAVAILABLE', `server ${id} exited with code ${code} before it was ready`)),
      );
    }).catch((err) => {
      stopAll();
      throw err;
    });
    addresses.push(ready);
  }
  process.stdout.write(`SEGMEM_SERVERS=${addresses.join(',')}\n`);
  await Promise.all(
    children.map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)))),
  );
}
