/**
 * Snapshots without stalling: a frozen, copy-on-write view of the state serialised in slices gives
 * exactly the bytes `snapshot()` gave at the same index while commands keep applying between slices, and
 * a single server's periodic snapshot of a large state leaves the event loop responsive.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import type { Command } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';
import { openLocalLog } from '../src/log/local-log.js';
import { serialiseSnapshot } from '../src/storage/snapshot-serialise.js';
import { loadSnapshotFile } from '../src/storage/snapshots.js';
import { PAGE, workload } from './fixtures/workload.js';

test('a frozen view serialised in slices equals snapshot() at its index, while commands apply between slices', async (t) => {
  for (let seed = 1; seed <= 25; seed++) {
    const { sm, step } = workload(seed);
    for (let i = 0; i < 150; i++) step();
    const expected = sm.snapshot();
    const view = sm.freeze();
    t.is(view.index, sm.appliedIndex);
    let between = 0;
    const bytes = await serialiseSnapshot(view, {
      sliceBytes: 1 + (seed % 7) * 200,
      between: () => {
        // Commands between slices, but not after every one of the thousands of 1-byte slices: the workload's
        // sessions never let go, and a state of thousands of stuck waits is not what this test is about.
        if (between++ % 50 === 0) for (let i = 0; i < 5; i++) step();
      },
    });
    t.true(between > 0, `seed ${seed}: commands applied between slices`);
    t.true(bytes.equals(expected), `seed ${seed}: the serialised view differs from snapshot()`);
    t.is(sm.frozenObjectCount(), 0, `seed ${seed}: the view was released`);
    // The bytes restore to a machine with the same state as at freezing.
    t.is(StateMachine.restore(bytes).snapshot().equals(expected), true);
  }
});

test("a view's metadata (objects' data nil) restores with the objects' bytes given beside to the same state", (t) => {
  for (let seed = 1; seed <= 25; seed++) {
    const { sm, step } = workload(seed);
    for (let i = 0; i < 150; i++) step();
    const expected = sm.snapshot();
    const view = sm.freeze();
    const bytes = new Map<number, Buffer>();
    for (const o of view.objects) if (o.data) bytes.set(o.id, Buffer.from(o.data));
    const meta = Buffer.concat(view.metaParts as Buffer[]);
    for (let i = 0; i < 20; i++) step(); // the view's objects and page versions do not follow
    t.true(StateMachine.restore(meta, {}, bytes).snapshot().equals(expected), `seed ${seed}`);
    t.true(Buffer.concat(view.parts as Buffer[]).equals(expected), `seed ${seed}: parts`);
    view.release();
    if (bytes.size > 0) {
      const [id, data] = [...bytes][0]!;
      t.throws(() => StateMachine.restore(meta, {}, new Map([[id, data.subarray(1)]])), {
        message: /bytes given beside the snapshot/,
      });
      t.throws(() => StateMachine.restore(meta, {}, new Map([[9999, data]])), {
        message: /which the snapshot lacks/,
      });
    }
  }
});

test('copy-on-write: a write to a frozen object copies its bytes once and leaves the view unchanged', (t) => {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
  let index = 0;
  const apply = (cmd: Command) => sm.apply(++index, cmd);
  const sessionId = (
    apply({ op: 'open', timeoutMs: 1000, clientName: null }).result as { value: { sessionId: number } }
  ).value.sessionId;
  let seq = 0;
  const write = (fill: number) => {
    const o = apply({ op: 'acquire', sessionId, seq: ++seq, name: 'a', mode: 'write' });
    const token = (o.result as { value: { granted: { token: number } } }).value.granted.token;
    apply({
      op: 'release',
      sessionId,
      seq: ++seq,
      name: 'a',
      mode: 'write',
      token,
      ranges: [[0, 100]],
      data: Buffer.alloc(100, fill),
    });
  };
  apply({ op: 'create', sessionId, seq: ++seq, name: 'a', size: 2 * PAGE, ifNotExists: false });
  write(1);
  const expected = sm.snapshot();
  const frozenBytes = sm.objectNamed('a')!.data!;
  const view = sm.freeze();
  t.is(sm.frozenObjectCount(), 1);
  t.true(view.parts.includes(frozenBytes), 'the view holds the object bytes by reference');

  write(2);
  const copy = sm.objectNamed('a')!.data!;
  t.not(copy, frozenBytes, 'the first write copied the bytes');
  t.is(frozenBytes[0], 1, 'the frozen bytes are unchanged');
  t.is(copy[0], 2);
  write(3);
  t.is(sm.objectNamed('a')!.data, copy, 'copied once: later writes go to the copy');
  // Deleting and re-creating it does not touch the view either.
  apply({ op: 'delete', sessionId, seq: ++seq, name: 'a' });
  apply({ op: 'create', sessionId, seq: ++seq, name: 'a', size: PAGE, ifNotExists: false });
  t.true(Buffer.concat(view.parts as Buffer[]).equals(expected));

  view.release();
  view.release(); // idempotent
  t.is(sm.frozenObjectCount(), 0);
  write(4);
  const after = sm.objectNamed('a')!.data!;
  write(5);
  t.is(sm.objectNamed('a')!.data, after, 'no copy once released');
});

test('object bytes only a frozen view keeps alive (written away from, deleted) are counted until it is released', (t) => {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
  let index = 0;
  const apply = (cmd: Command) => sm.apply(++index, cmd);
  const sessionId = (
    apply({ op: 'open', timeoutMs: 1000, clientName: null }).result as { value: { sessionId: number } }
  ).value.sessionId;
  let seq = 0;
  const write = (name: string, fill: number) => {
    const o = apply({ op: 'acquire', sessionId, seq: ++seq, name, mode: 'write' });
    const token = (o.result as { value: { granted: { token: number } } }).value.granted.token;
    apply({
      op: 'release',
      sessionId,
      seq: ++seq,
      name,
      mode: 'write',
      token,
      ranges: [[0, 10]],
      data: Buffer.alloc(10, fill),
    });
  };
  for (const name of ['a', 'b', 'c'])
    apply({ op: 'create', sessionId, seq: ++seq, name, size: 2 * PAGE, ifNotExists: false });
  write('a', 1);
  write('b', 1);
  write('c', 1);
  const first = sm.freeze();
  const second = sm.freeze();
  t.is(sm.frozenCopyBytes(), 0, 'nothing copied yet: the view shares the live bytes');
  write('a', 2);
  t.is(sm.frozenCopyBytes(), 2 * PAGE, "a's old bytes live on in the views only");
  write('a', 3);
  t.is(sm.frozenCopyBytes(), 2 * PAGE, 'copied once');
  apply({ op: 'delete', sessionId, seq: ++seq, name: 'b' });
  t.is(sm.frozenCopyBytes(), 4 * PAGE, "b's bytes too, once deleted");
  first.release();
  t.is(sm.frozenCopyBytes(), 4 * PAGE, 'the other view still holds them');
  second.release();
  t.is(sm.frozenCopyBytes(), 0);
  // Without a view, writes and deletes keep nothing alive.
  write('c', 2);
  apply({ op: 'delete', sessionId, seq: ++seq, name: 'c' });
  t.is(sm.frozenCopyBytes(), 0);
});

/**
 * CPU time (ms, 10 ms steps) of this process's main thread, the one running the event loop: what the loop
 * ran, without the time it waited for a CPU. Elsewhere than Linux: the whole process's CPU time.
 */
