// Child processes (servers, load workers) and temp dirs of a benchmark run, with cleanup on every exit path.
//
// Every process started here is remembered by pid and killed (by that pid only) when the run ends, whether
// it ends normally, by an error, or by SIGINT/SIGTERM. Every temp dir made here is removed the same way.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT_DIR = join(BENCH_DIR, '..');
export const SERVER_BIN = join(ROOT_DIR, 'packages/server/bin/segmem-server.mjs');
export const WORKER = join(BENCH_DIR, 'worker.mjs');
export const ECHO_SERVER = join(BENCH_DIR, 'echo-server.mjs');

const children = new Set();
const tempDirs = new Set();
const cleanups = new Set();

/** Runs `fn` (synchronous) in {@link cleanupSync}, unless `remove()` was called first. */
export function addCleanup(fn) {
  cleanups.add(fn);
  return { remove: () => cleanups.delete(fn) };
}

function alive(child) {
  return child.exitCode === null && child.signalCode === null;
}

/** Kills every child still running (SIGKILL, by pid) and removes every temp dir. Synchronous: safe in 'exit'. */
export function cleanupSync() {
  for (const child of children) {
    if (alive(child)) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  children.clear();
  for (const fn of cleanups) {
    try {
      fn();
    } catch {
      // best effort: the other cleanups still run
    }
  }
  cleanups.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

let handlersInstalled = false;

export function installCleanupHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, cleaning up\n`);
      cleanupSync();
      process.exit(130);
    });
  }
}

export function makeTempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), `segmem-bench-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir) {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/** Waits for a child to exit; SIGTERM first, SIGKILL after `graceMs`. Resolves with { code, signal }. */
export function stopChild(child, graceMs = 5000) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code: child.exitCode, signal: child.signalCode });
    };
    if (!alive(child)) {
      children.delete(child);
      resolve({ code: child.exitCode, signal: child.signalCode });
      return;
    }
    child.once('exit', done);
    const timer = setTimeout(() => {
      if (alive(child)) process.kill(child.pid, 'SIGKILL');
    }, graceMs);
    process.kill(child.pid, 'SIGTERM');
  });
}

/**
 * Starts `node [nodeArgs] script [args]` and resolves once a stdout line matches `ready` (with the match),
 * rejecting if the process exits first or `timeoutMs` passes.
 */
export function spawnUntilReady(script, args, { ready, nodeArgs = [], timeoutMs = 15000, name = script }) {
  return spawnCommandUntilReady(process.execPath, [...nodeArgs, script, ...args], { ready, timeoutMs, name });
}

/**
 * Starts any program and resolves once a line on one of `streams` matches `ready`; same contract as
 * spawnUntilReady (the child is remembered by pid and killed by cleanupSync).
 */
export function spawnCommandUntilReady(
  command,
  args,
  { ready, timeoutMs = 15000, name = command, streams = ['stdout'], cwd = ROOT_DIR },
) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd });
  children.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s) => {
    if (stderr.length < 20000) stderr += s;
  });
  if (!streams.includes('stdout')) child.stdout.resume(); // an unread pipe would block the child once full
  return new Promise((resolve, reject) => {
    const readers = streams.map((s) => createInterface({ input: child[s] }));
    const timer = setTimeout(() => {
      fail(new Error(`${name} did not report ready within ${timeoutMs} ms`));
    }, timeoutMs);
    const onExit = (code, signal) =>
      fail(
        new Error(`${name} exited (code ${code}, signal ${signal}) before it was ready: ${stderr.trim()}`),
      );
    function fail(err) {
      clearTimeout(timer);
      child.off('exit', onExit);
      if (alive(child)) process.kill(child.pid, 'SIGKILL');
      children.delete(child);
      reject(err);
    }
    child.once('exit', onExit);
    for (const lines of readers) {
      lines.on('line', (line) => {
        const m = ready.exec(line);
        if (m) {
          clearTimeout(timer);
          child.off('exit', onExit);
          for (const r of readers) r.removeAllListeners('line');
          child.stdout.resume(); // keep draining
          resolve({ child, match: m, stderr: () => stderr });
        }
      });
    }
  });
}

/** Remembers a child started elsewhere (e.g. by localCluster) so that cleanupSync kills it too. */
export function adoptChild(child) {
  children.add(child);
}

/**
 * Starts a segmem server process on an ephemeral loopback port with a fresh data dir.
 * Resolves with { address, child, dataDir, profileDir, stop() }.
 */
