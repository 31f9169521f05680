// Shard groups: what routing by hash slot costs, the CPU one operation takes, and capacity by group count.
//
//   node bench/sharding.mjs             # after `npx tsc -b`; about 4 min; rewrites the "Shard groups" section
//                                       # of docs/benchmarks.md
//   node bench/sharding.mjs --no-docs   # prints the tables only
//   --window-ms N                       # measuring window per run (default 2000, 500..10000)
//   --only routing,cpu,migration,barrier,capacity   # a subset (leaves docs/benchmarks.md alone)
//
// Every cluster is started with `segmem up --groups G --replicas R` (servers in their own processes on
// 127.0.0.1, fsync "batch", data in a temporary directory), and the load runs in this process through the
// client library:
//
// 1. Routing overhead. One client on a cluster of one group, and one on a cluster of two groups (a sharded
//    client: every call is routed by the name's slot), both with one server per group. The read cycle (a
//    kept read grant: acquireRead, read a byte, release, no message) and the write cycle (acquireWrite, write
//    4 bytes, release: one commit) on objects of group 1, timed op by op, the two clusters alternated twice.
// 2. CPU per operation. 8 writers (one session each) cycle on their own objects, spread over every group, on
//    1, 2 and 3 groups of 3 servers: the servers' CPU seconds (user + system, from /proc) over the window,
//    per acknowledged write. A 2-CPU machine cannot show throughput growing with the group count (the
//    servers of every group share the same two CPUs); the CPU per operation is what lets it be read off.
// 3. Slot migration. Two groups of 3 servers; group 1 holds 64 MiB in 256 KiB objects under the slots that move;
//    `segmem cluster move-slots` moves a quarter of the slots (those objects) to group 2 while 4 writers cycle
//    on objects of slots that stay: the driver's copy rate (MiB/s), and the writers' p50/p99 before and during.
// 4. Snapshot barrier. Two groups of 3 servers, 4 writers (objects in both groups) and 16 MiB of objects;
//    `segmem snapshot --config --out` 10 times, one after the other: how long each cut holds writes back,
//    seen by the writers (the longest write cycle that overlapped each cut), and their p50/p99 during cuts.
// 5. Capacity. With a fixed range per group (64 MiB), objects of 1 MiB are created under names spread over
//    the slots until every group answers NO_SPACE: the bytes placed grow with the group count.
//
// Bounded: loops by count and time, at most 6 min in all; every process started is stopped and the temp
// dirs removed at the end, also on an error or Ctrl-C.
import { execFile, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { connect } from '@segmem/client';
import { log, parseArgs } from './lib/cli.mjs';
import { writeDocsSection } from './lib/docs.mjs';
import {
  addCleanup,
  cleanupSync,
  installCleanupHandlers,
  makeTempDir,
  processCpuSeconds,
  ROOT_DIR,
  spawnUntilReady,
  stopChild,
} from './lib/procs.mjs';
import { fmtInt, fmtNum, fmtUs, markdownTable, percentile, textTable } from './lib/stats.mjs';

const execFileAsync = promisify(execFile);
const SEGMEM = join(ROOT_DIR, 'packages/server/bin/segmem.mjs');
const MAX_RUN_MS = 360_000;
const MAX_OPS = 2_000_000;
const WRITERS = 8;
const RANGE_BYTES = 64 * 1024 * 1024;
const MIGRATION_BYTES = 64 * 1024 * 1024;
const MIGRATION_OBJECT = 256 * 1024;
const MIGRATION_SLOTS = [0, 4095];
const CAPACITY_OBJECT = 1024 * 1024;
const SECTION_START = '<!-- bench:sharding:start -->';
const SECTION_END = '<!-- bench:sharding:end -->';

let windowMs = 2000;
let writeDocs = true;
let only = null;
parseArgs(process.argv.slice(2), import.meta.url, (opt, value, list) => {
  if (opt === '--no-docs') writeDocs = false;
  else if (opt === '--only') {
    only = new Set(list());
    writeDocs = false;
  } else if (opt === '--window-ms') {
    windowMs = Number(value());
    if (!Number.isInteger(windowMs) || windowMs < 500 || windowMs > 10_000)
      throw new Error('--window-ms takes an integer from 500 to 10000');
  } else return false;
});

installCleanupHandlers();
const started = performance.now();
const overdue = () => performance.now() - started > MAX_RUN_MS;

/** `segmem up --groups G --replicas R`: resolves with the servers' addresses and pids once they serve. */
async function up(groups, replicas, segmentBytes) {
  const dir = makeTempDir('segmem-bench-sharding-');
  const args = [
    'up',
    '--groups',
    String(groups),
    '--replicas',
    String(replicas),
    '--dir',
    dir,
    '--fsync',
    'batch',
    '--port',
    String(await freePorts(groups * replicas)),
  ];
  if (segmentBytes) args.push('--segment-bytes', String(segmentBytes));
  const { child, match } = await spawnUntilReady(SEGMEM, args, {
    ready: /^SEGMEM_SERVERS=(.+)$/,
    timeoutMs: 60_000,
    name: `segmem up --groups ${groups}`,
  });
  const servers = match[1].split(',');
  const pids = execFileSync('ps', ['-o', 'pid=', '--ppid', String(child.pid)], { encoding: 'utf8' })
    .split('\n')
    .map((s) => Number(s.trim()))
    .filter((n) => n > 0);
  const stop = async () => stopChild(child, 15_000);
  // On an error or Ctrl-C the servers go too: `segmem up` itself is killed then, and cannot stop them.
  addCleanup(() => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
  return { servers, pids, stop, config: join(dir, 'segmem.json') };
}

/** The first of `n` consecutive free loopback ports, below the ephemeral range. */
async function freePorts(n) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await Promise.all(
      Array.from(
        { length: n },
        (_, i) =>
          new Promise((resolve) => {
            const s = createServer();
            s.once('error', () => resolve(false));
            s.listen(base + i, '127.0.0.1', () => s.close(() => resolve(true)));
          }),
      ),
    );
    if (free.every(Boolean)) return base;
  }
  throw new Error(`no ${n} consecutive free ports found`);
}

