/**
 * Cluster snapshots of a sharded cluster with real processes (`segmem up --groups 2 --replicas 3`):
 * `segmem snapshot --out F --config` while writers write gives one file that inspects OK and restores
 * (`segmem restore F --config --id --dir`) into a fresh 2-group cluster and into a 3-group one with every
 * object's bytes equal; the cut is consistent across groups (a chain of writes alternating between the
 * groups, each begun after the previous was acknowledged, is always in a file as a prefix); two snapshot
 * agents elect one coordinator through the cluster, and when it is SIGKILLed the other takes over and
 * writes the next file; bad input is refused in one line.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initialSlotTable, ownerOf, SLOT_COUNT, slotOf } from '@segmem/protocol';
import { AdminSession } from '@segmem/server/internal/cli/admin-client';
import { decodeClusterFile } from '@segmem/server/internal/storage/cluster-file';
import ava from 'ava';
import { connect, type Segment } from '../src/index.js';
import {
  consecutivePorts,
  runNode,
  SERVER_READY_MS,
  segmemBin,
  serverBin,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

/** Six servers and more at once load a 2-core machine enough: these tests run alone. */
const test = ava.serial;

const SEGMENT_BYTES = 64 * 1024 * 1024;
const NO_ENV = { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' };

interface Config {
  segmentBytes: number;
  dataDir: string;
  clusterSecretFile: string;
  groups: { id: number; start: number; bytes: number; members: Record<string, string> }[];
}

/** `count` names whose slots group `index + 1` of two owns (group 1 the lower half of the slots). */
function namesOfGroup(index: number, count: number, prefix = 'obj-'): string[] {
  const names: string[] = [];
  for (let i = 0; names.length < count; i++) {
    const name = `${prefix}${i}`;
    if (Math.floor((slotOf(name) * 2) / SLOT_COUNT) === index) names.push(name);
  }
  return names;
}

function segmem(args: string[], timeoutMs = 120_000) {
  return runNode(segmemBin, args, { env: NO_ENV, timeoutMs }).done;
}

/** The objects of a cluster file: name -> bytes (zeros for one never written). */
function objectsOf(file: string): Map<string, Buffer> {
  const c = decodeClusterFile(readFileSync(file), file);
  const out = new Map<string, Buffer>();
  for (const part of c.parts)
    for (const o of part.content.objects) out.set(o.name, o.data ?? Buffer.alloc(o.size));
  return out;
}

/** A running `segmem up --groups 2 --replicas 3`, shared by the tests. */
let cluster: {
  dir: ReturnType<typeof tempDir>;
  up: ReturnType<typeof runNode>;
  configPath: string;
  config: Config;
} | null = null;

test.before(async () => {
  const dir = tempDir();
  const port = await consecutivePorts(6);
  const printed = { configPath: '' };
  const up = runNode(
    segmemBin,
    [
      'up',
      '--groups',
      '2',
      '--replicas',
      '3',
      '--segment-bytes',
      String(SEGMENT_BYTES),
      '--port',
      String(port),
      '--dir',
      join(dir.path, 'up'),
      '--fsync',
      'none',
    ],
    {
      timeoutMs: 30 * 60_000,
      onLine: (line) => {
        if (line.startsWith('SEGMEM_CONFIG=')) printed.configPath = line.slice('SEGMEM_CONFIG='.length);
      },
    },
  );
  await waitFor(() => printed.configPath, 'up to print SEGMEM_CONFIG', 2 * SERVER_READY_MS);
  const config = JSON.parse(readFileSync(printed.configPath, 'utf8')) as Config;
  cluster = { dir, up, configPath: printed.configPath, config };
});

test.after.always(async () => {
  if (!cluster) return;
  const { up, dir } = cluster;
  if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
  await up.done.catch(() => {});
  dir.cleanup();
});

/** A session on group `g` (1-based) of `config`. */
function groupSession(config: Config, g: number): Promise<Segment> {
  return untilItWorks(
    () => connect({ servers: Object.values(config.groups[g - 1]!.members), sessionTimeoutMs: 5000 }),
    `a session on group ${g}`,
  );
}

/** Starts every server of `config` (written to `path`); resolves once all are ready. */
async function startServers(config: Config, path: string) {
  const ids = config.groups.flatMap((g) => Object.keys(g.members));
  const procs = ids.map((id) => {
    const ready = { done: false };
    const p = runNode(serverBin, ['--config', path, '--id', id, '--fsync', 'none'], {
      timeoutMs: 10 * 60_000,
      onLine: (line) => {
        if (line.includes(' ready on ')) ready.done = true;
      },
    });
    return { id, p, ready };
  });
  const stop = async () => {
    for (const { p } of procs)
      if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill('SIGTERM');
    await Promise.all(procs.map(({ p }) => p.done.catch(() => {})));
  };
  try {
    await waitFor(
      () => procs.every((x) => x.ready.done),
      `servers ${ids.join(', ')} to be ready`,
      2 * SERVER_READY_MS,
    );
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}: ${procs.map((x) => x.p.stderr()).join('')}`);
  }
  return stop;
}

/** Every object the groups of `config` serve, read through a session on each group. */
async function readAll(config: Config): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const g of config.groups) {
    const seg = await groupSession(config, g.id);
    try {
      for (const info of await seg.list()) {
        if (info.name.startsWith('.segmem/')) continue;
        out.set(info.name, await seg.read(info.name, (h) => Buffer.from(h.bytes)));
      }
    } finally {
      await seg.close();
    }
  }
  return out;
}

/** `config` with new ports, data directories under `dir`, and `groups` when given. */
async function freshConfig(dir: string, base: Config, groupCount: number, replicas: number): Promise<Config> {
  const port = await consecutivePorts(groupCount * replicas);
  const bytes = Math.floor(base.segmentBytes / groupCount / 4096) * 4096;
  return {
    ...base,
    dataDir: join(dir, '{id}'),
    clusterSecretFile: base.clusterSecretFile,
    groups: Array.from({ length: groupCount }, (_, g) => ({
      id: g + 1,
      start: g * bytes,
      bytes,
      members: Object.fromEntries(
        Array.from({ length: replicas }, (_, r) => {
          const n = g * replicas + r;
          return [`s${n + 1}`, `127.0.0.1:${port + n}`];
        }),
      ),
    })),
  };
}

test('a cluster snapshot taken while writers write restores into 2 groups and into 3 with every object equal', async (t) => {
  const { config, configPath, dir } = cluster!;
  // The secret file is named relative to the config's directory: the new configs name it absolutely.
  const base = { ...config, clusterSecretFile: join(configPath, '..', config.clusterSecretFile) };
  const sessions = [await groupSession(config, 1), await groupSession(config, 2)];
  const names = [namesOfGroup(0, 4, 'w-'), namesOfGroup(1, 4, 'w-')];
  for (const [g, seg] of sessions.entries())
    for (const [i, name] of names[g]!.entries()) await seg.create(name, 3000 + i * 4096);
  let stop = false;
  let writes = 0;
  const writers = sessions.map(async (seg, g) => {
    for (let k = 1; !stop; k++) {
      const name = names[g]![k % names[g]!.length]!;
      await seg.update(name, (h) => {
        h.bytes.fill(k & 0xff, 0, 100);
        h.view.setUint32(h.bytes.length - 4, k, true);
      });
      writes++;
    }
  });
  const file = join(dir.path, 'cluster.segsnap');
  try {
    await waitFor(() => writes >= 20, 'the writers to get going');
    const r = await segmem(['snapshot', '--out', file, '--config', configPath]);
    t.is(r.code, 0, r.stderr);
    t.regex(
      r.stdout,
      /^cluster snapshot of cluster \S+, 2 groups \(group 1 at index \d+, group 2 at index \d+\): \d+ bytes in /,
    );
    const before = writes;
    await waitFor(() => writes >= before + 10, 'the writers to go on after the snapshot');
  } finally {
    stop = true;
    await Promise.all(writers);
    await Promise.all(sessions.map((s) => s.close()));
  }
  const inspected = await segmem(['snapshot', '--inspect', file]);
  t.is(inspected.code, 0, inspected.stderr);
  t.regex(inspected.stdout, /checksums OK, content OK/);
  t.regex(inspected.stdout, /^group 1: bytes \[0, 33554432\)/m);
  t.regex(inspected.stdout, /^group 2: bytes \[33554432, 67108864\)/m);
  const expected = objectsOf(file);
  for (const n of names.flat()) t.true(expected.has(n), `${n} is in the file`);

  for (const [groupCount, replicas] of [
    [2, 3],
    [3, 1],
  ] as const) {
    const into = join(dir.path, `restored-${groupCount}`);
    const fresh = await freshConfig(into, base, groupCount, replicas);
    const freshPath = join(dir.path, `restored-${groupCount}.json`);
    writeFileSync(freshPath, JSON.stringify(fresh, null, 2));
    for (const id of fresh.groups.flatMap((g) => Object.keys(g.members))) {
      const r = await segmem(['restore', file, '--config', freshPath, '--id', id, '--dir', join(into, id)]);
      t.is(r.code, 0, r.stderr);
      t.regex(r.stdout, groupCount === 2 ? /^restored \d+ objects? .* of group \d/ : /placed anew by slot/);
    }
    const stopServers = await startServers(fresh, freshPath);
    try {
      const got = await readAll(fresh);
      const want = new Map([...expected].filter(([n]) => !n.startsWith('.segmem/')));
      t.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), `${groupCount} groups serve every object`);
      for (const [n, bytes] of want)
        t.true(got.get(n)?.equals(bytes), `${n}'s bytes in ${groupCount} groups`);
      if (groupCount === 3) {
        const table = initialSlotTable(
          fresh.groups.map((g) => ({ id: g.id, members: Object.entries(g.members) })),
        );
        t.true(new Set(names.flat().map((n) => ownerOf(table, slotOf(n)))).size > 1, 'spread over groups');
      }
    } finally {
      await stopServers();
    }
  }
});

