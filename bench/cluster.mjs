// Replication benchmark: write cycles on a 3-server group next to one server, in the same run, and the
// time from a leader's SIGKILL to the first successful write on the new leader.
//
//   npm run bench:cluster               # ~1 min; rewrites the "Replication" section of docs/benchmarks.md
//   npm run bench:cluster -- --quick    # shorter windows; leaves the docs alone
//
// Servers bind 127.0.0.1 on free ports, with data in a temporary directory, fsync "batch" (the default);
// every loop is bounded in time and count, and every process started is stopped at the end.
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@segmem/client';
import { localCluster } from '../examples/lib/local-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const quick = process.argv.includes('--quick');
const windowMs = quick ? 1000 : 3000;
const failovers = quick ? 2 : 5;
/** Every group started, stopped (processes and data) at the end whatever happens. */
const groups = [];

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

/** Closed-loop write cycles (acquireWrite + 4 bytes + release), one object per client, one session each. */
async function writeCycles(addresses, clients) {
  const segs = [];
  for (let i = 0; i < clients; i++) {
    const s = await connect({ servers: addresses });
    await s.create(`w${clients}-${i}`, 4096, { ifNotExists: true });
    segs.push(s);
  }
  const lat = [];
  const cap = 500_000;
  const warmUntil = performance.now() + 500;
  const endAt = warmUntil + windowMs;
  await Promise.all(
    segs.map(async (s, i) => {
      while (performance.now() < endAt && lat.length < cap) {
        const t0 = performance.now();
        await s.update(`w${clients}-${i}`, (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
        if (t0 >= warmUntil) lat.push(performance.now() - t0);
      }
    }),
  );
  for (const s of segs) await s.close();
  lat.sort((a, b) => a - b);
  return {
    ops: lat.length,
    opsPerS: Math.round(lat.length / (windowMs / 1000)),
    p50: pct(lat, 0.5) * 1000,
    p99: pct(lat, 0.99) * 1000,
  };
}

async function failoverTimes(group) {
  const seg = await connect({ servers: group.servers.split(',') });
  await seg.create('failover', 4, { ifNotExists: true });
  const times = [];
  for (let i = 0; i < failovers; i++) {
    await seg.update('failover', (h) => h.bytes.writeUInt32LE(i));
    let leader;
    for (const deadline = Date.now() + 10_000; !(leader = group.leader()) && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (!leader) throw new Error('no leader');
    const t0 = performance.now();
    await group.kill(leader.id);
    await seg.update('failover', (h) => h.bytes.writeUInt32LE(i + 1000));
    times.push(performance.now() - t0);
    await group.restart(leader.id);
  }
  await seg.close();
  times.sort((a, b) => a - b);
  return times;
}

const fmt = (n) => Math.round(n).toLocaleString('en-US');
const rows = [];
try {
  const single = await localCluster(1);
  groups.push(single);
  const three = await localCluster(3);
  groups.push(three);
  for (const clients of [1, 32]) {
    for (const [config, g] of [
      ['1 server', single],
      ['3 servers (Raft)', three],
    ]) {
      const r = await writeCycles(g.servers.split(','), clients);
      rows.push({ config, clients, ...r });
      console.log(
        `${config.padEnd(18)} ${String(clients).padStart(2)} clients: ${fmt(r.opsPerS)} cycles/s, p50 ${fmt(r.p50)} µs, p99 ${fmt(r.p99)} µs`,
      );
    }
  }
  const times = await failoverTimes(three);
  console.log(`failover: leader SIGKILL -> first write, ${times.map((t) => `${fmt(t)} ms`).join(', ')}`);

  const ratio = (clients) => {
    const a = rows.find((r) => r.config.startsWith('3') && r.clients === clients);
    const b = rows.find((r) => r.config === '1 server' && r.clients === clients);
    return `${Math.round((a.opsPerS / b.opsPerS) * 100)}%`;
  };
  const table = [
    '| config | fsync | clients | cycles/s | p50 µs | p99 µs |',
    '|---|---|---:|---:|---:|---:|',
    ...rows.map(
      (r) => `| ${r.config} | batch | ${r.clients} | ${fmt(r.opsPerS)} | ${fmt(r.p50)} | ${fmt(r.p99)} |`,
    ),
  ].join('\n');
  const section = `<!-- bench:cluster:start -->
## Replication

Written by \`bench/cluster.mjs\` (\`npm run bench:cluster\`); rerunning it replaces this section.

- Date: ${new Date().toUTCString()}; ${cpus().length} CPUs; Node ${process.version}; fsync "batch" on every server.
- Write cycle: acquireWrite + change 4 bytes + release of a 4 KiB object, one object and one session per client,
  all clients in this one process; ${windowMs} ms window after a 500 ms warm-up. Servers are separate processes:
  with 3 servers, 4 processes share the 2 CPUs and the 3 servers fsync to one disk.

${table}

3-server throughput relative to one server: ${ratio(1)} with 1 client, ${ratio(32)} with 32 clients (target: at least 50% with 32).

Failover, leader SIGKILL to the first successful write on the new leader (default timeouts: 50 ms ticks,
election after 10..19 ticks), ${times.length} runs: p50 ${fmt(pct(times, 0.5))} ms, max ${fmt(times[times.length - 1])} ms (target: p50 under 1.5 s).

Where the replicated write goes: each cycle is two commits (the acquire, then the release); a commit is
the leader's append reaching the followers (sent in parallel with the leader's own fsync), their fsync and
answer, then the apply and the reply, on a disk the three servers share and with 4 processes on 2 CPUs.
<!-- bench:cluster:end -->`;
  console.log(`\n${table}`);
  if (!quick) {
    const docs = join(here, '../docs/benchmarks.md');
    const text = readFileSync(docs, 'utf8');
    const re = /<!-- bench:cluster:start -->[\s\S]*<!-- bench:cluster:end -->/;
    writeFileSync(docs, re.test(text) ? text.replace(re, section) : `${text.trimEnd()}\n\n${section}\n`);
    console.log('wrote the Replication section of docs/benchmarks.md');
  }
} finally {
  for (const g of groups) await g.stop();
}
