// Shard groups: what routing by hash slot costs, the CPU one operation takes, and capacity by group count.
//
//   node bench/sharding.mjs             # after `npx tsc -b`; about 2 min; rewrites the "Shard groups" section
//                                       # of docs/benchmarks.md
//   node bench/sharding.mjs --no-docs   # prints the tables only
//   --window-ms N                       # measuring window per run (default 2000, 500..10000)
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
// 3. Capacity. With a fixed range per group (64 MiB), objects of 1 MiB are created under names spread over
//    the slots until every group answers NO_SPACE: the bytes placed grow with the group count.
//
// Bounded: loops by count and time, at most 4 min in all; every process started is stopped and the temp
// dirs removed at the end, also on an error or Ctrl-C.
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
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

const SEGMEM = join(ROOT_DIR, 'packages/server/bin/segmem.mjs');
const MAX_RUN_MS = 240_000;
const MAX_OPS = 2_000_000;
const WRITERS = 8;
const RANGE_BYTES = 64 * 1024 * 1024;
const CAPACITY_OBJECT = 1024 * 1024;
const SECTION_START = '<!-- bench:sharding:start -->';
const SECTION_END = '<!-- bench:sharding:end -->';

let windowMs = 2000;
let writeDocs = true;
parseArgs(process.argv.slice(2), import.meta.url, (opt, value) => {
  if (opt === '--no-docs') writeDocs = false;
  else if (opt === '--window-ms') {
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
  addCleanup(stop);
  return { servers, pids, stop };
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
      runs.read[i].push(...(await readCycles(seg, r, windowMs)));
      await writeCycles(seg, w, 200);
      runs.write[i].push(...(await writeCycles(seg, w, windowMs)));
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
  const routing = await routingOverhead();
  const cpuRows = [];
  for (const g of [1, 2, 3]) if (!overdue()) cpuRows.push(await cpuPerOp(g));
  const capRows = [];
  for (const g of [1, 2, 3]) if (!overdue()) capRows.push(await capacity(g));
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
  const capCols = [
    { key: 'groups', title: 'groups' },
    { key: 'segment', title: 'segment (64 MiB per group)' },
    { key: 'placed', title: 'placed in 1 MiB objects' },
    { key: 'full', title: 'groups answering NO_SPACE' },
  ];
  process.stdout.write(
    `\nRouting overhead\n${textTable(routingCols, routing)}\n\nCPU per write\n${textTable(cpuCols, cpuRows)}\n\nCapacity\n${textTable(capCols, capRows)}\n`,
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
