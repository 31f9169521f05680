// Commit latency: what replication adds to one commit, next to the floor it cannot go below.
//
//   node bench/commit-latency.mjs            # after `npx tsc -b`; ~20 s; rewrites the "Commit latency"
//                                            # section of docs/benchmarks.md
//   node bench/commit-latency.mjs --no-docs  # prints the table only
//   --cycles N                               # measured cycles per configuration (default 450, at most 900)
//
// Starts one segmem-server and a 3-server group (separate processes, 127.0.0.1, free ports, fsync "batch",
// data in one temporary directory), runs one client doing acquireWrite / change 4 bytes / release cycles
// on a 4 KiB object, and times the acquire (a lock command: no fdatasync needed) and the write release
// (durable on a majority before it resolves) separately. In the same run it measures the floor: a
// loopback TCP round trip of a small message (node net, to an echo server in its own process) and a
// 4 KiB append + fdatasync (node fs) in the directory holding the servers' data. Target: the replication
// delta of one commit at most 2 x (round trip + fdatasync).
//
// Bounded: at most 2 x 1000 cycles (2 ops each, warm-up included) and 60 s; every process started is
// stopped (by pid) and every temp dir removed at the end, also on an error or Ctrl-C.
import { open } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { connect } from '@segmem/client';
import { localCluster } from '../examples/lib/local-server.mjs';
import { log, parseArgs } from './lib/cli.mjs';
import { writeDocsSection } from './lib/docs.mjs';
import {
  addCleanup,
  adoptChild,
  cleanupSync,
  installCleanupHandlers,
  makeTempDir,
  processCpuSeconds,
  startEchoServer,
  waitForQuiet,
} from './lib/procs.mjs';
import { fmtUs, markdownTable, percentile, textTable } from './lib/stats.mjs';

const MAX_RUN_MS = 60_000;
const WARMUP_CYCLES = 50;
const ROUNDS = 10;
const MAX_CYCLES = 900;
const FLOOR_SAMPLES = 400;
const OBJECT_BYTES = 4096;
const SECTION_START = '<!-- bench:commit-latency:start -->';
const SECTION_END = '<!-- bench:commit-latency:end -->';

let cycles = 450;
let writeDocs = true;
parseArgs(process.argv.slice(2), import.meta.url, (opt, value) => {
  if (opt === '--no-docs') writeDocs = false;
  else if (opt === '--cycles') {
    cycles = Number(value());
    if (!Number.isInteger(cycles) || cycles < 10 || cycles > MAX_CYCLES)
      throw new Error(`--cycles takes an integer from 10 to ${MAX_CYCLES}`);
  } else return false;
});

installCleanupHandlers();
const startedAt = performance.now();
const deadline = startedAt + MAX_RUN_MS;
const overall = setTimeout(() => {
  process.stderr.write(`bench: over ${MAX_RUN_MS / 1000} s, stopping\n`);
  cleanupSync();
  process.exit(1);
}, MAX_RUN_MS);
overall.unref();

const sorted = (a) => Float64Array.from(a).sort();

/** A session on `servers` with its 4 KiB object, and the µs of each phase of its timed cycles. */
async function openClient(servers, name) {
  const seg = await connect({ servers });
  await seg.create(name, OBJECT_BYTES, { ifNotExists: true });
  return { seg, name, acquire: [], release: [], done: 0, pids: [], cpuSeconds: 0 };
}

/** `count` acquireWrite / write 4 bytes / release cycles; timed unless `warmup`. */
async function commitCycles(c, count, warmup = false) {
  const cpu0 = c.pids.reduce((sum, pid) => sum + processCpuSeconds(pid), 0);
  for (let i = 0; i < count && performance.now() < deadline; i++, c.done++) {
    const t0 = performance.now();
    const h = await c.seg.acquireWrite(c.name);
    const t1 = performance.now();
    h.bytes.writeUInt32LE(c.done, (c.done * 4) % OBJECT_BYTES);
    const t2 = performance.now();
    await h.release();
    const t3 = performance.now();
    if (!warmup) {
      c.acquire.push((t1 - t0) * 1000);
      c.release.push((t3 - t2) * 1000);
    }
  }
  if (!warmup) c.cpuSeconds += c.pids.reduce((sum, pid) => sum + processCpuSeconds(pid), 0) - cpu0;
}

