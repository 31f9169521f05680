// Installs and starts the three systems on 127.0.0.1 (free ports, data in temp dirs), and stops them.
// Every process is remembered by pid in bench/lib/procs.mjs, which kills it on any exit path.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, localCluster } from '../../../examples/lib/local-server.mjs';
import {
  adoptChild,
  makeTempDir,
  removeTempDir,
  spawnCommandUntilReady,
  stopChild,
} from '../../lib/procs.mjs';

export const PEERS_DIR = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');

const has = (cmd) => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/** redis-server and etcd from Debian's packages (installed when root), the client libraries from npm. */
export function ensureInstalled(log) {
  const missing = ['redis-server', 'etcd'].filter((c) => !has(c));
  if (missing.length > 0) {
    if (process.getuid?.() !== 0) {
      throw new Error(
        `${missing.join(' and ')} not found. Install them first (as root): apt-get install -y redis-server etcd-server`,
      );
    }
    log(`installing ${missing.join(', ')}: apt-get install -y redis-server etcd-server`);
    const apt = (args) =>
      execFileSync('apt-get', args, {
        stdio: 'inherit',
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      });
    try {
      apt(['install', '-y', 'redis-server', 'etcd-server']);
    } catch {
      // A machine whose package lists were never fetched knows no such package yet.
      apt(['update']);
      apt(['install', '-y', 'redis-server', 'etcd-server']);
    }
  }
  const libs = ['ioredis', 'etcd3'];
  if (libs.some((l) => !existsSync(join(PEERS_DIR, 'node_modules', l, 'package.json')))) {
    log("installing the peers' client libraries: npm install --prefix bench/peers");
    execFileSync('npm', ['install', '--prefix', PEERS_DIR, '--no-audit', '--no-fund'], { stdio: 'inherit' });
  }
}

export function versions() {
  const first = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' }).split('\n')[0].trim();
    } catch {
      return 'unknown';
    }
  };
  const pkg = (name) => {
    try {
      return JSON.parse(readFileSync(join(PEERS_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
    } catch {
      return 'unknown';
    }
  };
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      encoding: 'utf8',
      cwd: PEERS_DIR,
    }).trim();
  } catch {
    // not a git checkout
  }
  return {
    redis: first('redis-server', ['--version']),
    etcd: first('etcd', ['--version']),
    node: process.version,
    ioredis: pkg('ioredis'),
    etcd3: pkg('etcd3'),
    grpc: pkg('@grpc/grpc-js'),
    segmem: commit,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Redis: a primary and two replicas, AOF with fsync every second on all three.

export const REDIS_SETTINGS = [
  '--appendonly yes',
  '--appendfsync everysec',
  '--save ""', // AOF is the persistence; no RDB snapshots forking in the middle of a row
  '--bind 127.0.0.1',
  '--repl-diskless-sync-delay 0',
];

export async function startRedis() {
  const dir = makeTempDir('redis');
  const ports = [await freePort(), await freePort(), await freePort()];
  const procs = [];
  const base = (i) => [
    '--port',
    String(ports[i]),
    '--bind',
    '127.0.0.1',
    '--dir',
    makeSubdir(dir, `r${i}`),
    '--appendonly',
    'yes',
    '--appendfsync',
    'everysec',
    '--save',
    '',
    '--daemonize',
    'no',
    '--logfile',
    '',
    '--protected-mode',
    'no',
    '--repl-diskless-sync-delay',
    '0', // replicas attach at once (the default waits 5 s for more replicas)
  ];
  try {
    for (let i = 0; i < 3; i++) {
      const args = i === 0 ? base(0) : [...base(i), '--replicaof', '127.0.0.1', String(ports[0])];
      const { child } = await spawnCommandUntilReady('redis-server', args, {
        ready: /Ready to accept connections/,
        name: `redis-server ${i === 0 ? 'primary' : `replica ${i}`}`,
      });
      procs.push(child);
    }
    await waitForReplicas(ports[0], 2);
  } catch (err) {
    for (const p of procs) await stopChild(p);
    removeTempDir(dir);
    throw err;
  }
  return {
    name: 'redis',
    async endpoints() {
      return { primary: `127.0.0.1:${ports[0]}` };
    },
    pids: () => procs.map((p) => p.pid),
    async stop() {
      for (const p of procs) await stopChild(p, 10000);
      removeTempDir(dir);
    },
  };
}

function makeSubdir(dir, name) {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  return d;
}

/** Waits (bounded) until the primary lists `n` replicas online, i.e. the initial sync is over. */
async function waitForReplicas(port, n) {
  const { default: Redis } = await import('ioredis');
  const r = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1 });
  r.on('error', () => {});
  await r.connect();
  try {
    const deadline = Date.now() + 20000;
    for (;;) {
      const info = await r.info('replication');
      const online = (info.match(/^slave\d+:.*state=online/gm) ?? []).length;
      if (online >= n) return;
      if (Date.now() > deadline) throw new Error(`redis: only ${online} of ${n} replicas online after 20 s`);
      await new Promise((res) => setTimeout(res, 100));
    }
  } finally {
    r.disconnect();
  }
}

