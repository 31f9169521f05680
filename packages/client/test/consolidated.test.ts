/**
 * Consolidated snapshots: `segmem snapshot --out` from a running 3-server cluster, `--inspect`, and
 * `segmem restore` into fresh data directories, for a cluster and for a single server. The restored
 * servers serve exactly the snapshot's content (every object's bytes and version, every log record), and
 * a snapshot of the restored cluster has the same content digest.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type StateContent, StateMachine } from '@segmem/server/internal/core/state-machine';
import { encodeConsolidated } from '@segmem/server/internal/storage/consolidated';
import test from 'ava';
import { connect, type Segment } from '../src/index.js';
import {
  fixturesDir,
  freePort,
  runNode,
  segmemBin,
  startServerProcess,
  statuses,
  TestCluster,
  tempDir,
  waitFor,
} from './helpers.js';

async function segmem(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runNode(segmemBin, args, { timeoutMs: 60_000 }).done;
}

/** What a user can see of the content: names, sizes, versions and bytes of objects; every log record. */
async function content(seg: Segment): Promise<unknown> {
  const objects = [];
  for (const o of await seg.list()) {
    const bytes = await seg.read(o.name, (h) => Buffer.from(h.bytes).toString('base64'));
    objects.push({ name: o.name, size: o.size, version: o.version, bytes });
  }
  const records: string[] = [];
  for await (const r of seg.log('events').read()) records.push(`${r.seq}:${r.data.toString()}`);
  return { objects, records, logInfo: await seg.log('events').info() };
}

