#!/usr/bin/env node
// segmem side by side with Redis and etcd: `npm run bench:peers` (builds first), or
// `node bench/peers/run.mjs [options]` after `npx tsc -b`.
//
//   --quick        ~1.5 min: 0.25 s warm-up + 0.75 s per row and fewer client counts; leaves the docs alone
//   --no-docs      do not write docs/benchmarks.md, docs/img/peers-throughput.svg
//   --out DIR      write the section (peers.md) and the plot (peers-throughput.svg) into DIR instead, any run
//   --no-profile   skip the profiled segmem write-cycle run
//   --systems L    comma-separated subset of redis,etcd,segmem (a partial run leaves the docs alone)
//   --workloads L  comma-separated subset of write,read,append,big,hot (a partial run leaves the docs alone)
//
// segmem runs twice where kept grants matter (write, read, hot): as connect() makes it (delegations on) and
// with `connect({ delegations: false })`, against the same servers, as rows of the same tables.
//
// Installs what is missing (redis-server and etcd with apt-get when root, the client libraries with
// `npm install --prefix bench/peers`), starts a Redis primary + 2 replicas, a 3-member etcd cluster and a
// 3-server segmem group on 127.0.0.1 (free ports, data in temp dirs), runs every workload against each with
// the same clients in alternation (A B C A B C), and stops everything it started, also on an error or Ctrl-C.
// A missed goal is reported, never turned into a failing exit code; a broken server or driver is.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { log, parseArgs } from '../lib/cli.mjs';
import { writeDocsSection } from '../lib/docs.mjs';
import {
  cleanupSync,
  installCleanupHandlers,
  makeTempDir,
  ROOT_DIR,
  runWorker,
  waitForQuiet,
} from '../lib/procs.mjs';
import { profileColumns, profileTableRows, topSelfTime } from '../lib/profile.mjs';
import { fmtInt, fmtNum, fmtUs, markdownTable, percentile, textTable } from '../lib/stats.mjs';
import { throughputSvg } from './lib/svg.mjs';
import {
  ETCD_SETTINGS,
  ensureInstalled,
  PEERS_DIR,
  REDIS_SETTINGS,
  startEtcd,
  startRedis,
  startSegmem,
  versions,
} from './lib/systems.mjs';

const DRIVER = join(PEERS_DIR, 'driver.mjs');
const MAX_RUN_MS = 15 * 60 * 1000; // the whole run, hard limit
const OPS_CAP = 2_000_000; // per row and round, split across its clients
const KiB = 1024;
const MiB = 1024 * 1024;
const SECTION_START = '<!-- bench:peers:start -->';
const SECTION_END = '<!-- bench:peers:end -->';
const SYSTEMS = ['redis', 'etcd', 'segmem'];
// Rows that run a started system with other client options: the system it runs against, and the options.
const VARIANTS = { segmemOff: { system: 'segmem', spec: { delegations: false } } };
const LABEL = { redis: 'Redis', etcd: 'etcd', segmem: 'segmem', segmemOff: 'segmem, delegations off' };
// Before each row, wait (bounded) for other processes to go idle: on 2 CPUs a busy neighbour lowers every
// figure. Our own idle servers (9 processes) use a few hundredths of a CPU.
const QUIET = { perRowMs: 5000, totalMs: 40000, thresholdCpus: 0.3 };

const WORKLOADS = {
  write: {
    title: 'Write cycle: lock, read, modify, write, unlock',
    systems: ['redis', 'etcd', 'segmem', 'segmemOff'],
    rows: [
      { valueBytes: 4, clients: [1, 8, 32], quick: [1, 32] },
      { valueBytes: 4 * KiB, clients: [1, 32], quick: [32] },
    ],
  },
  read: {
    title: 'Read cycle: consistent read of an unchanged 4 KiB object',
    systems: ['redis', 'etcd', 'segmem', 'segmemOff'],
    rows: [{ valueBytes: 4 * KiB, clients: [1, 8, 32], quick: [1, 32] }],
  },
  append: {
    title: 'Append: 100-byte records to one shared log',
    rows: [{ valueBytes: 100, clients: [1, 8, 32], quick: [8] }],
  },
  big: {
    title: 'Big object, small change: write cycle on a 1 MiB object, 1 byte changed',
    rows: [{ valueBytes: MiB, clients: [1], quick: [1] }],
  },
  hot: {
    title: 'Hot object: all clients take turns on one 4 B object (write cycle)',
    // What this row asks is whether kept grants cost anything under contention: segmem against itself.
    systems: ['segmem', 'segmemOff'],
    rows: [{ valueBytes: 4, clients: [32], quick: [32] }],
  },
};
const baseSystem = (s) => VARIANTS[s]?.system ?? s;

