/**
 * Moving hash slots between shard groups with real processes: two groups of three servers and a third group
 * added from the config file ("joining": it starts owning no slot); `segmem cluster add-group` spreads the
 * slots over the three while clients hold and wait for objects, a driver stopped half way and a leader
 * killed mid-move are mended by running the command again; afterwards every object is served by exactly one
 * group, with the bytes and version it had.
 */
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { SegmemError, SLOT_COUNT, type SlotTable, slotOf } from '@segmem/protocol';
import { createClusterSecretFile } from '@segmem/server/internal/secret-file';
import ava from 'ava';
import { connect, type Segment } from '../src/index.js';
import {
  consecutivePorts,
  runNode,
  type ServerProcess,
  segmemBin,
  startServerProcess,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

/** Seven servers at once load a 2-core machine enough: these tests run alone. */
const test = ava.serial;

const RANGE = 32 * 1024 * 1024;
const OBJECTS_PER_GROUP = 30;

/**
 * `n` consecutive free ports below the ephemeral range: a machine whose tests leave many connections in
 * TIME-WAIT can have no run of free ports left inside it.
 */
async function quietPorts(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await Promise.all(
      Array.from({ length: n }, (_, i) => {
        const s = createServer();
        return new Promise<boolean>((r) => {
          s.once('error', () => r(false));
          s.listen(base + i, '127.0.0.1', () => s.close(() => r(true)));
        });
      }),
    );
    if (free.every(Boolean)) return base;
  }
  return consecutivePorts(n);
}

/** The owner of `slot` in `table`. */
function ownerIn(table: SlotTable, slot: number): number {
  return table.ranges.find(([f, l]) => slot >= f && slot <= l)![2];
}

/** `count` names whose slots group 1 (index 0) or 2 (index 1) owns in the first table of two groups. */
function namesOfGroup(index: number, count: number, prefix: string): string[] {
  const names: string[] = [];
  for (let i = 0; names.length < count; i++) {
    const name = `${prefix}-${i}`;
    if (Math.floor((slotOf(name) * 2) / SLOT_COUNT) === index) names.push(name);
  }
  return names;
}