test('segmem snapshot --out, --inspect and restore round-trip a cluster and a single server', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path);
  const servers = cluster.addresses.join(',');
  const file = join(dir.path, 'backup.segsnap');
  try {
    const seg = await connect({ servers: cluster.addresses });
    await seg.create('small', 10);
    await seg.update('small', (h) => h.bytes.write('hello', 0));
    await seg.create('big', 3 * 4096 + 100); // pages 1 and 3 written, 0 and 2 stay zero
    await seg.update('big', (h) => {
      h.bytes.fill(7, 4096, 8192);
      h.bytes.fill(9, 3 * 4096, 3 * 4096 + 100);
    });
    await seg.create('never-written', 5000);
    await seg.create('to-delete', 4);
    await seg.delete('to-delete');
    await seg.log('events').appendBatch(['one', 'two', '', 'four']);
    await seg.log('events').truncateBefore(1);
    const before = await content(seg);
    await seg.close();

    const made = await segmem(['snapshot', '--out', file, '--servers', servers]);
    t.is(made.code, 0, made.stderr);
    t.regex(made.stdout, /snapshot of cluster \S+ at index \d+ \(term \d+\): \d+ bytes in /);
    const inspected = await segmem(['snapshot', '--inspect', file]);
    t.is(inspected.code, 0, inspected.stderr);
    t.regex(inspected.stdout, /checksum OK/);
    t.regex(inspected.stdout, /3 objects:/);
    t.regex(inspected.stdout, / big {2}size 12388 {2}version 2/);
    t.regex(inspected.stdout, / events {2}records 1\.\.3 /);
    const digest = /content digest (\w+)/.exec(inspected.stdout)![1];

    // A damaged file is refused, naming the problem.
    const damaged = join(dir.path, 'damaged.segsnap');
    const bytes = readFileSync(file);
    bytes[bytes.length >> 1]! ^= 0xff;
    writeFileSync(damaged, bytes);
    const refused = await segmem(['snapshot', '--inspect', damaged]);
    t.is(refused.code, 1);
    t.regex(refused.stderr, /checksum mismatch/);

    // Restore a 3-server cluster and a single server; both serve exactly the snapshot's content.
    const restoredDirs = ['r1', 'r2', 'r3'].map((d) => join(dir.path, d));
    const restored = await segmem(['restore', file, '--data', restoredDirs.join(',')]);
    t.is(restored.code, 0, restored.stderr);
    t.regex(restored.stdout, /restored 3 objects and 1 shared log into 3 data directories/);
    const clusterId = /--cluster-id (\S+)/.exec(restored.stdout)![1]!;
    const again = await segmem(['restore', file, '--data', restoredDirs[0]!]);
    t.is(again.code, 1, 'restore refuses a directory that is not empty');

    const ports = [await freePort(), await freePort(), await freePort()];
    const peers = ports.map((p, i) => `s${i + 1}=127.0.0.1:${p}`).join(',');
    const members = await Promise.all(
      restoredDirs.map((d, i) =>
        startServerProcess({
          id: `s${i + 1}`,
          dataDir: d,
          listen: `127.0.0.1:${ports[i]}`,
          extra: ['--peers', peers, '--cluster-id', clusterId, '--cluster-secret-file', cluster.secretFile],
        }),
      ),
    );
    const single = join(dir.path, 'single');
    t.is((await segmem(['restore', file, '--data', single])).code, 0);
    const lone = await startServerProcess({ dataDir: single });
    try {
      for (const addresses of [members.map((m) => m.address), [lone.address]]) {
        const s = await connect({ servers: addresses });
        t.deepEqual(await content(s), before);
        // The restored store goes on: new writes and appends work.
        await s.update('small', (h) => h.bytes.write('again', 0));
        t.is(await s.log('events').append('five'), 4);
        await s.close();
      }
      // A snapshot of the restored cluster, taken before it changes... here after: the digest moves with
      // the content; and one more restore of the first file gives the first digest again.
      const second = join(dir.path, 'second.segsnap');
      const made2 = await segmem([
        'snapshot',
        '--out',
        second,
        '--servers',
        members.map((m) => m.address).join(','),
      ]);
      t.is(made2.code, 0, made2.stderr);
      const inspected2 = await segmem(['snapshot', '--inspect', second]);
      t.not(/content digest (\w+)/.exec(inspected2.stdout)![1], digest, 'changed content, changed digest');
    } finally {
      for (const m of members) await m.stop();
      await lone.stop();
    }

    // Byte for byte: restore, snapshot again without changing anything: the same content digest.
    const roundDir = join(dir.path, 'round');
    t.is((await segmem(['restore', file, '--data', roundDir])).code, 0);
    const round = await startServerProcess({ dataDir: roundDir });
    try {
      const third = join(dir.path, 'third.segsnap');
      const made3 = await segmem(['snapshot', '--out', third, '--servers', round.address]);
      t.is(made3.code, 0, made3.stderr);
      const inspected3 = await segmem(['snapshot', '--inspect', third]);
      t.is(/content digest (\w+)/.exec(inspected3.stdout)![1], digest);
    } finally {
      await round.stop();
    }
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('the leader writes consolidated snapshots on a schedule and keeps the newest', async (t) => {
  const dir = tempDir();
  const backups = join(dir.path, 'backups'); // one directory for all three members
  const cluster = await TestCluster.start(3, dir.path, 'batch', () => [
    '--consolidated-dir',
    backups,
    '--consolidated-interval-ms',
    '1000',
    '--consolidated-keep',
    '2',
  ]);
  const files = () =>
    existsSync(backups)
      ? readdirSync(backups)
          .filter((n) => n.endsWith('.segsnap'))
          .sort()
      : [];
  const indexOf = (name: string) => Number(/^consolidated-(\d{20})-\d{8}T\d{6}Z\.segsnap$/.exec(name)![1]);
  try {
    const seg = await connect({ servers: cluster.addresses });
    await seg.create('counter', 4);
    const seen = new Set<string>();
    for (let round = 1; round <= 3; round++) {
      await seg.update('counter', (h) => h.bytes.writeUInt32LE(round));
      await waitFor(() => {
        for (const f of files()) seen.add(f);
        return seen.size >= round;
      }, `consolidated snapshot ${round}`);
      // The new file is written before the oldest goes: for a moment there is one more.
      await waitFor(() => files().length <= 2, `at most 2 kept (${files().join(', ')})`);
    }
    await seg.log('events').append('one');
    await seg.close();
    // Once nothing changes, the newest file holds everything: what a snapshot taken now holds.
    const leader = await waitFor(() => cluster.leader(), 'a leader');
    const applied = (await statuses(cluster)).get(leader.id)!.applied;
    const newest = await waitFor(() => {
      const f = files().at(-1);
      return f && indexOf(f) >= applied ? f : undefined;
    }, `a consolidated snapshot at index ${applied} or later`);
    t.regex(leader.server!.stderr(), /consolidated snapshot at index \d+ \(term \d+\): \d+ bytes to /);
    await waitFor(() => files().length <= 2, 'at most 2 kept');
    t.deepEqual(
      readdirSync(backups).filter((n) => !n.endsWith('.segsnap')),
      [],
      'no temporary files left',
    );
    const scheduled = await segmem(['snapshot', '--inspect', join(backups, newest)]);
    t.is(scheduled.code, 0, scheduled.stderr);
    t.regex(scheduled.stdout, /checksum OK/);
    t.regex(scheduled.stdout, / counter {2}size 4 {2}version 4/);
    const now = join(dir.path, 'now.segsnap');
    t.is((await segmem(['snapshot', '--out', now, '--servers', cluster.addresses.join(',')])).code, 0);
    const taken = await segmem(['snapshot', '--inspect', now]);
    t.is(
      /content digest (\w+)/.exec(scheduled.stdout)![1],
      /content digest (\w+)/.exec(taken.stdout)![1],
      'the scheduled snapshot holds the same content as one taken now',
    );
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('bad consolidated snapshot settings are refused at start', async (t) => {
  const dir = tempDir();
  try {
    for (const [flag, value, message] of [
      ['--consolidated-interval-ms', '10', /consolidatedIntervalMs must be at least 1000/],
      ['--consolidated-keep', '0', /consolidatedKeep must be at least 1/],
    ] as const) {
      const r = await runNode(
        join(fixturesDir, '../../../server/bin/segmem-server.mjs'),
        [
          '--id',
          's1',
          '--listen',
          '127.0.0.1:0',
          '--data',
          join(dir.path, 'd'),
          '--consolidated-dir',
          join(dir.path, 'b'),
          flag,
          value,
        ],
        { timeoutMs: 20_000 },
      ).done;
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr, message);
    }
  } finally {
    dir.cleanup();
  }
});

test('segmem restore refuses a crafted file whose checksum matches: one line, exit 1, nothing written', async (t) => {
  const dir = tempDir();
  try {
    const sm = new StateMachine({ pageBytes: 4096, segmentBytes: 64 * 4096 });
    sm.apply(1, { op: 'open', timeoutMs: 1000, clientName: null });
    sm.apply(2, { op: 'create', sessionId: 1, seq: 1, name: 'cfg', size: 8192, ifNotExists: false });
    sm.apply(3, { op: 'create', sessionId: 1, seq: 2, name: 'b', size: 100, ifNotExists: false });
    const crafted: [string, (c: StateContent) => void, string][] = [
      // Restored as is, every HELLO would have answered session NaN.
      [
        'nan.segsnap',
        (c) => (c.nextSessionId = Number.NaN),
        'segmem: restore: nextSessionId NaN must be an integer >= 1 (INVALID_ARGUMENT)\n',
      ],
      [
        'overlap.segsnap',
        (c) => ((c.objects[1] as { firstPage: number }).firstPage = 1),
        'segmem: restore: object "b" (id 2): pages 1..1 overlap pages 0..1 of object "cfg" (id 1) (INVALID_ARGUMENT)\n',
      ],
    ];
    for (const [name, tamper, line] of crafted) {
      const content = sm.exportContent();
      tamper(content);
      const file = join(dir.path, name);
      const parts = await encodeConsolidated(content, { clusterId: 'c', createdAt: 'now', groups: [] });
      writeFileSync(file, Buffer.concat(parts));
      const dirs = ['r1', 'r2', 'r3'].map((d) => join(dir.path, `${name}-${d}`));
      const r = await segmem(['restore', file, '--data', dirs.join(',')]);
      t.is(r.code, 1, r.stderr);
      t.is(r.stderr, line, 'the one line, no stack');
      t.is(r.stdout, '');
      for (const d of dirs) t.false(existsSync(d), `${d} was not created`);
      // Inspecting it says what restore would refuse, not just "checksum OK".
      const inspected = await segmem(['snapshot', '--inspect', file]);
      t.is(inspected.code, 1, inspected.stdout);
      t.is(inspected.stderr, line.replace('segmem: restore: ', `segmem: inspect ${file}: `));
    }
  } finally {
    dir.cleanup();
  }
});