/** Chains run side by side, so that a cut taken at different moments in the two groups would show. */
const CHAINS = 8;

test('the cut is consistent: chains of writes alternating between the groups are in every file as prefixes', async (t) => {
  const { config, configPath, dir } = cluster!;
  const as = namesOfGroup(0, CHAINS, 'chain-a-');
  const bs = namesOfGroup(1, CHAINS, 'chain-b-');
  const sessions = [await groupSession(config, 1), await groupSession(config, 2)];
  for (const n of as) await sessions[0]!.create(n, 8);
  for (const n of bs) await sessions[1]!.create(n, 8);
  // Step k of chain c writes k into A_c (k odd) or B_c (k even), each begun after the step before was
  // acknowledged.
  let stop = false;
  const steps = new Array<number>(CHAINS).fill(0);
  const chains = as.map(async (a, c) => {
    for (let k = 1; !stop; k++) {
      await sessions[(k + 1) % 2]!.update(k % 2 ? a : bs[c]!, (h) => h.view.setUint32(0, k, true));
      steps[c] = k;
    }
  });
  const seen: [number, number][] = [];
  try {
    for (let i = 0; i < 8; i++) {
      const at = steps[0]!;
      await waitFor(() => steps[0]! >= at + 3, 'the chains to go on');
      const file = join(dir.path, `chain-${i}.segsnap`);
      const r = await segmem(['snapshot', '--out', file, '--config', configPath]);
      t.is(r.code, 0, r.stderr);
      const objects = objectsOf(file);
      for (const [c, a] of as.entries())
        seen.push([objects.get(a)!.readUInt32LE(0), objects.get(bs[c]!)!.readUInt32LE(0)]);
    }
  } finally {
    stop = true;
    await Promise.all(chains);
    await Promise.all(sessions.map((s) => s.close()));
  }
  // A prefix 1..m of a chain: its newest step m is in one object and m - 1 in the other.
  const broken = seen.filter(([va, vb]) => Math.abs(va - vb) !== 1);
  t.deepEqual(broken, [], 'every chain is a prefix in every file');
  t.true(
    seen.some(([va, vb]) => va + vb > 10),
    `the chains moved while files were taken: ${JSON.stringify(seen)}`,
  );
});

