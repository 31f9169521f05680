/**
 * The memory budget (`segmem-server --max-memory`): creating objects and appending to shared logs past it
 * is refused with NO_SPACE, holding another snapshot export with UNAVAILABLE, each naming the budget;
 * nothing changes when refused, and the server keeps serving. Real server processes.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdminSession } from '@segmem/server/internal/cli/admin-client';
import { loadConfigFile, parseMaxMemory } from '@segmem/server/internal/config';
import { cgroupMemoryLimit } from '@segmem/server/internal/memory-limit';
import test from 'ava';
import { connect, SegmemError } from '../src/index.js';
import { converged, startServerProcess, tempDir, withCluster } from './helpers.js';

const MiB = 1024 * 1024;
/** The smallest budget a server takes: 128 MiB of runtime allowance, 128 MiB for data. */
const BUDGET = 256 * MiB;

function budgetError(err: unknown, code: 'NO_SPACE' | 'UNAVAILABLE'): SegmemError {
  if (!SegmemError.is(err) || err.code !== code) throw err;
  return err;
}

test('creating objects past --max-memory is refused with NO_SPACE naming the budget, and nothing changes', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({
    dataDir: dir.path,
    fsync: 'none',
    extra: ['--max-memory', '256MiB', '--metrics', '127.0.0.1:0'],
  });
  const seg = await connect({ servers: [server.address] });
  try {
    let created = 0;
    let refused: SegmemError | null = null;
    // Bounded: 128 MiB of data room holds fewer than 128 objects of 1 MiB.
    while (created < 200) {
      try {
        await seg.create(`o${created}`, MiB);
        created++;
      } catch (err) {
        refused = budgetError(err, 'NO_SPACE');
        break;
      }
    }
    t.truthy(refused, 'a create was refused');
    // 128 MiB of room, less the 16 MiB kept for new sessions.
    t.true(created > 84 && created < 112, `${created} objects of 1 MiB fit`);
    t.like(refused!.details, { budget: 'max-memory', limitBytes: BUDGET });
    t.true((refused!.details!.usedBytes as number) <= BUDGET);
    t.regex(refused!.message, /memory budget full: creating object "o\d+"/);
    // The metrics show the budget and what it counts.
    const metricsAt = /metrics on http:\/\/(\S+)\/metrics/.exec(server.stderr())![1]!;
    const text = await (await fetch(`http://${metricsAt}/metrics`)).text();
    const gauge = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1]);
    t.is(gauge('segmem_memory_limit_bytes'), BUDGET);
    const used = gauge('segmem_memory_used_bytes');
    t.true(used > BUDGET - 18 * MiB && used <= BUDGET - 16 * MiB, `${used} bytes counted`);
    // Nothing changed: the refused object does not exist, the others are all there.
    await t.throwsAsync(seg.stat(`o${created}`), { code: 'NOT_FOUND' });
    t.is((await seg.list('o')).length, created);
    // An object that exists grows nothing: ifNotExists still answers; a delete makes room again.
    t.is((await seg.create('o0', MiB, { ifNotExists: true })).name, 'o0');
    await seg.delete('o0');
    await seg.create(`o${created}`, MiB);
    // Writes into admitted objects are never refused by the budget.
    await seg.update(`o${created}`, (h) => h.bytes.fill(7));
    t.is(await seg.read(`o${created}`, (h) => h.bytes[MiB - 1]), 7);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('appending past --max-memory is refused with NO_SPACE; a log at its retention keeps taking appends', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({
    dataDir: dir.path,
    fsync: 'none',
    extra: ['--max-memory', '256MiB'],
  });
  const seg = await connect({ servers: [server.address] });
  try {
    const rolling = seg.log('rolling', { maxBytes: 4 * MiB });
    const big = seg.log('big', { maxBytes: 1024 * MiB });
    const batch = Array.from({ length: 4 }, () => Buffer.alloc(256 * 1024, 1)); // 1 MiB a batch
    for (let i = 0; i < 8; i++) await rolling.appendBatch(batch);
    let appended = 0;
    let refused: SegmemError | null = null;
    while (appended < 200) {
      try {
        await big.appendBatch(batch);
        appended++;
      } catch (err) {
        refused = budgetError(err, 'NO_SPACE');
        break;
      }
    }
    t.truthy(refused, 'an append was refused');
    t.true(appended > 100 && appended < 128, `${appended} MiB appended`);
    t.like(refused!.details, { budget: 'max-memory', limitBytes: BUDGET });
    t.regex(refused!.message, /appending 4 record\(s\) \(1048576 bytes\) to shared log "big"/);
    // Nothing changed: the log ends where it did.
    let last = -1;
    for await (const r of big.read({ from: appended * 4 - 1 })) last = r.seq;
    t.is(last, appended * 4 - 1);
    // The rolling log drops as much as it takes: still admitted with the budget full.
    const seqs = await rolling.appendBatch(batch);
    t.is(seqs[0], 32);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('snapshot exports past --max-memory are refused with UNAVAILABLE until held ones are dropped', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({
    dataDir: dir.path,
    fsync: 'none',
    extra: ['--max-memory', '256MiB'],
  });
  const seg = await connect({ servers: [server.address] });
  const admin = new AdminSession({ servers: [server.address], timeoutMs: 5000, token: null });
  try {
    // 30 MiB of state: each export is counted at that much, so the budget's 112 MiB of room for data (128
    // less the 16 kept for new sessions) holds two beside it.
    for (let i = 0; i < 30; i++) await seg.create(`o${i}`, MiB);
    const held: number[] = [];
    let refused: SegmemError | null = null;
    for (let i = 0; i < 10 && !refused; i++) {
      try {
        held.push((await admin.call({ type: 'SNAPSHOT' }, 10_000)).id);
      } catch (err) {
        refused = budgetError(err, 'UNAVAILABLE');
      }
    }
    t.is(held.length, 2, 'two exports fit beside 30 MiB of state');
    t.like(refused!.details, { budget: 'max-memory', limitBytes: BUDGET });
    t.regex(refused!.message, /memory budget full: a consolidated snapshot/);
    // The state is still served, and growing it is refused while the exports hold the room.
    await t.throwsAsync(seg.create('more', 32 * MiB), { code: 'NO_SPACE' });
    t.is((await seg.stat('o29')).size, MiB);
    // Ending the session that holds them drops them; the next export fits.
    await admin.close();
    const again = new AdminSession({ servers: [server.address], timeoutMs: 5000, token: null });
    try {
      const made = await again.call({ type: 'SNAPSHOT' }, 10_000);
      t.true(made.bytes > 0);
    } finally {
      await again.close();
    }
  } finally {
    await admin.close();
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('in a 3-member group the leader refuses creates past --max-memory, counting its Raft log and snapshot too', async (t) => {
  await withCluster(
    { extra: () => ['--max-memory', '256MiB', '--snapshot-every-entries', '20'] },
    async ({ cluster, seg }) => {
      // Written objects: the snapshot kept for followers holds their bytes, counted beside the state.
      for (let i = 0; i < 16; i++) {
        await seg.create(`w${i}`, MiB);
        await seg.update(`w${i}`, (h) => h.bytes.fill(i + 1));
      }
      let created = 0;
      let refused: SegmemError | null = null;
      while (created < 200 && !refused) {
        try {
          await seg.create(`o${created}`, MiB);
          created++;
        } catch (err) {
          refused = budgetError(err, 'NO_SPACE');
        }
      }
      t.like(refused?.details, { budget: 'max-memory', limitBytes: BUDGET });
      // 112 MiB of room (128 less the 16 kept for new sessions): 16 written objects count twice (state and
      // the snapshot kept for followers), so about 79 more fit (95 if the Raft side were not counted).
      t.true(created > 64 && created < 88, `${created} more objects of 1 MiB fit`);
      t.log(`${created} more objects of 1 MiB fit`);
      await t.throwsAsync(seg.stat(`o${created}`), { code: 'NOT_FOUND' });
      await converged(cluster);
    },
  );
});

test('the default budget is read from the cgroup v1 or v2 limit of the process', (t) => {
  const files: Record<string, string> = {
    '/proc/self/cgroup': '4:memory:/app\n0::/\n',
    '/sys/fs/cgroup/memory/app/memory.limit_in_bytes': '536870912\n',
  };
  const read = (path: string) => {
    const text = files[path];
    if (text === undefined) throw new Error(`ENOENT ${path}`);
    return text;
  };
  t.deepEqual(cgroupMemoryLimit(read), {
    bytes: 512 * MiB,
    file: '/sys/fs/cgroup/memory/app/memory.limit_in_bytes',
  });
  files['/sys/fs/cgroup/memory/app/memory.limit_in_bytes'] = '9223372036854771712\n';
  t.is(cgroupMemoryLimit(read), null, "v1's no-limit value");
  files['/proc/self/cgroup'] = '0::/svc\n';
  files['/sys/fs/cgroup/svc/memory.max'] = '1073741824\n';
  t.deepEqual(cgroupMemoryLimit(read), { bytes: 1024 * MiB, file: '/sys/fs/cgroup/svc/memory.max' });
  files['/sys/fs/cgroup/svc/memory.max'] = 'max\n';
  t.is(cgroupMemoryLimit(read), null, "v2's max");
});

test('--max-memory and the config file take sizes with binary units or "off", and refuse the rest clearly', (t) => {
  const min = 256 * MiB;
  t.is(parseMaxMemory('--max-memory', '512MiB', min), 512 * MiB);
  t.is(parseMaxMemory('--max-memory', '2G', min), 2048 * MiB);
  t.is(parseMaxMemory('--max-memory', '1.5GiB', min), 1536 * MiB);
  t.is(parseMaxMemory('--max-memory', '268435456', min), min);
  t.is(parseMaxMemory('maxMemory', min, min), min);
  t.is(parseMaxMemory('--max-memory', 'off', min), 'off');
  for (const bad of ['100MiB', '12XB', '-1', '', 'lots', 1.5, null]) {
    const err = t.throws(() => parseMaxMemory('--max-memory', bad, min), { code: 'INVALID_ARGUMENT' });
    t.regex(err!.message, /--max-memory must be a size of at least 256 MiB/);
  }
  const dir = tempDir();
  try {
    const file = join(dir.path, 'segmem.json');
    writeFileSync(file, JSON.stringify({ maxMemory: '1GiB' }));
    t.is(loadConfigFile(file).maxMemory, 1024 * MiB);
    writeFileSync(file, JSON.stringify({ maxMemory: '1 MB' }));
    t.throws(() => loadConfigFile(file), { code: 'INVALID_ARGUMENT', message: /maxMemory must be a size/ });
  } finally {
    dir.cleanup();
  }
});
