// Snapshot benchmark (issue 4): with a segment fully written (1 GiB by default), how long a consolidated
// snapshot of a 3-server cluster and a single server's own snapshot take next to `cp` of the same bytes on
// the same disk; the write-cycle p99 of 8 writers while the consolidated snapshot runs, against without;
// how long a single server takes to restart from a 1 GiB snapshot plus 100,000 WAL records; and a single
// server's own snapshot by the clone path (data directory on a loop-mounted XFS) against the copy path
// (the temp directory's file system), the first one and one after changing a few MiB
// (bench/lib/snapshot-paths.mjs).
//
//   npm run bench:snapshot                 # ~4-5 min; rewrites the "Snapshots" section of docs/benchmarks.md
//   npm run bench:snapshot -- --paths      # ~1 min: only clone against copy; rewrites that subsection
//   npm run bench:snapshot -- --mib 128    # a smaller segment; leaves the docs alone
//   npm run bench:snapshot -- --paths --change-mib 16
//
// Servers bind 127.0.0.1 with data in a temporary directory, fsync "batch"; every process is stopped and
// every file removed at the end.
import { execFile, execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { connect } from '@segmem/client';
import { localCluster } from '../examples/lib/local-server.mjs';
import { installCleanupHandlers, makeTempDir, ROOT_DIR, spawnUntilReady, stopChild } from './lib/procs.mjs';
import { snapshotPaths } from './lib/snapshot-paths.mjs';
import { fmtInt, percentile } from './lib/stats.mjs';

const MiB = 1024 * 1024;
const argAt = process.argv.indexOf('--mib');
const totalMiB = argAt > 0 ? Number(process.argv[argAt + 1]) : 1024;
const changeAt = process.argv.indexOf('--change-mib');
const changeMiB = changeAt > 0 ? Number(process.argv[changeAt + 1]) : 4;
const onlyPaths = process.argv.includes('--paths');
const writeDocs = argAt < 0;
const OBJECT_MIB = 32;
const SEGMEM_BIN = join(ROOT_DIR, 'packages/server/bin/segmem.mjs');
const SERVER_BIN = join(ROOT_DIR, 'packages/server/bin/segmem-server.mjs');
const WAL_RECORDS = 100_000;
const execFileAsync = promisify(execFile);

installCleanupHandlers();

/** Replaces the part of docs/benchmarks.md between the `<!-- bench:NAME:start/end -->` markers, or appends it. */
function replaceDocSection(name, lines) {
  const path = join(ROOT_DIR, 'docs/benchmarks.md');
  const doc = readFileSync(path, 'utf8');
  const start = `<!-- bench:${name}:start -->`;
  const end = `<!-- bench:${name}:end -->`;
  const a = doc.indexOf(start);
  const b = doc.indexOf(end);
  const section = lines.join('\n');
  const next =
    a >= 0 && b > a
      ? doc.slice(0, a) + section + doc.slice(b + end.length)
      : `${doc.trimEnd()}\n\n${section}\n`;
  writeFileSync(path, next);
  console.log(`wrote the ${name} section of docs/benchmarks.md`);
}

if (onlyPaths) {
  const paths = await snapshotPaths({ mib: totalMiB, changeMiB });
  console.log(paths.lines.join('\n'));
  if (writeDocs) replaceDocSection('snapshot-paths', paths.lines);
  process.exit(0);
}

const work = makeTempDir('snapshot');

/** Fills `count` objects of OBJECT_MIB with random bytes, through one client. */
async function fill(servers, count) {
  const seg = await connect({ servers });
  const bytes = Buffer.allocUnsafe(OBJECT_MIB * MiB);
  randomFillSync(bytes);
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    await seg.create(`big/${i}`, bytes.length, { ifNotExists: true });
    bytes[0] = i; // every object differs
    await seg.update(`big/${i}`, (h) => bytes.copy(h.bytes));
  }
  const ms = performance.now() - t0;
  await seg.close();
  return ms;
}