/** Names of `count` objects whose slots group `index` (0-based) of `groups` owns, from the slot table's split. */
async function namesOf(seg, index, count, prefix) {
  const { slotOf, ownerOf } = await import('@segmem/protocol');
  const table = seg.table;
  const names = [];
  for (let i = 0; names.length < count && i < 1_000_000; i++) {
    const name = `${prefix}-${i}`;
    const owner = table ? ownerOf(table, slotOf(name)) : 0;
    const ids = table ? table.groups.map((g) => g.id).sort((a, b) => a - b) : [0];
    if (owner === ids[index]) names.push(name);
  }
  return names;
}

async function readCycles(seg, name, ms) {
  const times = [];
  const end = performance.now() + ms;
  while (performance.now() < end && times.length < MAX_OPS) {
    const t0 = performance.now();
    const h = await seg.acquireRead(name);
    h.bytes[0];
    await h.release();
    times.push((performance.now() - t0) * 1000);
  }
  return times;
}

async function writeCycles(seg, name, ms) {
  const times = [];
  const end = performance.now() + ms;
  while (performance.now() < end && times.length < MAX_OPS) {
    const t0 = performance.now();
    const h = await seg.acquireWrite(name);
    h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1, 0);
    await h.release();
    times.push((performance.now() - t0) * 1000);
  }
  return times;
}

const sorted = (a) => Float64Array.from(a).sort();

