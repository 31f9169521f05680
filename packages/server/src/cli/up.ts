/** `segmem up`: a local cluster in the foreground, for development. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SegmemError } from '@segmem/protocol';
import { createClusterSecretFile } from '../secret-file.js';
import { parseCount } from './args.js';
import { type Command, out } from './common.js';

const SERVER_BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/segmem-server.mjs');

/** Most servers `up` starts: a development cluster on one machine. */
const MAX_LOCAL_SERVERS = 7;

interface Started {
  id: string;
  child: ChildProcess;
  /** Resolves with the address once ready, or with why it is not. */
  ready: Promise<{ address: string } | { error: string }>;
  exited: Promise<number | null>;
}

export const up: Command = {
  name: 'up',
  args: [],
  summary: 'start a local cluster of N servers in the foreground',
  description: `Starts N segmem-server processes on 127.0.0.1, s1 listening on PORT, s2 on PORT+1 and so on,
    each with its data in DIR/<id>; with N > 1 they form one replicated group, whose members prove to each
    other the secret in DIR/cluster-secret (created with mode 0600 on the first run, kept after). Their output passes through;
    once they are ready it prints the SEGMEM_SERVERS value clients use. A server that fails to start (a damaged
    data directory, a port in use) is reported on stderr with its reason, and the others keep running; a
    group with fewer than a majority running has no leader until more start. Ctrl-C or SIGTERM stops every
    server (SIGTERM, a clean shutdown) and up exits once they have: 0 when every server started and stopped
    cleanly, else 1. Arguments after -- go to every server as they are (see segmem-server --help).`,
  options: [
    { name: 'servers', value: 'N', help: `how many servers, 1..${MAX_LOCAL_SERVERS}`, default: '1' },
    {
      name: 'dir',
      value: 'DIR',
      help: 'where the servers keep their data, DIR/s1, DIR/s2, ...',
      default: '.segmem',
    },
    { name: 'port', value: 'PORT', help: "the first server's port; the others follow", default: '7401' },
    {
      name: 'fsync',
      value: 'always|batch|none',
      choices: ['always', 'batch', 'none'],
      help: "the servers' WAL durability policy",
      default: 'batch',
    },
    {
      name: 'segment-bytes',
      value: 'N',
      help: "the segment's size, for new data directories",
      default: '4294967296',
    },
  ],
  passThrough: 'SERVER-ARGS...',
  async run(p) {
    const count = parseCount('--servers', p.values.get('servers') ?? '1', 1, MAX_LOCAL_SERVERS);
    const port = parseCount('--port', p.values.get('port') ?? '7401', 1, 65535 - count + 1);
    const dir = resolve(p.values.get('dir') ?? '.segmem');
    const passed = [
      ...(p.values.has('fsync') ? ['--fsync', p.values.get('fsync')!] : []),
      ...(p.values.has('segment-bytes') ? ['--segment-bytes', p.values.get('segment-bytes')!] : []),
      ...p.rest,
    ];
    const members = Array.from({ length: count }, (_, i) => `s${i + 1}=127.0.0.1:${port + i}`).join(',');
    // One secret for the group, kept beside the data: the next `up` on the same DIR finds it again.
    const secretFile = join(dir, 'cluster-secret');
    if (count > 1) {
      mkdirSync(dir, { recursive: true });
      if (!existsSync(secretFile)) createClusterSecretFile(secretFile);
    }
    const started: Started[] = [];
    let stopping = false;
    const stopAll = () => {
      stopping = true;
      for (const s of started)
        if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    };
    process.on('SIGINT', stopAll);
    process.on('SIGTERM', stopAll);
    for (let i = 0; i < count; i++) {
      const id = `s${i + 1}`;
      const data = join(dir, id);
      mkdirSync(data, { recursive: true });
      started.push(
        startOne(id, [
          '--id',
          id,
          '--listen',
          `127.0.0.1:${port + i}`,
          '--data',
          data,
          ...(count > 1 ? ['--peers', members, '--cluster-secret-file', secretFile] : []),
          ...passed,
        ]),
      );
    }
    const outcomes = await Promise.all(started.map((s) => s.ready));
    const running: string[] = [];
    const failures: { id: string; error: string }[] = [];
    outcomes.forEach((o, i) => {
      if ('address' in o) running.push(o.address);
      else failures.push({ id: started[i]!.id, error: o.error });
    });
    if (running.length === 0) {
      throw new SegmemError(
        'UNAVAILABLE',
        `no server started: ${failures.map((f) => `${f.id} (${f.error})`).join('; ')}`,
      );
    }
    for (const f of failures)
      process.stderr.write(`segmem: server ${f.id} did not start: ${f.error}; the others run on\n`);
    if (count > 1 && running.length <= count / 2) {
      process.stderr.write(
        `segmem: ${running.length} of ${count} servers run: no majority, so no leader until more start\n`,
      );
    }
    await out(`SEGMEM_SERVERS=${running.join(',')}\n`);
    const codes = await Promise.all(
      started.map(async (s) => {
        const code = await s.exited;
        if (!stopping && s.child.signalCode === null && code !== null && 'address' in (await s.ready))
          process.stderr.write(`segmem: server ${s.id} exited with code ${code}\n`);
        return code;
      }),
    );
    process.off('SIGINT', stopAll);
    process.off('SIGTERM', stopAll);
    return failures.length === 0 && codes.every((c) => c === 0) ? 0 : 1;
  },
};

/** Spawns one server, passing its output through, and tells when it is ready or why it never was. */
function startOne(id: string, args: string[]): Started {
  const child = spawn(process.execPath, [SERVER_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let lastError = '';
  const errLines = createInterface({ input: child.stderr! });
  errLines.on('line', (line) => {
    process.stderr.write(`${line}\n`);
    // The server's own error line ("segmem-server: <message> (<CODE>)") says why it stopped.
    const m = /^segmem-server: (.*)$/.exec(line);
    if (m) lastError = m[1]!;
  });
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  const ready = new Promise<{ address: string } | { error: string }>((resolveReady) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      process.stdout.write(`${line}\n`);
      const m = / ready on (\S+)$/.exec(line);
      if (m) resolveReady({ address: m[1]! });
    });
    void exited.then((code) =>
      resolveReady({
        error: `${lastError || 'no reason given'}, exit code ${code ?? child.signalCode}`,
      }),
    );
  });
  return { id, child, ready, exited };
}
