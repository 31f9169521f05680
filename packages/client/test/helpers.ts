/** Test helpers: temp dirs, real server processes, child clients, and bounded waits. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  decodeError,
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MessageType,
  PROTOCOL_VERSION,
  type Request,
  type RequestType,
  type SegmemError,
  SLOT_COUNT,
  slotOf,
  systemEnv,
} from '@segmem/protocol';
import { createClusterSecretFile } from '@segmem/server/internal/secret-file';
import { newNonce, type PeerHandshake, peerProof } from '@segmem/server/internal/shell/peer-auth';
import {
  decodePeerChallenge,
  encodePeerHello,
  encodePeerProof,
  PeerMessageType,
} from '@segmem/server/internal/shell/peer-codec';
import type { ExecutionContext } from 'ava';
import { connect, type Segment } from '../src/index.js';

const here = dirname(fileURLToPath(import.meta.url));
/** packages/client/test (sources), whatever dist/ depth this file was compiled to. */
export const fixturesDir = resolve(here, '../../test/fixtures');
export const serverBin = resolve(here, '../../../server/bin/segmem-server.mjs');
/** The operator CLI, `segmem`. */
export const segmemBin = resolve(here, '../../../server/bin/segmem.mjs');

const xfsScript = resolve(here, '../../../../scripts/xfs-mount.mjs');

/**
 * Runs `body` with a loop-mounted XFS file system at a temporary directory (`scripts/xfs-mount.mjs`),
 * unmounted afterwards whatever happens; where none can be mounted, the test passes with the reason logged.
 */
export async function withXfs(t: ExecutionContext, body: (dir: string) => Promise<void>): Promise<void> {
  const mod = (await import(pathToFileURL(xfsScript).href)) as { withXfs: typeof withXfs };
  return mod.withXfs(t, body);
}

