/**
 * Cached grants (delegations): a session keeps its grant of an object after release while nobody else wants
 * it, so acquiring it again needs no round trip (a read) or only the commit of the write (a write); another
 * session's acquire takes it back; and a client that was stopped past its session timeout never uses a grant
 * it lost.
 */
import { join } from 'node:path';
import { MAX_LEASE_MS } from '@segmem/protocol';
import test from 'ava';
import { connect, type Segment } from '../src/index.js';
import type { SegmentImpl } from '../src/segment.js';
import { fixturesDir, runNode, startServerProcess, tempDir, waitFor, withCluster } from './helpers.js';

const requests = (seg: Segment) => (seg as SegmentImpl).stats().requests;

/**
 * The lease renewals a client may send in `ms` while it keeps grants: one a second, and one more after each
 * time its renewal timer ran late (a loaded machine) and an acquire found the lease lapsed.
 */
const renewalsWithin = (ms: number) => 2 * Math.ceil(ms / 1000) + 1;

async function withServer(body: (address: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'batch' });
  try {
    await body(server.address);
  } finally {
    await server.stop();
    dir.cleanup();
  }
}

test('re-reading an unchanged object under a kept read grant sends nothing to the server', async (t) => {
  await withServer(async (address) => {
    const seg = await connect({ servers: [address] });
    try {
      await seg.create('deleg/read', 4096);
      await seg.update('deleg/read', (h) => h.bytes.writeUInt32LE(42, 0));
      await seg.read('deleg/read', (h) => h.bytes.readUInt32LE(0)); // the grant is kept from here
      await seg.read('deleg/read', (h) => h.bytes.readUInt32LE(0)); // renews the lease once
      const before = requests(seg);
      const started = Date.now();
      let sum = 0;
      for (let i = 0; i < 200; i++) sum += await seg.read('deleg/read', (h) => h.bytes.readUInt32LE(0));
      const ms = Date.now() - started;
      t.is(sum, 200 * 42);
      // Lease renewals only (an acquire and a release each without delegations: 400).
      const sent = requests(seg) - before;
      t.true(sent <= renewalsWithin(ms), `${sent} requests for 200 reads in ${ms} ms`);
    } finally {
      await seg.close();
    }
  });
});

test('a write cycle under a kept write grant sends only its release, and others see every write', async (t) => {
  await withServer(async (address) => {
    const seg = await connect({ servers: [address] });
    const other = await connect({ servers: [address] });
    try {
      await seg.create('deleg/write', 4096);
      await seg.update('deleg/write', (h) => h.bytes.writeUInt32LE(1, 0));
      await seg.update('deleg/write', (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1, 0));
      const before = requests(seg);
      const started = Date.now();
      for (let i = 0; i < 100; i++) {
        await seg.update('deleg/write', (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1, 0));
      }
      const ms = Date.now() - started;
      // The releases and lease renewals (an acquire and a release each without delegations: 200).
      const sent = requests(seg) - before;
      t.true(
        sent >= 100 && sent <= 100 + renewalsWithin(ms),
        `${sent} requests for 100 write cycles in ${ms} ms`,
      );
      // Another session's read takes the write grant back and sees the last write.
      t.is(await other.read('deleg/write', (h) => h.bytes.readUInt32LE(0)), 102);
      const info = await other.stat('deleg/write');
      t.is(info.version, 1 + 102);
      // And the first session gets the lock back through the servers, after the other's read.
      await seg.update('deleg/write', (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1, 0));
      t.is(await other.read('deleg/write', (h) => h.bytes.readUInt32LE(0)), 103);
    } finally {
      await Promise.all([seg.close(), other.close()]);
    }
  });
});

test('three servers: a writer takes kept read grants of several sessions back and every reader then sees its write', async (t) => {
  await withCluster({}, async ({ cluster, seg }) => {
    const readers = await Promise.all(
      Array.from({ length: 4 }, () => connect({ servers: cluster.addresses })),
    );
    try {
      await seg.create('deleg/shared', 4096);
      await seg.update('deleg/shared', (h) => h.bytes.writeUInt32LE(5, 0));
      for (const r of readers) {
        t.is(await r.read('deleg/shared', (h) => h.bytes.readUInt32LE(0)), 5);
        t.is((r as SegmentImpl).keptGrants(), 1, 'the read grant is kept');
      }
      const started = Date.now();
      await seg.update('deleg/shared', (h) => h.bytes.writeUInt32LE(6, 0));
      const waitedMs = Date.now() - started;
      t.true(waitedMs < 2000, `the writer waited ${waitedMs} ms for the kept grants to come back`);
      for (const r of readers) t.is(await r.read('deleg/shared', (h) => h.bytes.readUInt32LE(0)), 6);
    } finally {
      await Promise.all(readers.map((r) => r.close()));
    }
  });
});

