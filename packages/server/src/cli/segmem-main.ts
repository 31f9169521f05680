/**
 * segmem: the operator's command. `segmem up` starts a local cluster in the foreground.
 */
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SegmemError } from '@segmem/protocol';
import { adminCall } from './admin-client.js';
import { parseArgs } from './args.js';

const USAGE = `usage: segmem up [--servers N] [--dir DIR] [--port PORT] [--fsync always|batch|none]
         Starts N segmem-server processes on 127.0.0.1 (ports PORT, PORT+1, ...; data under DIR, default
         .segmem) as one group and prints the SEGMEM_SERVERS value clients use. Ctrl-C or SIGTERM stops them.
       segmem cluster list --servers HOST:PORT,...
       segmem cluster add ID HOST:PORT --servers HOST:PORT,...
       segmem cluster remove ID --servers HOST:PORT,...
         Shows or changes the group's membership, one server at a time (start a new server with --join first).`;

const SERVER_BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/segmem-server.mjs');

export async function segmemMain(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    if (command === 'up') await up(rest);
    else if (command === 'cluster') await cluster(rest);
    else if (command === undefined || command === 'help' || command === '--help')
      process.stdout.write(`${USAGE}\n`);
    else throw new SegmemError('INVALID_ARGUMENT', `unknown command ${JSON.stringify(command)}`);
  } catch (err) {
    const message = SegmemError.is(err) ? err.message : String((err as Error)?.stack ?? err);
    process.stderr.write(`segmem: ${message}\n${USAGE}\n`);
    process.exitCode = 1;
  }
}

async function cluster(argv: string[]): Promise<void> {
  const args = parseArgs(argv, { values: ['servers'], flags: [], positional: true });
  const [op, id, address] = args.positional;
  const servers = (args.values.get('servers') ?? process.env.SEGMEM_SERVERS ?? '').split(',').filter(Boolean);
  if (servers.length === 0)
    throw new SegmemError('INVALID_ARGUMENT', '--servers (or SEGMEM_SERVERS) is required');
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