test('BARRIER: a hold makes write releases wait until released, ends by itself after its time, and is per session', async (t) => {
  const { config } = cluster!;
  const name = namesOfGroup(0, 1, 'held-')[0]!;
  const seg = await groupSession(config, 1);
  const admin = new AdminSession({
    servers: Object.values(config.groups[0]!.members),
    timeoutMs: 10_000,
    token: null,
  });
  try {
    await seg.create(name, 8);
    const hold = await admin.call({ type: 'BARRIER', op: 'hold', holdMs: 10_000 });
    t.true(hold.held);
    t.true(hold.remainingMs > 0 && hold.remainingMs <= 10_000);
    // STATUS says so, on the leader.
    const status = async () => {
      const r = await segmem([
        'status',
        '--json',
        '--servers',
        Object.values(config.groups[0]!.members).join(','),
      ]);
      const members = JSON.parse(r.stdout).members as { role?: string; writesHeldMs?: number }[];
      return members.find((m) => m.role === 'leader')!;
    };
    const during = await status();
    t.true(during.writesHeldMs! > 0 && during.writesHeldMs! <= 10_000, JSON.stringify(during));
    let done = false;
    const write = seg.update(name, (h) => h.view.setUint32(0, 1, true)).then(() => (done = true));
    // Every hold answers only once what was proposed before it is applied: the write was not proposed.
    for (let i = 0; i < 5; i++) await admin.call({ type: 'BARRIER', op: 'hold', holdMs: 10_000 });
    t.false(done, 'the write release waits while the hold is on');
    const released = await admin.call({ type: 'BARRIER', op: 'release', holdMs: 0 });
    t.true(released.held, 'the hold was still on when released');
    await waitFor(() => done, 'the write to complete once released');
    await write;
    t.is((await status()).writesHeldMs, undefined, 'no hold in STATUS once released');
    // A hold nobody releases ends by itself: the write goes through, and a late release says so.
    await admin.call({ type: 'BARRIER', op: 'hold', holdMs: 300 });
    await seg.update(name, (h) => h.view.setUint32(0, 2, true));
    const late = await admin.call({ type: 'BARRIER', op: 'release', holdMs: 0 });
    t.false(late.held, 'the hold had ended by itself');
    t.is(await seg.read(name, (h) => h.view.getUint32(0, true)), 2);

    // Holds are per session: one session's release leaves another's on, and a session's hold ends with it.
    const other = new AdminSession({
      servers: Object.values(config.groups[0]!.members),
      timeoutMs: 10_000,
      token: null,
    });
    await other.call({ type: 'BARRIER', op: 'hold', holdMs: 10_000 });
    await admin.call({ type: 'BARRIER', op: 'hold', holdMs: 10_000 });
    let third = false;
    const write3 = seg.update(name, (h) => h.view.setUint32(0, 3, true)).then(() => (third = true));
    t.true((await admin.call({ type: 'BARRIER', op: 'release', holdMs: 0 })).held);
    for (let i = 0; i < 5; i++) await admin.call({ type: 'STATUS' });
    t.false(third, "the write waits for the other session's hold");
    await other.close(); // GOODBYE ends the session, and its hold with it
    await waitFor(() => third, "the write to complete once the other session's hold ended with it");
    await write3;
  } finally {
    await admin.close();
    await seg.close();
  }
});