test('add-group moves slots while clients work; a stopped driver and a killed leader are mended by a rerun', async (t) => {
  const dir = tempDir();
  const port = await quietPorts(7);
  const ids = ['s1', 's2', 's3', 's4', 's5', 's6', 's7'];
  const addressOf = (id: string) => `127.0.0.1:${port + ids.indexOf(id)}`;
  const secretFile = join(dir.path, 'cluster-secret');
  createClusterSecretFile(secretFile);
  const config = join(dir.path, 'segmem.json');
  const members = (group: string[]) => Object.fromEntries(group.map((id) => [id, addressOf(id)]));
  const groupIds: Record<number, string[]> = { 1: ids.slice(0, 3), 2: ids.slice(3, 6), 3: ['s7'] };
  writeFileSync(
    config,
    JSON.stringify({
      segmentBytes: 3 * RANGE,
      fsync: 'none',
      clusterSecretFile: secretFile,
      groups: [
        { id: 1, start: 0, bytes: RANGE, members: members(groupIds[1]!) },
        { id: 2, start: RANGE, bytes: RANGE, members: members(groupIds[2]!) },
        { id: 3, start: 2 * RANGE, bytes: RANGE, members: members(groupIds[3]!), joining: true },
      ],
    }),
  );
  const servers = new Map<string, ServerProcess>();
  const segs: Segment[] = [];
  const env = { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' };
  const driver = (stopAfter: string | null, onLine?: (line: string) => void) =>
    runNode(segmemBin, ['cluster', 'add-group', '--config', config, '--group', '3', '--timeout', '15000'], {
      env: { ...env, SEGMEM_REBALANCE_STOP_AFTER: stopAfter ?? '' },
      timeoutMs: 180_000,
      ...(onLine ? { onLine } : {}),
    });
  try {
    await Promise.all(
      ids.map(async (id) =>
        servers.set(
          id,
          await startServerProcess({
            id,
            dataDir: join(dir.path, id),
            listen: addressOf(id),
            extra: ['--config', config],
          }),
        ),
      ),
    );
    const connectTo = async (group: number) => {
      const seg = await connect({
        servers: groupIds[group]!.map(addressOf),
        sessionTimeoutMs: 5000,
        delegations: false,
      });
      segs.push(seg);
      return seg;
    };
    const clients: Record<number, Segment> = {
      1: await connectTo(1),
      2: await connectTo(2),
      3: await connectTo(3),
    };

    // The joining group owns no slot: whatever it is asked is redirected, and nothing is made.
    const redirected = await untilItWorks(async () => {
      const err = await clients[3]!.create('anything', 10).then(
        () => new Error('group 3 created a name while it owns no slot'),
        (e: unknown) => e,
      );
      if (SegmemError.is(err) && err.details?.reason === 'MOVED') return err;
      if (SegmemError.is(err) && err.code === 'UNAVAILABLE') throw err; // no leader yet
      return err;
    }, 'group 3 to answer');
    t.like((redirected as SegmemError).details, { reason: 'MOVED' });

    // Objects with known bytes and versions in both groups.
    const expected = new Map<string, { bytes: string; version: number }>();
    for (const group of [1, 2]) {
      const seg = clients[group]!;
      for (const [i, name] of namesOfGroup(group - 1, OBJECTS_PER_GROUP, `g${group}`).entries()) {
        await untilItWorks(() => seg.create(name, 5000 + i * 100), `${name} created`);
        for (let v = 0; v <= i % 3; v++) await seg.update(name, (h) => h.bytes.write(`${name} v${v}`, 4096));
        const info = await seg.stat(name);
        expected.set(name, { bytes: `${name} v${i % 3}`, version: info.version });
      }
    }
    // A shared log in group 1's slots that moves (slots 5461..8191 go to group 2).
    const logName = namesOfGroup(0, 200, 'log').find((n) => slotOf(n) >= 5461)!;
    const log = clients[1]!.log(logName);
    await untilItWorks(() => log.appendBatch(['one', 'two', 'three']), 'the log appended');

    const movingOf1 = [...expected.keys()].filter((n) => n.startsWith('g1') && slotOf(n) >= 5461);
    t.true(movingOf1.length >= 3, `${movingOf1.length} objects of group 1 move`);
    const [heldName, timedName, waitingName] = movingOf1 as [string, string, string];
    // A holder of a moving object before the freeze: the move waits for its release.
    const holder = await clients[1]!.acquireWrite(heldName);

    // The driver stopped after the freeze (as if it crashed there).
    const first = await driver('freeze').done;
    t.is(first.code, 1, first.stderr);
    t.regex(first.stderr, /stopped after the freeze step/);

    // Frozen: a write acquire waits, bounded by its own timeout, and does not fail otherwise.
    const timedOut = await t.throwsAsync(clients[1]!.acquireWrite(timedName, { timeoutMs: 1000 }));
    t.is((timedOut as SegmemError).code, 'TIMEOUT', String(timedOut));
    // One started now waits through the move and is then redirected.
    const waiting = clients[1]!.acquireWrite(waitingName, { timeoutMs: 120_000 }).then(
      () => null,
      (err: unknown) => err,
    );

    // Rerun, stopped after the copy: it waits for the holder, which writes and releases meanwhile.
    let frozenSeen = false;
    const second = driver('copy', (line) => {
      if (/: frozen$/.test(line)) frozenSeen = true;
    });
    await waitFor(() => frozenSeen, 'the resumed driver to freeze again', 60_000);
    holder.bytes.write('written while frozen', 4096);
    await holder.release();
    expected.set(heldName, { bytes: 'written while frozen', version: expected.get(heldName)!.version + 1 });
    const secondDone = await second.done;
    t.is(secondDone.code, 1, secondDone.stderr);
    t.regex(secondDone.stderr, /stopped after the copy step/);
    t.regex(secondDone.stdout, /copied \d+ objects/);

    // Group 1's leader (the source) dies mid-move; a rerun finishes on the new leader.
    const status = JSON.parse(
      (
        await runNode(segmemBin, ['status', '--json', '--servers', groupIds[1]!.map(addressOf).join(',')], {
          env,
        }).done
      ).stdout,
    );
    const leader = status.leader as string;
    t.true(groupIds[1]!.includes(leader));
    await servers.get(leader)!.kill();
    const third = await driver(null).done;
    t.is(third.code, 0, `${third.stdout}${third.stderr}`);
    t.log(third.stdout.trim());

    // The waiting acquire heard MOVED: the object now lives in group 2.
    const redirect = await waiting;
    t.true(SegmemError.is(redirect), String(redirect));
    t.is((redirect as SegmemError).code, 'UNAVAILABLE');
    t.like((redirect as SegmemError).details, { reason: 'MOVED', group: 2 });

    // Every object is served by exactly one group, with its bytes and version; the others redirect.
    const slots = await runNode(segmemBin, ['cluster', 'slots', '--json', '--servers', addressOf('s7')], {
      env,
    }).done;
    const table = JSON.parse(slots.stdout) as {
      version: number;
      ranges: { first: number; last: number; group: number }[];
    };
    const finalTable: SlotTable = {
      version: table.version,
      ranges: table.ranges.map((r) => [r.first, r.last, r.group]),
      groups: [],
    };
    const spread = new Map<number, number>();
    for (const [name, want] of expected) {
      const owner = ownerIn(finalTable, slotOf(name));
      spread.set(owner, (spread.get(owner) ?? 0) + 1);
      const seg = clients[owner]!;
      const info = await untilItWorks(() => seg.stat(name), `${name} in group ${owner}`);
      t.is(info.version, want.version, `${name}'s version`);
      t.true(
        info.address >= (owner - 1) * RANGE && info.address < owner * RANGE,
        `${name} in group ${owner}'s range`,
      );
      const bytes = await seg.read(name, (h) => h.bytes.subarray(4096, 4096 + want.bytes.length).toString());
      t.is(bytes, want.bytes, `${name}'s bytes`);
      for (const other of [1, 2, 3].filter((g) => g !== owner)) {
        const err = await t.throwsAsync(clients[other]!.stat(name));
        t.like(
          (err as SegmemError).details,
          { reason: 'MOVED', group: owner },
          `${name} through group ${other}`,
        );
      }
    }
    t.is(spread.size, 3, 'every group serves objects');
    t.log(
      `objects per group: ${[...spread]
        .sort()
        .map(([g, n]) => `group ${g}: ${n}`)
        .join(', ')}`,
    );
    // The moved log, with its records, in group 2.
    const records: string[] = [];
    for await (const r of clients[2]!.log(logName).read({ from: 0 })) records.push(r.data.toString());
    t.deepEqual(records, ['one', 'two', 'three']);
    // An even spread: a rerun has nothing left to move.
    const again = await driver(null).done;
    t.is(again.code, 0, again.stderr);
    t.regex(again.stdout, /no slot to move/);
  } finally {
    for (const seg of segs) await seg.close().catch(() => {});
    for (const server of servers.values()) await server.stop().catch(() => {});
    dir.cleanup();
  }
});

test('a move the target has no room for changes nothing (NO_SPACE naming it); remove-group drains a group', async (t) => {
  const dir = tempDir();
  const port = await quietPorts(2);
  const addressOf = (i: number) => `127.0.0.1:${port + i}`;
  const config = join(dir.path, 'segmem.json');
  const SMALL = 64 * 4096;
  writeFileSync(
    config,
    JSON.stringify({
      segmentBytes: RANGE + SMALL,
      fsync: 'none',
      groups: [
        { id: 1, start: 0, bytes: RANGE, members: { s1: addressOf(0) } },
        { id: 2, start: RANGE, bytes: SMALL, members: { s2: addressOf(1) } },
      ],
    }),
  );
  const env = { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' };
  const servers: ServerProcess[] = [];
  const segs: Segment[] = [];
  try {
    for (const [i, id] of ['s1', 's2'].entries()) {
      servers.push(
        await startServerProcess({
          id,
          dataDir: join(dir.path, id),
          listen: addressOf(i),
          extra: ['--config', config],
        }),
      );
    }
    const one = await connect({ servers: [addressOf(0)], delegations: false });
    const two = await connect({ servers: [addressOf(1)], delegations: false });
    segs.push(one, two);
    // 100 KiB objects in slots 0..4095 (group 1): 400 KiB, more than group 2's 256 KiB.
    const big = namesOfGroup(0, 200, 'big')
      .filter((n) => slotOf(n) < 4096)
      .slice(0, 4);
    for (const name of big) {
      await untilItWorks(() => one.create(name, 100 * 1024), `${name} created`);
      await one.update(name, (h) => h.bytes.write(name));
    }
    const small = namesOfGroup(1, 3, 'small');
    for (const name of small) {
      await untilItWorks(() => two.create(name, 1000), `${name} created`);
      await two.update(name, (h) => h.bytes.write(name));
    }
    const refused = await runNode(
      segmemBin,
      ['cluster', 'move-slots', '--config', config, '--slots', '0-4095', '--group', '2'],
      { env, timeoutMs: 60_000 },
    ).done;
    t.is(refused.code, 1);
    t.regex(
      refused.stderr,
      /^segmem: group 2 has .* free; the 4 objects of slots 0-4095 in group 1 take .*: nothing was moved \(NO_SPACE\)\n$/,
    );
    // Nothing changed: group 1 still serves and takes changes there (nothing stayed frozen).
    for (const name of big)
      t.is(await one.read(name, (h) => h.bytes.subarray(0, name.length).toString()), name);
    await one.create(namesOfGroup(0, 400, 'more').find((n) => slotOf(n) < 4096)!, 10);
    const slots = JSON.parse(
      (await runNode(segmemBin, ['cluster', 'slots', '--json', '--servers', addressOf(0)], { env }).done)
        .stdout,
    );
    t.is(slots.version, 1);

    // remove-group 2: its slots and objects go to group 1, which then owns every slot.
    const removed = await runNode(
      segmemBin,
      ['cluster', 'remove-group', '--config', config, '--group', '2'],
      {
        env,
        timeoutMs: 60_000,
      },
    ).done;
    t.is(removed.code, 0, removed.stderr);
    t.regex(removed.stdout, /group 1: 16384 slots/);
    for (const name of small) {
      t.is(await one.read(name, (h) => h.bytes.subarray(0, name.length).toString()), name);
      t.like(((await t.throwsAsync(two.stat(name))) as SegmemError).details, { reason: 'MOVED', group: 1 });
    }
  } finally {
    for (const seg of segs) await seg.close().catch(() => {});
    for (const server of servers) await server.stop().catch(() => {});
    dir.cleanup();
  }
});