async function routingOverhead() {
  log('routing: starting a 1-group and a 2-group cluster (one server per group)');
  const one = await up(1, 1);
  const two = await up(2, 1);
  const segOne = await connect({ servers: one.servers });
  const segTwo = await connect({ servers: two.servers });
  const [readOne] = await namesOf(segOne, 0, 1, 'r');
  const [readTwo] = await namesOf(segTwo, 0, 1, 'r');
  const [writeOne] = await namesOf(segOne, 0, 1, 'w');
  const [writeTwo] = await namesOf(segTwo, 0, 1, 'w');
  for (const [seg, names] of [
    [segOne, [readOne, writeOne]],
    [segTwo, [readTwo, writeTwo]],
  ])
    for (const n of names) await seg.create(n, 4096, { ifNotExists: true });
  const runs = { read: [[], []], write: [[], []] };
  for (let round = 0; round < 2 && !overdue(); round++) {
    for (const [i, seg, r, w] of [
      [0, segOne, readOne, writeOne],
      [1, segTwo, readTwo, writeTwo],
    ]) {
      await readCycles(seg, r, 200); // warm-up: the kept grant
      for (const x of await readCycles(seg, r, windowMs)) runs.read[i].push(x);
      await writeCycles(seg, w, 200);
      for (const x of await writeCycles(seg, w, windowMs)) runs.write[i].push(x);
      log(`routing: round ${round + 1}, ${i === 0 ? 'one group' : 'two groups'} done`);
    }
  }
  await segOne.close();
  await segTwo.close();
  await one.stop();
  await two.stop();
  const rows = [];
  for (const kind of ['read', 'write']) {
    const [a, b] = runs[kind].map(sorted);
    const secs = (windowMs * 2) / 1000;
    rows.push({
      cycle: kind === 'read' ? 'read cycle (kept grant)' : 'write cycle (commit)',
      p50a: fmtUs(percentile(a, 50)),
      p50b: fmtUs(percentile(b, 50)),
      p99a: fmtUs(percentile(a, 99)),
      p99b: fmtUs(percentile(b, 99)),
      opsA: fmtInt(a.length / secs),
      opsB: fmtInt(b.length / secs),
      overhead: `${fmtNum((percentile(b, 50) / percentile(a, 50) - 1) * 100)} %`,
    });
  }
  return rows;
}

async function cpuPerOp(groups) {
  log(`cpu: ${groups} group(s) of 3 servers, ${WRITERS} writers`);
  const cluster = await up(groups, 3);
  const segs = [];
  for (let i = 0; i < WRITERS; i++) segs.push(await connect({ servers: cluster.servers }));
  const names = [];
  for (let i = 0; i < WRITERS; i++) {
    const [name] = await namesOf(segs[i], i % groups, 1, `cpu-${i}`);
    await segs[i].create(name, 4096, { ifNotExists: true });
    names.push(name);
  }
  await Promise.all(segs.map((s, i) => writeCycles(s, names[i], 300)));
  const cpu0 = cluster.pids.reduce((n, pid) => n + processCpuSeconds(pid), 0);
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  const done = await Promise.all(segs.map((s, i) => writeCycles(s, names[i], windowMs)));
  const secs = (performance.now() - t0) / 1000;
  const cpu = cluster.pids.reduce((n, pid) => n + processCpuSeconds(pid), 0) - cpu0;
  const self = process.cpuUsage(self0);
  const ops = done.reduce((n, d) => n + d.length, 0);
  const all = sorted(done.flat());
  for (const s of segs) await s.close();
  await cluster.stop();
  return {
    groups: String(groups),
    servers: String(cluster.pids.length),
    ops: fmtInt(ops / secs),
    p50: fmtUs(percentile(all, 50)),
    p99: fmtUs(percentile(all, 99)),
    serverCpu: fmtNum(cpu / secs, 2),
    perOp: fmtUs((cpu / ops) * 1e6),
    clientPerOp: fmtUs((self.user + self.system) / ops),
  };
}

