/**
 * segmem: the operator's command. `segmem up` starts a local cluster in the foreground.
 */
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SegmemError } from '@segmem/protocol';
import { parseArgs } from './args.js';

const USAGE = `usage: segmem up [--servers N] [--dir DIR] [--port PORT] [--fsync always|batch|none]
  Starts N segmem-server processes on 127.0.0.1 (ports PORT, PORT+1, ...; data under DIR, default .segmem)
  and prints the SEGMEM_SERVERS value clients use. Ctrl-C or SIGTERM stops them.`;

const SERVER_BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/segmem-server.mjs');

export async function segmemMain(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    if (command === 'up') await up(rest);
    else if (command === undefined || command === 'help' || command === '--help')
      process.stdout.write(`${USAGE}\n`);
    else throw new SegmemError('INVALID_ARGUMENT', `unknown command ${JSON.stringify(command)}`);
  } catch (err) {
    const message = SegmemError.is(err) ? err.message : String((err as Error)?.stack ?? err);
    process.stderr.write(`segmem: ${message}\n${USAGE}\n`);
    process.exitCode = 1;
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