test('two snapshot agents: one coordinates; SIGKILLed, the other takes over and writes the next file', async (t) => {
  const { configPath, dir } = cluster!;
  const out = join(dir.path, 'agents');
  const lines: string[][] = [[], []];
  const agents = [0, 1].map((i) =>
    runNode(
      segmemBin,
      ['snapshot-agent', '--config', configPath, '--dir', out, '--every', '1', '--keep', '50'],
      {
        env: NO_ENV,
        timeoutMs: 5 * 60_000,
        onLine: (line) => lines[i]!.push(line),
      },
    ),
  );
  const written = (i: number) => lines[i]!.flatMap((l) => /^snapshot-agent: wrote (\S+) /.exec(l)?.[1] ?? []);
  const fenceOf = (file: string) => decodeClusterFile(readFileSync(file), file).header.fence;
  try {
    await waitFor(() => written(0).length + written(1).length >= 2, 'an agent to write two files', 60_000);
    const coordinator = written(0).length > 0 ? 0 : 1;
    const other = 1 - coordinator;
    t.is(written(other).length, 0, 'only the lease holder writes');
    const oldFence = fenceOf(written(coordinator)[0]!);
    t.true(oldFence >= 1);
    const killedAt = Date.now();
    agents[coordinator]!.proc.kill('SIGKILL');
    await agents[coordinator]!.done;
    // The lease's session expires after 5 s; the waiting agent's ACQUIRE is then granted.
    await waitFor(() => written(other).length >= 1, 'the other agent to take over and write a file', 30_000);
    const tookMs = Date.now() - killedAt;
    t.true(tookMs < 15_000, `took over in ${tookMs} ms`);
    const next = written(other)[0]!;
    t.true(fenceOf(next) > oldFence, 'the new coordinator holds a newer fencing token');
    const inspected = await segmem(['snapshot', '--inspect', next]);
    t.is(inspected.code, 0, inspected.stderr);
    t.regex(inspected.stdout, new RegExp(`by the snapshot agent holding fencing token ${fenceOf(next)}`));
  } finally {
    for (const a of agents)
      if (a.proc.exitCode === null && a.proc.signalCode === null) a.proc.kill('SIGTERM');
    const ends = await Promise.all(agents.map((a) => a.done.catch(() => null)));
    t.true(
      ends.some((e) => e?.code === 0),
      'the surviving agent ends cleanly on SIGTERM',
    );
  }
});

