// Replication benchmark: write cycles on a 3-server group next to one server, in the same run, and the
// time from a leader's SIGKILL to the first successful write on the new leader.
//
//   npm run bench:cluster               # ~1 min; rewrites the "Replication" section of docs/benchmarks.md
//   npm run bench:cluster -- --quick    # shorter windows; leaves the docs alone
//
// Servers bind 127.0.0.1 on free ports, with data in a temporary directory, fsync "batch" (the default);
// every loop is bounded in time and count, and every process started is stopped at the end.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { connect } from '@segmem/client';

const here = dirname(fileURLToPath(import.meta.url));
const serverBin = join(here, '../packages/server/bin/segmem-server.mjs');
const quick = process.argv.includes('--quick');
const windowMs = quick ? 1000 : 3000;
const failovers = quick ? 2 : 5;
const root = mkdtempSync(join(tmpdir(), 'segmem-bench-cluster-'));
const procs = new Set();

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function startServer(id, address, dataDir, peers) {
  const args = [serverBin, '--id', id, '--listen', address, '--data', dataDir, '--fsync', 'batch'];
  if (peers) args.push('--peers', peers);
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(proc);
  const member = { id, address, dataDir, peers, proc, role: 'follower', term: 0 };
  createInterface({ input: proc.stderr }).on('line', (line) => {
    const m = / raft: (\w+) in term (\d+)/.exec(line);
    if (m) Object.assign(member, { role: m[1], term: Number(m[2]) });
  });
  return new Promise((resolve, reject) => {
    createInterface({ input: proc.stdout }).on('line', (line) => {
      if (line.includes(' ready on ')) resolve(member);
    });
    proc.once('exit', (code) => reject(new Error(`${id} exited with code ${code}`)));
  });
}

async function stop(member) {
  const p = member.proc;
  if (p.exitCode === null && p.signalCode === null) {
    p.kill('SIGTERM');
    await new Promise((r) => p.once('exit', r));
  }
  procs.delete(p);
}

async function group(size) {
  const ids = Array.from({ length: size }, (_, i) => `s${i + 1}`);
  const addresses = [];
  for (let i = 0; i < size; i++) addresses.push(`127.0.0.1:${await freePort()}`);
  const peers = size > 1 ? ids.map((id, i) => `${id}=${addresses[i]}`).join(',') : undefined;
  const dir = mkdtempSync(join(root, `g${size}-`));
  const members = await Promise.all(ids.map((id, i) => startServer(id, addresses[i], join(dir, id), peers)));
  return { addresses, members };
}

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

function leaderOf(members) {
  let best;
  for (const m of members) {
    if (
      m.proc.exitCode === null &&
      m.proc.signalCode === null &&
      m.role === 'leader' &&
      (!best || m.term > best.term)
    )
      best = m;
  }
  return best;
}

async function failoverTimes(g) {
  const seg = await connect({ servers: g.addresses });
  await seg.create('failover', 4, { ifNotExists: true });
  const times = [];
  for (let i = 0; i < failovers; i++) {
    await seg.update('failover', (h) => h.bytes.writeUInt32LE(i));
    let leader;
    for (const deadline = Date.now() + 10_000; !(leader = leaderOf(g.members)) && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (!leader) throw new Error('no leader');
    const t0 = performance.now();
    leader.proc.kill('SIGKILL');
    await new Promise((r) => leader.proc.once('exit', r));
    procs.delete(leader.proc);
    await seg.update('failover', (h) => h.bytes.writeUInt32LE(i + 1000));
    times.push(performance.now() - t0);
    const back = await startServer(leader.id, leader.address, leader.dataDir, leader.peers);
    g.members[g.members.indexOf(leader)] = back;
  }
  await seg.close();
  times.sort((a, b) => a - b);
  return times;
}

const fmt = (n) => Math.round(n).toLocaleString('en-US');
const rows = [];
try {
  const single = await group(1);
  const three = await group(3);
  for (const clients of [1, 32]) {
    for (const [config, g] of [
      ['1 server', single],
      ['3 servers (Raft)', three],
    ]) {
      const r = await writeCycles(g.addresses, clients);
      rows.push({ config, clients, ...r });
      console.log(
        `${config.padEnd(18)} ${String(clients).padStart(2)} clients: ${fmt(r.opsPerS)} cycles/s, p50 ${fmt(r.p50)} µs, p99 ${fmt(r.p99)} µs`,
      );
    }
  }
  const times = await failoverTimes(three);
  console.log(`failover: leader SIGKILL -> first write, ${times.map((t) => `${fmt(t)} ms`).join(', ')}`);
  for (const m of [...single.members, ...three.members]) await stop(m);

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
election after 10..20 ticks), ${times.length} runs: p50 ${fmt(pct(times, 0.5))} ms, max ${fmt(times[times.length - 1])} ms (target: p50 under 1.5 s).

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
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
}