function loopCpuMs(): number {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    // After "pid (comm) ", field 3 (state) comes first: utime and stime (fields 14, 15) are 11 and 12 on.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_S;
  } catch {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  }
}
/** USER_HZ, the unit of /proc's CPU times: 100 on every Linux build. */
const CLOCK_TICKS_PER_S = 100;

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-snapshot-cow-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

test('a single server snapshot of a large state keeps the event loop responsive and writes keep applying', async (t) => {
  const dir = await tempDir(t);
  const OBJECTS = 24;
  const SIZE = 4 * 1024 * 1024;
  const lines: string[] = [];
  const { create } = await openLocalLog({
    dir,
    walDir: join(dir, 'wal'),
    fsync: 'none',
    pageBytes: PAGE,
    segmentBytes: 2 * OBJECTS * SIZE,
    snapshotEveryEntries: 0,
    snapshotIntervalMs: 0,
    log: (line) => lines.push(line),
  });
  const log = create(() => {});
  t.teardown(() => log.close());
  const sessionId = (
    (await log.propose({ op: 'open', timeoutMs: 60_000, clientName: null })).result as {
      value: { sessionId: number };
    }
  ).value.sessionId;
  let seq = 0;
  const write = async (name: string, data: Buffer) => {
    const o = await log.propose({ op: 'acquire', sessionId, seq: ++seq, name, mode: 'write' });
    const token = (o.result as { value: { granted: { token: number } } }).value.granted.token;
    await log.propose({
      op: 'release',
      sessionId,
      seq: ++seq,
      name,
      mode: 'write',
      token,
      ranges: [[0, data.length]],
      data,
    });
  };
  for (let i = 0; i < OBJECTS; i++) {
    await log.propose({
      op: 'create',
      sessionId,
      seq: ++seq,
      name: `big${i}`,
      size: SIZE,
      ifNotExists: false,
    });
    await write(`big${i}`, randomBytes(SIZE));
  }
  const expected = log.stateMachine.snapshot();

  // A timer that should fire every 5 ms: the longest stretch of the event loop's own CPU time between its
  // firings is how long the loop was held by work. Wall time between firings also counts the time this
  // process waited for a CPU, which on a loaded machine was most of it (gaps of 990 ms in 1000).
  let last = performance.now();
  let lastCpu = loopCpuMs();
  let longest = 0;
  let longestWall = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    const cpu = loopCpuMs();
    longest = Math.max(longest, cpu - lastCpu);
    longestWall = Math.max(longestWall, now - last);
    last = now;
    lastCpu = cpu;
  }, 5);
  let writes = 0;
  const snapshotting = log.snapshot();
  let done = false;
  snapshotting.finally(() => {
    done = true;
  });
  // Writes keep applying (and copy-on-write) while the snapshot is serialised and written.
  while (!done && writes < 50) {
    await write(`big${writes % OBJECTS}`, Buffer.alloc(100, 7));
    writes++;
  }
  await snapshotting;
  clearInterval(ticker);
  t.log(
    `longest timer gap ${longest.toFixed(0)} ms of the loop's CPU (${longestWall.toFixed(0)} ms of wall time); ${writes} writes during the snapshot; ${lines.at(-1)}`,
  );
  // A synchronous snapshot() of this state alone takes about 0.3 to 0.6 s (see bench/snapshot.mjs); the
  // sliced one yields every 4 MiB.
  t.true(longest < 1000, `the event loop was held for ${longest.toFixed(0)} ms of CPU`);
  t.true(writes > 0, 'writes applied while the snapshot was taken');
  t.is(log.stateMachine.frozenObjectCount(), 0);
  // The file holds the state at the snapshot's index, not the writes applied after it.
  const snaps = (await fsp.readdir(join(dir, 'snap'))).filter((f) => f.endsWith('.snap'));
  t.is(snaps.length, 1);
  const loaded = await loadSnapshotFile(join(dir, 'snap', snaps[0]!));
  t.true(loaded.state.snapshot().equals(expected), 'the snapshot file holds the frozen state');
});
