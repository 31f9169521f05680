// The measured cells of bench/logs: one mechanism, one durability mode, N writer processes appending to one
// log for a bounded time and count; then the log is read back and checked. Also the crash tests and the
// strace / perf runs. Every process started here is killed by pid when the run ends, however it ends.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connect } from '@segmem/client';
import { makeTempDir, ROOT_DIR, removeTempDir } from '../lib/procs.mjs';
import { mergeSorted, percentile } from '../lib/stats.mjs';
import { checkFileLog, checkMmapLog, decodeRecord, LogChecker, REC_SIZE } from './record.mjs';

export const LOGS_DIR = join(ROOT_DIR, 'bench/logs');
const SEGMEM_WRITER = join(LOGS_DIR, 'segmem-writer.mjs');
/** Records per segmem cell: a log lives in the servers' replicated state (memory and snapshots). */
const SEGMEM_CELL_CAP = 500_000;
/** Retention asked for each cell's log: more than SEGMEM_CELL_CAP records can fill. */
const SEGMEM_LOG_MAX_BYTES = 256 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------------------
// Processes

const live = new Set();
const queuesToUnlink = new Map(); // name -> { bin, mode, writers }

/** SIGKILLs every process started here (by pid) and removes queues left in the kernel. */
export function killAllSync() {
  for (const p of live) p.kill('SIGKILL');
  live.clear();
  for (const [name, q] of queuesToUnlink) {
    spawnSync(q.bin, ['--role', 'unlink', '--mode', q.mode, '--name', name, '--writers', String(q.writers)]);
  }
  queuesToUnlink.clear();
}

/** Marks the point where the run's own 'exit' handler (installCleanupHandlers) also stops our processes. */
export function installLogCleanup() {
  process.on('exit', killAllSync);
}

/**
 * A child process whose stdout lines can be awaited (READY, HOLDING, RESULT, UNAVAILABLE).
 * stdin is a pipe: one byte starts a writer, "stop\n" stops a sink.
 */
export function startProc(cmd, args, name) {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: ROOT_DIR });
  const p = {
    name,
    child,
    pid: child.pid,
    lines: [],
    stderr: '',
    result: null,
    unavailable: null,
    listeners: new Set(),
    done: false,
    kill(sig = 'SIGKILL') {
      if (!p.done && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, sig);
        } catch {
          // already gone
        }
      }
    },
    send(s) {
      if (!p.done) child.stdin.write(s);
    },
  };
  live.add(p);
  child.stdin.on('error', () => {}); // EPIPE when it already died
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s) => {
    if (p.stderr.length < 20000) p.stderr += s;
  });
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (p.lines.length < 100) p.lines.push(line);
    if (line.startsWith('RESULT ')) p.result = JSON.parse(line.slice(7));
    if (line.startsWith('UNAVAILABLE ')) p.unavailable = line.slice(12);
    for (const l of p.listeners) l(line);
  });
  // 'close': stdout has been read to its end, so a RESULT line is never missed.
  p.exited = new Promise((resolve) =>
    child.once('close', (code, signal) => {
      p.done = true;
      live.delete(p);
      for (const l of p.listeners) l(null);
      resolve({ code, signal });
    }),
  );
  p.waitLine = (re, timeoutMs) =>
    new Promise((resolve, reject) => {
      const hit = p.lines.find((l) => re.test(l));
      if (hit) return resolve(hit);
      if (p.done) return reject(new Error(`${name} exited before printing ${re}: ${p.stderr.trim()}`));
      const timer = setTimeout(() => {
        p.listeners.delete(on);
        reject(new Error(`${name}: no ${re} within ${timeoutMs} ms: ${p.stderr.trim()}`));
      }, timeoutMs);
      const on = (line) => {
        if (line !== null && !re.test(line)) return;
        clearTimeout(timer);
        p.listeners.delete(on);
        if (line === null) reject(new Error(`${name} exited before printing ${re}: ${p.stderr.trim()}`));
        else resolve(line);
      };
      p.listeners.add(on);
    });
  /** Waits for the exit; SIGKILL after timeoutMs. */
  p.waitExit = async (timeoutMs) => {
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    const r = await p.exited;
    clearTimeout(timer);
    return r;
  };
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// Build: the C programs are compiled on every run into a temporary directory (nothing binary is kept).

