/**
 * Client routing across shard groups with real processes: a client given any one server of a cluster of two
 * groups of three learns the slot table and sends every call to the group owning the name's slot, follows
 * a MOVED redirect to a slot's new owner, and keeps serving one group's names while the other group has
 * lost its majority.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { SegmemError, type SlotRange, type SlotTable, slotOf } from '@segmem/protocol';
import { createClusterSecretFile } from '@segmem/server/internal/secret-file';
import ava from 'ava';
import { connect, type Segment } from '../src/index.js';
import type { ShardedSegment } from '../src/sharded-segment.js';
import {
  bump,
  consecutivePorts,
  fixturesDir,
  namesOfGroup,
  SERVER_READY_MS,
  STOP_MS,
  startUp,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

/** Six servers at once load a 2-core machine enough: these tests run alone. */
const test = ava.serial;

const SEGMENT_BYTES = 64 * 1024 * 1024;
const HALF = SEGMENT_BYTES / 2;

/** The group (index 0 or 1: group 1 or 2 of the config) whose half of the segment holds `address`. */
const groupOfAddress = (address: number) => Math.floor(address / HALF);

test('a client given one server routes every call by slot: objects, lists and logs of both groups', async (t) => {
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
  const segs: Segment[] = [];
  try {
    const all = (await ready()).servers.split(',');
    // One server each, of different groups: each learns the other group from the slot table.
    const open = async (address: string) => {
      const seg = await untilItWorks(
        () => connect({ servers: [address], udpHints: true }),
        `a session through ${address}`,
      );
      segs.push(seg);
      return seg;
    };
    const a = await open(all[4]!);
    const b = await open(all[0]!);
    t.regex((a as ShardedSegment).clientId, /^[0-9a-f]{16}$/);
    t.not((a as ShardedSegment).clientId, (b as ShardedSegment).clientId);

    const names = [namesOfGroup(0, 3), namesOfGroup(1, 3)];
    for (const [g, group] of names.entries()) {
      for (const name of group) {
        const info = await untilItWorks(() => a.create(name, 10_000), `${name} created`);
        t.is(groupOfAddress(info.address), g, `${name} is placed in group ${g + 1}'s range`);
      }
    }
    // Writes through one client are read through the other, in both groups.
    for (const [g, group] of names.entries()) {
      const name = group[0]!;
      const h = await a.acquireWrite(name, { timeoutMs: 10_000 });
      h.bytes.write(`from a to group ${g + 1}`);
      await h.release();
      t.is(await b.read(name, (r) => r.bytes.toString('utf8', 0, 17)), `from a to group ${g + 1}`);
      await b.update(name, (w) => w.bytes.write(`b answers ${g + 1}`));
      t.is(await a.read(name, (r) => r.bytes.toString('utf8', 0, 11)), `b answers ${g + 1}`);
      t.is((await a.stat(name)).version, 3, `${name}: two write releases`);
    }
    t.deepEqual((a as ShardedSegment).openGroups().sort(), [1, 2]);

    // A watch of a name of each group sees the other client's write there.
    for (const group of names) {
      const watched = a.watch(group[0]!, { fromVersion: 3, signal: AbortSignal.timeout(10_000) });
      const events = watched[Symbol.asyncIterator]();
      await b.update(group[0]!, (w) => w.bytes.writeUInt8(1, 100));
      t.deepEqual((await events.next()).value, { version: 4 });
      await events.return?.();
    }

    // One list of both groups, each name once, sorted as a single group sorts it.
    const everything = [...names[0]!, ...names[1]!].sort();
    t.deepEqual(
      (await b.list('')).map((o) => o.name),
      everything,
    );
    t.deepEqual(
      (await b.list('obj-1')).map((o) => o.name),
      everything.filter((n) => n.startsWith('obj-1')),
    );

    // Deletes go to the owner too.
    for (const group of names) {
      await b.delete(group[2]!);
      const gone = await t.throwsAsync(a.stat(group[2]!));
      t.true(SegmemError.is(gone, 'NOT_FOUND'), String(gone));
    }
    t.deepEqual(
      (await a.list('')).map((o) => o.name),
      [names[0]![0]!, names[0]![1]!, names[1]![0]!, names[1]![1]!].sort(),
    );

    // A shared log in each group: appends from both clients, read back in one order.
    const logs = [`log-${names[0]![0]}`, `log-${names[1]![0]}`].map((n) => `{${n.slice(4)}}/${n}`);
    for (const [g, name] of logs.entries()) {
      t.is(Math.floor((slotOf(name) * 2) / 16384), g, `${name} hashes to group ${g + 1}'s slots`);
      t.is(await a.log(name).append(`a${g}`), 0);
      t.deepEqual(await b.log(name).appendBatch([`b${g}`, `c${g}`]), [1, 2]);
      const read: string[] = [];
      for await (const r of a.log(name).read({ from: 0 })) read.push(`${r.seq}:${r.data.toString()}`);
      t.deepEqual(read, [`0:a${g}`, `1:b${g}`, `2:c${g}`]);
      t.like(await b.log(name).info(), { first: 0, next: 3 });
    }
    // A third client, given another server of group 1, finds group 2's names too.
    const only = await connect({ servers: [all[1]!] });
    segs.push(only);
    t.is((await only.stat(names[1]![0]!)).version, 4);
    const stats = (a as ShardedSegment).stats();
    t.true(stats.requests > 0 && stats.bytesSent > 0 && stats.bytesReceived > 0);
  } finally {
    for (const seg of segs) await seg.close();
    if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
    await up.done.catch(() => {});
    dir.cleanup();
  }
});

