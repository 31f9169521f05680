// Kept grants (delegations): what bench:peers does not show.
//
//   node bench/delegations.mjs             # after `npx tsc -b`; under 2 min; rewrites the "Kept grants
//                                          # (delegations)" section of docs/benchmarks.md
//   node bench/delegations.mjs --no-docs   # prints the tables only
//   --reps N                               # writer acquires per holder count and case (default 40, 30..200)
//
// Starts a 3-server segmem group (separate processes, 127.0.0.1, free ports, fsync "batch", data in a
// temporary directory), then measures:
//
// 1. Page rights per read cycle. One session re-reads an unchanged 4 KiB object under its kept read grant
//    (acquireRead, read the first byte, release: no message to the servers), timed in batches, in a child
//    process with the native addon (page rights: each acquire and release is an mprotect) and in one with
//    SEGMEM_DISABLE_NATIVE=1 (no page rights; a read handle then keeps a copy of the bytes to catch a write
//    through it), alternating twice. The native addon's protect() (read, then none: the two mprotect calls
//    of a cycle) is also timed alone on one page, which is the cost page rights add to a cycle.
// 2. Revocation. N = 1, 8, 32 holder sessions (all in this process) keep read grants of one object; a writer
//    session (delegations off, so it keeps nothing itself) acquires it for writing: the servers revoke the
//    kept grants and grant the writer once they are back. Against the same writer's acquire of the same kind
//    of object with no holders, alternated per repetition; a fresh object per repetition, as a revoked
//    session keeps no grant of that object for a while.
//
// Bounded: at most 2 min in all, the loops by count and time; every process started is stopped (by pid)
// and the temp dir removed at the end, also on an error or Ctrl-C.
import { execFileSync } from 'node:child_process';
import { unlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
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
  ROOT_DIR,
  waitForQuiet,
} from './lib/procs.mjs';
import { profileColumns, profileTableRows, topSelfTime } from './lib/profile.mjs';
import { fmtInt, fmtNum, fmtUs, markdownTable, percentile, textTable } from './lib/stats.mjs';

const MAX_RUN_MS = 120_000;
const OBJECT_BYTES = 4096;
const BATCH = 200; // read cycles per timed batch
const CYCLE_WARMUP_MS = 300;
const CYCLE_WINDOW_MS = 1500;
const MAX_CYCLES = 3_000_000; // per child, warm-up included
const PROTECT_PAIRS = 400_000;
const HOLDER_COUNTS = [1, 8, 32];
const MANY_SESSIONS = 32;
const KEPT_DEADLINE_MS = 5000;
const SECTION_START = '<!-- bench:delegations:start -->';
const SECTION_END = '<!-- bench:delegations:end -->';

let reps = 40;
let writeDocs = true;
let childSpec = null;
parseArgs(process.argv.slice(2), import.meta.url, (opt, value) => {
  if (opt === '--no-docs') writeDocs = false;
  else if (opt === '--child') childSpec = JSON.parse(value());
  else if (opt === '--reps') {
    reps = Number(value());
    if (!Number.isInteger(reps) || reps < 30 || reps > 200)
      throw new Error('--reps takes an integer from 30 to 200');
  } else return false;
});

const sorted = (a) => Float64Array.from(a).sort();
const p50 = (a) => percentile(a, 50);
const p99 = (a) => percentile(a, 99);