test('bad input: unknown flags, no server answering, a damaged file', async (t) => {
  const { configPath, dir } = cluster!;
  for (const args of [
    ['snapshot-agent', '--config', configPath, '--bogus'],
    ['snapshot', '--out', 'x', '--config', configPath, '--bogus'],
    ['restore', 'x', '--config', configPath, '--id', 's1', '--dir', 'd', '--bogus'],
  ]) {
    const r = await segmem(args);
    t.is(r.code, 1);
    t.regex(r.stderr, /^segmem: unknown option --bogus \(INVALID_ARGUMENT\)\n/);
  }
  // A config whose servers are all down: one line, exit 1.
  const down = join(dir.path, 'down.json');
  const ports = await consecutivePorts(2);
  writeFileSync(
    down,
    JSON.stringify({
      segmentBytes: SEGMENT_BYTES,
      groups: [
        { id: 1, start: 0, bytes: SEGMENT_BYTES / 2, members: { s1: `127.0.0.1:${ports}` } },
        {
          id: 2,
          start: SEGMENT_BYTES / 2,
          bytes: SEGMENT_BYTES / 2,
          members: { s2: `127.0.0.1:${ports + 1}` },
        },
      ],
    }),
  );
  for (const args of [
    ['snapshot-agent', '--config', down, '--dir', join(dir.path, 'none'), '--timeout', '500'],
    ['snapshot', '--out', join(dir.path, 'none.segsnap'), '--config', down, '--timeout', '500'],
  ]) {
    const r = await segmem(args);
    t.is(r.code, 1, r.stdout);
    t.regex(r.stderr, /^segmem: .*\(UNAVAILABLE\)\n$/);
  }
  // A damaged file is refused naming the group whose part is wrong; a truncated one says it is cut short.
  const file = join(dir.path, 'bad-input.segsnap');
  t.is((await segmem(['snapshot', '--out', file, '--config', configPath])).code, 0);
  const bytes = readFileSync(file);
  const damaged = Buffer.from(bytes);
  damaged[damaged.length - 30]! ^= 1;
  writeFileSync(`${file}.damaged`, damaged);
  writeFileSync(`${file}.cut`, bytes.subarray(0, bytes.length - 100));
  const d = await segmem(['snapshot', '--inspect', `${file}.damaged`]);
  t.is(d.code, 1);
  t.regex(
    d.stderr,
    /not a usable cluster snapshot: the part of group 2 fails its checksum \(INVALID_ARGUMENT\)\n$/,
  );
  const c = await segmem([
    'restore',
    `${file}.cut`,
    '--config',
    configPath,
    '--id',
    's1',
    '--dir',
    join(dir.path, 'r-cut'),
  ]);
  t.is(c.code, 1);
  t.regex(c.stderr, /not a usable cluster snapshot: cut short in the part of group 2/);
  // A cluster file given to the single-group form says how to restore it.
  const single = await segmem(['restore', file, '--data', join(dir.path, 'r-single')]);
  t.is(single.code, 1);
  t.regex(single.stderr, /is a cluster snapshot of several shard groups: restore each server with --config/);
});