async function migration() {
  log('migration: 2 groups of 3 servers, 64 MiB to move');
  const { slotOf } = await import('@segmem/protocol');
  const cluster = await up(2, 3);
  const seg = await connect({ servers: cluster.servers });
  const moving = (name) => slotOf(name) >= MIGRATION_SLOTS[0] && slotOf(name) <= MIGRATION_SLOTS[1];
  let placed = 0;
  for (let i = 0; placed < MIGRATION_BYTES && i < 100_000; i++) {
    const name = `move-${i}`;
    if (!moving(name)) continue;
    await seg.create(name, MIGRATION_OBJECT);
    const h = await seg.acquireWrite(name);
    h.bytes.fill(i & 0xff);
    await h.release();
    placed += MIGRATION_OBJECT;
  }
  const writers = [];
  for (let i = 0; writers.length < 4; i++) {
    const name = `stay-${i}`;
    if (moving(name) || slotOf(name) >= 8192) continue; // group 1, slots that stay
    const w = await connect({ servers: cluster.servers });
    await w.create(name, 4096, { ifNotExists: true });
    writers.push({ seg: w, name });
  }
  const before = sorted((await Promise.all(writers.map((w) => writeCycles(w.seg, w.name, windowMs)))).flat());
  let moveDone = false;
  const during = [];
  const load = Promise.all(
    writers.map(async (w) => {
      while (!moveDone && !overdue()) for (const x of await writeCycles(w.seg, w.name, 100)) during.push(x);
    }),
  );
  const t0 = performance.now();
  // Asynchronously: the writers run in this process meanwhile.
  const { stdout: out } = await execFileAsync(
    process.execPath,
    [
      SEGMEM,
      'cluster',
      'move-slots',
      '--config',
      cluster.config,
      '--slots',
      MIGRATION_SLOTS.join('-'),
      '--group',
      '2',
    ],
    { encoding: 'utf8', env: { ...process.env, SEGMEM_SERVERS: '' }, timeout: 120_000 },
  );
  const seconds = (performance.now() - t0) / 1000;
  moveDone = true;
  await load;
  const rate = /done, (\d+) objects, .*? in ([\d.]+) s \(([\d.]+) MiB\/s\)/.exec(out);
  const duringSorted = sorted(during);
  for (const w of writers) await w.seg.close();
  await seg.close();
  await cluster.stop();
  return {
    moved: `${fmtInt(placed / 1024 / 1024)} MiB in ${rate ? rate[1] : '?'} objects`,
    command: `${fmtNum(seconds)} s`,
    rate: rate ? `${rate[3]} MiB/s` : '?',
    p50Before: fmtUs(percentile(before, 50)),
    p99Before: fmtUs(percentile(before, 99)),
    p50During: fmtUs(percentile(duringSorted, 50)),
    p99During: fmtUs(percentile(duringSorted, 99)),
    ratio: `${fmtNum(percentile(duringSorted, 99) / percentile(before, 99), 2)}×`,
  };
}

/** Write cycles with when each started and ended (ms, this process's clock), for overlaps with a window. */
async function timedWriteCycles(seg, name, until) {
  const out = [];
  while (!until() && out.length < MAX_OPS) {
    const t0 = performance.now();
    const h = await seg.acquireWrite(name);
    h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1, 0);
    await h.release();
    out.push([t0, performance.now()]);
  }
  return out;
}