/** One acquireRead / read a byte / release; returns the byte so the read is not optimized away. */
async function readCycle(seg, name) {
  const h = await seg.acquireRead(name);
  const b = h.bytes[0];
  await h.release();
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// Child: read cycles under a kept grant, with or without page rights (chosen by SEGMEM_DISABLE_NATIVE).

async function child({ servers, name, sessions = 1 }) {
  const segs = [];
  let sink = 0;
  try {
    for (let i = 0; i < sessions; i++) segs.push(await connect({ servers: servers.split(',') }));
    // One session: one object; several: each its own, so they share nothing but the process.
    const names = segs.map((_, i) => (sessions === 1 ? name : `${name}/${i}`));
    for (let i = 0; i < sessions; i++) {
      await segs[i].create(names[i], OBJECT_BYTES, { ifNotExists: true });
      sink += await readCycle(segs[i], names[i]); // the grant is kept from here on
    }
    const perSessionCap = Math.floor(MAX_CYCLES / sessions);
    const loops = async (endMs, batches) => {
      let cycles = 0;
      await Promise.all(
        segs.map(async (seg, s) => {
          for (let n = 0; performance.now() < endMs && n < perSessionCap / 2; n += BATCH) {
            const t0 = performance.now();
            for (let i = 0; i < BATCH; i++) sink += await readCycle(seg, names[s]);
            batches?.push(((performance.now() - t0) * 1e6) / BATCH);
            cycles += BATCH;
          }
        }),
      );
      return cycles;
    };
    await loops(performance.now() + CYCLE_WARMUP_MS, null);
    const requests = () => segs.reduce((sum, seg) => sum + seg.stats().requests, 0);
    const requests0 = requests();
    const batches = [];
    const start = performance.now();
    const cycles = await loops(start + CYCLE_WINDOW_MS, batches);
    const seconds = (performance.now() - start) / 1000;
    const result = {
      protectedPages: segs[0].protectedPages,
      cycles,
      seconds,
      cyclesPerSec: cycles / seconds,
      // With one session a batch's mean is the cycle's cost; with several, batches interleave.
      nsPerCycle: p50(sorted(batches)),
      requestsPerCycle: (requests() - requests0) / cycles,
      sink: sink & 1,
    };
    if (segs[0].protectedPages && sessions === 1) result.protect = protectPairs();
    process.stdout.write(`BENCH_RESULT ${JSON.stringify(result)}\n`);
  } finally {
    for (const seg of segs) await seg.close();
  }
}

/** The two mprotect calls of a read cycle (read, then none) on one page, alone: ns per pair, batches' p50. */
function protectPairs() {
  const { native } = createRequire(import.meta.url)('@segmem/native');
  const page = native.pageSize();
  const path = join(tmpdir(), `segmem-bench-protect-${process.pid}`);
  const id = native.map(path, 16 * page);
  unlinkSync(path);
  const batches = [];
  try {
    for (let done = 0; done < PROTECT_PAIRS; done += 1000) {
      const t0 = performance.now();
      for (let i = 0; i < 1000; i++) {
        native.protect(id, 0, page, 1);
        native.protect(id, 0, page, 0);
      }
      if (done >= PROTECT_PAIRS / 10) batches.push(((performance.now() - t0) * 1e6) / 1000);
    }
  } finally {
    native.close(id);
  }
  const s = sorted(batches);
  return { nsPerPair: p50(s), nsPerPairP99: p99(s), pairs: batches.length * 1000 };
}

function runChild(servers, name, nativeOn, { sessions = 1, nodeArgs = [] } = {}) {
  const env = { ...process.env };
  if (nativeOn) delete env.SEGMEM_DISABLE_NATIVE;
  else env.SEGMEM_DISABLE_NATIVE = '1';
  const out = execFileSync(
    process.execPath,
    [
      '--disable-warning=SEGMEM_NO_PAGE_PROTECTION',
      ...nodeArgs,
      fileURLToPath(import.meta.url),
      '--child',
      JSON.stringify({ servers, name, sessions }),
    ],
    { env, encoding: 'utf8', timeout: 30_000, cwd: ROOT_DIR, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const line = out.split('\n').find((l) => l.startsWith('BENCH_RESULT '));
  if (!line) throw new Error(`read-cycle child printed no result: ${out}`);
  const r = JSON.parse(line.slice('BENCH_RESULT '.length));
  if (r.protectedPages !== nativeOn)
    throw new Error(`read-cycle child: page protection ${r.protectedPages}, wanted ${nativeOn}`);
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// Revocation

/** Holders re-read `name` until each keeps its read grant (a re-read then sends nothing); bounded. */
async function holdKeptGrants(holders, name) {
  const deadline = performance.now() + KEPT_DEADLINE_MS;
  for (;;) {
    await Promise.all(holders.map((h) => readCycle(h, name)));
    const before = holders.map((h) => h.stats().requests);
    await Promise.all(holders.map((h) => readCycle(h, name)));
    if (holders.every((h, i) => h.stats().requests === before[i])) return;
    if (performance.now() > deadline)
      throw new Error(`holders of ${name} did not keep their read grants within ${KEPT_DEADLINE_MS} ms`);
  }
}

async function timedWrite(writer, name) {
  const t0 = performance.now();
  const h = await writer.acquireWrite(name);
  const us = (performance.now() - t0) * 1000;
  h.bytes[0]++;
  await h.release();
  return us;
}

async function revocation(servers, n) {
  const holders = [];
  const writer = await connect({ servers, delegations: false });
  try {
    for (let i = 0; i < n; i++) holders.push(await connect({ servers }));
    const names = [];
    for (let k = 0; k < reps + 3; k++) {
      const name = `deleg/revoke-n${n}-${k}`;
      await writer.create(name, OBJECT_BYTES, { ifNotExists: true });
      await timedWrite(writer, name); // so that the writer's copy is current in both timed cases
      names.push(name);
    }
    const withHolders = [];
    const without = [];
    for (let k = 0; k < names.length; k++) {
      const name = names[k];
      // The same writer, the same kind of fresh object, its copy current in both cases: first alone...
      const alone = await timedWrite(writer, name);
      // ...then after N sessions took kept read grants of it.
      await holdKeptGrants(holders, name);
      const contested = await timedWrite(writer, name);
      if (k >= 3) {
        without.push(alone);
        withHolders.push(contested);
      }
    }
    return { n, with: sorted(withHolders), without: sorted(without) };
  } finally {
    for (const h of holders) await h.close();
    await writer.close();
  }
}

// ---------------------------------------------------------------------------------------------------------

async function main() {
  installCleanupHandlers();
  const overall = setTimeout(() => {
    process.stderr.write(`bench: over ${MAX_RUN_MS / 1000} s, stopping\n`);
    cleanupSync();
    process.exit(1);
  }, MAX_RUN_MS);
  overall.unref();
  const dataDir = makeTempDir('delegations');
  let group = null;
  addCleanup(() => group?.killSync());
  try {
    log('starting a 3-server group (fsync batch)');
    group = await localCluster(3, { fsync: 'batch', dir: dataDir, onSpawn: adoptChild });
    const servers = group.servers;
    const quiet = await waitForQuiet({ maxMs: 10_000, thresholdCpus: 0.3 });
    const loadBefore = loadavg()[0];

    log('read cycles under a kept grant: page rights on / off, alternating, in child processes');
    const on = [];
    const off = [];
    for (let round = 0; round < 2; round++) {
      on.push(runChild(servers, 'deleg/read-on', true));
      off.push(runChild(servers, 'deleg/read-off', false));
    }
    const mean = (rs, k) => rs.reduce((s, r) => s + r[k], 0) / rs.length;
    const protect = on.map((r) => r.protect);
    log(`${MANY_SESSIONS} sessions in one process, each re-reading its own object: page rights on / off`);
    const manyOn = runChild(servers, 'deleg/many-on', true, { sessions: MANY_SESSIONS });
    const manyOff = runChild(servers, 'deleg/many-off', false, { sessions: MANY_SESSIONS });
    log(`the same, page rights on, under node --cpu-prof`);
    const profDir = makeTempDir('delegations-prof');
    const profiled = runChild(servers, 'deleg/many-prof', true, {
      sessions: MANY_SESSIONS,
      nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir],
    });
    const profile = topSelfTime(profDir, ROOT_DIR, 10);

    const revoke = [];
    for (const n of HOLDER_COUNTS) {
      log(`revocation: ${n} holder session(s), ${reps} writer acquires with and without`);
      revoke.push(await revocation(servers.split(','), n));
    }
    const load = `load average ${loadBefore.toFixed(1)} before, ${loadavg()[0].toFixed(1)} after (${cpus().length} CPUs${
      quiet.busy !== null && quiet.busy > 0.3
        ? `; still ${quiet.busy.toFixed(1)} CPUs busy after waiting ${(quiet.waitedMs / 1000).toFixed(0)} s for quiet`
        : ''
    })`;

    const cycleColumns = [
      { key: 'what', title: 'read cycle under a kept read grant, 4 KiB', align: 'left' },
      { key: 'ns', title: 'ns per cycle (p50 of batches)' },
      { key: 'rounds', title: 'rounds' },
      { key: 'msgs', title: 'messages per cycle' },
    ];
    const fmtNs = (x) => fmtInt(x);
    const cycleRows = [
      {
        what: 'page rights on (native addon: 2 mprotect per cycle)',
        ns: fmtNs(mean(on, 'nsPerCycle')),
        rounds: on.map((r) => fmtNs(r.nsPerCycle)).join(' / '),
        msgs: fmtNum(mean(on, 'requestsPerCycle'), 4),
      },
      {
        what: 'page rights off (SEGMEM_DISABLE_NATIVE=1: a copy of the 4 KiB per read handle instead)',
        ns: fmtNs(mean(off, 'nsPerCycle')),
        rounds: off.map((r) => fmtNs(r.nsPerCycle)).join(' / '),
        msgs: fmtNum(mean(off, 'requestsPerCycle'), 4),
      },
      {
        what: 'difference (on − off)',
        ns: fmtNs(mean(on, 'nsPerCycle') - mean(off, 'nsPerCycle')),
        rounds: '',
        msgs: '',
      },
      {
        what: `${MANY_SESSIONS} sessions in one process, own objects, page rights on: cycles/s`,
        ns: '',
        rounds: fmtInt(manyOn.cyclesPerSec),
        msgs: fmtNum(manyOn.requestsPerCycle, 4),
      },
      {
        what: `${MANY_SESSIONS} sessions in one process, own objects, page rights off: cycles/s`,
        ns: '',
        rounds: fmtInt(manyOff.cyclesPerSec),
        msgs: fmtNum(manyOff.requestsPerCycle, 4),
      },
      {
        what: 'mprotect cost per cycle: protect(read) + protect(none) on one page, alone',
        ns: fmtNs(protect.reduce((s, p) => s + p.nsPerPair, 0) / protect.length),
        rounds: protect.map((p) => fmtNs(p.nsPerPair)).join(' / '),
        msgs: '',
      },
    ];
    const revokeColumns = [
      { key: 'n', title: 'holders' },
      { key: 'aloneP50', title: 'alone p50 µs' },
      { key: 'aloneP99', title: 'alone p99 µs' },
      { key: 'withP50', title: 'with holders p50 µs' },
      { key: 'withP99', title: 'with holders p99 µs' },
      { key: 'addP50', title: 'added p50 µs' },
      { key: 'addP99', title: 'added p99 µs' },
    ];
    const revokeRows = revoke.map((r) => ({
      n: String(r.n),
      aloneP50: fmtUs(p50(r.without)),
      aloneP99: fmtUs(p99(r.without)),
      withP50: fmtUs(p50(r.with)),
      withP99: fmtUs(p99(r.with)),
      addP50: fmtUs(p50(r.with) - p50(r.without)),
      addP99: fmtUs(p99(r.with) - p99(r.without)),
    }));
    const cycleNote = `Each child: ${fmtInt(CYCLE_WARMUP_MS)} ms warm-up, then ${fmtInt(CYCLE_WINDOW_MS)} ms of batches of ${BATCH} cycles (${fmtInt(mean(on, 'cycles'))} / ${fmtInt(mean(off, 'cycles'))} cycles measured on average with page rights on / off); protect() alone: ${fmtInt(protect[0]?.pairs ?? 0)} pairs per child.`;
    const revokeNote = `${reps} repetitions per holder count (after 3 unmeasured), a fresh 4 KiB object each; the writer's acquireWrite alone, then after the holders took kept read grants (checked: a re-read by every holder sent no message), each followed by a 1-byte write release. Holders and writer are sessions of one process; "added" = with holders − alone, at the same percentile.`;
    console.log(`fsync "batch" on every server; ${load}\n`);
    console.log(textTable(cycleColumns, cycleRows));
    console.log(`\n${cycleNote}\n`);
    const profColumns = profileColumns('share of samples');
    const profRows = profileTableRows(profile.rows.slice(0, 8));
    const profNote = `The ${MANY_SESSIONS}-session child, page rights on, under \`node --cpu-prof\` (${fmtInt(profiled.cyclesPerSec)} cycles/s under the profiler): top functions by self time over the process's whole life (start-up included).`;
    console.log(`\n${profNote}`);
    console.log(textTable(profColumns, profRows));
    console.log('');
    console.log(textTable(revokeColumns, revokeRows));
    console.log(`\n${revokeNote}`);

    if (writeDocs) {
      const section = `${SECTION_START}
## Kept grants (delegations)

Written by \`bench/delegations.mjs\` (\`npx tsc -b && node bench/delegations.mjs\`); rerunning it replaces
this section.

- Date: ${new Date().toUTCString()}; ${cpus().length} CPUs; Node ${process.version}; a 3-server group on
  127.0.0.1, fsync "batch" on every server; ${load}.

### Page rights per read cycle

One session re-reads an unchanged 4 KiB object under its kept read grant (\`h = await seg.acquireRead(name);
h.bytes[0]; await h.release()\`), in a child process of its own, twice with the native addon (page rights)
and twice without (\`SEGMEM_DISABLE_NATIVE=1\`), alternating. ${cycleNote}

${markdownTable(cycleColumns, cycleRows)}

${profNote}

<details><summary>Top 8</summary>

${markdownTable(profColumns, profRows)}

</details>

### Revocation: a writer waiting for N sessions' kept read grants

${revokeNote}

${markdownTable(revokeColumns, revokeRows)}
${SECTION_END}`;
      writeDocsSection(SECTION_START, SECTION_END, section);
      log('wrote the "Kept grants (delegations)" section of docs/benchmarks.md');
    }
  } finally {
    await group?.stop();
    clearTimeout(overall);
  }
}

if (childSpec) {
  child(childSpec).then(
    () => process.exit(0),
    (err) => {
      process.stderr.write(`read-cycle child: ${err?.stack ?? err}\n`);
      process.exit(1);
    },
  );
} else {
  main().then(
    () => {
      cleanupSync();
      process.exit(0);
    },
    (err) => {
      log(`\nbench/delegations failed: ${err?.stack ?? err}`);
      cleanupSync();
      process.exit(1);
    },
  );
}