export function buildNative() {
  const dir = makeTempDir('logs-bin');
  const bins = {};
  for (const prog of ['lw_file', 'lw_mmap', 'lw_queue']) {
    const out = join(dir, prog);
    execFileSync(
      'cc',
      ['-O2', '-std=c99', '-Wall', '-Wextra', '-o', out, join(LOGS_DIR, `${prog}.c`), '-lrt'],
      { stdio: ['ignore', 'inherit', 'inherit'] },
    );
    bins[prog] = out;
  }
  let cc = '';
  try {
    cc = execFileSync('cc', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  } catch {
    // reported as unknown
  }
  return { dir, bins, cc };
}

// ---------------------------------------------------------------------------------------------------------
// Machine accounting (Linux /proc; null where it cannot be read)

let clkTck;
function ticks() {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** Busy CPU seconds of the whole machine so far (steal included). */
function machineBusySeconds() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) / ticks();
  } catch {
    return null;
  }
}

function procCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / ticks();
  } catch {
    return 0;
  }
}

function procCtxSwitches(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const v = Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(s)?.[1] ?? 0);
    const nv = Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(s)?.[1] ?? 0);
    return v + nv;
  } catch {
    return 0;
  }
}

function selfCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** The block device holding `dir` and its /sys stat file (sectors written = field 7). */
export function blockDevice(dir) {
  try {
    const dev = statSync(dir).dev;
    const major = Math.floor(dev / 256) & 0xfff;
    const minor = (dev & 0xff) | ((Math.floor(dev / 4096) & 0xfff00) >>> 0);
    const path = `/sys/dev/block/${major}:${minor}/stat`;
    if (!existsSync(path)) return null;
    return { path, name: `${major}:${minor}` };
  } catch {
    return null;
  }
}