/** Round trips of a 16-byte message to the echo server (one socket, Nagle off), µs. */
async function loopbackRoundTrips(address) {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.split(':').pop())];
  const socket = netConnect({ host, port, noDelay: true });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const msg = Buffer.alloc(16, 7);
  const out = [];
  let got = 0;
  let echoed = null;
  socket.on('data', (chunk) => {
    got += chunk.length;
    if (got >= msg.length && echoed) {
      got -= msg.length;
      const done = echoed;
      echoed = null;
      done();
    }
  });
  try {
    for (let i = 0; i < FLOOR_SAMPLES + 20; i++) {
      const t0 = performance.now();
      await new Promise((resolve) => {
        echoed = resolve;
        socket.write(msg);
      });
      if (i >= 20) out.push((performance.now() - t0) * 1000);
    }
  } finally {
    socket.destroy();
  }
  return sorted(out);
}

/** A 4 KiB append then fdatasync, as the WAL does it (node fs on the thread pool), µs for both. */
async function appendSyncs(dir) {
  const path = join(dir, 'fdatasync-probe');
  const fh = await open(path, 'w');
  const block = Buffer.alloc(4096, 1);
  const out = [];
  try {
    for (let i = 0; i < FLOOR_SAMPLES + 20; i++) {
      const t0 = performance.now();
      await fh.write(block, 0, block.length, i * block.length);
      await fh.datasync();
      if (i >= 20) out.push((performance.now() - t0) * 1000);
    }
  } finally {
    await fh.close();
  }
  return sorted(out);
}