async function barrier() {
  log('barrier: 2 groups of 3 servers, 4 writers, 10 cluster snapshots');
  const cluster = await up(2, 3);
  const seg = await connect({ servers: cluster.servers });
  for (let i = 0; i < 64; i++) {
    const name = `content-${i}`;
    await seg.create(name, MIGRATION_OBJECT, { ifNotExists: true });
    const h = await seg.acquireWrite(name);
    h.bytes.fill(i);
    await h.release();
  }
  const writers = [];
  for (let g = 0; g < 2; g++) {
    for (const name of await namesOf(seg, g, 2, `barrier-${g}`)) {
      const w = await connect({ servers: cluster.servers });
      await w.create(name, 4096, { ifNotExists: true });
      writers.push({ seg: w, name });
    }
  }
  let done = false;
  const load = Promise.all(writers.map((w) => timedWriteCycles(w.seg, w.name, () => done || overdue())));
  await new Promise((r) => setTimeout(r, 500));
  const cuts = [];
  const dir = makeTempDir('segmem-bench-cut-');
  for (let i = 0; i < 10 && !overdue(); i++) {
    const t0 = performance.now();
    await execFileAsync(
      process.execPath,
      [SEGMEM, 'snapshot', '--config', cluster.config, '--out', join(dir, `cut-${i}.segsnap`)],
      { encoding: 'utf8', env: { ...process.env, SEGMEM_SERVERS: '' }, timeout: 60_000 },
    );
    cuts.push([t0, performance.now()]);
    await new Promise((r) => setTimeout(r, 200));
  }
  done = true;
  const cycles = (await load).flat();
  const overlapping = (cut) => cycles.filter(([a, b]) => a < cut[1] && b > cut[0]);
  const stalls = sorted(
    cuts.map((cut) => overlapping(cut).reduce((m, [a, b]) => Math.max(m, (b - a) * 1000), 0)),
  );
  const during = sorted(cuts.flatMap((cut) => overlapping(cut).map(([a, b]) => (b - a) * 1000)));
  const outside = sorted(
    cycles.filter(([a, b]) => !cuts.some((cut) => a < cut[1] && b > cut[0])).map(([a, b]) => (b - a) * 1000),
  );
  const cutMs = sorted(cuts.map(([a, b]) => b - a));
  for (const w of writers) await w.seg.close();
  await seg.close();
  await cluster.stop();
  return {
    cuts: String(cuts.length),
    cutMs: `${fmtInt(percentile(cutMs, 50))} ms`,
    stallP50: fmtUs(percentile(stalls, 50)),
    stallP99: fmtUs(percentile(stalls, 99)),
    outsideP50: fmtUs(percentile(outside, 50)),
    outsideP99: fmtUs(percentile(outside, 99)),
    duringP50: fmtUs(percentile(during, 50)),
    duringP99: fmtUs(percentile(during, 99)),
  };
}

async function capacity(groups) {
  log(`capacity: ${groups} group(s) of ${RANGE_BYTES / 1024 / 1024} MiB`);
  const cluster = await up(groups, 1, groups * RANGE_BYTES);
  const seg = await connect({ servers: cluster.servers });
  let placed = 0;
  const full = new Set();
  for (let i = 0; full.size < groups && i < 10_000 && !overdue(); i++) {
    const name = `cap-${i}`;
    try {
      await seg.create(name, CAPACITY_OBJECT);
      placed += CAPACITY_OBJECT;
    } catch (err) {
      if (err?.code !== 'NO_SPACE') throw err;
      full.add(/^group (\d+)/.exec(err.message)?.[1] ?? 'the one group');
    }
  }
  await seg.close();
  await cluster.stop();
  return {
    groups: String(groups),
    segment: `${(groups * RANGE_BYTES) / 1024 / 1024} MiB`,
    placed: `${fmtInt(placed / 1024 / 1024)} MiB`,
    full: String(full.size),
  };
}

