/**
 * segmem: the operator's command. `segmem up` starts a local cluster in the foreground.
 */
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MAX_LOG_READ_BYTES, SegmemError, validateName } from '@segmem/protocol';
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
         Prints the log's first and next sequence numbers and its retained bytes.`;

const SERVER_BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/segmem-server.mjs');

export async function segmemMain(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    if (command === 'up') await up(rest);
    else if (command === 'cluster') await cluster(rest);
    else if (command === 'log') await logCommand(rest);
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
      const payload = Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
      let at = 0;
      let out = '';
      for (let i = 0; i < r.sizes.length; i++) {
        const data = payload.subarray(at, at + r.sizes[i]!);
        at += r.sizes[i]!;
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
