// Starts one segmem-server process on 127.0.0.1 with its data in a temporary directory, for the
// examples. Uses SEGMEM_SERVERS instead when it is set (an existing cluster).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const serverBin = join(
  dirname(fileURLToPath(import.meta.url)),
  '../../packages/server/bin/segmem-server.mjs',
);
const segmemBin = join(dirname(serverBin), 'segmem.mjs');

export async function localServer() {
  if (process.env.SEGMEM_SERVERS) return { servers: process.env.SEGMEM_SERVERS, stop: async () => {} };
  const dir = mkdtempSync(join(tmpdir(), 'segmem-example-'));
  const proc = spawn(process.execPath, [serverBin, '--id', 's1', '--listen', '127.0.0.1:0', '--data', dir], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const servers = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      const m = / ready on (\S+)$/.exec(line);
      if (m) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`segmem-server exited with code ${code}`)));
  });
  return {
    servers,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Runs `node script args...` with SEGMEM_SERVERS set; resolves with its stdout lines. */
export function run(script, args, servers) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, SEGMEM_SERVERS: servers },
    });
    const lines = [];
    createInterface({ input: child.stdout }).on('line', (l) => lines.push(l));
    // 'close', not 'exit': the child's output is fully read by then.
    child.once('close', (code) =>
      code === 0 ? resolve(lines) : reject(new Error(`${script} exited with code ${code}`)),
    );
  });
}

/**
 * Starts `size` segmem-server processes on 127.0.0.1 as one Raft group (one server: a single-member group),
 * data in a temporary directory (or under `dir`). `nodeArgs` go to each server's node (e.g. --cpu-prof);
 * `onSpawn(proc)` sees each process as it starts (a caller's by-pid cleanup). Also used by bench/.
 */
export async function localCluster(size, { fsync = 'batch', dir: baseDir, nodeArgs = [], onSpawn } = {}) {
  const dir = baseDir ?? mkdtempSync(join(tmpdir(), 'segmem-example-cluster-'));
  const ids = Array.from({ length: size }, (_, i) => `s${i + 1}`);
  const addresses = [];
  for (let i = 0; i < size; i++) addresses.push(`127.0.0.1:${await freePort()}`);
  const peers = ids.map((id, i) => `${id}=${addresses[i]}`).join(',');
  // The members of a group prove one secret to each other: created once, beside their data.
  const secretFile = join(dir, 'cluster-secret');
  if (size > 1 && !existsSync(secretFile)) {
    mkdirSync(dir, { recursive: true });
    execFileSync(process.execPath, [segmemBin, 'secret', 'new', secretFile], { stdio: 'ignore' });
  }
  const members = new Map();
  const start = (id) => {
    const i = ids.indexOf(id);
    const proc = spawn(
      process.execPath,
      [
        ...nodeArgs,
        serverBin,
        ...['--id', id, '--listen', addresses[i], '--data', join(dir, id), '--fsync', fsync],
        ...(size > 1 ? ['--peers', peers, '--cluster-secret-file', secretFile] : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    onSpawn?.(proc);
    const member = { id, proc, role: 'follower', term: 0 };
    createInterface({ input: proc.stderr }).on('line', (line) => {
      const m = / raft: (\w+) in term (\d+)/.exec(line);
      if (m) Object.assign(member, { role: m[1], term: Number(m[2]) });
    });
    members.set(id, member);
    return new Promise((resolve, reject) => {
      createInterface({ input: proc.stdout }).on('line', (line) => {
        if (line.includes(' ready on ')) resolve();
      });
      proc.once('exit', (code) => reject(new Error(`${id} exited with code ${code}`)));
    });
  };
  await Promise.all(ids.map(start));
  return {
    servers: addresses.join(','),
    /** The live member that last said it leads, with the highest term. */
    leader() {
      let best;
      for (const m of members.values()) {
        if (
          m.proc.exitCode === null &&
          m.proc.signalCode === null &&
          m.role === 'leader' &&
          (!best || m.term > best.term)
        )
          best = m;
      }
      return best;
    },
    /** SIGKILL; resolves once the process is gone. */
    kill(id) {
      const { proc } = members.get(id);
      if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
      proc.kill('SIGKILL');
      return new Promise((r) => proc.once('exit', r));
    },
    restart: start,
    /** Synchronous SIGKILL of every live member and removal of the data: for exit and signal handlers. */
    killSync() {
      for (const m of members.values()) {
        if (m.proc.exitCode === null && m.proc.signalCode === null) m.proc.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
    /** The server processes still running (for CPU accounting and by-pid cleanup). */
    processes() {
      return [...members.values()]
        .map((m) => m.proc)
        .filter((p) => p.exitCode === null && p.signalCode === null);
    },
    /** Pids of the live members (for CPU accounting). */
    pids() {
      return this.processes().map((p) => p.pid);
    },
    async stop() {
      for (const m of members.values()) {
        if (m.proc.exitCode === null && m.proc.signalCode === null) {
          m.proc.kill('SIGTERM');
          await new Promise((r) => m.proc.once('exit', r));
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