/** A member started by fixtures/slots-member.mjs: a grouped server that installs slot tables on command. */
interface Member {
  id: string;
  address: string;
  proc: ChildProcess;
  /** Installs `table` if this member leads its group: the version installed, or null (not the leader). */
  install(table: SlotTable): Promise<number | null>;
  kill(): Promise<void>;
  stop(): Promise<void>;
}

async function startMember(config: string, id: string, address: string, dataDir: string): Promise<Member> {
  const proc = spawn(
    process.execPath,
    [join(fixturesDir, 'slots-member.mjs'), config, id, address, dataDir],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((r) => proc.once('close', () => r()));
  const lines: string[] = [];
  createInterface({ input: proc.stdout! }).on('line', (line) => lines.push(line));
  await Promise.race([
    waitFor(() => lines.some((l) => l.endsWith(` ready on ${address}`)), `${id} ready`, SERVER_READY_MS),
    exited.then(() => {
      throw new Error(`${id} exited before it was ready: ${stderr}`);
    }),
  ]);
  const running = () => proc.exitCode === null && proc.signalCode === null;
  return {
    id,
    address,
    proc,
    async install(table) {
      const before = lines.length;
      proc.stdin!.write(`${JSON.stringify(table)}\n`);
      const answer = await waitFor(
        () => lines.slice(before).find((l) => /^(installed|refused) /.test(l)),
        `${id}'s answer`,
      );
      if (answer.startsWith('installed ')) return Number(answer.slice('installed '.length));
      if (answer.includes('NOT_LEADER')) return null;
      throw new Error(`${id} refused the table: ${answer}`);
    },
    async kill() {
      if (running()) proc.kill('SIGKILL');
      await exited;
    },
    async stop() {
      if (running()) proc.kill('SIGTERM');
      const late = setTimeout(() => proc.kill('SIGKILL'), STOP_MS);
      await exited;
      clearTimeout(late);
    },
  };
}

/** Two groups of three members (s1..s3 own slots 0..8191, s4..s6 the rest) from one config file. */
async function startTwoGroups(dir: string): Promise<Member[]> {
  const port = await consecutivePorts(6);
  const ids = ['s1', 's2', 's3', 's4', 's5', 's6'];
  const addressOf = (id: string) => `127.0.0.1:${port + ids.indexOf(id)}`;
  const secretFile = join(dir, 'cluster-secret');
  createClusterSecretFile(secretFile);
  const config = join(dir, 'segmem.json');
  const members = (group: string[]) => Object.fromEntries(group.map((id) => [id, addressOf(id)]));
  writeFileSync(
    config,
    JSON.stringify({
      segmentBytes: SEGMENT_BYTES,
      fsync: 'none',
      clusterSecretFile: secretFile,
      groups: [
        { id: 1, start: 0, bytes: HALF, members: members(ids.slice(0, 3)) },
        { id: 2, start: HALF, bytes: HALF, members: members(ids.slice(3)) },
      ],
    }),
  );
  return Promise.all(ids.map((id) => startMember(config, id, addressOf(id), join(dir, id))));
}

test('a MOVED redirect is followed: a client holding table version 1 creates a moved slot in its new owner', async (t) => {
  const dir = tempDir();
  let members: Member[] = [];
  const segs: Segment[] = [];
  const connectTo = async (servers: string[]) => {
    const seg = await untilItWorks(() => connect({ servers }), `a session through ${servers.join(',')}`);
    segs.push(seg);
    return seg;
  };
  try {
    members = await startTwoGroups(dir.path);
    const [group1, group2] = [members.slice(0, 3), members.slice(3)];
    // Objects in group 1, so that the slot that moves is not its only one.
    const stale = await connectTo([group1[0]!.address]);
    const staleLog = await connectTo([group1[1]!.address]);
    for (const name of namesOfGroup(0, 2))
      await untilItWorks(() => stale.create(name, 100), `${name} created in group 1`);
    await untilItWorks(() => stale.create(namesOfGroup(1, 1)[0]!, 100), 'an object created in group 2');
    const v1 = (stale as ShardedSegment).table;
    t.is(v1.version, 1);

    // Version 2 gives one slot of group 1, holding no object, to group 2.
    const moved = namesOfGroup(0, 3)[2]!;
    const slot = slotOf(moved);
    t.true(slot > 0 && slot < 8191, `slot ${slot} lies inside group 1's range`);
    const ranges: SlotRange[] = [
      [0, slot - 1, 1],
      [slot, slot, 2],
      [slot + 1, 8191, 1],
      [8192, 16383, 2],
    ];
    const v2: SlotTable = { version: 2, ranges, groups: v1.groups };
    const install = (group: Member[]) =>
      untilItWorks(async () => {
        const installed = (await Promise.all(group.map((m) => m.install(v2)))).filter((v) => v !== null);
        if (installed.length !== 1 || installed[0] !== 2)
          throw new Error(`installed: ${installed.join(',')}`);
      }, `table version 2 installed by ${group[0]!.id}'s group`);
    // Group 1 first. Until group 2 has it too the groups disagree: group 1 sends the client to group 2, which
    // (at version 1) sends it back with an older table; the client stops there and says so.
    const split = await connectTo([group1[2]!.address]);
    await install(group1);
    const disagree = await t.throwsAsync(split.stat(moved));
    t.true(SegmemError.is(disagree, 'UNAVAILABLE'), String(disagree));
    t.like((disagree as SegmemError).details, { reason: 'MOVED', group: 1, version: 1 });
    t.is((split as ShardedSegment).table.version, 2);
    await install(group2);
    t.is((stale as ShardedSegment).table.version, 1, 'the client still holds version 1');

    // Routed by version 1 to group 1, redirected to group 2, created there.
    const info = await stale.create(moved, 4096);
    t.is(groupOfAddress(info.address), 1, `${moved} lives in group 2's range (address ${info.address})`);
    t.is((stale as ShardedSegment).table.version, 2, 'the client learnt version 2 from the redirect');
    await stale.update(moved, (h) => h.bytes.write('moved'));
    // A fresh client (version 2 from SLOTS) given only group 2's servers finds it there.
    const fresh = await connectTo(group2.map((m) => m.address));
    t.like(await fresh.stat(moved), { address: info.address, version: 2 });
    t.is(await fresh.read(moved, (h) => h.bytes.toString('utf8', 0, 5)), 'moved');
    t.is((await fresh.list('')).filter((o) => o.name === moved).length, 1, 'listed once');

    // A log named into the moved slot: a client still at version 1 appends and reads through the redirect.
    const log = `{${moved}}/events`;
    t.is(slotOf(log), slot);
    t.is((staleLog as ShardedSegment).table.version, 1);
    t.is(await staleLog.log(log).append('first'), 0);
    t.is((staleLog as ShardedSegment).table.version, 2);
    t.deepEqual(await fresh.log(log).appendBatch(['second']), [1]);
    const read: string[] = [];
    for await (const r of staleLog.log(log).read({ from: 0 })) read.push(r.data.toString());
    t.deepEqual(read, ['first', 'second']);
  } finally {
    for (const seg of segs) await seg.close();
    await Promise.all(members.map((m) => m.stop()));
    dir.cleanup();
  }
});

test("a group without a majority fails only its own names, in time; the other group's go on", async (t) => {
  const dir = tempDir();
  let members: Member[] = [];
  const segs: Segment[] = [];
  try {
    members = await startTwoGroups(dir.path);
    const [group1, group2] = [members.slice(0, 3), members.slice(3)];
    const connectTo = async (servers: string[]) => {
      // Delegations off: every acquire goes to the group (a kept grant is used locally during its lease).
      const seg = await untilItWorks(
        () => connect({ servers, sessionTimeoutMs: 3000, delegations: false }),
        `a session through ${servers.join(',')}`,
      );
      segs.push(seg);
      return seg;
    };
    const seg = await connectTo([group2[0]!.address]);
    const [name1, name2] = [namesOfGroup(0, 1)[0]!, namesOfGroup(1, 1)[0]!];
    for (const name of [name1, name2]) {
      await untilItWorks(() => seg.create(name, 4, { ifNotExists: true }), `${name} created`);
      await bump(seg, name, 5);
    }
    // A client that has not opened group 2 yet: it opens it lazily below, while group 2 has no majority.
    const lazy = await connectTo([group1[0]!.address]);
    t.is(await lazy.read(name1, (h) => h.bytes.readUInt32LE(0)), 5);

    await group2[1]!.kill();
    await group2[2]!.kill();
    // Group 2's names fail within the caller's timeout while group 1 keeps serving the same clients.
    const failIn = async (what: string, call: () => Promise<unknown>) => {
      const started = Date.now();
      const err = await t.throwsAsync(call(), undefined, what);
      const waited = Date.now() - started;
      t.true(
        SegmemError.is(err) && (err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT'),
        `${what}: ${err}`,
      );
      t.true(waited < 6000, `${what} failed after ${waited} ms`);
    };
    const before = Date.now();
    let writesMs = 0;
    await Promise.all([
      failIn('a write in group 2 through its open session', () =>
        seg.acquireWrite(name2, { timeoutMs: 1500 }),
      ),
      failIn('a read in group 2 through a session opened now', () =>
        lazy.acquireRead(name2, { timeoutMs: 1500 }),
      ),
      Promise.all([bump(seg, name1, 10), bump(lazy, name1, 10)]).then(() => {
        writesMs = Date.now() - before;
      }),
    ]);
    t.is(await seg.read(name1, (h) => h.bytes.readUInt32LE(0)), 25);
    t.log(`group 1: 20 writes in ${writesMs} ms while group 2's calls were failing`);
    // A list needs every group: it fails rather than leave group 2's names out.
    const listed = await t.throwsAsync(seg.list(''));
    t.true(
      SegmemError.is(listed) && (listed.code === 'UNAVAILABLE' || listed.code === 'TIMEOUT'),
      String(listed),
    );

    // Given group 2's servers first, connect finds group 1 and routes from there.
    const started = Date.now();
    const late = await connectTo([...group2.map((m) => m.address), group1[2]!.address]);
    t.true(Date.now() - started < 15_000, `connected after ${Date.now() - started} ms`);
    t.is(await late.read(name1, (h) => h.bytes.readUInt32LE(0)), 25);
  } finally {
    for (const seg of segs) await seg.close();
    await Promise.all(members.map((m) => m.stop()));
    dir.cleanup();
  }
});