/**
 * GET without keep-alive: a pooled connection left open would close on its own in the middle of the next
 * row and disturb the per-socket byte counts.
 */
function httpText(url, timeoutMs) {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------------------------------------------------
// etcd: three members, one Raft group (etcd fsyncs its WAL before a write is acknowledged by a majority).

export const ETCD_SETTINGS = [
  '--quota-backend-bytes 8589934592 (8 GiB: room for the 1 MiB rows without compaction)',
  'defaults otherwise (snapshot-count 100000, heartbeat 100 ms, election 1000 ms)',
];

export async function startEtcd() {
  const dir = makeTempDir('etcd');
  const client = [await freePort(), await freePort(), await freePort()];
  const peer = [await freePort(), await freePort(), await freePort()];
  const cluster = client.map((_, i) => `e${i + 1}=http://127.0.0.1:${peer[i]}`).join(',');
  const token = `bench-${process.pid}-${Date.now()}`;
  const member = (i) => [
    ...['--name', `e${i + 1}`, '--data-dir', join(dir, `e${i + 1}`)],
    ...['--listen-client-urls', `http://127.0.0.1:${client[i]}`],
    ...['--advertise-client-urls', `http://127.0.0.1:${client[i]}`],
    ...['--listen-peer-urls', `http://127.0.0.1:${peer[i]}`],
    ...['--initial-advertise-peer-urls', `http://127.0.0.1:${peer[i]}`],
    ...['--initial-cluster', cluster, '--initial-cluster-state', 'new', '--initial-cluster-token', token],
    ...['--quota-backend-bytes', String(8 * 1024 ** 3), '--logger', 'zap', '--log-outputs', 'stderr'],
  ];
  // Members start together: each one waits for a quorum before it serves.
  const started = await Promise.allSettled(
    client.map((_, i) =>
      spawnCommandUntilReady('etcd', member(i), {
        ready: /serving client traffic/,
        name: `etcd e${i + 1}`,
        streams: ['stderr'],
        timeoutMs: 30000,
      }),
    ),
  );
  const procs = started.filter((s) => s.status === 'fulfilled').map((s) => s.value.child);
  const stop = async () => {
    for (const p of procs) await stopChild(p, 10000);
    removeTempDir(dir);
  };
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  const endpoints = client.map((p) => `127.0.0.1:${p}`);
  const sys = {
    name: 'etcd',
    members: endpoints,
    pids: () => procs.map((p) => p.pid),
    /** The member that currently leads (from each member's /metrics), bounded wait. */
    async leader() {
      const deadline = Date.now() + 15000;
      for (;;) {
        for (const e of endpoints) {
          try {
            if (/^etcd_server_is_leader 1$/m.test(await httpText(`http://${e}/metrics`, 2000))) return e;
          } catch {
            // not answering yet
          }
        }
        if (Date.now() > deadline) throw new Error('etcd: no leader after 15 s');
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async endpoints() {
      return { leader: await sys.leader(), all: endpoints.join(',') };
    },
    stop,
  };
  await sys.leader();
  return sys;
}

// ---------------------------------------------------------------------------------------------------------
// segmem: three servers, one Raft group, fsync "batch" (durable on a majority before a release resolves).

export async function startSegmem({ nodeArgs = [] } = {}) {
  const dir = makeTempDir('segmem');
  let group;
  try {
    group = await localCluster(3, { fsync: 'batch', dir, nodeArgs, onSpawn: adoptChild });
  } catch (err) {
    removeTempDir(dir);
    throw err;
  }
  const pids = group.processes().map((p) => p.pid);
  return {
    name: 'segmem',
    pids: () => pids,
    async endpoints() {
      return { servers: group.servers };
    },
    async stop() {
      await group.stop();
      removeTempDir(dir);
    },
  };
}
