/** `segmem up`: a local cluster in the foreground, for development. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { DEFAULT_SEGMENT_BYTES, PAGE_BYTES, SegmemError } from '@segmem/protocol';
import { GROUP_MEMBER_COUNTS, parseSegmentBytes } from '../config.js';
import { createClusterSecretFile } from '../secret-file.js';
import { parseCount, UsageError } from './args.js';
import { type Command, out } from './common.js';

const SERVER_BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/segmem-server.mjs');

/** Most servers `up --servers` starts: a development cluster on one machine. */
const MAX_LOCAL_SERVERS = 7;
/** Most groups and servers `up --groups` starts. */
const MAX_LOCAL_GROUPS = 4;
const MAX_LOCAL_GROUPED_SERVERS = 15;
export const UP_CONFIG_FILE = 'segmem.json';

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
  summary: 'start a local cluster of N servers (or G groups of R) in the foreground',
  description: `Starts N segmem-server processes on 127.0.0.1, s1 listening on PORT, s2 on PORT+1 and so on,
    each with its data in DIR/<id>; with N > 1 they form one replicated group, whose members prove to each
    other the secret in DIR/cluster-secret (created with mode 0600 on the first run, kept after). Their output passes through;
    once they are ready it prints the SEGMEM_SERVERS value clients use. A server that fails to start (a damaged
    data directory, a port in use) is reported on stderr with its reason, and the others keep running; a
    group with fewer than a majority running has no leader until more start. Ctrl-C or SIGTERM stops every
    server (SIGTERM, a clean shutdown) and up exits once they have: 0 when every server started and stopped
    cleanly, else 1. Arguments after -- go to every server as they are (see segmem-server --help).
    With --groups G (and --replicas R) it starts G shard groups of R servers each instead: it writes
    DIR/segmem.json, whose groups split the segment into G equal ranges (group 1 the first), s1..sR forming
    group 1, the next R group 2 and so on, and starts each server with --config DIR/segmem.json --id sN;
    it prints SEGMEM_SERVERS (every server) and SEGMEM_CONFIG (the file). A client is given the servers of
    one group: it does not route across groups.`,
  options: [
    { name: 'servers', value: 'N', help: `how many servers, 1..${MAX_LOCAL_SERVERS}`, default: '1' },
    {
      name: 'groups',
      value: 'G',
      help: `how many shard groups, 1..${MAX_LOCAL_GROUPS}, each owning an equal range of the segment (not with --servers)`,
    },
    {
      name: 'replicas',
      value: 'R',
      help: `servers per group with --groups: 1, 3 or 5 (${MAX_LOCAL_GROUPED_SERVERS} servers at most)`,
      default: '1',
    },
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
    const layout = p.values.has('groups') ? groupedLayout(p.values) : singleGroupLayout(p.values);
    const { count, port, dir } = layout;
    const passed = [
      ...(p.values.has('fsync') ? ['--fsync', p.values.get('fsync')!] : []),
      ...(p.values.has('segment-bytes') && !layout.config
        ? ['--segment-bytes', p.values.get('segment-bytes')!]
        : []),
      ...p.rest,
    ];
    // One secret for the cluster, kept beside the data: the next `up` on the same DIR finds it again.
    const secretFile = join(dir, 'cluster-secret');
    if (layout.needsSecret) {
      mkdirSync(dir, { recursive: true });
      if (!existsSync(secretFile)) createClusterSecretFile(secretFile);
    }
    if (layout.config) {
      mkdirSync(dir, { recursive: true });
      writeFileSync(layout.config.path, `${JSON.stringify(layout.config.content, null, 2)}\n`);
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
      const own = layout.config
        ? ['--config', layout.config.path, '--id', id]
        : [
            '--id',
            id,
            '--listen',
            `127.0.0.1:${port + i}`,
            '--data',
            data,
            ...(count > 1 ? ['--peers', layout.members, '--cluster-secret-file', secretFile] : []),
          ];
      started.push(startOne(id, [...own, ...passed]));
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
    if (!layout.config && count > 1 && running.length <= count / 2) {
      process.stderr.write(
        `segmem: ${running.length} of ${count} servers run: no majority, so no leader until more start\n`,
      );
    }
    await out(
      `SEGMEM_SERVERS=${running.join(',')}\n${layout.config ? `SEGMEM_CONFIG=${layout.config.path}\n` : ''}`,
    );
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

/** What `up` starts: `count` servers s1..sN on PORT, PORT+1, ...; with groups, from a config file it writes. */
interface Layout {
  count: number;
  port: number;
  dir: string;
  /** Without groups: the --peers value of a group of count > 1. */
  members: string;
  needsSecret: boolean;
  config?: { path: string; content: object };
}

function singleGroupLayout(values: Map<string, string>): Layout {
  if (values.has('replicas')) throw new UsageError('--replicas goes with --groups', null);
  const count = parseCount('--servers', values.get('servers') ?? '1', 1, MAX_LOCAL_SERVERS);
  const port = parseCount('--port', values.get('port') ?? '7401', 1, 65535 - count + 1);
  const members = Array.from({ length: count }, (_, i) => `s${i + 1}=127.0.0.1:${port + i}`).join(',');
  return { count, port, dir: resolve(values.get('dir') ?? '.segmem'), members, needsSecret: count > 1 };
}

/**
 * G groups of R servers: a config file whose groups split the segment into G equal page-aligned ranges, and
 * the members of group g are the R servers after those of group g-1.
 */
function groupedLayout(values: Map<string, string>): Layout {
  if (values.has('servers')) throw new UsageError('--servers and --groups cannot be used together', null);
  const groups = parseCount('--groups', values.get('groups')!, 1, MAX_LOCAL_GROUPS);
  const replicas = parseCount('--replicas', values.get('replicas') ?? '1', 1, 5);
  if (!GROUP_MEMBER_COUNTS.includes(replicas))
    throw new UsageError(`--replicas must be 1, 3 or 5; got ${replicas}`, null);
  const count = groups * replicas;
  if (count > MAX_LOCAL_GROUPED_SERVERS)
    throw new UsageError(
      `--groups ${groups} --replicas ${replicas} is ${count} servers; at most ${MAX_LOCAL_GROUPED_SERVERS}`,
      null,
    );
  const port = parseCount('--port', values.get('port') ?? '7401', 1, 65535 - count + 1);
  const dir = resolve(values.get('dir') ?? '.segmem');
  const segmentBytes = parseSegmentBytes(values.get('segment-bytes') ?? DEFAULT_SEGMENT_BYTES);
  const rangeBytes = Math.floor(segmentBytes / groups / PAGE_BYTES) * PAGE_BYTES;
  if (rangeBytes === 0)
    throw new UsageError(`--segment-bytes ${segmentBytes} is too small for ${groups} groups`, null);
  const content = {
    segmentBytes,
    dataDir: join(dir, '{id}'),
    ...(replicas > 1 ? { clusterSecretFile: 'cluster-secret' } : {}),
    groups: Array.from({ length: groups }, (_, g) => ({
      id: g + 1,
      start: g * rangeBytes,
      bytes: rangeBytes,
      members: Object.fromEntries(
        Array.from({ length: replicas }, (_, r) => {
          const i = g * replicas + r;
          return [`s${i + 1}`, `127.0.0.1:${port + i}`];
        }),
      ),
    })),
  };
  return {
    count,
    port,
    dir,
    members: '',
    needsSecret: replicas > 1,
    config: { path: join(dir, UP_CONFIG_FILE), content },
  };
}

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