const dataDir = makeTempDir('commitlat');
const groups = [];
addCleanup(() => {
  for (const g of groups) g.killSync();
});
try {
  log('starting 1 server and a 3-server group (fsync batch)');
  const single = await localCluster(1, { dir: join(dataDir, 'one'), onSpawn: adoptChild });
  groups.push(single);
  const three = await localCluster(3, { dir: join(dataDir, 'three'), onSpawn: adoptChild });
  groups.push(three);
  const echo = await startEchoServer();

  const quiet = await waitForQuiet({ maxMs: 10_000, thresholdCpus: 0.3 });
  const loadBefore = loadavg()[0];
  log('floor: loopback round trip and 4 KiB append + fdatasync');
  const rtt = await loopbackRoundTrips(echo.address);
  const sync = await appendSyncs(dataDir);
  // Both configurations in alternating rounds, so that a change of load on the machine meets both.
  const oneClient = await openClient(single.servers.split(','), 'commitlat');
  const manyClient = await openClient(three.servers.split(','), 'commitlat');
  oneClient.pids = single.pids();
  manyClient.pids = three.pids();
  await commitCycles(oneClient, WARMUP_CYCLES, true);
  await commitCycles(manyClient, WARMUP_CYCLES, true);
  log(`${cycles} cycles on each of 1 server and 3 servers, in ${ROUNDS} alternating rounds`);
  for (let r = 0; r < ROUNDS; r++) {
    const n = Math.ceil(cycles / ROUNDS);
    const order = r % 2 === 0 ? [oneClient, manyClient] : [manyClient, oneClient];
    for (const c of order) await commitCycles(c, Math.min(n, cycles - c.acquire.length));
  }
  await oneClient.seg.close();
  await manyClient.seg.close();
  const one = { acquire: sorted(oneClient.acquire), release: sorted(oneClient.release) };
  const many = { acquire: sorted(manyClient.acquire), release: sorted(manyClient.release) };
  // The floor again after the cycles, so a change of load during the run shows.
  const rtt2 = await loopbackRoundTrips(echo.address);
  const sync2 = await appendSyncs(dataDir);
  await echo.stop();
  const load = `load average ${loadBefore.toFixed(1)} before, ${loadavg()[0].toFixed(1)} after (${cpus().length} CPUs${
    quiet.busy !== null && quiet.busy > 0.3
      ? `; still ${quiet.busy.toFixed(1)} CPUs busy after waiting ${(quiet.waitedMs / 1000).toFixed(0)} s for quiet`
      : ''
  })`;

  const p50 = (a) => percentile(a, 50);
  const p99 = (a) => percentile(a, 99);
  const floorRtt = (p50(rtt) + p50(rtt2)) / 2;
  const floorSync = (p50(sync) + p50(sync2)) / 2;
  const budget = 2 * (floorRtt + floorSync);
  const columns = [
    { key: 'what', title: 'what', align: 'left' },
    { key: 'p50', title: 'p50 µs' },
    { key: 'p99', title: 'p99 µs' },
  ];
  const rows = [
    { what: 'acquireWrite, 1 server', p50: fmtUs(p50(one.acquire)), p99: fmtUs(p99(one.acquire)) },
    { what: 'acquireWrite, 3 servers', p50: fmtUs(p50(many.acquire)), p99: fmtUs(p99(many.acquire)) },
    { what: 'write release, 1 server', p50: fmtUs(p50(one.release)), p99: fmtUs(p99(one.release)) },
    { what: 'write release, 3 servers', p50: fmtUs(p50(many.release)), p99: fmtUs(p99(many.release)) },
    {
      what: 'replication delta, acquire (3 - 1)',
      p50: fmtUs(p50(many.acquire) - p50(one.acquire)),
      p99: '',
    },
    {
      what: 'replication delta, write release (3 - 1)',
      p50: fmtUs(p50(many.release) - p50(one.release)),
      p99: '',
    },
    {
      what: 'floor: loopback TCP round trip (before / after)',
      p50: `${fmtUs(p50(rtt))} / ${fmtUs(p50(rtt2))}`,
      p99: `${fmtUs(p99(rtt))} / ${fmtUs(p99(rtt2))}`,
    },
    {
      what: 'floor: 4 KiB append + fdatasync (before / after)',
      p50: `${fmtUs(p50(sync))} / ${fmtUs(p50(sync2))}`,
      p99: `${fmtUs(p99(sync))} / ${fmtUs(p99(sync2))}`,
    },
    {
      what: 'server CPU per cycle, all servers (1 / 3 servers)',
      p50: `${fmtUs((oneClient.cpuSeconds * 1e6) / oneClient.acquire.length)} / ${fmtUs((manyClient.cpuSeconds * 1e6) / manyClient.acquire.length)}`,
      p99: '',
    },
    { what: 'target: delta ≤ 2 × (round trip + fdatasync)', p50: fmtUs(budget), p99: '' },
  ];
  const deltaRelease = p50(many.release) - p50(one.release);
  const deltaAcquire = p50(many.acquire) - p50(one.acquire);
  const verdict =
    `write release delta ${fmtUs(deltaRelease)} µs, acquire delta ${fmtUs(deltaAcquire)} µs, ` +
    `budget ${fmtUs(budget)} µs: ${deltaRelease <= budget && deltaAcquire <= budget ? 'met' : 'missed'}`;
  console.log(
    `fsync "batch" on every server; ${cycles} cycles per configuration after ${WARMUP_CYCLES} warm-up\n`,
  );
  console.log(textTable(columns, rows));
  console.log(`\n${verdict}\n${load}`);

  if (writeDocs) {
    const section = `${SECTION_START}
## Commit latency

Written by \`bench/commit-latency.mjs\` (\`npx tsc -b && node bench/commit-latency.mjs\`); rerunning it replaces
this section.

- Date: ${new Date().toUTCString()}; ${cpus().length} CPUs; Node ${process.version}; fsync "batch" on every server.
- One client, one session, one 4 KiB object: acquireWrite, change 4 bytes, release; ${cycles} cycles per
  configuration after ${WARMUP_CYCLES} warm-up, in ${ROUNDS} rounds alternating between the two. The acquire is a lock command (it waits for no fdatasync on one
  server); the write release resolves once the change is on disk on a majority. 1 server and 3 servers
  run as separate processes at the same time, data in one directory of the same file system.
- The floor, measured in the same run before and after the cycles: a 16-byte loopback TCP round trip (node
  net, Nagle off) and a 4 KiB append + fdatasync (node fs) in the servers' data directory.

${markdownTable(columns, rows)}

Result: ${verdict}. Machine: ${load}.
${SECTION_END}`;
    writeDocsSection(SECTION_START, SECTION_END, section);
    log('wrote the "Commit latency" section of docs/benchmarks.md');
  }
} finally {
  for (const g of groups.splice(0)) await g.stop();
  clearTimeout(overall);
}
