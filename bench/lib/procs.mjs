// Child processes (servers, load workers) and temp dirs of a benchmark run, with cleanup on every exit path.
//
// Every process started here is remembered by pid and killed (by that pid only) when the run ends, whether
// it ends normally, by an error, or by SIGINT/SIGTERM. Every temp dir made here is removed the same way.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT_DIR = join(BENCH_DIR, '..');
export const SERVER_BIN = join(ROOT_DIR, 'packages/server/bin/segmem-server.mjs');
export const WORKER = join(BENCH_DIR, 'worker.mjs');
export const ECHO_SERVER = join(BENCH_DIR, 'echo-server.mjs');

const children = new Set();
const tempDirs = new Set();

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
  const child = spawn(process.execPath, [...nodeArgs, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT_DIR });
  children.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s) => {
    if (stderr.length < 20000) stderr += s;
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => {
      fail(new Error(`${name} did not report ready within ${timeoutMs} ms`));
    }, timeoutMs);
    const onExit = (code, signal) => fail(new Error(`${name} exited (code ${code}, signal ${signal}) before it was ready: ${stderr.trim()}`));
    function fail(err) {
      clearTimeout(timer);
      child.off('exit', onExit);
      if (alive(child)) process.kill(child.pid, 'SIGKILL');
      children.delete(child);
      reject(err);
    }
    child.once('exit', onExit);
    lines.on('line', (line) => {
      const m = ready.exec(line);
      if (m) {
        clearTimeout(timer);
        child.off('exit', onExit);
        lines.removeAllListeners('line');
        child.stdout.resume(); // keep draining
        resolve({ child, match: m, stderr: () => stderr });
      }
    });
  });
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
    child,
    dataDir,
    profileDir,
    stderr,
    async stop() {
      const { code, signal } = await stopChild(child, 10000);
      removeTempDir(dataDir);
      if (code !== 0) {
        throw new Error(`segmem-server ${id} (fsync ${fsync}) stopped with code ${code}, signal ${signal}: ${stderr().trim()}`);
      }
    },
  };
}

/** Starts the plain TCP echo server used for the floor. Resolves with { address, stop() }. */
export async function startEchoServer() {
  const { child, match } = await spawnUntilReady(ECHO_SERVER, [], { ready: /^echo ready on (\S+)$/, name: 'echo server' });
  return {
    address: match[1],
    async stop() {
      await stopChild(child, 5000);
    },
  };
}

/**
 * Runs one load worker with `spec` and resolves with the JSON it reports. The worker is killed (by pid) if it
 * runs past `timeoutMs`; a non-zero exit or missing result rejects.
 */
export function runWorker(spec, { timeoutMs }) {
  const child = spawn(process.execPath, [WORKER, JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT_DIR });
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
      if (timedOut) reject(new Error(`worker ${spec.mode} timed out after ${timeoutMs} ms (killed): ${stderr.trim()}`));
      else if (code !== 0 || !line) reject(new Error(`worker ${spec.mode} failed (code ${code}, signal ${signal}): ${stderr.trim()}`));
      else {
        const result = JSON.parse(line.slice('BENCH_RESULT '.length));
        const warnings = stderr
          .split('\n')
          .filter((l) => l.trim() && !/ExperimentalWarning|--trace-warnings/.test(l));
        if (warnings.length > 0) result.warnings = warnings;
        resolve(result);
      }
    });
  });
}
