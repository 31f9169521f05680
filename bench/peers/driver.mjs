// One row of bench/peers for one system, in its own process: `node bench/peers/driver.mjs '<json spec>'`.
// Prints `BENCH_RESULT <json>` (the protocol of bench/worker.mjs, so bench/lib/procs.mjs runWorker runs it).
//
// The same driver for every system: the adapter builds one async operation per client (each client its own
// connection / session), and bench/lib/load.mjs `drive` runs them as closed loops, bounded in time and count.
// Around the measured window it reads, from /proc and the kernel's TCP counters, the CPU this process, the
// system's servers and everything else used, and the bytes that crossed the sockets.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { drive } from '../lib/load.mjs';
import { processCpuSeconds } from '../lib/procs.mjs';
import { Unavailable, xorshift } from './adapters/common.mjs';
import { bytesBetween, tcpSockets } from './lib/tcp-bytes.mjs';

const ADAPTERS = {
  redis: './adapters/redis.mjs',
  etcd: './adapters/etcd.mjs',
  segmem: './adapters/segmem.mjs',
};

function result(obj) {
  process.stdout.write(`BENCH_RESULT ${JSON.stringify(obj)}\n`);
}

let ticks = 100;
try {
  ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  // Linux's usual value
}

/**
 * CPU seconds the machine spent in processes (user, nice, system) and stolen by the hypervisor, from
 * /proc/stat. Interrupt and softirq time is left out: much of it is this benchmark's own loopback traffic,
 * which the kernel does not charge to any process, and it must not read as "other processes".
 */
function machineProcessSeconds() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return (f[0] + f[1] + f[2] + (f[7] ?? 0)) / ticks;
  } catch {
    return null;
  }
}
function snapshot(serverPids) {
  const u = process.cpuUsage();
  return {
    self: (u.user + u.system) / 1e6,
    servers: serverPids.reduce((s, pid) => s + processCpuSeconds(pid), 0),
    busy: machineProcessSeconds(),
    sockets: tcpSockets([process.pid, ...serverPids]),
  };
}

async function main() {
  const spec = JSON.parse(process.argv[2] ?? '{}');
  const adapter = ADAPTERS[spec.system];
  if (!adapter) throw new Error(`unknown system ${spec.system}`);
  const { prepare } = await import(adapter);
  spec.rand = xorshift(spec.seed ?? 12345);
  let p;
  try {
    p = await prepare(spec);
  } catch (err) {
    if (err instanceof Unavailable) {
      result({ unavailable: err.message });
      return;
    }
    throw err;
  }
  let a;
  let b;
  let statsA;
  let statsB;
  const r = await drive(
    p.ops,
    { warmupMs: spec.warmupMs, windowMs: spec.windowMs, cap: spec.cap },
    {
      beforeWindow: () => {
        statsA = p.stats?.();
        a = snapshot(spec.serverPids);
      },
      afterWindow: () => {
        b = snapshot(spec.serverPids);
        statsB = p.stats?.();
      },
      onSamples: (sorted) => {
        if (spec.samplesFile) writeFileSync(spec.samplesFile, sorted);
      },
    },
  );
  const bad = await p.verify();
  await p.close();
  const s = r.seconds;
  const n = Math.max(1, r.ops);
  const out = {
    ops: r.ops,
    seconds: s,
    opsPerSec: r.opsPerSec,
    p50: r.p50,
    p99: r.p99,
    capped: r.capped,
    warmupOps: r.warmupOps,
    counters: p.counters,
    verifyFailures: bad,
    driverCpu: (b.self - a.self) / s,
    serversCpu: (b.servers - a.servers) / s,
    othersCpu:
      a.busy === null || b.busy === null
        ? null
        : Math.max(0, b.busy - a.busy - (b.self - a.self) - (b.servers - a.servers)) / s,
  };
  if (a.sockets && b.sockets) {
    const driver = bytesBetween(a.sockets, b.sockets, [process.pid]);
    const servers = bytesBetween(a.sockets, b.sockets, spec.serverPids);
    out.clientSentPerOp = driver.sent / n;
    out.clientRecvPerOp = driver.received / n;
    out.clientSockets = driver.sockets;
    // Everything the servers sent went either to this driver or to each other (replication, Raft).
    out.peerSentPerOp = (servers.sent - driver.received) / n;
    out.socketsClosed = driver.closed + servers.closed;
  }
  if (statsA && statsB) {
    out.statsSentPerOp = (statsB.bytesSent - statsA.bytesSent) / n;
    out.statsRecvPerOp = (statsB.bytesReceived - statsA.bytesReceived) / n;
  }
  result(out);
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`driver error: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
