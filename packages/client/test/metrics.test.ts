/**
 * The metrics and health endpoint (`segmem-server --metrics HOST:PORT`), scraped over real HTTP from real
 * server processes: values that follow the load, one leader among the role gauges, a lag per peer, and a
 * /health that turns 503 on a member that cannot serve.
 */
import { writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { startServer } from '@segmem/server';
import test from 'ava';
import { connect } from '../src/index.js';
import {
  bump,
  freePort,
  runNode,
  serverBin,
  startServerProcess,
  tempDir,
  waitFor,
  withCluster,
} from './helpers.js';

/** Prometheus text as `name{labels}` -> value (comments dropped). */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

async function scrape(address: string): Promise<Map<string, number>> {
  const res = await fetch(`http://${address}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  if (!res.headers.get('content-type')?.startsWith('text/plain'))
    throw new Error('/metrics is not text/plain');
  return parseMetrics(await res.text());
}

interface HealthAnswer {
  code: number;
  body: { status: string; role?: string; leader?: string | null; reason?: string; message?: string };
}

async function health(address: string): Promise<HealthAnswer> {
  const res = await fetch(`http://${address}/health`);
  return { code: res.status, body: (await res.json()) as HealthAnswer['body'] };
}

/** A metric's value; fails the test if the series is absent. */
function value(m: Map<string, number>, key: string): number {
  const v = m.get(key);
  if (v === undefined) throw new Error(`no series ${key} in the scrape`);
  return v;
}

test.serial(
  'a 3-server cluster: /metrics follows the load with one leader and a lag per peer; /health is 503 on the last member standing',
  async (t) => {
    const ids = ['s1', 's2', 's3'];
    const metricsAt: Record<string, string> = {};
    for (const id of ids) metricsAt[id] = `127.0.0.1:${await freePort()}`;
    // Every acquire goes to the servers (no kept grants): the test counts them there.
    await withCluster(
      { extra: (id) => ['--metrics', metricsAt[id]!], delegations: false },
      async ({ cluster, seg }) => {
        // Every member can serve once a leader is elected and the followers have caught up.
        await waitFor(
          async () =>
            (await Promise.all(ids.map((id) => health(metricsAt[id]!)))).every((h) => h.code === 200),
          'every member to report healthy',
          15_000,
        );
        const scrapes = new Map(
          await Promise.all(ids.map(async (id) => [id, await scrape(metricsAt[id]!)] as const)),
        );
        const leaders = ids.filter((id) => value(scrapes.get(id)!, 'segmem_raft_role{role="leader"}') === 1);
        t.is(leaders.length, 1, 'exactly one member says it leads');
        const leader = leaders[0]!;
        const followers = ids.filter((id) => id !== leader);
        for (const id of followers) {
          t.is(value(scrapes.get(id)!, 'segmem_raft_role{role="follower"}'), 1, `${id} follows`);
          t.is(value(scrapes.get(id)!, 'segmem_raft_role{role="leader"}'), 0);
          const h = await health(metricsAt[id]!);
          t.like(h.body, { status: 'ok', role: 'follower', leader });
          // Followers have no view of the others' logs.
          t.false([...scrapes.get(id)!.keys()].some((k) => k.startsWith('segmem_raft_peer_lag_entries')));
        }
        const terms = ids.map((id) => value(scrapes.get(id)!, 'segmem_raft_term'));
        t.true(
          terms.every((term) => term === terms[0] && term > 0),
          `one term everywhere: ${terms}`,
        );

        const before = scrapes.get(leader)!;
        const writes = 20;
        await seg.create('metrics/counter', 8);
        await bump(seg, 'metrics/counter', writes);

        const after = await scrape(metricsAt[leader]!);
        const grew = (key: string) => value(after, key) - value(before, key);
        t.true(grew('segmem_commits_total{op="release"}') >= writes, 'write releases were committed');
        t.true(grew('segmem_commits_total{op="acquire"}') >= writes, 'acquires were committed');
        t.true(grew('segmem_lock_grants_total{mode="write"}') >= writes, 'write locks were granted');
        t.true(
          grew('segmem_acquire_wait_seconds_count{mode="write"}') >= writes,
          'each grant timed its wait',
        );
        t.true(grew('segmem_wal_fsync_seconds_count') > 0, 'the WAL was fsynced');
        t.true(grew('segmem_wal_written_bytes_total') > 0);
        t.true(grew('segmem_raft_commit_index') >= 2 * writes);
        t.true(grew('segmem_network_received_bytes_total') > 0);
        t.true(grew('segmem_network_sent_bytes_total{link="client"}') > 0);
        t.true(grew('segmem_network_sent_bytes_total{link="peer"}') > 0);
        t.true(value(after, 'segmem_sessions') >= 1);
        t.true(value(after, 'segmem_objects') >= 1);
        t.is(value(after, 'segmem_locks_held{mode="write"}'), 0, 'every update released its lock');
        t.is(value(after, 'segmem_lock_waiters'), 0);
        t.is(value(after, 'segmem_errors_total{code="PROTOCOL"}'), 0);
        // The leader's view of each follower: match index and lag, which settle at 0 once they have it all.
        for (const id of followers) {
          t.true(value(after, `segmem_raft_peer_match_index{peer="${id}"}`) >= 0);
          t.true(value(after, `segmem_raft_peer_lag_entries{peer="${id}"}`) >= 0);
        }
        await waitFor(async () => {
          const m = await scrape(metricsAt[leader]!);
          return followers.every((id) => value(m, `segmem_raft_peer_lag_entries{peer="${id}"}`) === 0);
        }, 'the leader to see both followers caught up');
        // Followers apply the same commands.
        for (const id of followers) {
          await waitFor(
            async () => value(await scrape(metricsAt[id]!), 'segmem_commits_total{op="release"}') >= writes,
            `${id} to apply the releases`,
          );
        }

        // The endpoint serves two paths and GET only.
        t.is((await fetch(`http://${metricsAt[leader]}/nowhere`)).status, 404);
        t.is((await fetch(`http://${metricsAt[leader]}/metrics`, { method: 'POST', body: 'x' })).status, 405);

        // The others stop: the last member cannot reach a majority, so it has no leader and cannot serve.
        for (const id of followers) await cluster.kill(id);
        const last = await waitFor(async () => {
          const h = await health(metricsAt[leader]!);
          return h.code === 503 ? h : undefined;
        }, 'the last member standing to report 503');
        t.is(last.body.status, 'unavailable');
        t.is(last.body.reason, 'NO_LEADER', last.body.message);
        const alone = await scrape(metricsAt[leader]!);
        t.is(value(alone, 'segmem_health'), 0);
        t.is(value(alone, 'segmem_raft_role{role="leader"}'), 0);
      },
    );
  },
);

test.serial('one server: the config file names its metrics address; a bad address is refused', async (t) => {
  const dir = tempDir();
  try {
    const listen = `127.0.0.1:${await freePort()}`;
    const metrics = `127.0.0.1:${await freePort()}`;
    const config = join(dir.path, 'segmem.json');
    writeFileSync(config, JSON.stringify({ servers: { s1: listen }, metrics: { s1: metrics } }));
    const server = await startServerProcess({
      dataDir: join(dir.path, 'data'),
      listen,
      extra: ['--config', config],
    });
    try {
      t.regex(server.stderr(), new RegExp(`metrics on http://${metrics}/metrics`));
      const h = await health(metrics);
      t.is(h.code, 200);
      t.like(h.body, { status: 'ok', role: 'leader', leader: 's1' });
      const seg = await connect({ servers: [server.address], delegations: false });
      try {
        await seg.create('c', 8);
        await bump(seg, 'c', 5);
        await seg.read('c', () => {});
      } finally {
        await seg.close();
      }
      const m = await scrape(metrics);
      t.is(value(m, 'segmem_raft_role{role="leader"}'), 1);
      t.is(value(m, 'segmem_raft_term'), 0);
      t.true(value(m, 'segmem_commits_total{op="release"}') >= 6);
      t.is(value(m, 'segmem_lock_grants_total{mode="write"}'), 5);
      t.is(value(m, 'segmem_lock_grants_total{mode="read"}'), 1);
      t.true(value(m, 'segmem_wal_fsync_seconds_count') >= 1, 'write releases waited for an fsync');
      // Nothing waits on a lone server: no peers and no lag.
      t.is(value(m, 'segmem_raft_apply_lag_entries'), 0);
      t.false([...m.keys()].some((k) => k.startsWith('segmem_raft_peer_match_index')));
      t.is(await server.stop(), 0);
    } finally {
      await server.kill();
    }

    for (const [flag, expected] of [
      ['nonsense', /metrics address must be host:port/],
      [metrics.replace(/:\d+$/, ':99999'), /metrics address must be host:port/],
    ] as const) {
      const r = await runNode(serverBin, [
        '--id',
        's2',
        '--listen',
        '127.0.0.1:0',
        '--data',
        join(dir.path, 'd2'),
        '--metrics',
        flag,
      ]).done;
      t.is(r.code, 1);
      t.regex(r.stderr, expected);
    }
    // A port already taken: the server refuses to start rather than run without its endpoint.
    const taken = await startServerProcess({
      dataDir: join(dir.path, 'd3'),
      id: 's3',
      extra: ['--metrics', `127.0.0.1:${await freePort()}`],
    });
    try {
      const busy = /metrics on http:\/\/(\S+)\/metrics/.exec(taken.stderr())![1]!;
      const r = await runNode(serverBin, [
        '--id',
        's4',
        '--listen',
        '127.0.0.1:0',
        '--data',
        join(dir.path, 'd4'),
        '--metrics',
        busy,
      ]).done;
      t.is(r.code, 1);
      t.regex(r.stderr, /cannot listen for metrics on/);
    } finally {
      await taken.stop();
    }
  } finally {
    dir.cleanup();
  }
});

test.serial(
  'two servers in one process keep their own metrics; the endpoint refuses bodies and oversized headers',
  async (t) => {
    const dir = tempDir();
    const servers = await Promise.all(
      ['a', 'b'].map((id) =>
        startServer({
          id,
          listen: '127.0.0.1:0',
          dataDir: join(dir.path, id),
          metrics: '127.0.0.1:0',
          fsync: 'none',
        }),
      ),
    );
    try {
      const [a, b] = servers as [(typeof servers)[0], (typeof servers)[0]];
      const seg = await connect({ servers: [a.address], delegations: false });
      try {
        await seg.create('x', 8);
        await bump(seg, 'x', 3);
      } finally {
        await seg.close();
      }
      const ma = await scrape(a.metricsAddress!);
      const mb = await scrape(b.metricsAddress!);
      t.true([...ma.keys()].some((k) => k.startsWith('segmem_server_info{id="a"')));
      t.true([...mb.keys()].some((k) => k.startsWith('segmem_server_info{id="b"')));
      t.is(value(ma, 'segmem_lock_grants_total{mode="write"}'), 3);
      t.is(value(mb, 'segmem_lock_grants_total{mode="write"}'), 0, 'the other server counted nothing');

      // A body is refused without being read, and the connection closed.
      const raw = await rawRequest(
        a.metricsAddress!,
        `GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\npartial`,
      );
      t.regex(raw, /^HTTP\/1\.1 400 /);
      const huge = await rawRequest(
        a.metricsAddress!,
        `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      );
      t.regex(huge, /^HTTP\/1\.1 431 /);
      // And it still answers.
      t.is((await health(a.metricsAddress!)).code, 200);
    } finally {
      await Promise.all(servers.map((s) => s.close()));
      dir.cleanup();
    }
  },
);

/** Sends `request` on a raw TCP connection and resolves with everything read until the server closes it. */
function rawRequest(address: string, request: string): Promise<string> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.slice(address.lastIndexOf(':') + 1)),
  ];
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host, port });
    let got = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within 5 s; got ${JSON.stringify(got.slice(0, 200))}`));
    }, 5000);
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (got += d));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    socket.write(request);
  });
}