test('with delegations off every acquire goes to the server', async (t) => {
  await withServer(async (address) => {
    const seg = await connect({ servers: [address], delegations: false });
    try {
      await seg.create('deleg/off', 4096);
      await seg.read('deleg/off', () => {});
      const before = requests(seg);
      for (let i = 0; i < 10; i++) await seg.read('deleg/off', () => {});
      t.is(requests(seg) - before, 20, 'an acquire and a release per read');
      t.is((seg as SegmentImpl).keptGrants(), 0);
      await t.throwsAsync(connect({ servers: [address], delegations: 'yes' as unknown as boolean }), {
        code: 'INVALID_ARGUMENT',
      });
    } finally {
      await seg.close();
    }
  });
});

/** Runs the holder fixture, stops it once it holds its grant, writes from `seg`, resumes it; its report. */
async function stoppedHolder(
  servers: string[],
  seg: Segment,
  name: string,
  mode: 'read' | 'write',
  sessionTimeoutMs: number,
): Promise<{ ready: Record<string, unknown>; report: Record<string, unknown> }> {
  const lines: Record<string, unknown>[] = [];
  const child = runNode(
    join(fixturesDir, 'delegation-holder.mjs'),
    [servers.join(','), name, String(sessionTimeoutMs), mode],
    {
      timeoutMs: 60_000,
      onLine: (line) => {
        if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  );
  try {
    await waitFor(() => lines.length > 0, 'the holder to keep its grant', 20_000);
    child.proc.kill('SIGSTOP');
    // The write waits for the stopped holder's session to expire, and then proceeds.
    const started = Date.now();
    await seg.update(name, (h) => h.bytes.writeUInt32LE(99, 0));
    const waitedMs = Date.now() - started;
    child.proc.kill('SIGCONT');
    child.proc.kill('SIGUSR2');
    const { code, stderr } = await child.done;
    if (code !== 0) throw new Error(`the holder exited ${code}: ${stderr}`);
    if (stderr) console.log(stderr);
    if (waitedMs < sessionTimeoutMs / 2) throw new Error(`the writer did not wait (${waitedMs} ms)`);
    return { ready: lines[0]!, report: lines[1]! };
  } finally {
    child.proc.kill('SIGKILL');
  }
}

test.serial(
  'a stopped client holding a kept read grant: the writer proceeds after its session timeout, and the resumed client reads the new value',
  async (t) => {
    await withServer(async (address) => {
      const seg = await connect({ servers: [address] });
      try {
        await seg.create('deleg/stopped-read', 4096);
        await seg.update('deleg/stopped-read', (h) => h.bytes.writeUInt32LE(1, 0));
        const { ready, report } = await stoppedHolder([address], seg, 'deleg/stopped-read', 'read', 1000);
        t.is(ready.again, 1);
        t.is(ready.requests, 0, 'the second read was served by the kept grant');
        t.is(report.after, 99, 'the resumed client never reads its stale copy');
      } finally {
        await seg.close();
      }
    });
  },
);

test.serial(
  'three servers: a stopped client holding a write handle under a kept grant: its write is refused with LOCK_LOST and never visible',
  async (t) => {
    await withCluster({}, async ({ cluster, seg }) => {
      await seg.create('deleg/stopped-write', 4096);
      const { ready, report } = await stoppedHolder(
        cluster.addresses,
        seg,
        'deleg/stopped-write',
        'write',
        1000,
      );
      t.is(ready.value, 7);
      t.is(ready.requests, 0, 'the write access was granted locally');
      t.is(report.release, 'LOCK_LOST');
      const bytes = await seg.read('deleg/stopped-write', (h) => Buffer.from(h.bytes));
      t.is(bytes.readUInt32LE(0), 99);
      t.is(bytes.filter((b) => b === 0xee).length, 0, 'no byte of the refused write is visible');
    });
  },
);

test.serial(
  'a single server restarted while a session held a lock grants no lock before the longest lease is over',
  async (t) => {
    const dir = tempDir();
    let server = await startServerProcess({ dataDir: dir.path, fsync: 'batch' });
    const holder = await connect({ servers: [server.address], sessionTimeoutMs: 60_000 });
    try {
      await holder.create('deleg/restart', 4096);
      await holder.read('deleg/restart', () => {});
      await holder.read('deleg/restart', () => {}); // kept, and covered by a lease the server made durable
      const listen = server.address;
      // The holder last heard from the server before this: its lease runs out MAX_LEASE_MS after at most.
      const killedAt = Date.now();
      await server.kill();
      server = await startServerProcess({ dataDir: dir.path, fsync: 'batch', listen });
      const other = await connect({ servers: [server.address] });
      try {
        const started = Date.now();
        await other.update('deleg/restart', (h) => h.bytes.writeUInt32LE(1, 0));
        const waitedMs = Date.now() - started;
        // The holder may still read its copy for up to MAX_LEASE_MS after it last heard from the server.
        // Counted from the kill: the restart's own start-up (seconds on a loaded machine) is part of it.
        const sinceKillMs = Date.now() - killedAt;
        t.true(sinceKillMs >= MAX_LEASE_MS, `the first grant came ${sinceKillMs} ms after the kill`);
        t.true(waitedMs < 10_000, `the first grant after the restart came after ${waitedMs} ms`);
      } finally {
        await other.close();
      }
    } finally {
      await holder.close();
      await server.stop();
      dir.cleanup();
    }
  },
);