/** 8 writers (one session each, one 4 KiB object each), closed loop, until `stop()` resolves; latencies in ms. */
async function writers(servers, until) {
  const segs = [];
  for (let i = 0; i < 8; i++) {
    const s = await connect({ servers });
    await s.create(`w/${i}`, 4096, { ifNotExists: true });
    segs.push(s);
  }
  const lat = [];
  let done = false;
  until.then(() => {
    done = true;
  });
  await Promise.all(
    segs.map(async (s, i) => {
      while (!done && lat.length < 2_000_000) {
        const t0 = performance.now();
        await s.update(`w/${i}`, (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
        lat.push(performance.now() - t0);
      }
    }),
  );
  for (const s of segs) await s.close();
  return lat.sort((a, b) => a - b);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `segmem snapshot --out` and resolves with its wall time in ms. Asynchronously: the writers measured
 * meanwhile run in this process, and a synchronous child would stop them.
 */
async function consolidated(servers, file) {
  const t0 = performance.now();
  await execFileAsync(process.execPath, [
    SEGMEM_BIN,
    'snapshot',
    '--out',
    file,
    '--servers',
    servers.join(','),
  ]);
  return performance.now() - t0;
}

/** `cp` of `file` then `sync` of the copy: the same bytes written durably on the same disk. */
function copyTime(file) {
  const copy = `${file}.cp`;
  const t0 = performance.now();
  execFileSync('cp', [file, copy]);
  execFileSync('sync', [copy]);
  return performance.now() - t0;
}

const rows = [];
const objects = Math.max(1, Math.round(totalMiB / OBJECT_MIB));
const mib = objects * OBJECT_MIB;

// --- 3-server cluster: consolidated snapshot, and writers' latency with and without it
const cluster = await localCluster(3, { dir: join(work, 'cluster') });
let clusterFile;
try {
  const servers = cluster.servers.split(',');
  const fillMs = await fill(servers, objects);
  console.log(`cluster: wrote ${mib} MiB in ${objects} objects in ${fmtInt(fillMs)} ms`);
  const baseline = await writers(servers, sleep(4000));
  clusterFile = join(work, 'cluster.segsnap');
  let snapMs = 0;
  const during = await writers(
    servers,
    (async () => {
      await sleep(200);
      snapMs = await consolidated(servers, clusterFile);
    })(),
  );
  const cpMs = copyTime(clusterFile);
  const fileMiB = statSync(clusterFile).size / MiB;
  rows.push({
    what: `consolidated snapshot, 3 servers (${fmtInt(fileMiB)} MiB file)`,
    ms: snapMs,
    cpMs,
  });
  rows.latency = {
    without: { p50: percentile(baseline, 50), p99: percentile(baseline, 99), n: baseline.length },
    during: { p50: percentile(during, 50), p99: percentile(during, 99), n: during.length },
  };
  console.log(`consolidated snapshot: ${fmtInt(snapMs)} ms; cp + sync of the file: ${fmtInt(cpMs)} ms`);
  console.log(
    `8 writers, p50/p99 ms: without ${rows.latency.without.p50.toFixed(2)}/${rows.latency.without.p99.toFixed(2)}, during ${rows.latency.during.p50.toFixed(2)}/${rows.latency.during.p99.toFixed(2)}`,
  );
} finally {
  await cluster.stop();
}

// --- single server: its own snapshot after the fill, then a restart over a snapshot + 100,000 WAL records
const dataDir = join(work, 'single');
const start = (extra) =>
  spawnUntilReady(SERVER_BIN, ['--id', 's1', '--listen', '127.0.0.1:0', '--data', dataDir, ...extra], {
    ready: / ready on (\S+)$/,
    timeoutMs: 120_000,
    name: 'segmem-server',
  });
let server = await start(['--snapshot-every-entries', '0', '--snapshot-interval-ms', '1000']);
const serverLog = [];
server.child.stderr.on('data', (d) => serverLog.push(String(d)));
const address = server.match[1];
await fill([address], objects);
// The interval snapshot catches the filled state; its log line says how long it took. Wait for one that
// holds the whole fill (an earlier one may have started mid-fill).
const deadline = Date.now() + 180_000;
let snapLine;
for (;;) {
  const found = serverLog
    .join('')
    .split('\n')
    .filter((l) => / snapshot at index \d+: .*, \d+ pages written/.test(l));
  snapLine = found[found.length - 1];
  if (snapLine && Number(/, (\d+) pages written/.exec(snapLine)[1]) * 4096 >= mib * MiB) break;
  if (Date.now() > deadline) throw new Error(`no snapshot of the whole fill: ${snapLine}`);
  await sleep(100);
}
// A page file is written from the frozen view directly: the time is the line's `written in`.
const written = /written in (\d+) ms/.exec(snapLine);
const localMs = written ? Number(written[1]) : 0;
const snapFiles = execFileSync('ls', [join(dataDir, 'snap')], { encoding: 'utf8' })
  .trim()
  .split('\n');
const newest = join(dataDir, 'snap', snapFiles[snapFiles.length - 1]);
// A page file is sparse: its length is the segment's (4 GiB by default), its blocks what was written.
const newestStat = statSync(newest);
rows.push({
  what: `single server's own snapshot (${fmtInt(newestStat.size / MiB)} MiB sparse file, ${fmtInt((newestStat.blocks * 512) / MiB)} MiB on disk)`,
  ms: localMs,
  cpMs: copyTime(newest),
  note: snapLine.replace(/^.*snapshot at index/, 'snapshot at index').trim(),
});
await stopChild(server.child);

// Restart without time-based snapshots, add 100,000 WAL records (50,000 write cycles), kill -9, time the restart.
server = await start(['--snapshot-every-entries', '0', '--snapshot-interval-ms', '0']);
{
  const servers = [server.match[1]];
  let cycles = 0;
  const segs = [];
  for (let i = 0; i < 8; i++) {
    const s = await connect({ servers });
    await s.create(`r/${i}`, 4096, { ifNotExists: true });
    segs.push(s);
  }
  await Promise.all(
    segs.map(async (s, i) => {
      while (cycles < WAL_RECORDS / 2) {
        cycles++;
        await s.update(`r/${i}`, (h) => h.bytes.writeUInt32LE(cycles));
      }
    }),
  );
  for (const s of segs) await s.close();
}
server.child.kill('SIGKILL');
await new Promise((r) => server.child.once('exit', r));
const t0 = performance.now();
server = await start([]);
const restartMs = performance.now() - t0;
await stopChild(server.child);
console.log(
  `restart over a ${mib} MiB snapshot and ~${fmtInt(WAL_RECORDS)} WAL records: ${fmtInt(restartMs)} ms`,
);

// --- report
const date = new Date().toUTCString();
const lines = [
  '<!-- bench:snapshot:start -->',
  '## Snapshots',
  '',
  'Written by `bench/snapshot.mjs` (`npm run bench:snapshot`); rerunning it replaces this section.',
  '',
  `- Date: ${date}; 2 CPUs; Node ${process.version}; fsync "batch"; ${mib} MiB of random bytes in ${objects} objects of ${OBJECT_MIB} MiB.`,
  '- `cp` column: `cp FILE COPY && sync COPY`, the same bytes written durably on the same disk.',
  '',
  '| snapshot | time ms | cp + sync ms | ratio (target ≤ 3) |',
  '|---|---:|---:|---:|',
  ...rows.map((r) => `| ${r.what} | ${fmtInt(r.ms)} | ${fmtInt(r.cpMs)} | ${(r.ms / r.cpMs).toFixed(2)} |`),
  '',
  `Write cycles of 8 concurrent writers (4 KiB objects, 3 servers): without a snapshot p50 ${rows.latency.without.p50.toFixed(2)} ms, p99 ${rows.latency.without.p99.toFixed(2)} ms (${fmtInt(rows.latency.without.n)} cycles); while the consolidated snapshot ran p50 ${rows.latency.during.p50.toFixed(2)} ms, p99 ${rows.latency.during.p99.toFixed(2)} ms (${fmtInt(rows.latency.during.n)} cycles): ${(rows.latency.during.p99 / rows.latency.without.p99).toFixed(2)}× (target ≤ 2×).`,
  '',
  `Restart of a single server over a ${mib} MiB snapshot and ${fmtInt(WAL_RECORDS)} WAL records after it (SIGKILL, then start until its ready line): ${fmtInt(restartMs)} ms (target < 5000 ms).`,
  '',
  `The single server's own log line: \`${rows[1].note}\`.`,
  '<!-- bench:snapshot:end -->',
];
console.log(lines.join('\n'));
if (writeDocs) replaceDocSection('snapshot', lines);
const paths = await snapshotPaths({ mib, changeMiB });
console.log(paths.lines.join('\n'));
if (writeDocs) replaceDocSection('snapshot-paths', paths.lines);