try {
  const wanted = (part) => (only === null || only.has(part)) && !overdue();
  const routing = wanted('routing') ? await routingOverhead() : [];
  const cpuRows = [];
  for (const g of [1, 2, 3]) if (wanted('cpu')) cpuRows.push(await cpuPerOp(g));
  const moveRows = wanted('migration') ? [await migration()] : [];
  const barrierRows = wanted('barrier') ? [await barrier()] : [];
  const capRows = [];
  for (const g of [1, 2, 3]) if (wanted('capacity')) capRows.push(await capacity(g));
  const routingCols = [
    { key: 'cycle', title: 'cycle, 1 client', align: 'left' },
    { key: 'p50a', title: 'p50 µs, 1 group' },
    { key: 'p50b', title: 'p50 µs, 2 groups' },
    { key: 'p99a', title: 'p99 µs, 1 group' },
    { key: 'p99b', title: 'p99 µs, 2 groups' },
    { key: 'opsA', title: 'ops/s, 1 group' },
    { key: 'opsB', title: 'ops/s, 2 groups' },
    { key: 'overhead', title: 'p50 overhead' },
  ];
  const cpuCols = [
    { key: 'groups', title: 'groups' },
    { key: 'servers', title: 'servers' },
    { key: 'ops', title: `writes/s (${WRITERS} writers)` },
    { key: 'p50', title: 'p50 µs' },
    { key: 'p99', title: 'p99 µs' },
    { key: 'serverCpu', title: 'server CPUs busy' },
    { key: 'perOp', title: 'server CPU µs per write' },
    { key: 'clientPerOp', title: 'client CPU µs per write' },
  ];
  const moveCols = [
    { key: 'moved', title: 'moved', align: 'left' },
    { key: 'command', title: 'move-slots took' },
    { key: 'rate', title: 'copy rate' },
    { key: 'p50Before', title: 'writer p50 µs before' },
    { key: 'p99Before', title: 'writer p99 µs before' },
    { key: 'p50During', title: 'p50 µs during' },
    { key: 'p99During', title: 'p99 µs during' },
    { key: 'ratio', title: 'p99 during / before' },
  ];
  const barrierCols = [
    { key: 'cuts', title: 'cuts' },
    { key: 'cutMs', title: 'snapshot command p50' },
    { key: 'stallP50', title: 'writes held µs p50' },
    { key: 'stallP99', title: 'writes held µs p99' },
    { key: 'outsideP50', title: 'write p50 µs, no cut' },
    { key: 'outsideP99', title: 'write p99 µs, no cut' },
    { key: 'duringP50', title: 'write p50 µs, during cuts' },
    { key: 'duringP99', title: 'write p99 µs, during cuts' },
  ];
  const capCols = [
    { key: 'groups', title: 'groups' },
    { key: 'segment', title: 'segment (64 MiB per group)' },
    { key: 'placed', title: 'placed in 1 MiB objects' },
    { key: 'full', title: 'groups answering NO_SPACE' },
  ];
  process.stdout.write(
    `\nRouting overhead\n${textTable(routingCols, routing)}\n\nCPU per write\n${textTable(cpuCols, cpuRows)}\n\nSlot migration\n${textTable(moveCols, moveRows)}\n\nSnapshot barrier\n${textTable(barrierCols, barrierRows)}\n\nCapacity\n${textTable(capCols, capRows)}\n`,
  );
  if (writeDocs) {
    const date = new Date().toISOString().slice(0, 10);
    writeDocsSection(
      SECTION_START,
      SECTION_END,
      `${SECTION_START}
## Shard groups

\`node bench/sharding.mjs\` on ${date} (${cpus().length} CPUs; fsync "batch" on every server; ${windowMs} ms windows).
Routing overhead: one client, one server per group, the 1-group and the 2-group cluster alternated twice; the
client of the 2-group cluster routes every call by the name's hash slot (objects of group 1).

${markdownTable(routingCols, routing)}

CPU per write: ${WRITERS} writers (one session each, own objects spread over the groups), groups of 3 servers.
This machine's 2 CPUs are shared by every server of every group, so writes per second cannot grow with the
group count here; the server CPU per write is the figure to scale by: a group of 3 servers takes the CPU time
shown per write, so N groups on their own machines serve about N times the writes one group does.

${markdownTable(cpuCols, cpuRows)}

Slot migration: two groups of 3 servers; a quarter of the slots, holding 64 MiB in 256 KiB objects of group 1,
move to group 2 with \`segmem cluster move-slots\` while 4 writers cycle on objects of slots that stay (their
p99 before and during the move; the copy rate is the driver's own figure).

${markdownTable(moveCols, moveRows)}

Snapshot barrier: two groups of 3 servers, 16 MiB of objects, 4 writers on objects of both groups; 10
cluster snapshots (\`segmem snapshot --config --out\`) one after the other. "Writes held" is, per cut, the
longest write cycle that overlapped it: how long the cut's hold kept a write back, as the writers saw it.

${markdownTable(barrierCols, barrierRows)}

Capacity: each group serves its own 64 MiB range; 1 MiB objects under names spread over the slots are
created until every group answers \`NO_SPACE\` (naming the group and its free bytes).

${markdownTable(capCols, capRows)}
${SECTION_END}`,
    );
    log('docs/benchmarks.md: "Shard groups" section rewritten');
  }
} finally {
  cleanupSync();
}
