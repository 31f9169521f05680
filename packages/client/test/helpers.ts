/** Test helpers: temp dirs, real server processes, child clients, and bounded waits. */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** packages/client/test (sources), whatever dist/ depth this file was compiled to. */
export const fixturesDir = resolve(here, '../../test/fixtures');
export const serverBin = resolve(here, '../../../server/bin/segmem-server.mjs');

export function tempDir(prefix = 'segmem-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Polls `cond` until it returns a truthy value or `timeoutMs` passes (then throws `what`). */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  what: string,
  timeoutMs = 10_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface ServerProcess {
  address: string;
  proc: ChildProcess;
  stderr: () => string;
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
}

/** Starts `segmem-server` as a real process and waits for its ready line. */
export async function startServerProcess(opts: {
  dataDir: string;
  id?: string;
  listen?: string;
  fsync?: string;
  extra?: string[];
}): Promise<ServerProcess> {
  const args = [
    serverBin,
    '--id',
    opts.id ?? 's1',
    '--listen',
    opts.listen ?? '127.0.0.1:0',
    '--data',
    opts.dataDir,
    ...(opts.fsync ? ['--fsync', opts.fsync] : []),
    ...(opts.extra ?? []),
  ];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const address = await new Promise<string>((resolveReady, reject) => {
    const lines = createInterface({ input: proc.stdout! });
    lines.on('line', (line) => {
      const m = / ready on (\S+)$/.exec(line);
      if (m) resolveReady(m[1]!);
    });
    exited.then((code) => reject(new Error(`segmem-server exited (${code}) before ready: ${err}`)));
    setTimeout(() => reject(new Error(`segmem-server not ready after 15 s: ${err}`)), 15_000).unref();
  });
  return {
    address,
    proc,
    stderr: () => err,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** Runs a fixture script with node; resolves with its exit status and output. */
export function runNode(
  script: string,
  args: string[],
  opts: {
    env?: Record<string, string>;
    timeoutMs?: number;
    onLine?: (line: string, proc: ChildProcess) => void;
  } = {},
): {
  proc: ChildProcess;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
} {
  const proc = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let stdout = '';
  let stderr = '';
  proc.stdout!.setEncoding('utf8');
  proc.stderr!.setEncoding('utf8');
  const lines = createInterface({ input: proc.stdout! });
  lines.on('line', (line) => {
    stdout += `${line}\n`;
    opts.onLine?.(line, proc);
  });
  proc.stderr!.on('data', (d: string) => (stderr += d));
  const done = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolveDone, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${script} did not finish within ${opts.timeoutMs ?? 30_000} ms; stderr: ${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      // let the line reader drain
      setImmediate(() => resolveDone({ code, signal, stdout, stderr }));
    });
  });
  return { proc, done };
}