function sectorsWritten(dev) {
  if (!dev) return null;
  try {
    return Number(readFileSync(dev.path, 'utf8').trim().split(/\s+/)[6]) * 512;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Mechanisms

/**
 * Each kind returns the commands of its writers, what to do before and after them, and how to read the log
 * back. `sync` is 'none' | 'fdatasync' | 'fdatasync-in-lock' for the native kinds.
 */
function nativeKind(ctx, mech, sync, dir, writers) {
  const log = join(dir, 'log');
  const common = (i, latPath, cap) => [
    '--id',
    String(i),
    '--dur-ms',
    String(ctx.windowMs),
    '--cap',
    String(cap),
    '--lat',
    latPath,
    '--sync',
    sync,
  ];
  if (mech.kind === 'file') {
    return {
      log,
      writer: (i, latPath, cap, extra = []) => [
        ctx.bins.lw_file,
        ['--mode', mech.mode, '--log', log, ...common(i, latPath, cap), ...extra],
      ],
      verify: (checker) => checkFileLog(readFileSync(log), checker),
    };
  }
  if (mech.kind === 'mmap') {
    return {
      log,
      before: (capTotal) =>
        execFileSync(ctx.bins.lw_mmap, ['--role', 'init', '--log', log, '--cap', String(capTotal + writers)]),
      writer: (i, latPath, cap, extra = []) => [
        ctx.bins.lw_mmap,
        ['--log', log, ...common(i, latPath, cap), ...extra],
      ],
      verify: (checker) => checkMmapLog(readFileSync(log), checker),
    };
  }
  // queue: mq or fifo, one sink process
  const name = mech.mode === 'mq' ? `/segmem-lw-${process.pid}-${ctx.nextQueue++}` : join(dir, 'fifo');
  const sinkArgs = (extra = []) => [
    '--role',
    'sink',
    '--mode',
    mech.mode,
    '--name',
    name,
    '--log',
    log,
    '--writers',
    String(writers),
    '--sync',
    sync,
    ...extra,
  ];
  const kind = {
    log,
    name,
    sinkArgs,
    sinks: [],
    async before() {
      if (mech.mode === 'mq') queuesToUnlink.set(name, { bin: ctx.bins.lw_queue, mode: 'mq', writers });
      await kind.startSink();
    },
    async startSink(extra = [], wrap = null) {
      const [cmd, args] = wrapCmd(wrap, ctx.bins.lw_queue, sinkArgs(extra));
      const s = startProc(cmd, args, `${mech.mode} sink`);
      kind.sinks.push(s);
      await s.waitLine(/^READY$/, 10_000);
      return s;
    },
    writer: (i, latPath, cap, extra = []) => [
      ctx.bins.lw_queue,
      ['--role', 'writer', '--mode', mech.mode, '--name', name, ...common(i, latPath, cap), ...extra],
    ],
    async after() {
      const s = kind.sinks[kind.sinks.length - 1];
      s.send('stop\n');
      const { code, signal } = await s.waitExit(15_000);
      if (code !== 0)
        throw new Error(`${mech.mode} sink failed (code ${code}, signal ${signal}): ${s.stderr}`);
      queuesToUnlink.delete(name);
      return s.result;
    },
    verify: (checker) => checkFileLog(readFileSync(log), checker),
  };
  return kind;
}

function wrapCmd(wrap, cmd, args) {
  return wrap ? [wrap[0], [...wrap.slice(1), cmd, ...args]] : [cmd, args];
}

export class Unavailable extends Error {}

function segmemKind(ctx, mech, group, dir, writers, inflight) {
  const name = `bench-${mech.key}-${group.fsync}-${writers}w-k${inflight}-${ctx.nextLog++}`;
  const seqPaths = new Map();
  return {
    log: name,
    writer: (i, latPath, cap) => {
      const seqPath = join(dir, `seq-${i}.bin`);
      seqPaths.set(i, seqPath);
      const spec = {
        servers: group.servers,
        log: name,
        id: i,
        durMs: ctx.windowMs,
        cap,
        inflight,
        maxBytes: SEGMEM_LOG_MAX_BYTES,
        latPath,
        seqPath,
      };
      return [process.execPath, [SEGMEM_WRITER, JSON.stringify(spec)]];
    },
    pids: () => group.pids(),
    verify: (checker) => verifySegmemLog(group.servers, name, checker, seqPaths),
  };
}

/**
 * Reads a whole segmem log back (bounded in time and count) and checks it: contiguous sequence numbers,
 * whole records, each writer's records once and in order, each at the number its append() returned.
 */
async function verifySegmemLog(servers, name, checker, seqPaths, timeoutMs = 60_000) {
  const seqsOf = new Map();
  let total = 0;
  for (const [w, path] of seqPaths) {
    const b = existsSync(path) ? readFileSync(path) : Buffer.alloc(0);
    const a = new Float64Array(b.buffer, b.byteOffset, b.length / 8);
    seqsOf.set(w, a);
    total += a.length;
  }
  const seg = await connect({ servers });
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  let prev = null;
  let n = 0;
  try {
    for await (const { seq, data } of seg.log(name).read({ from: 0, signal: ac.signal })) {
      if (prev !== null && seq !== prev + 1) checker.seqErrors++;
      prev = seq;
      const rec = data.length === REC_SIZE ? decodeRecord(data, 0) : null;
      if (!rec) {
        checker.torn++;
        checker.tornBytes += data.length;
      } else {
        checker.add(rec);
        const given = seqsOf.get(rec.writer)?.[rec.seq];
        if (given !== undefined && given >= 0 && given !== seq) checker.seqErrors++;
      }
      if (++n > total + 100_000) break; // bound: far more records than were ever appended
    }
    // Checked: free the servers' memory for the next cells (truncateBefore is beside the pinned contract).
    const log = seg.log(name);
    if (prev !== null && typeof log.truncateBefore === 'function') await log.truncateBefore(prev + 1);
  } finally {
    clearTimeout(timer);
    await seg.close();
  }
  return checker;
}

// ---------------------------------------------------------------------------------------------------------
// One cell

function readLatencies(latPath, seqPath, count) {
  if (!existsSync(latPath)) return new Float64Array(0);
  const b = readFileSync(latPath);
  const ns = new Uint32Array(b.buffer, b.byteOffset, Math.floor(b.length / 4));
  let ok = null;
  if (seqPath && existsSync(seqPath)) {
    const s = readFileSync(seqPath);
    ok = new Float64Array(s.buffer, s.byteOffset, s.length / 8);
  }
  const out = new Float64Array(ns.length);
  let k = 0;
  for (let i = 0; i < ns.length; i++) {
    if (ok && !(ok[i] >= 0)) continue; // a segmem append that failed has no latency
    out[k++] = ns[i] / 1000;
  }
  return out.subarray(0, Math.min(k, count ?? k));
}

/**
 * Runs one cell and returns its row. spec: { mech, sync, writers, inflight, group (segmem servers) }.
 */
export async function runCell(ctx, spec) {
  const { mech, sync, writers } = spec;
  const dir = makeTempDir('logs-cell');
  const procs = [];
  try {
    const kind =
      mech.kind === 'segmem'
        ? segmemKind(ctx, mech, spec.group, dir, writers, spec.inflight)
        : nativeKind(ctx, mech, sync, dir, writers);
    const cellCap = mech.kind === 'segmem' ? Math.min(ctx.cellCap, SEGMEM_CELL_CAP) : ctx.cellCap;
    const perWriterCap = Math.max(1, Math.floor(cellCap / writers));
    const busy0 = machineBusySeconds();
    const self0 = selfCpuSeconds();
    const t0 = performance.now();
    const extraPids = kind.pids?.() ?? [];
    const extraCpu0 = extraPids.map(procCpuSeconds);
    const extraCs0 = extraPids.map(procCtxSwitches);
    await kind.before?.(perWriterCap * writers);
    const latPaths = [];
    for (let i = 0; i < writers; i++) {
      const latPath = join(dir, `lat-${i}.bin`);
      latPaths.push(latPath);
      const [cmd, args] = kind.writer(i, latPath, perWriterCap);
      procs.push(startProc(cmd, args, `${mech.key} writer ${i}`));
    }
    await Promise.all(procs.map((p) => p.waitLine(/^(READY|UNAVAILABLE)/, 30_000)));
    const unavailable = procs.find((p) => p.unavailable);
    if (unavailable) throw new Unavailable(unavailable.unavailable);
    const disk0 = sectorsWritten(ctx.dev);
    for (const p of procs) p.send('g');
    const exits = await Promise.all(procs.map((p) => p.waitExit(ctx.windowMs + 60_000)));
    const sinkResult = await kind.after?.();
    const disk1 = sectorsWritten(ctx.dev);
    const wall = (performance.now() - t0) / 1000;
    const busy1 = machineBusySeconds();
    exits.forEach((e, i) => {
      if (e.code !== 0 || !procs[i].result)
        throw new Error(`${procs[i].name} failed (code ${e.code}, signal ${e.signal}): ${procs[i].stderr}`);
    });
    const results = procs.map((p) => p.result);
    const extraCpu = extraPids.reduce((s, pid, i) => s + procCpuSeconds(pid) - extraCpu0[i], 0);
    const extraCs = extraPids.reduce((s, pid, i) => s + procCtxSwitches(pid) - extraCs0[i], 0);

    // Read the log back and check it.
    const expected = new Map(results.map((r) => [r.id, r.count]));
    const checker = new LogChecker(
      expected,
      results.map((r) => r.id),
    );
    await kind.verify(checker);
    const check = checker.result();

    const records = results.reduce((s, r) => s + r.count, 0);
    const startNs = Math.min(...results.map((r) => r.startNs));
    const endNs = Math.max(...results.map((r) => r.endNs));
    const seconds = (endNs - startNs) / 1e9;
    const lat = mergeSorted(
      results.map((r, i) => {
        const v = readLatencies(
          latPaths[i],
          mech.kind === 'segmem' ? join(dir, `seq-${i}.bin`) : null,
          r.count,
        );
        return { values: v, count: v.length };
      }),
    );
    const sum = (k) => results.reduce((s, r) => s + (r[k] ?? 0), 0);
    const cpuUs = sum('cpuUs') + (sinkResult?.cpuUs ?? 0) + extraCpu * 1e6;
    const cs =
      sum('nvcsw') + sum('nivcsw') + (sinkResult ? sinkResult.nvcsw + sinkResult.nivcsw : 0) + extraCs;
    const ours = cpuUs / 1e6 + (selfCpuSeconds() - self0);
    return {
      mech: mech.key,
      label: mech.label,
      sync,
      fsync: spec.group?.fsync ?? null,
      writers,
      inflight: spec.inflight ?? 1,
      records,
      seconds,
      recPerSec: seconds > 0 ? records / seconds : 0,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: lat.length ? lat[lat.length - 1] : Number.NaN,
      cpuUsPerRec: records ? cpuUs / records : Number.NaN,
      csPerRec: records ? cs / records : Number.NaN,
      diskBytesPerRec: disk0 !== null && disk1 !== null && records ? (disk1 - disk0) / records : null,
      othersCpu: busy0 !== null && busy1 !== null ? Math.max(0, (busy1 - busy0 - ours) / wall) : null,
      capped: results.some((r) => r.count >= perWriterCap),
      errors: sum('errors'),
      orderViolations: sum('orderViolations'),
      sink: sinkResult ?? null,
      check,
    };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    removeTempDir(dir);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Crash tests: a process is SIGKILLed for real at a chosen point, then the log is read back.

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowNs = () => Number(process.hrtime.bigint());

/**
 * 3 writers (0 is the victim, 1 and 2 survive) append for `durMs`. The victim either stops inside its
 * critical section (holdAt, optionally half way through a record) and is killed there after `holdMs`, or is
 * killed at a moment of the orchestrator's choosing (killAfterMs). Reports whether the survivors were blocked
 * while the victim held its lock/slot, whether they went on after the kill, and what the log holds.
 */
export async function crashWriter(ctx, mech, { holdAt = null, partial = false, killAfterMs = 150, group }) {
  const dir = makeTempDir('logs-crash');
  const procs = [];
  const durMs = 1200;
  const holdMs = 300;
  try {
    const kind =
      mech.kind === 'segmem'
        ? segmemKind({ ...ctx, windowMs: durMs }, mech, group, dir, 3, ctx.inflight)
        : nativeKind({ ...ctx, windowMs: durMs }, mech, 'none', dir, 3);
    const cap = 1_000_000; // per writer; survivors normally stop on time (durMs), after the kill
    await kind.before?.(cap * 3);
    for (let i = 0; i < 3; i++) {
      const extra =
        i === 0 && holdAt !== null
          ? ['--hold-at', String(holdAt), ...(partial ? ['--hold-partial'] : [])]
          : [];
      const [cmd, args] = kind.writer(i, join(dir, `lat-${i}.bin`), cap, extra);
      procs.push(startProc(cmd, args, `${mech.key} crash writer ${i}`));
    }
    await Promise.all(procs.map((p) => p.waitLine(/^(READY|UNAVAILABLE)/, 30_000)));
    const unavailable = procs.find((p) => p.unavailable);
    if (unavailable) throw new Unavailable(unavailable.unavailable);
    for (const p of procs) p.send('g');
    let holdNs = null;
    if (holdAt !== null) {
      await procs[0].waitLine(/^HOLDING/, 10_000);
      holdNs = nowNs();
      await sleep(holdMs);
    } else await sleep(killAfterMs);
    const killNs = nowNs();
    procs[0].kill('SIGKILL');
    const victimExit = await procs[0].waitExit(5000);
    const survivors = await Promise.all(procs.slice(1).map((p) => p.waitExit(durMs + 15_000)));
    const survivorsDone = survivors.every((e, i) => e.code === 0 && procs[i + 1].result);
    await kind.after?.();
    const expected = new Map(procs.slice(1).map((p, i) => [i + 1, p.result?.count ?? 0]));
    const checker = new LogChecker(expected, [0, 1, 2]);
    let duringHold = 0;
    let afterKill = 0;
    const onRecord = (rec) => {
      if (rec.writer === 0) return;
      const ts = Number(rec.tsNs);
      // Records the survivors began while the victim held (a margin for the HOLDING line's delay).
      if (holdNs !== null && ts > holdNs + 20e6 && ts < killNs) duringHold++;
      if (ts > killNs) afterKill++;
    };
    if (mech.kind === 'segmem') await kind.verify(checker);
    else if (mech.kind === 'mmap') checkMmapLog(readFileSync(kind.log), checker, onRecord);
    else checkFileLog(readFileSync(kind.log), checker, onRecord);
    const check = checker.result();
    return {
      mech: mech.key,
      victimSignal: victimExit.signal,
      holdAt,
      partial,
      blockedWhileHeld: holdNs === null || mech.kind === 'segmem' ? null : duringHold === 0,
      recordsDuringHold: duringHold,
      // Survivors that were never held up may have finished before the kill: that counts as going on.
      survivorsWentOn: survivorsDone && (afterKill > 0 || !(holdNs !== null && duringHold === 0)),
      recordsAfterKill: afterKill,
      victimRecords: check.perWriter[0] ?? 0,
      check,
    };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    removeTempDir(dir);
  }
}

/**
 * The sink of a queue is killed while it holds a batch it has received but not written; a new sink attaches
 * to the same queue, the writers go on. Counts the records the writers had handed over (their append had
 * returned) that never reached the log.
 */
export async function crashSink(ctx, mech) {
  const dir = makeTempDir('logs-crash');
  const procs = [];
  const durMs = 1200;
  try {
    const kind = nativeKind({ ...ctx, windowMs: durMs }, mech, 'none', dir, 2);
    if (mech.mode === 'mq') queuesToUnlink.set(kind.name, { bin: ctx.bins.lw_queue, mode: 'mq', writers: 2 });
    const first = await kind.startSink(['--hold-at', '3000']);
    for (let i = 0; i < 2; i++) {
      const [cmd, args] = kind.writer(i, join(dir, `lat-${i}.bin`), 200_000);
      procs.push(startProc(cmd, args, `${mech.key} crash writer ${i}`));
    }
    await Promise.all(procs.map((p) => p.waitLine(/^READY$/, 10_000)));
    for (const p of procs) p.send('g');
    const held = Number((await first.waitLine(/^HOLDING/, 10_000)).split(' ')[1]);
    await sleep(100);
    first.kill('SIGKILL');
    await first.waitExit(5000);
    await sleep(200); // writers meanwhile: blocked on a full queue (mq) or EPIPE with no reader (fifo)
    await kind.startSink(['--attach']);
    const exits = await Promise.all(procs.map((p) => p.waitExit(durMs + 15_000)));
    if (!exits.every((e) => e.code === 0)) throw new Error(`${mech.key} crash writers failed`);
    await kind.after();
    const expected = new Map(procs.map((p, i) => [i, p.result.count]));
    const checker = new LogChecker(expected, [0, 1]);
    checkFileLog(readFileSync(kind.log), checker);
    const check = checker.result();
    return {
      mech: mech.key,
      held,
      acknowledged: procs.reduce((s, p) => s + p.result.count, 0),
      epipe: procs.reduce((s, p) => s + (p.result.epipe ?? 0), 0),
      lostAcknowledged: check.lost + check.gaps,
      check,
    };
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    removeTempDir(dir);
  }
}

// ---------------------------------------------------------------------------------------------------------
// strace -c -f and perf stat on writer 0 (and the sink) of a 2-writer cell

/**
 * Runs a 2-writer cell with writer 0 (and a queue's sink) under `tool` ('strace' | 'perf'), and returns
 * the tool's counts divided by the records that process appended (or wrote, for a sink).
 */
export async function toolCell(ctx, mech, sync, tool, group) {
  const dir = makeTempDir('logs-tool');
  const procs = [];
  const outFor = (who) => join(dir, `${tool}-${who}.txt`);
  const wrapFor = (who) =>
    tool === 'strace'
      ? ['strace', '-f', '-c', '-o', outFor(who)]
      : [
          'perf',
          'stat',
          '-x',
          ',',
          '-o',
          outFor(who),
          '-e',
          'task-clock,context-switches,cpu-migrations,page-faults,cycles,instructions',
          '--',
        ];
  try {
    const kind =
      mech.kind === 'segmem'
        ? segmemKind(ctx, mech, group, dir, 2, ctx.inflight)
        : nativeKind(ctx, mech, sync, dir, 2);
    const cap = Math.floor(ctx.cellCap / 2);
    if (kind.startSink) {
      if (mech.mode === 'mq')
        queuesToUnlink.set(kind.name, { bin: ctx.bins.lw_queue, mode: 'mq', writers: 2 });
      await kind.startSink([], wrapFor('sink'));
    } else await kind.before?.(cap * 2);
    for (let i = 0; i < 2; i++) {
      const [cmd0, args0] = kind.writer(i, join(dir, `lat-${i}.bin`), cap);
      const [cmd, args] = i === 0 ? wrapCmd(wrapFor('writer'), cmd0, args0) : [cmd0, args0];
      procs.push(startProc(cmd, args, `${mech.key} ${tool} writer ${i}`));
    }
    await Promise.all(procs.map((p) => p.waitLine(/^(READY|UNAVAILABLE)/, 30_000)));
    const unavailable = procs.find((p) => p.unavailable);
    if (unavailable) throw new Unavailable(unavailable.unavailable);
    // segmem: the server does the writing, so strace attaches to it for the measured window.
    let serverTrace = null;
    if (mech.kind === 'segmem' && tool === 'strace') {
      serverTrace = startProc(
        'strace',
        ['-f', '-c', '-o', outFor('sink'), '-p', String(group.pids()[0])],
        'strace -p',
      );
      await sleep(300); // attached (strace prints nothing on stdout to wait for)
    }
    for (const p of procs) p.send('g');
    const exits = await Promise.all(procs.map((p) => p.waitExit(ctx.windowMs + 60_000)));
    if (!exits.every((e) => e.code === 0))
      throw new Error(`${mech.key} under ${tool}: ${procs.map((p) => p.stderr).join(' ')}`);
    let sinkResult = await kind.after?.();
    if (serverTrace) {
      serverTrace.kill('SIGINT'); // detaches and writes the summary
      await serverTrace.waitExit(10_000);
      sinkResult = { count: procs.reduce((n, p) => n + p.result.count, 0) };
    }
    const writerRecords = procs[0].result.count;
    const out = { mech: mech.key, sync, tool, writerRecords, writer: null, sink: null };
    const parse = tool === 'strace' ? parseStrace : parsePerf;
    out.writer = parse(readFileSync(outFor('writer'), 'utf8'), writerRecords);
    if (sinkResult) out.sink = parse(readFileSync(outFor('sink'), 'utf8'), sinkResult.count);
    return out;
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    removeTempDir(dir);
  }
}

/** strace -c output: [{ syscall, calls, perRecord, usPerCall }] sorted by calls, and the totals. */
export function parseStrace(text, records) {
  const rows = [];
  let total = null;
  for (const line of text.split('\n')) {
    const m = /^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)?\s*(\S+)\s*$/.exec(line);
    if (!m) continue;
    const row = { syscall: m[6], seconds: Number(m[2]), usPerCall: Number(m[3]), calls: Number(m[4]) };
    if (row.syscall === 'total') total = row;
    else rows.push(row);
  }
  rows.sort((a, b) => b.calls - a.calls);
  for (const r of rows) r.perRecord = records ? r.calls / records : Number.NaN;
  return {
    records,
    rows,
    callsPerRecord: total && records ? total.calls / records : Number.NaN,
    text: text.trim(),
  };
}

/** perf stat -x, output: { event: { value, perRecord, supported } }. */
export function parsePerf(text, records) {
  const events = {};
  for (const line of text.split('\n')) {
    if (!line.trim() || line.startsWith('#')) continue;
    const f = line.split(',');
    if (f.length < 3) continue;
    const name = f[2].replace(/:u$/, '');
    const supported = !/not (supported|counted)/.test(f[0]);
    const value = supported ? Number(f[0]) : null;
    events[name] = { value, supported, perRecord: supported && records ? value / records : null, unit: f[1] };
  }
  return { records, events, text: text.trim() };
}

export function toolAvailable(tool) {
  const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? (r.stdout || r.stderr).split('\n')[0].trim() : null;
}
