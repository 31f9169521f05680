/**
 * Shard groups with real processes: `segmem up --groups 2 --replicas 3` writes a grouped config file and
 * starts six servers from it; each group elects its own leader, reports its group and range in STATUS, and
 * hands out addresses in its own range only; a member restarted with another range, or an id in no group,
 * is refused in one line.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { SegmemError, slotOf } from '@segmem/protocol';
import ava from 'ava';
import { connect, type Segment } from '../src/index.js';
import {
  bump,
  consecutivePorts,
  groupedCluster,
  namesOfGroup,
  RawConnection,
  runNode,
  segmemBin,
  serverBin,
  startServerProcess,
  startUp,
  tempDir,
  untilItWorks,
} from './helpers.js';

/** Six servers at once load a 2-core machine enough: these tests run alone. */
const test = ava.serial;

const SEGMENT_BYTES = 64 * 1024 * 1024;
const HALF = SEGMENT_BYTES / 2;

test('segmem up --groups 2 --replicas 3: two groups, each with its own leader, range and addresses', async (t) => {
  const dir = tempDir();
  const port = await consecutivePorts(6);
  const { up, ready } = startUp(dir.path, port, [
    '--groups',
    '2',
    '--replicas',
    '3',
    '--segment-bytes',
    String(SEGMENT_BYTES),
  ]);
  try {
    const { servers, configPath } = await ready();
    const all = servers.split(',');
    t.deepEqual(
      all,
      Array.from({ length: 6 }, (_, i) => `127.0.0.1:${port + i}`),
    );
    const groups = [all.slice(0, 3), all.slice(3)];
    const ids = [
      ['s1', 's2', 's3'],
      ['s4', 's5', 's6'],
    ];
    const config = JSON.parse(readFileSync(configPath, 'utf8'));
    t.deepEqual(
      config.groups.map((g: { id: number; start: number; bytes: number; members: object }) => [
        g.id,
        g.start,
        g.bytes,
        Object.keys(g.members),
      ]),
      [
        [1, 0, HALF, ids[0]],
        [2, HALF, HALF, ids[1]],
      ],
    );

    for (const [g, members] of groups.entries()) {
      // Each group elects a leader among its own members, and says which group and range it is.
      const status = await untilItWorks(
        async () => {
          const r = await runNode(segmemBin, ['status', '--json', '--servers', members.join(',')], {
            env: { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' },
          }).done;
          const s = JSON.parse(r.stdout);
          if (r.code !== 0 || !s.leader) throw new Error(`${r.stdout}${r.stderr}`);
          return s;
        },
        `group ${g + 1} to elect a leader`,
      );
      t.true(ids[g]!.includes(status.leader), `group ${g + 1}'s leader is one of its members`);
      t.deepEqual(status.group, { id: g + 1, start: g * HALF, bytes: HALF });
      t.deepEqual(
        status.members.map((m: { id: string }) => m.id),
        ids[g],
      );

      // A client given one group's servers creates the names its slots hold (the file's two groups split
      // the slots in halves), in its range; a name of the other group's slots is created in the other group.
      const seg = await connect({ servers: members });
      try {
        const own = namesOfGroup(g, 3);
        for (const name of own) {
          const info = await seg.create(name, 10_000);
          t.true(
            info.address >= g * HALF && info.address + 10_000 <= (g + 1) * HALF,
            `group ${g + 1} placed ${name} at ${info.address}`,
          );
        }
        await seg.update(own[0]!, (h) => h.bytes.write(`group ${g + 1}`));
        t.is(await seg.read(own[0]!, (h) => h.bytes.subarray(0, 7).toString()), `group ${g + 1}`);
        const other = namesOfGroup(1 - g, 4)[3]!;
        const elsewhere = await seg.create(other, 4096);
        t.true(
          elsewhere.address >= (1 - g) * HALF && elsewhere.address < (2 - g) * HALF,
          `group ${2 - g} placed ${other} at ${elsewhere.address}`,
        );
        t.is((await seg.list('')).length, 4 * (g + 1), "both groups' objects are listed");
      } finally {
        await seg.close();
      }
    }
    up.proc.kill('SIGTERM');
    t.is((await up.done).code, 0, 'every server started and stopped cleanly');

    // s4 restarted with a config that gives group 2 another range is refused, in one line.
    const changed = JSON.parse(readFileSync(configPath, 'utf8'));
    changed.groups[1].bytes = HALF / 2;
    const changedPath = `${configPath}.changed.json`;
    writeFileSync(changedPath, JSON.stringify(changed, null, 2));
    const refused = await runNode(serverBin, ['--config', changedPath, '--id', 's4'], { timeoutMs: 30_000 })
      .done;
    t.is(refused.code, 1);
    t.is(
      refused.stderr,
      `segmem-server: data directory ${dir.path}/s4 holds group 2 (bytes [${HALF}, ${2 * HALF})), but this server is configured as group 2 (bytes [${HALF}, ${HALF + HALF / 2})); a server keeps its group and range (start it with the config it was created with) (INVALID_ARGUMENT)\n`,
    );
    t.is(refused.stdout, '');

    // An id in no group of the file: one line, nothing started.
    const stranger = await runNode(serverBin, ['--config', configPath, '--id', 's9'], { timeoutMs: 30_000 })
      .done;
    t.is(stranger.code, 1);
    t.is(
      stranger.stderr,
      `segmem-server: server "s9" is in no group of ${configPath} (its members: s1, s2, s3, s4, s5, s6) (INVALID_ARGUMENT)\n`,
    );
  } finally {
    if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
    await up.done.catch(() => {});
    dir.cleanup();
  }
});

test('segmem up --groups 2 (one replica each): two single-server groups; bad layouts are usage mistakes', async (t) => {
  const env = { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' };
  for (const [args, message] of [
    [['--groups', '2', '--replicas', '2'], '--replicas must be 1, 3 or 5; got 2'],
    [['--groups', '4', '--replicas', '5'], '--groups 4 --replicas 5 is 20 servers; at most 15'],
    [['--groups', '5'], '--groups must be an integer 1..4; got "5"'],
    [['--groups', '2', '--servers', '3'], '--servers and --groups cannot be used together'],
    [['--replicas', '3'], '--replicas goes with --groups'],
  ] as const) {
    const r = await runNode(segmemBin, ['up', ...args], { env, timeoutMs: 30_000 }).done;
    t.is(r.code, 1, args.join(' '));
    t.is(r.stderr.split('\n')[0], `segmem: ${message} (INVALID_ARGUMENT)`, args.join(' '));
    t.regex(r.stderr, /usage: segmem up /);
  }

  const dir = tempDir();
  const port = await consecutivePorts(2);
  const { up, ready } = startUp(dir.path, port, ['--groups', '2']);
  try {
    const { servers } = await ready();
    const half = 2 * 1024 ** 3; // the default 4 GiB segment in two
    for (const [g, address] of servers.split(',').entries()) {
      const seg = await connect({ servers: [address] });
      try {
        const info = await seg.create(namesOfGroup(g, 1)[0]!, 1);
        t.is(info.address, g * half, `group ${g + 1}'s first object starts its range`);
      } finally {
        await seg.close();
      }
    }
    up.proc.kill('SIGTERM');
    t.is((await up.done).code, 0);
  } finally {
    if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
    await up.done.catch(() => {});
    dir.cleanup();
  }
});

test("a group's consolidated snapshot restores as that group: same addresses and bytes, MOVED kept", async (t) => {
  const env = { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' };
  const segmem = (args: string[]) => runNode(segmemBin, args, { env, timeoutMs: 60_000 }).done;
  const dir = tempDir();
  const port = await consecutivePorts(2);
  const { up, ready, printed } = startUp(dir.path, port, [
    '--groups',
    '2',
    '--segment-bytes',
    String(SEGMENT_BYTES),
  ]);
  const file = `${dir.path}/group2.segsnap`;
  const own = namesOfGroup(1, 3);
  const other = namesOfGroup(0, 1)[0]!;
  const before: { name: string; address: number; bytes: string }[] = [];
  try {
    const { servers } = await ready();
    const group2 = servers.split(',')[1]!;
    const seg = await connect({ servers: [group2] });
    try {
      for (const [i, name] of own.entries()) {
        const info = await seg.create(name, 5000 + i * 4096);
        await seg.update(name, (h) => h.bytes.fill(i + 1, 100, 4200));
        const bytes = await seg.read(name, (h) => Buffer.from(h.bytes).toString('base64'));
        before.push({ name, address: info.address, bytes });
      }
    } finally {
      await seg.close();
    }
    const made = await segmem(['snapshot', '--out', file, '--servers', group2]);
    t.is(made.code, 0, made.stderr);
    const inspected = await segmem(['snapshot', '--inspect', file]);
    t.is(inspected.code, 0, inspected.stderr);
    t.regex(inspected.stdout, /^group 2: index \d+, term \d+$/m);
    t.regex(inspected.stdout, new RegExp(`^range of group 2 \\(bytes \\[${HALF}, ${2 * HALF}\\)\\)$`, 'm'));
    t.regex(inspected.stdout, /^slot table version 1: 0-8191 group 1, 8192-16383 group 2$/m);
    up.proc.kill('SIGTERM');
    t.is((await up.done).code, 0);
  } finally {
    if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
    await up.done.catch(() => {});
  }

  try {
    // Restored for s2 and started with the grouped config it came from: group 2, its objects where they were.
    const restoredDir = `${dir.path}/restored-s2`;
    const restored = await segmem(['restore', file, '--data', restoredDir, '--ids', 's2']);
    t.is(restored.code, 0, restored.stderr);
    t.regex(
      restored.stdout,
      new RegExp(`^the directories are group 2 \\(bytes \\[${HALF}, ${2 * HALF}\\)\\)`, 'm'),
    );
    const server = await startServerProcess({
      id: 's2',
      dataDir: restoredDir,
      extra: ['--config', printed.configPath],
    });
    try {
      // Group 1 is not running: what names its slots (a list too) is asked of this server directly.
      const raw = await RawConnection.open(server.address);
      const seg = await connect({ servers: [server.address] });
      try {
        await raw.hello();
        const listed = (await raw.call({ type: 'LIST', prefix: '' })).objects.map((o) => o.name).sort();
        t.deepEqual(listed, [...own].sort());
        for (const b of before) {
          t.is((await seg.stat(b.name)).address, b.address, `${b.name} keeps its address`);
          t.is(await seg.read(b.name, (h) => Buffer.from(h.bytes).toString('base64')), b.bytes, b.name);
        }
        const created = await seg.create(namesOfGroup(1, 4)[3]!, 1);
        t.true(created.address >= HALF, `a new object lands in the group's range (${created.address})`);
        const moved = await t.throwsAsync(
          raw.call({ type: 'CREATE', seq: 1, name: other, size: 4096, ifNotExists: false }),
          { instanceOf: SegmemError },
        );
        t.like(moved?.details, { reason: 'MOVED', group: 1, slot: slotOf(other) });
      } finally {
        raw.close();
        await seg.close();
      }
    } finally {
      await server.stop();
    }

    // The same file restored for a server the config puts in group 1: refused at start, in one line.
    const wrongDir = `${dir.path}/restored-s1`;
    t.is((await segmem(['restore', file, '--data', wrongDir, '--ids', 's1'])).code, 0);
    const refused = await runNode(
      serverBin,
      ['--config', printed.configPath, '--id', 's1', '--data', wrongDir, '--listen', '127.0.0.1:0'],
      { timeoutMs: 30_000 },
    ).done;
    t.is(refused.code, 1);
    t.is(
      refused.stderr,
      `segmem-server: data directory ${wrongDir} holds group 2 (bytes [${HALF}, ${2 * HALF})), but this server is configured as group 1 (bytes [0, ${HALF})); a server keeps its group and range (start it with the config it was created with) (INVALID_ARGUMENT)\n`,
    );
  } finally {
    dir.cleanup();
  }
});

test('a group that loses its majority stops only its own names: the other group keeps serving', async (t) => {
  const dir = tempDir();
  const ids = ['s1', 's2', 's3', 's4', 's5', 's6'];
  const cluster = await groupedCluster({
    dir: dir.path,
    groups: [ids.slice(0, 3), ids.slice(3)],
    rangeBytes: HALF,
  });
  const { addressOf, servers, start } = cluster;
  const segs: Segment[] = [];
  try {
    const connectTo = async (group: string[]) => {
      // Delegations off: every acquire goes to the group (a kept grant is used locally during its lease).
      const seg = await connect({
        servers: group.map(addressOf),
        sessionTimeoutMs: 3000,
        delegations: false,
      });
      segs.push(seg);
      return seg;
    };
    const [one, two] = [await connectTo(ids.slice(0, 3)), await connectTo(ids.slice(3))];
    const [name1, name2] = [namesOfGroup(0, 1)[0]!, namesOfGroup(1, 1)[0]!];
    for (const [seg, name] of [
      [one, name1],
      [two, name2],
    ] as const) {
      await untilItWorks(() => seg.create(name, 4, { ifNotExists: true }), `${name} created`);
      await bump(seg, name, 5);
    }

    // Group 2 loses two of its three members: its names stop, within the caller's timeout.
    await servers.get('s5')!.kill();
    await servers.get('s6')!.kill();
    const started = Date.now();
    const err = await t.throwsAsync(two.acquireWrite(name2, { timeoutMs: 1500 }));
    const waited = Date.now() - started;
    t.true(SegmemError.is(err) && (err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT'), String(err));
    t.true(waited < 6000, `group 2's write failed after ${waited} ms`);

    // Group 1 keeps serving all along.
    const before = Date.now();
    await bump(one, name1, 20);
    t.is(await one.read(name1, (h) => h.bytes.readUInt32LE(0)), 25);
    t.log(`group 1: 20 writes in ${Date.now() - before} ms while group 2 had no majority`);

    // One member back: group 2 serves again, with every increment it acknowledged.
    await start('s5');
    await untilItWorks(
      async () => (await two.acquireWrite(name2, { timeoutMs: 2000 })).release(),
      'a write in group 2 once a majority is back',
    );
    t.is(await two.read(name2, (h) => h.bytes.readUInt32LE(0)), 5);
  } finally {
    for (const seg of segs) await seg.close();
    await cluster.stopAll();
    dir.cleanup();
  }
});