export function tempDir(prefix = 'segmem-test-', under = tmpdir()): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(under, prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * The default bound of waitFor and untilItWorks: what they wait for (a process started, an election, a
 * reconnection) took more than 10 s on a loaded 2-core machine. Only a failing test waits this long.
 */
export const WAIT_MS = 30_000;

/** Polls `cond` until it returns a truthy value or `timeoutMs` passes (then throws `what`). */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  what: string,
  timeoutMs = WAIT_MS,
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

/**
 * Polls `attempt` until it resolves (with its value), through failures (an election, a member coming
 * back); after `timeoutMs` throws `what` with the last failure.
 */
export async function untilItWorks<T>(
  attempt: () => Promise<T>,
  what: string,
  timeoutMs = WAIT_MS,
): Promise<T> {
  let last: unknown;
  const got = await waitFor(
    async () => {
      try {
        return { value: await attempt() };
      } catch (err) {
        last = err;
        return undefined;
      }
    },
    what,
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last failure: ${String(last)}`);
  });
  return got.value;
}

/** Adds 1 to the little-endian u32 at the start of object `name`, `times` times, each in its own update. */
export async function bump(seg: Segment, name: string, times = 1): Promise<void> {
  for (let i = 0; i < times; i++)
    await seg.update(name, (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
}

/**
 * Runs `fn` on every item, at most `width` at a time; resolves with the results in the items' order.
 * Spawning a process per item all at once would load a 2-core machine for many seconds.
 */
export async function pool<T, R>(
  items: readonly T[],
  width: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  });
  await Promise.all(workers);
  return out;
}

/**
 * Runs `attempt` again (at most 3 times in all) when it fails because a port it chose with freePort was
 * taken in between by another process (EADDRINUSE): `attempt` picks its ports afresh each time.
 */
export async function retryOnAddressInUse<T>(attempt: () => Promise<T>): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return await attempt();
    } catch (err) {
      if (tries >= 3 || !/EADDRINUSE/.test(String((err as Error)?.message))) throw err;
    }
  }
}

/**
 * How long a server process may take to print its ready line. Generous: loading the server's modules
 * alone takes 0.35 s of CPU, and on a loaded 2-core machine (the suite, and other work) a start took
 * more than 15 s of wall time; this bound only keeps a failed start from hanging the run.
 */
export const SERVER_READY_MS = 60_000;

/** How long a server may take to end after SIGTERM (it closes its WAL and sockets; seconds at most). */
export const STOP_MS = 60_000;

/** Starts `segmem-server` as a real process and waits for its ready line. */
export async function startServerProcess(opts: {
  dataDir: string;
  id?: string;
  listen?: string;
  fsync?: string;
  extra?: string[];
  /** Extra environment variables (e.g. the storage fault plans SEGMEM_CRASH_AT / SEGMEM_FAIL_AT). */
  env?: Record<string, string>;
  /** An executable to run instead of this repository's bin through node (e.g. an installed `.bin/segmem-server`). */
  bin?: string;
  /** A cgroup v1 directory to run the server in (see {@link MemoryCgroup}): nothing of it runs outside. */
  cgroup?: string;
  /** How long recovery may take before the server counts as failed to start (default SERVER_READY_MS). */
  readyTimeoutMs?: number;
}): Promise<ServerProcess> {
  const args = [
    '--id',
    opts.id ?? 's1',
    '--listen',
    opts.listen ?? '127.0.0.1:0',
    '--data',
    opts.dataDir,
    ...(opts.fsync ? ['--fsync', opts.fsync] : []),
    ...(opts.extra ?? []),
  ];
  const command = opts.bin ? [opts.bin, ...args] : [process.execPath, serverBin, ...args];
  // In a cgroup: the shell joins it, then execs the server, so the process is the server's from the start.
  const argv = opts.cgroup
    ? ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', `${opts.cgroup}/cgroup.procs`, ...command]
    : command;
  const proc = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}),
  });
  const readyTimeoutMs = opts.readyTimeoutMs ?? SERVER_READY_MS;
  let err = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => (err += d));
  // 'close', not 'exit': only then has everything the server wrote to stderr been read.
  const exited = new Promise<number | null>((r) => proc.once('close', (code) => r(code)));
  const address = await new Promise<string>((resolveReady, reject) => {
    const notReady = setTimeout(() => {
      // Not left running: a server nobody holds keeps the test's worker (and the whole run) alive.
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      reject(new Error(`segmem-server not ready after ${readyTimeoutMs} ms: ${err}`));
    }, readyTimeoutMs);
    notReady.unref();
    const lines = createInterface({ input: proc.stdout! });
    lines.on('line', (line) => {
      const m = / ready on (\S+)$/.exec(line);
      if (m) {
        clearTimeout(notReady);
        resolveReady(m[1]!);
      }
    });
    exited.then((code) =>
      reject(new Error(`segmem-server exited (${code ?? proc.signalCode}) before ready: ${err}`)),
    );
  });
  return {
    address,
    proc,
    stderr: () => err,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        proc.kill('SIGCONT'); // a paused server (SIGSTOP) acts on the SIGTERM only once it runs
      }
      // A server that does not end on SIGTERM is a bug the test must report, not a hang of the whole run
      // (ava reports a test only after its teardowns, and a teardown has no timeout).
      let overdue: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((r) => {
        overdue = setTimeout(() => r('late'), STOP_MS);
      });
      const code = await Promise.race([exited, late]);
      clearTimeout(overdue);
      if (code !== 'late') return code;
      proc.kill('SIGKILL');
      await exited;
      throw new Error(`segmem-server (pid ${proc.pid}) did not exit within ${STOP_MS} ms of SIGTERM: ${err}`);
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
  /** What the child wrote to stderr so far. */
  stderr: () => string;
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
    // 'close', not 'exit': only then has everything the child wrote to its pipes been read.
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      resolveDone({ code, signal, stdout, stderr });
    });
  });
  return { proc, done, stderr: () => stderr };
}

/** A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine). */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolvePort) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolvePort(port));
    });
  });
}

/**
 * `n` consecutive free ports on 127.0.0.1 (segmem up takes PORT, PORT+1, ...). From the ephemeral range
 * first, then below it (20000..31999): when busy clients hold most ephemeral ports (in TIME_WAIT),
 * ports the kernel never hands to outgoing connections are still free.
 */
export async function consecutivePorts(n: number): Promise<number> {
  for (let attempt = 0; attempt < 70; attempt++) {
    const base = attempt < 20 ? await freePort() : 20_000 + Math.floor(Math.random() * (12_000 - n));
    if (base + n > 65535) continue;
    // freePort's base was free already.
    const first = attempt < 20 ? 1 : 0;
    const free = await Promise.all(
      Array.from({ length: n - first }, (_, i) => {
        const s = createServer();
        return new Promise<boolean>((r) => {
          s.once('error', () => r(false));
          s.listen(base + first + i, '127.0.0.1', () => s.close(() => r(true)));
        });
      }),
    );
    if (free.every(Boolean)) return base;
  }
  throw new Error('no consecutive free ports');
}

export interface ClusterMember {
  id: string;
  address: string;
  dataDir: string;
  server: ServerProcess | null;
}

/** A group of real segmem-server processes on loopback, with helpers to find and fault its leader. */
export class TestCluster {
  readonly members: ClusterMember[];
  readonly peers: string;
  /** Every server process started, in order (a restarted member's earlier runs included). */
  private readonly started: { id: string; server: ServerProcess }[] = [];

  private constructor(
    members: ClusterMember[],
    private readonly fsync: string,
    private readonly extra: (id: string) => string[],
    /** The cluster secret every member is started with (mode 0600, in the cluster's root). */
    readonly secretFile: string,
  ) {
    this.members = members;
    this.peers = members.map((m) => `${m.id}=${m.address}`).join(',');
  }

  /** `extra`: more command-line arguments for a member's server. */
  static async start(
    size: number,
    root: string,
    fsync = 'batch',
    extra: (id: string) => string[] = () => [],
  ): Promise<TestCluster> {
    // A port freePort chose can be taken by another process before the member binds it: start again
    // on fresh ports (and fresh directories) then.
    return retryOnAddressInUse(() => TestCluster.startOnce(size, root, fsync, extra));
  }

  private static async startOnce(
    size: number,
    root: string,
    fsync: string,
    extra: (id: string) => string[],
  ): Promise<TestCluster> {
    const members: ClusterMember[] = [];
    for (let i = 0; i < size; i++) {
      members.push({
        id: `s${i + 1}`,
        address: `127.0.0.1:${await freePort()}`,
        dataDir: join(root, `s${i + 1}`),
        server: null,
      });
    }
    // A cluster started again in the same root (a restart test) keeps the secret its members recorded.
    const secretFile = join(root, 'cluster-secret');
    mkdirSync(root, { recursive: true });
    if (!existsSync(secretFile)) createClusterSecretFile(secretFile);
    const cluster = new TestCluster(members, fsync, extra, secretFile);
    const starts = await Promise.allSettled(members.map((m) => cluster.startMember(m.id)));
    const failed = starts.find((r) => r.status === 'rejected');
    if (failed) {
      await cluster.stopAll();
      if (/EADDRINUSE/.test(String((failed.reason as Error)?.message)))
        for (const m of members) rmSync(m.dataDir, { recursive: true, force: true });
      throw failed.reason;
    }
    return cluster;
  }

  get addresses(): string[] {
    return this.members.map((m) => m.address);
  }

  member(id: string): ClusterMember {
    const m = this.members.find((x) => x.id === id);
    if (!m) throw new Error(`no member ${id}`);
    return m;
  }

  /** `opts.cgroup`: run the member in that cgroup; `opts.readyTimeoutMs`: see {@link startServerProcess}. */
  async startMember(id: string, opts: { cgroup?: string; readyTimeoutMs?: number } = {}): Promise<void> {
    const m = this.member(id);
    m.server = await startServerProcess({
      id,
      dataDir: m.dataDir,
      listen: m.address,
      fsync: this.fsync,
      extra: ['--peers', this.peers, '--cluster-secret-file', this.secretFile, ...this.extra(id)],
      ...opts,
    });
    this.started.push({ id, server: m.server });
  }

  /** Runs `segmem cluster ARGS --servers <this group>`; resolves with its exit status and output. */
  admin(...args: string[]) {
    return runNode(segmemBin, ['cluster', ...args, '--servers', this.addresses.join(',')]).done;
  }

  /**
   * Starts server `id` as a joiner of this group (`--join`: it waits to be added, never campaigns) under
   * `root`, with every current member in its `--peers`, and counts it as a member of this cluster.
   */
  async startJoiner(id: string, root: string, clusterId: string): Promise<ClusterMember> {
    const address = `127.0.0.1:${await freePort()}`;
    const member: ClusterMember = { id, address, dataDir: join(root, id), server: null };
    member.server = await startServerProcess({
      id,
      listen: address,
      dataDir: member.dataDir,
      extra: [
        '--peers',
        `${this.peers},${id}=${address}`,
        '--join',
        '--cluster-id',
        clusterId,
        '--cluster-secret-file',
        this.secretFile,
      ],
    });
    this.members.push(member);
    this.started.push({ id, server: member.server });
    return member;
  }

  /** What every server process started so far wrote to stderr, and how it ended: for a failing test's log. */
  history(): string {
    return this.started
      .map(({ id, server }) => {
        const p = server.proc;
        const state =
          p.exitCode !== null || p.signalCode !== null ? `exited (${p.exitCode ?? p.signalCode})` : 'running';
        return `--- ${id} pid ${p.pid} ${state}:\n${server.stderr()}`;
      })
      .join('\n');
  }

  /** The member whose log says it leads the highest term, among those running. */
  leader(): ClusterMember | undefined {
    let best: { m: ClusterMember; term: number } | undefined;
    for (const m of this.members) {
      if (!m.server || m.server.proc.exitCode !== null || m.server.proc.signalCode !== null) continue;
      const lines = m.server
        .stderr()
        .split('\n')
        .filter((l) => l.includes('raft: '));
      const last = lines[lines.length - 1];
      const match = last ? /raft: (\w+) in term (\d+)/.exec(last) : null;
      if (match && match[1] === 'leader' && (!best || Number(match[2]) > best.term))
        best = { m, term: Number(match[2]) };
    }
    return best?.m;
  }

  async kill(id: string): Promise<void> {
    const m = this.member(id);
    await m.server?.kill();
    m.server = null;
  }

  async stopAll(): Promise<(number | null)[]> {
    const codes: (number | null)[] = [];
    for (const m of this.members) {
      if (m.server) codes.push(await m.server.stop());
      m.server = null;
    }
    return codes;
  }
}

/** Asks each running member for its status line (SIGUSR2) and returns the latest one per member. */
export async function statuses(
  cluster: TestCluster,
): Promise<Map<string, { applied: number; digest: string; leader: boolean; pagesServed: number }>> {
  const out = new Map<string, { applied: number; digest: string; leader: boolean; pagesServed: number }>();
  for (const m of cluster.members) {
    if (!m.server) continue;
    const before = (m.server.stderr().match(/status /g) ?? []).length;
    m.server.proc.kill('SIGUSR2');
    await waitFor(() => (m.server!.stderr().match(/status /g) ?? []).length > before, `status of ${m.id}`);
    const lines = m.server
      .stderr()
      .split('\n')
      .filter((l) => l.includes(' status '));
    const line = lines[lines.length - 1]!;
    const match = /leader=(\w+) applied=(\d+) digest=(\w+)/.exec(line)!;
    const served = /pagesServed=(\d+)/.exec(line);
    out.set(m.id, {
      leader: match[1] === 'true',
      applied: Number(match[2]),
      digest: match[3]!,
      pagesServed: served ? Number(served[1]) : 0,
    });
  }
  return out;
}

export async function converged(cluster: TestCluster): Promise<void> {
  await waitFor(
    async () => {
      const s = [...(await statuses(cluster)).values()];
      return s.length > 0 && s.every((x) => x.applied === s[0]!.applied && x.digest === s[0]!.digest);
    },
    'every running server to hold the same state',
    2 * WAIT_MS,
  );
}

/**
 * Runs `body` with a 3-member cluster of real servers (data under a new temp dir, in `under` if given)
 * and one segment connected to it; then closes the segment, stops the servers and removes the data,
 * whatever `body` did.
 */
export async function withCluster(
  opts: {
    extra?: (id: string) => string[];
    sessionTimeoutMs?: number;
    under?: string;
    delegations?: boolean;
  },
  body: (c: { cluster: TestCluster; seg: Segment; dir: string }) => Promise<void>,
): Promise<void> {
  const dir = tempDir('segmem-test-', opts.under);
  try {
    const cluster = await TestCluster.start(3, dir.path, 'batch', opts.extra);
    try {
      const seg = await connect({
        servers: cluster.addresses,
        ...(opts.sessionTimeoutMs !== undefined ? { sessionTimeoutMs: opts.sessionTimeoutMs } : {}),
        ...(opts.delegations !== undefined ? { delegations: opts.delegations } : {}),
      });
      try {
        await body({ cluster, seg, dir: dir.path });
      } finally {
        await seg.close();
      }
    } finally {
      await cluster.stopAll();
    }
  } finally {
    dir.cleanup();
  }
}

/** The cgroup v1 memory directory of this process, or why there is none to make a child in. */
export function memoryCgroupDir(): { dir: string } | { reason: string } {
  let lines: string[];
  try {
    lines = readFileSync('/proc/self/cgroup', 'utf8').split('\n');
  } catch (err) {
    return { reason: `cannot read /proc/self/cgroup: ${(err as Error).message}` };
  }
  const path = lines
    .map((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:(.*)$/.exec(l)?.[3])
    .find((p) => p !== undefined);
  if (path === undefined) return { reason: 'no cgroup v1 memory controller (cgroup v2 only, or none)' };
  for (const dir of [`/sys/fs/cgroup/memory${path === '/' ? '' : path}`, '/sys/fs/cgroup/memory']) {
    if (!existsSync(`${dir}/memory.limit_in_bytes`)) continue;
    const probe = `${dir}/segmem-probe-${process.pid}`;
    try {
      mkdirSync(probe);
      rmdirSync(probe);
      return { dir };
    } catch (err) {
      return { reason: `cannot make a child cgroup in ${dir}: ${(err as Error).message}` };
    }
  }
  return { reason: `the memory cgroup ${path} is not mounted under /sys/fs/cgroup/memory` };
}

/** A child memory cgroup (v1) with a limit on memory and on memory + swap, for servers to run in. */
export class MemoryCgroup {
  private constructor(readonly path: string) {}

  /** Makes `name` under `parent` (see {@link memoryCgroupDir}) limited to `limitBytes`. */
  static create(parent: string, name: string, limitBytes: number): MemoryCgroup {
    const path = `${parent}/${name}-${process.pid}`;
    mkdirSync(path);
    writeFileSync(`${path}/memory.limit_in_bytes`, String(limitBytes));
    // Swap would stretch the limit: a process over it would page out instead of being killed.
    if (existsSync(`${path}/memory.memsw.limit_in_bytes`))
      writeFileSync(`${path}/memory.memsw.limit_in_bytes`, String(limitBytes));
    return new MemoryCgroup(path);
  }

  /** How many processes the kernel's OOM killer killed in it. */
  oomKills(): number {
    const m = /^oom_kill (\d+)$/m.exec(readFileSync(`${this.path}/memory.oom_control`, 'utf8'));
    return m ? Number(m[1]) : 0;
  }

  /** Peak memory charged to it (processes and page cache) since it was made, in MiB. */
  peakMiB(): number {
    return Math.round(Number(readFileSync(`${this.path}/memory.max_usage_in_bytes`, 'utf8')) / 1024 / 1024);
  }

  /** Removes it once its last process has gone (the kernel may take a moment to see it empty). */
  async remove(): Promise<void> {
    await waitFor(
      () => {
        try {
          rmdirSync(this.path);
          return true;
        } catch {
          return !existsSync(this.path);
        }
      },
      `removing ${this.path}`,
      5000,
    );
  }
}

/** Peak resident memory of process `pid` (VmHWM), in MiB. */
export function peakRssMiB(pid: number): number {
  return Math.round(procStatusKiB(pid, 'VmHWM') / 1024);
}

/**
 * A raw protocol connection: sends exactly the requests (or bytes) a test wants, and reads frames and the
 * close, to see exactly what a server answers and when it hangs up.
 */
export class RawConnection {
  private readonly decoder = new FrameDecoder();
  private readonly frames: Frame[] = [];
  closed = false;
  private nextId = 1;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const f of this.decoder.push(chunk)) this.frames.push(f);
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {}); // a server closing mid-write resets the socket: expected here
  }

  static open(address: string): Promise<RawConnection> {
    const at = address.lastIndexOf(':');
    return new Promise((resolve, reject) => {
      const s = netConnect({ host: address.slice(0, at), port: Number(address.slice(at + 1)) }, () =>
        resolve(new RawConnection(s)),
      );
      s.once('error', reject);
    });
  }

  /** The next frame; null once the server closed without sending one more. */
  async next(what: string, timeoutMs = 5000): Promise<Frame | null> {
    await waitFor(() => this.frames.length > 0 || this.closed, what, timeoutMs);
    return this.frames.shift() ?? null;
  }

  /** The next frame, which must be an ERROR; returns it decoded. */
  async error(what: string, timeoutMs = 5000): Promise<SegmemError> {
    const f = await this.next(what, timeoutMs);
    if (!f) throw new Error(`${what}: the server closed without an answer`);
    if (f.type !== MessageType.ERROR) throw new Error(`${what}: got frame type ${f.type}, not ERROR`);
    return decodeError(f);
  }

  untilClosed(what: string, timeoutMs = 5000): Promise<unknown> {
    return waitFor(() => this.closed, what, timeoutMs);
  }

  send(req: Request): number {
    const id = this.nextId++;
    for (const p of encodeRequest(req, id)) this.socket.write(p);
    return id;
  }

  /** Sends `req` and decodes its answer (an ERROR throws its SegmemError). */
  async call<T extends RequestType>(
    req: Extract<Request, { type: T }>,
    timeoutMs = 10_000,
  ): Promise<ReturnType<typeof decodeResponse<T>>> {
    this.send(req);
    const f = await this.next(`the ${req.type} answer`, timeoutMs);
    if (!f) throw new Error(`closed instead of answering ${req.type}`);
    return decodeResponse(req.type as T, f);
  }

  /**
   * Logs in. This connection sends no keepalives: its session outlasts the test's pauses (an attack of
   * seconds on a loaded machine), or the server would end it and close the connection under the test.
   */
  hello(
    extra: Partial<Extract<Request, { type: 'HELLO' }>> = {},
  ): Promise<ReturnType<typeof decodeResponse<'HELLO'>>> {
    return this.call<'HELLO'>({
      type: 'HELLO',
      protocol: PROTOCOL_VERSION,
      sessionTimeoutMs: 60_000,
      ...extra,
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * A raw peer connection to `address` posing as member `from`: PEER_HELLO with a nonce, then (with a
 * `secret`) the proof the member's challenge asks for. Collects what the member answers.
 */
export async function rawPeer(
  address: string,
  hello: { clusterId: string; from: string; to: string },
  secret: Buffer | null,
): Promise<{ write(parts: Buffer[]): void; next(): Promise<Frame | null>; closed: Promise<void> }> {
  const [host, port] = address.split(':');
  const socket = netConnect({ host: host!, port: Number(port) });
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let wake: (() => void) | null = null;
  let ended = false;
  const closed = new Promise<void>((resolve) => {
    socket.on('close', () => {
      ended = true;
      wake?.();
      resolve();
    });
  });
  socket.on('error', () => {});
  socket.on('data', (chunk: Buffer) => {
    decoder.feed(chunk);
    for (let f = decoder.next(); f !== null; f = decoder.next()) frames.push(f);
    wake?.();
  });
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const next = async (): Promise<Frame | null> => {
    const deadline = Date.now() + 5000;
    while (frames.length === 0 && !ended && Date.now() < deadline)
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    return frames.shift() ?? null;
  };
  const write = (parts: Buffer[]) => {
    for (const p of parts) socket.write(p);
  };
  const nonce = newNonce(systemEnv);
  write(encodePeerHello({ ...hello, token: null, nonce }));
  if (secret) {
    const challenge = await next();
    if (challenge?.type !== PeerMessageType.PEER_CHALLENGE)
      throw new Error(`expected PEER_CHALLENGE, got ${challenge?.type}`);
    const { nonce: acceptorNonce } = decodePeerChallenge(challenge);
    const h: PeerHandshake = {
      clusterId: hello.clusterId,
      dialer: hello.from,
      acceptor: hello.to,
      dialerNonce: nonce,
      acceptorNonce,
    };
    write(encodePeerProof(peerProof(secret, 'dialer', h)));
  }
  return { write, next, closed };
}

/** A field of `/proc/<pid>/status` in KiB (VmRSS: resident now, VmHWM: its peak). */
export function procStatusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} for process ${pid}`);
  return Number(m[1]);
}

/** `count` names whose slots group `index + 1` of two owns (group 1 the lower half of the slots). */
export function namesOfGroup(index: number, count: number): string[] {
  const names: string[] = [];
  for (let i = 0; names.length < count; i++) {
    const name = `obj-${i}`;
    if (Math.floor((slotOf(name) * 2) / SLOT_COUNT) === index) names.push(name);
  }
  return names;
}

/**
 * Runs `segmem up ARGS --port PORT --dir DIR --fsync none`; `ready()` waits for the SEGMEM_SERVERS (every
 * address, comma-separated) and SEGMEM_CONFIG lines it prints once its servers are ready.
 */
export function startUp(dir: string, port: number, args: string[]) {
  const printed = { servers: '', configPath: '' };
  const up = runNode(segmemBin, ['up', ...args, '--port', String(port), '--dir', dir, '--fsync', 'none'], {
    timeoutMs: 2 * SERVER_READY_MS,
    onLine: (line) => {
      if (line.startsWith('SEGMEM_SERVERS=')) printed.servers = line.slice('SEGMEM_SERVERS='.length);
      if (line.startsWith('SEGMEM_CONFIG=')) printed.configPath = line.slice('SEGMEM_CONFIG='.length);
    },
  });
  const ready = async () => {
    await waitFor(
      () => printed.servers && printed.configPath,
      'up to print SEGMEM_SERVERS and SEGMEM_CONFIG',
      SERVER_READY_MS,
    );
    return printed;
  };
  return { up, ready, printed };
}

/** A sharded cluster of real server processes started from one config file (see {@link groupedCluster}). */
export interface GroupedCluster {
  /** The config file every server was started with. */
  config: string;
  addressOf(id: string): string;
  /** The servers running now, by id (a killed one is replaced when started again). */
  servers: Map<string, ServerProcess>;
  /** Starts server `id` from the config file, over its data directory (again, after a kill). */
  start(id: string): Promise<void>;
  /** Stops every server (SIGCONT first: a stopped one acts on SIGTERM only once it runs). */
  stopAll(): Promise<void>;
}

/**
 * Writes a config file under `dir` whose groups 1..G hold the server ids of `groups` (consecutive free
 * ports), each an equal range of `rangeBytes`, fsync none and a cluster secret, and starts every server
 * from it. Groups whose index is in `joining` are marked `"joining": true` (they own no slot at first).
 */
export async function groupedCluster(opts: {
  dir: string;
  groups: string[][];
  rangeBytes: number;
  joining?: number[];
}): Promise<GroupedCluster> {
  const ids = opts.groups.flat();
  const port = await consecutivePorts(ids.length);
  const addressOf = (id: string) => `127.0.0.1:${port + ids.indexOf(id)}`;
  const secretFile = join(opts.dir, 'cluster-secret');
  createClusterSecretFile(secretFile);
  const config = join(opts.dir, 'segmem.json');
  writeFileSync(
    config,
    JSON.stringify({
      segmentBytes: opts.groups.length * opts.rangeBytes,
      fsync: 'none',
      clusterSecretFile: secretFile,
      groups: opts.groups.map((members, i) => ({
        id: i + 1,
        start: i * opts.rangeBytes,
        bytes: opts.rangeBytes,
        members: Object.fromEntries(members.map((id) => [id, addressOf(id)])),
        ...(opts.joining?.includes(i) ? { joining: true } : {}),
      })),
    }),
  );
  const servers = new Map<string, ServerProcess>();
  const start = async (id: string) => {
    servers.set(
      id,
      await startServerProcess({
        id,
        dataDir: join(opts.dir, id),
        listen: addressOf(id),
        extra: ['--config', config],
      }),
    );
  };
  const stopAll = async () => {
    for (const s of servers.values()) s.proc.kill('SIGCONT');
    for (const s of servers.values()) await s.stop();
  };
  try {
    await Promise.all(ids.map(start));
  } catch (err) {
    await stopAll();
    throw err;
  }
  return { config, addressOf, servers, start, stopAll };
}