const WHAT = {
  write: {
    redis:
      'SET lock token NX PX 10000 (retried while held), GET, SET, WAIT 1 1000, then DEL only if the lock still holds the token (Lua via defineCommand): 5 round trips',
    etcd: 'one lease per client (TTL 30 s, kept alive by the client); txn 1: if the lock key does not exist, put it with the lease and read the object; txn 2: if the lock still holds this token, put the object and delete the lock: 2 round trips, 2 durable writes',
    segmem: '`h = await seg.acquireWrite(name); h.bytes[0]++; await h.release()`',
  },
  read: {
    redis: 'GET on the primary',
    etcd: 'linearizable range get (not serializable) on the leader',
    segmem:
      '`h = await seg.acquireRead(name); await h.release()`, cache warm; with delegations on, each session keeps its read grant, so a re-read sends no message. All N sessions live in the one driver process',
  },
  append: {
    redis: 'XADD log * d <100 B> (the stream ID is the sequence number), then WAIT 1 1000',
    etcd: 'put on a key of its own per record; the revision etcd assigns is the sequence number (increasing, not contiguous): 1 durable round trip',
    segmem: "`await seg.log(name).append(record)`, resolving to the record's sequence number",
  },
};
WHAT.big = WHAT.write;
WHAT.hot = {
  segmem: 'the write cycle above, every client on the same object (the servers queue the lock)',
};
const WHAT_OFF =
  'the same with `connect({ servers, delegations: false })`: every acquire and release goes to the servers';

function parseOptions(argv) {
  const o = {
    quick: false,
    docs: true,
    out: null,
    profile: true,
    systems: SYSTEMS,
    workloads: Object.keys(WORKLOADS),
  };
  const known = (l, names, option) => {
    for (const s of l)
      if (!names.includes(s)) throw new Error(`${option}: unknown "${s}" (known: ${names.join(', ')})`);
    return l;
  };
  parseArgs(argv, import.meta.url, (a, value, list) => {
    if (a === '--quick') o.quick = true;
    else if (a === '--no-docs') o.docs = false;
    else if (a === '--no-profile') o.profile = false;
    else if (a === '--out') o.out = value();
    else if (a === '--systems') o.systems = known(list(), SYSTEMS, a);
    else if (a === '--workloads') o.workloads = known(list(), Object.keys(WORKLOADS), a);
    else return false;
  });
  o.partial = o.systems.length < SYSTEMS.length || o.workloads.length < Object.keys(WORKLOADS).length;
  o.warmupMs = o.quick ? 250 : 1000;
  o.windowMs = o.quick ? 750 : 3000;
  return o;
}

const sizeLabel = (b) => (b >= MiB ? `${b / MiB} MiB` : b >= KiB ? `${b / KiB} KiB` : `${b} B`);