export async function startSegmemServer({ id = 's1', fsync = 'batch', segmentBytes, profile = false }) {
  const dataDir = makeTempDir(`data-${id}`);
  const profileDir = profile ? makeTempDir(`prof-${id}`) : null;
  const args = ['--id', id, '--listen', '127.0.0.1:0', '--data', dataDir, '--fsync', fsync];
  if (segmentBytes !== undefined) args.push('--segment-bytes', String(segmentBytes));
  const nodeArgs = profile ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : [];
  const { child, match, stderr } = await spawnUntilReady(SERVER_BIN, args, {
    ready: /^segmem-server \S+ ready on (\S+)$/,
    nodeArgs,
    name: `segmem-server ${id} (fsync ${fsync})`,
  });
  return {
    address: match[1],
    pid: child.pid,
    child,
    dataDir,
    profileDir,
    stderr,
    async stop() {
      const { code, signal } = await stopChild(child, 10000);
      removeTempDir(dataDir);
      if (code !== 0) {
        throw new Error(
          `segmem-server ${id} (fsync ${fsync}) stopped with code ${code}, signal ${signal}: ${stderr().trim()}`,
        );
      }
    },
  };
}

/** Starts the plain TCP echo server used for the floor. Resolves with { address, stop() }. */
export async function startEchoServer() {
  const { child, match } = await spawnUntilReady(ECHO_SERVER, [], {
    ready: /^echo ready on (\S+)$/,
    name: 'echo server',
  });
  return {
    address: match[1],
    pid: child.pid,
    async stop() {
      await stopChild(child, 5000);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// CPU accounting: how much CPU processes other than ours used while a row ran (Linux /proc; null elsewhere).

let clockTicks;
function ticksPerSecond() {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** Busy CPU seconds of the whole machine so far (steal included: another VM's use is contention too). */
export function machineBusySeconds() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already inside user)
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) / ticksPerSecond();
  } catch {
    return null;
  }
}

/** CPU seconds (user + system) a live process used so far, or 0 if it cannot be read. */
export function processCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
  } catch {
    return 0;
  }
}

/** CPUs busy (all processes) over the next `ms`, or null without /proc. */
export async function machineBusyCpus(ms) {
  const a = machineBusySeconds();
  if (a === null) return null;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const b = machineBusySeconds();
  return b === null ? null : (b - a) / ((performance.now() - t0) / 1000);
}

/**
 * Waits until the machine is quiet (at most `thresholdCpus` busy over a short sample) or `maxMs` has passed.
 * Only our idle servers run between rows, so what is busy then is someone else. Returns the time waited.
 */
export async function waitForQuiet({ maxMs, thresholdCpus = 0.15, sampleMs = 300 }) {
  const t0 = performance.now();
  let busy = null;
  for (;;) {
    busy = await machineBusyCpus(sampleMs);
    if (busy === null || busy <= thresholdCpus || performance.now() - t0 >= maxMs) break;
  }
  return { waitedMs: Math.max(0, performance.now() - t0 - sampleMs), busy };
}

function selfCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/**
 * Runs one load worker (bench/worker.mjs, or `script` speaking the same BENCH_RESULT protocol) with `spec` and
 * resolves with the JSON it reports. The worker is killed (by pid) if it
 * runs past `timeoutMs`; a non-zero exit or missing result rejects.
 */
export function runWorker(spec, { timeoutMs, pids = [], script = WORKER }) {
  const t0 = performance.now();
  const busy0 = machineBusySeconds();
  const self0 = selfCpuSeconds();
  const pids0 = pids.map(processCpuSeconds);
  const child = spawn(process.execPath, [script, JSON.stringify(spec)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: ROOT_DIR,
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (s) => {
    stdout += s;
  });
  child.stderr.on('data', (s) => {
    if (stderr.length < 50000) stderr += s;
  });
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (alive(child)) process.kill(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      const line = stdout.split('\n').find((l) => l.startsWith('BENCH_RESULT '));
      if (timedOut)
        reject(new Error(`worker ${spec.mode} timed out after ${timeoutMs} ms (killed): ${stderr.trim()}`));
      else if (code !== 0 || !line)
        reject(new Error(`worker ${spec.mode} failed (code ${code}, signal ${signal}): ${stderr.trim()}`));
      else {
        const result = JSON.parse(line.slice('BENCH_RESULT '.length));
        const warnings = stderr
          .split('\n')
          .filter((l) => l.trim() && !/ExperimentalWarning|--trace-warnings/.test(l));
        if (warnings.length > 0) result.warnings = warnings;
        // CPUs' worth of time used by everything else on the machine while this row ran.
        const busy1 = machineBusySeconds();
        if (busy0 !== null && busy1 !== null && typeof result.workerCpuSeconds === 'number') {
          const ours =
            result.workerCpuSeconds +
            (selfCpuSeconds() - self0) +
            pids.reduce((sum, pid, i) => sum + (processCpuSeconds(pid) - pids0[i]), 0);
          const wall = (performance.now() - t0) / 1000;
          result.othersCpu = Math.max(0, (busy1 - busy0 - ours) / wall);
        }
        resolve(result);
      }
    });
  });
}