// ---------------------------------------------------------------------------------------------------------
// Running

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  installCleanupHandlers();
  const watchdog = setTimeout(() => {
    log(`bench:peers: the run exceeded ${MAX_RUN_MS / 60000} minutes; stopping everything`);
    cleanupSync();
    process.exit(1);
  }, MAX_RUN_MS);
  watchdog.unref();
  const started = performance.now();

  ensureInstalled(log);
  const meta = {
    date: new Date().toUTCString(),
    versions: versions(),
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model?.trim() ?? 'unknown CPU',
    memGiB: fmtNum(totalmem() / 2 ** 30, 1),
    kernel: release(),
    command: `npm run bench:peers${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
  };
  log(`bench:peers: ${meta.command}`);
  log(
    `${meta.date} | ${meta.cpus} CPUs | Node ${meta.versions.node} | ${meta.versions.redis.replace(/ sha=.*/, '')} | ${meta.versions.etcd} | segmem ${meta.versions.segmem}`,
  );
  log(`${opts.warmupMs} ms warm-up + ${opts.windowMs} ms window per row and round, 2 rounds (A B C A B C)`);

  const starters = { redis: startRedis, etcd: startEtcd, segmem: startSegmem };
  const systems = {};
  const tmp = makeTempDir('peers-samples');
  const results = []; // one per (workload, size, clients, system): { rounds: [...] }
  let quietWaitedMs = 0;
  try {
    for (const name of opts.systems) {
      const t0 = performance.now();
      systems[name] = await starters[name]();
      log(
        `started ${name} (pids ${systems[name].pids().join(', ')}) in ${fmtInt(performance.now() - t0)} ms`,
      );
    }
    let seq = 0;
    for (const workload of opts.workloads) {
      log(`\n${WORKLOADS[workload].title}`);
      for (const row of WORKLOADS[workload].rows) {
        for (const clients of opts.quick ? row.quick : row.clients) {
          const rowSystems = (WORKLOADS[workload].systems ?? SYSTEMS).filter((s) =>
            opts.systems.includes(baseSystem(s)),
          );
          const entries = rowSystems.map((system) => {
            const e = { workload, valueBytes: row.valueBytes, clients, system, rounds: [], samples: [] };
            results.push(e);
            return e;
          });
          if (quietWaitedMs < QUIET.totalMs) {
            const { waitedMs, busy } = await waitForQuiet({
              maxMs: Math.min(QUIET.perRowMs, QUIET.totalMs - quietWaitedMs),
              thresholdCpus: QUIET.thresholdCpus,
            });
            quietWaitedMs += waitedMs;
            if (waitedMs > 1000)
              log(
                `  (waited ${fmtNum(waitedMs / 1000, 1)} s for other processes; busy now ${fmtNum(busy ?? 0, 2)} CPUs)`,
              );
          }
          for (let round = 1; round <= 2; round++) {
            for (const e of entries) {
              if (e.unavailable) continue; // said once is enough
              const sys = systems[baseSystem(e.system)];
              const samplesFile = join(tmp, `${++seq}.f64`);
              const spec = {
                ...VARIANTS[e.system]?.spec,
                system: baseSystem(e.system),
                workload,
                clients,
                valueBytes: row.valueBytes,
                endpoints: await sys.endpoints(),
                serverPids: sys.pids(),
                warmupMs: opts.warmupMs,
                windowMs: opts.windowMs,
                cap: OPS_CAP,
                prefix: `peers/${workload}-${row.valueBytes}-c${clients}${e.system === 'segmem' ? '' : `-${e.system}`}`,
                runId: `${process.pid}-${seq}`,
                seed: 12345 + round,
                samplesFile,
              };
              const tag = `  ${sizeLabel(row.valueBytes).padStart(6)} ${String(clients).padStart(2)} clients, round ${round}, ${LABEL[e.system].padEnd(23)}`;
              try {
                const r = await runWorker(spec, {
                  script: DRIVER,
                  timeoutMs: opts.warmupMs + opts.windowMs + 60_000,
                });
                if (r.unavailable) {
                  e.unavailable = r.unavailable;
                  log(`${tag}: ${e.system}: not available (${r.unavailable})`);
                  continue;
                }
                e.rounds.push(r);
                e.samples.push(readSamples(samplesFile));
                log(
                  `${tag}: ${fmtInt(r.opsPerSec).padStart(7)} ops/s, p50 ${fmtUs(r.p50).padStart(6)} µs, p99 ${fmtUs(r.p99).padStart(7)} µs, driver ${fmtNum(r.driverCpu, 2)} CPU, servers ${fmtNum(r.serversCpu, 2)}, others ${fmtNum(r.othersCpu ?? Number.NaN, 2)}${r.verifyFailures ? `, VERIFY FAILED on ${r.verifyFailures}` : ''}`,
                );
                for (const w of r.warnings ?? []) log(`    driver stderr: ${w}`);
              } catch (err) {
                e.error = String(err?.message ?? err).split('\n')[0];
                log(`${tag}: FAILED: ${err?.message ?? err}`);
              }
            }
          }
        }
      }
    }
  } finally {
    for (const s of Object.values(systems)) await s.stop();
  }

  // The profiled run: a fresh segmem group under `node --cpu-prof`, after the others stopped, so that the
  // profile is of the 32-client write cycle alone.
  let profile = null;
  if (opts.profile && opts.systems.includes('segmem') && opts.workloads.includes('write')) {
    log('\nprofile: segmem write cycle (4 B), 32 clients, servers under node --cpu-prof');
    const profDir = makeTempDir('peers-prof');
    const sys = await startSegmem({ nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir] });
    let r;
    try {
      r = await runWorker(
        {
          system: 'segmem',
          workload: 'write',
          clients: 32,
          valueBytes: 4,
          endpoints: await sys.endpoints(),
          serverPids: sys.pids(),
          warmupMs: opts.warmupMs,
          windowMs: opts.windowMs,
          cap: OPS_CAP,
          prefix: 'peers/profile',
          runId: `${process.pid}-profile`,
          seed: 1,
        },
        { script: DRIVER, timeoutMs: opts.warmupMs + opts.windowMs + 60_000 },
      );
    } finally {
      await sys.stop(); // SIGTERM: each server writes its profile as it exits
    }
    const p = topSelfTime(profDir, ROOT_DIR, 200);
    const idle = p.rows.filter((x) => x.fn === '(idle)').reduce((s, x) => s + x.selfMs, 0);
    const busyMs = p.totalMs - idle;
    const rows = p.rows
      .filter((x) => x.fn !== '(idle)')
      .slice(0, 10)
      .map((x) => ({ ...x, busyShare: x.selfMs / busyMs }));
    profile = { run: r, files: p.files, totalMs: p.totalMs, busyMs, rows };
    log(
      `  ${fmtInt(r.opsPerSec)} cycles/s under the profiler (p50 ${fmtUs(r.p50)} µs); ${p.files} profiles, ${fmtInt(busyMs)} ms busy of ${fmtInt(p.totalMs)} ms sampled`,
    );
  }

  const elapsed = (performance.now() - started) / 1000;
  const agg = results.map(aggregate);
  meta.quietWaitedS = quietWaitedMs / 1000;
  const report = render({ opts, meta, agg, profile, elapsed });
  process.stdout.write(`\n${report.text}\n`);

  if (opts.out) {
    mkdirSync(opts.out, { recursive: true });
    writeFileSync(join(opts.out, 'peers.md'), `${report.markdown}\n`);
    writeFileSync(join(opts.out, 'peers-throughput.svg'), report.svg);
    log(`\nwrote ${join(opts.out, 'peers.md')} and ${join(opts.out, 'peers-throughput.svg')}`);
  } else if (opts.docs && !opts.quick && !opts.partial) {
    writeDocs(report.markdown, report.svg);
    log(
      '\nwrote the "Side by side with Redis and etcd" section of docs/benchmarks.md and docs/img/peers-throughput.svg',
    );
  } else if (opts.docs) {
    log('\n(--quick or partial run: docs left alone)');
  }
  clearTimeout(watchdog);
}

function readSamples(file) {
  try {
    const b = readFileSync(file);
    return new Float64Array(new Uint8Array(b).buffer);
  } catch {
    return new Float64Array(0);
  }
}

/** Both rounds as one: ops/s over both windows, percentiles of all samples, the rest averaged. */
function aggregate(e) {
  const out = { ...e };
  delete out.samples;
  if (e.rounds.length === 0) return out;
  let n = 0;
  for (const s of e.samples) n += s.length;
  const all = new Float64Array(n);
  let at = 0;
  for (const s of e.samples) {
    all.set(s, at);
    at += s.length;
  }
  all.sort();
  const sum = (k) => e.rounds.reduce((s, r) => s + (r[k] ?? 0), 0);
  const mean = (k) => (e.rounds.every((r) => typeof r[k] === 'number') ? sum(k) / e.rounds.length : null);
  out.ops = sum('ops');
  out.opsPerSec = sum('ops') / sum('seconds');
  out.roundOps = e.rounds.map((r) => r.opsPerSec);
  out.p50 = percentile(all, 50);
  out.p99 = percentile(all, 99);
  out.driverCpu = mean('driverCpu');
  out.serversCpu = mean('serversCpu');
  out.othersCpu = mean('othersCpu');
  out.clientBytes =
    mean('clientSentPerOp') === null ? null : mean('clientSentPerOp') + mean('clientRecvPerOp');
  out.clientSent = mean('clientSentPerOp');
  out.clientRecv = mean('clientRecvPerOp');
  out.peerBytes = mean('peerSentPerOp');
  out.statsBytes = mean('statsSentPerOp') === null ? null : mean('statsSentPerOp') + mean('statsRecvPerOp');
  out.verifyFailures = sum('verifyFailures');
  out.socketsClosed = sum('socketsClosed');
  out.capped = e.rounds.some((r) => r.capped);
  const counters = {};
  for (const r of e.rounds)
    for (const [k, v] of Object.entries(r.counters ?? {})) counters[k] = (counters[k] ?? 0) + v;
  out.counters = counters;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Report

const find = (agg, workload, valueBytes, clients, system) =>
  agg.find(
    (a) =>
      a.workload === workload && a.valueBytes === valueBytes && a.clients === clients && a.system === system,
  );

const ok = (a) => a && a.rounds.length > 0;

const COLUMNS = [
  { key: 'clients', title: 'clients' },
  { key: 'value', title: 'value' },
  { key: 'system', title: 'system', align: 'left' },
  { key: 'ops', title: 'ops/s' },
  { key: 'rounds', title: 'rounds ops/s' },
  { key: 'p50', title: 'p50 µs' },
  { key: 'p99', title: 'p99 µs' },
  { key: 'ratioOps', title: 'segmem ÷ it, ops/s' },
  { key: 'ratioP50', title: 'segmem ÷ it, p50' },
  { key: 'client', title: 'client B/op' },
  { key: 'peer', title: 'server↔server B/op' },
  { key: 'driver', title: 'driver CPU' },
  { key: 'servers', title: 'servers CPU' },
  { key: 'others', title: 'others CPU' },
];

function tableRows(agg, workload) {
  const rows = [];
  for (const a of agg.filter((x) => x.workload === workload)) {
    const seg = find(agg, a.workload, a.valueBytes, a.clients, 'segmem');
    const base = { clients: String(a.clients), value: sizeLabel(a.valueBytes), system: LABEL[a.system] };
    if (!ok(a)) {
      rows.push({
        ...base,
        ops: a.unavailable ? 'not available (see notes)' : 'failed (see notes)',
      });
      continue;
    }
    const isPeer = a.system !== 'segmem';
    rows.push({
      ...base,
      ops: fmtInt(a.opsPerSec),
      rounds: a.roundOps.map(fmtInt).join(' / '),
      p50: fmtUs(a.p50),
      p99: fmtUs(a.p99),
      ratioOps: isPeer && ok(seg) ? `${fmtNum(seg.opsPerSec / a.opsPerSec, 2)}×` : '–',
      ratioP50: isPeer && ok(seg) ? `${fmtNum(seg.p50 / a.p50, 2)}×` : '–',
      client: a.clientBytes === null ? '–' : fmtInt(a.clientBytes),
      peer: a.peerBytes === null ? '–' : fmtInt(a.peerBytes),
      driver: fmtNum(a.driverCpu, 2),
      servers: fmtNum(a.serversCpu, 2),
      others: a.othersCpu === null ? '–' : fmtNum(a.othersCpu, 2),
    });
  }
  return rows;
}

function goals(agg) {
  const out = [];
  const ratioGoal = (what, seg, peer, factor, peerName) => {
    if (!ok(seg) || !ok(peer)) {
      out.push({
        what,
        measured: 'not measured',
        goal: '',
        result: seg?.unavailable ? 'segmem not available' : '–',
      });
      return;
    }
    const ratio = seg.opsPerSec / peer.opsPerSec;
    const met = ratio >= factor;
    out.push({
      what,
      measured: `${fmtInt(seg.opsPerSec)} vs ${fmtInt(peer.opsPerSec)} ops/s = ${fmtNum(ratio, 2)}×`,
      goal: `≥ ${factor}× ${peerName}`,
      result: met
        ? 'met'
        : `NOT MET: ${fmtNum((1 - ratio / factor) * 100, 0)} % short (needs ${fmtNum(factor / ratio, 2)}× more)`,
    });
  };
  for (const size of [4, 4 * KiB]) {
    const seg = find(agg, 'write', size, 32, 'segmem');
    ratioGoal(
      `write cycle ${sizeLabel(size)}, 32 clients, vs etcd lock+put`,
      seg,
      find(agg, 'write', size, 32, 'etcd'),
      2,
      'etcd',
    );
    ratioGoal(
      `write cycle ${sizeLabel(size)}, 32 clients, vs Redis primary + 2 replicas, WAIT 1`,
      seg,
      find(agg, 'write', size, 32, 'redis'),
      1,
      'Redis',
    );
  }
  ratioGoal(
    'read cycle 4 KiB, 32 sessions in one process (delegations on), vs Redis GET',
    find(agg, 'read', 4 * KiB, 32, 'segmem'),
    find(agg, 'read', 4 * KiB, 32, 'redis'),
    5,
    'Redis',
  );
  const p50Goal = (what, seg, limitUs, limitText) => {
    if (!ok(seg) || !(limitUs > 0)) {
      out.push({ what, measured: 'not measured', goal: '', result: '–' });
      return;
    }
    out.push({
      what,
      measured: `p50 ${fmtUs(seg.p50)} µs (p99 ${fmtUs(seg.p99)} µs)`,
      goal: `p50 ≤ ${limitText}`,
      result: seg.p50 <= limitUs ? 'met' : `NOT MET: ${fmtNum(seg.p50 / limitUs, 2)}× the limit`,
    });
  };
  const redisRead1 = find(agg, 'read', 4 * KiB, 1, 'redis');
  p50Goal(
    'read cycle 4 KiB, 1 client, under a kept read grant',
    find(agg, 'read', 4 * KiB, 1, 'segmem'),
    5,
    `5 µs${ok(redisRead1) ? ` (Redis GET p50 ${fmtUs(redisRead1.p50)} µs)` : ''}`,
  );
  const redisWrite1 = find(agg, 'write', 4, 1, 'redis');
  p50Goal(
    'write cycle 4 B, 1 client (delegations on)',
    find(agg, 'write', 4, 1, 'segmem'),
    ok(redisWrite1) ? redisWrite1.p50 : Number.NaN,
    `Redis replicated p50 (${ok(redisWrite1) ? fmtUs(redisWrite1.p50) : '–'} µs)`,
  );
  const hotOn = find(agg, 'hot', 4, 32, 'segmem');
  const hotOff = find(agg, 'hot', 4, 32, 'segmemOff');
  if (ok(hotOn) && ok(hotOff))
    ratioGoal('hot object, 32 clients on one object', hotOn, hotOff, 1, 'delegations off');
  const big = find(agg, 'big', MiB, 1, 'segmem');
  if (ok(big) && big.clientBytes !== null) {
    const met = big.clientBytes < 8 * KiB;
    out.push({
      what: 'big object (1 MiB, 1 byte changed): bytes moved per cycle, client ↔ servers',
      measured: `${fmtInt(big.clientBytes)} B (${fmtInt(big.clientSent)} sent + ${fmtInt(big.clientRecv)} received; server↔server ${fmtInt(big.peerBytes)} B)`,
      goal: '< 8,192 B',
      result: met ? 'met' : `NOT MET: ${fmtNum(big.clientBytes / (8 * KiB), 2)}× the limit`,
    });
  }
  return out;
}

const GOAL_COLUMNS = [
  { key: 'what', title: 'goal', align: 'left' },
  { key: 'measured', title: 'measured (segmem vs peer)', align: 'left' },
  { key: 'goal', title: 'wanted', align: 'left' },
  { key: 'result', title: 'result', align: 'left' },
];

const PROFILE_COLUMNS = profileColumns('share of busy time');

function profileRows(profile, n) {
  return profileTableRows(profile.rows.slice(0, n), (r) => r.busyShare);
}

function svgFor(agg) {
  const panel = (title, workload, valueBytes) => ({
    title,
    series: SYSTEMS.map((system) => ({
      system,
      label:
        system === 'redis'
          ? 'Redis, primary + 2 replicas'
          : system === 'etcd'
            ? 'etcd, 3 members'
            : 'segmem, 3 servers',
      points: agg
        .filter((a) => a.workload === workload && a.valueBytes === valueBytes && a.system === system && ok(a))
        .map((a) => ({ clients: a.clients, opsPerSec: a.opsPerSec })),
    })),
  });
  return throughputSvg(
    [
      panel('Write cycle (lock, read, write 4 B, unlock)', 'write', 4),
      panel('Read cycle (4 KiB, consistent)', 'read', 4 * KiB),
    ],
    {
      title: 'Throughput against concurrent clients, same machine, same run',
      note: new Date().toISOString().slice(0, 10),
    },
  );
}

function render({ opts, meta, agg, profile, elapsed }) {
  const v = meta.versions;
  const text = [];
  const md = [];
  const settings = [
    `Machine: ${meta.cpus} CPUs (${meta.cpuModel}), ${meta.memGiB} GiB RAM, Linux ${meta.kernel}; everything on 127.0.0.1, data in temp dirs on the same disk.`,
    `Versions: ${v.redis.replace(/ sha=\S+/, '')}; ${v.etcd}; Node ${v.node}; segmem ${v.segmem}; client libraries ioredis ${v.ioredis}, etcd3 ${v.etcd3} (@grpc/grpc-js ${v.grpc}).`,
    `Redis: a primary and 2 replicas (\`--replicaof\`), each with ${REDIS_SETTINGS.join(', ')}; clients connect to the primary.`,
    `etcd: 3 members, one Raft group, ${ETCD_SETTINGS.join('; ')}; clients connect to the leader (listing all three endpoints would add follower-to-leader forwarding).`,
    'segmem: 3 servers, one Raft group, fsync "batch" (a write release resolves once durable on a majority), started by `examples/lib/local-server.mjs` `localCluster`; each client connects with all three addresses.',
    'Durability is not the same: a Redis write counts as done once one replica has received it (WAIT 1; every server fsyncs its AOF once a second), an etcd or segmem write once it is fsynced on a majority of the three.',
    `Load: one driver process per row (\`bench/peers/driver.mjs\`, the closed loop of \`bench/lib/load.mjs\`); N clients = N connections or sessions, all in that one process (N \`connect()\` calls for segmem, N ioredis connections, N etcd3 clients each with its own gRPC connection), each waiting for its answer before the next operation; write cycles use one object per client (no lock contention), except the hot-object rows, where all clients take turns on one. segmem runs with delegations on (connect()'s default) and, in the rows marked so, with \`delegations: false\`, against the same 3 servers. ${opts.warmupMs} ms warm-up, then a ${opts.windowMs} ms window, at most ${fmtInt(OPS_CAP)} operations; two rounds per row, the systems in the order ${[...opts.systems, ...(opts.systems.includes('segmem') ? Object.keys(VARIANTS) : [])].map((x) => LABEL[x]).join('; ')} in each, so drift hits all alike; ops/s over both windows, p50/p99 over all samples of both. The whole run took ${fmtNum(elapsed, 0)} s.`,
    'Bytes: the kernel\'s own TCP counters (tcp_info bytes_sent / bytes_received via `ss -tinp`) of the driver\'s sockets ("client B/op": sent + received per operation, protocol framing included) and of the servers\' sockets ("server↔server B/op": what the servers sent minus what the driver received, i.e. replication / Raft traffic); the same method for all three. For segmem, `segment.stats()` (the client\'s own count) is shown beside it as a cross-check.',
    "CPU: from /proc over the measured window, in CPUs' worth (2 = both cores): the driver process, the system's servers, and everything else on the machine (other work; hypervisor steal counts too).",
  ];
  text.push(`bench:peers: ${meta.command}`, `date: ${meta.date}`, ...settings.map((s) => `* ${s}`), '');
  md.push(SECTION_START, '## Side by side with Redis and etcd', '');
  md.push(
    'Written by `bench/peers/run.mjs` (`npm run bench:peers`); rerunning it replaces this section. Numbers from one run on one machine: compare within the run, not with other sections.',
    '',
    `- Date: ${meta.date}; command: \`${meta.command}\``,
    ...settings.map((s) => `- ${s}`),
    '',
    '![Throughput against clients: write cycle and read cycle, Redis, etcd and segmem](img/peers-throughput.svg)',
    '',
  );
  for (const [workload, w] of Object.entries(WORKLOADS)) {
    if (!agg.some((a) => a.workload === workload)) continue;
    const rows = tableRows(agg, workload);
    const what = WHAT[workload];
    text.push(w.title, textTable(COLUMNS, rows), '');
    md.push(`### ${w.title}`, '');
    const present = new Set(agg.filter((a) => a.workload === workload).map((a) => a.system));
    for (const s of [...SYSTEMS, ...Object.keys(VARIANTS)])
      if (present.has(s)) md.push(`- ${LABEL[s]}: ${VARIANTS[s] ? WHAT_OFF : what[s]}`);
    md.push('');
    md.push(markdownTable(COLUMNS, rows), '');
    if (workload === 'big') {
      const seg = find(agg, 'big', MiB, 1, 'segmem');
      if (ok(seg) && seg.statsBytes !== null) {
        const line = `segmem's own count (segment.stats()): ${fmtInt(seg.statsBytes)} B per cycle between client and servers, against ${fmtInt(seg.clientBytes)} B from the kernel's counters.`;
        text.push(line, '');
        md.push(line, '');
      }
    }
  }
  const g = goals(agg);
  text.push('goals', textTable(GOAL_COLUMNS, g), '');
  md.push('### Goals', '', markdownTable(GOAL_COLUMNS, g), '');

  // What the driver costs: on 2 CPUs it competes with the servers.
  const driverNotes = SYSTEMS.map((s) => {
    const rows = agg.filter((a) => a.system === s && ok(a));
    if (rows.length === 0) return null;
    const max = rows.reduce((m, a) => (a.driverCpu > m.driverCpu ? a : m));
    return `${LABEL[s]} at most ${fmtNum(max.driverCpu, 2)} CPU (${max.workload} ${sizeLabel(max.valueBytes)}, ${max.clients} client${max.clients === 1 ? '' : 's'})`;
  }).filter(Boolean);
  const driverText = `The driver process used ${driverNotes.join('; ')}. With 2 CPUs shared by the driver and three servers, a row whose driver and servers together reach about 2 CPUs is bound by the machine, not by one system alone; the driver's share is what a client application would pay for that system's client library.`;
  text.push(driverText, '');
  md.push('### What the driver costs', '', driverText, '');

  const issues = [];
  for (const a of agg) {
    const where = `${a.workload} ${sizeLabel(a.valueBytes)}, ${a.clients} client${a.clients === 1 ? '' : 's'}, ${LABEL[a.system]}`;
    if (a.unavailable && a.rounds.length === 0) issues.push(`${where}: not available (${a.unavailable}).`);
    if (a.error) issues.push(`${where}: failed: ${a.error}`);
    if (a.verifyFailures > 0)
      issues.push(
        `${where}: ${a.verifyFailures} check(s) failed (a write not found or a sequence out of order).`,
      );
    if (a.capped) issues.push(`${where}: hit the operation cap before the window ended.`);
    for (const [k, n] of Object.entries(a.counters ?? {}))
      if (n > 0)
        issues.push(
          `${where}: ${k} = ${n}${k === 'waitShort' ? ' (WAIT 1 timed out: no replica acknowledged in 1 s)' : ''}.`,
        );
    if (a.socketsClosed > 0)
      issues.push(
        `${where}: ${a.socketsClosed} connection(s) closed during the window (a reconnect?); the kernel's byte counts miss what those carried.`,
      );
  }
  const others = agg.filter((a) => ok(a) && typeof a.othersCpu === 'number').map((a) => a.othersCpu);
  if (others.length > 0) {
    const busy = others.filter((o) => o > 0.2).length;
    const mean = others.reduce((x, y) => x + y, 0) / others.length;
    issues.push(
      `Other processes on the machine (other work, not this benchmark) used ${fmtNum(mean, 2)} CPU on average during the measured windows (${fmtNum(Math.min(...others), 2)} to ${fmtNum(Math.max(...others), 2)}); ${busy} of ${others.length} rows were above 0.2 CPU ("others CPU" column)${meta.quietWaitedS > 0.5 ? `, although the run waited ${fmtNum(meta.quietWaitedS, 0)} s in all for quiet before rows` : ''}. Such rows are lower than on a quiet machine; as the three systems alternate within each row, the ratios suffer less than the absolute numbers.`,
    );
  }
  if (issues.length > 0) {
    text.push('notes:', ...issues.map((i) => `- ${i}`), '');
    md.push('### Notes from this run', '', ...issues.map((i) => `- ${i}`), '');
  }

  if (profile) {
    const pr = profileRows(profile, 10);
    const head = `segmem servers under \`node --cpu-prof\`, write cycle 4 B at 32 clients in a separate run (${fmtInt(profile.run.opsPerSec)} cycles/s, p50 ${fmtUs(profile.run.p50)} µs under the profiler): ${fmtInt(profile.busyMs)} ms busy of ${fmtInt(profile.totalMs)} ms sampled over the ${profile.files} servers' whole lives (start-up included); top functions by self time, idle excluded. A sample lands where a thread stood when it got the CPU back, so on a loaded 2-CPU machine time spent waiting for a CPU inside a system call (a socket or file write) counts there too`;
    text.push(`profile: ${head}`, textTable(PROFILE_COLUMNS, pr), '');
    const top3 = profile.rows
      .slice(0, 3)
      .map(
        (r, i) =>
          `${i + 1}. \`${r.fn}\` ${r.where ? `(${r.where})` : '(native / VM)'}: ${fmtNum(r.busyShare * 100)} % of the servers' busy time${r.caller ? `, mostly called from \`${r.caller}\`` : ''}`,
      );
    md.push(
      "### Where segmem's write cycle spends its time",
      '',
      `${head}. The three biggest costs:`,
      '',
      ...top3,
      '',
    );
    md.push(
      '<details><summary>Top 10</summary>',
      '',
      markdownTable(PROFILE_COLUMNS, pr),
      '',
      '</details>',
      '',
    );
  }
  md.push(SECTION_END);
  return { text: text.join('\n'), markdown: md.join('\n'), svg: svgFor(agg) };
}

function writeDocs(section, svg) {
  writeDocsSection(SECTION_START, SECTION_END, section);
  mkdirSync(join(ROOT_DIR, 'docs/img'), { recursive: true });
  writeFileSync(join(ROOT_DIR, 'docs/img/peers-throughput.svg'), svg);
}

main().then(
  () => {
    cleanupSync();
    process.exit(0);
  },
  (err) => {
    log(`\nbench:peers failed: ${err?.stack ?? err}`);
    cleanupSync();
    process.exit(1);
  },
);
