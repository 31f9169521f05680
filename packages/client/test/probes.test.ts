/**
 * Cycles of waits across shard groups, with real servers over real sockets. A PROBE from a waiting session
 * reaches, one hop further, every session its wait is behind; a session that waits for nothing reaches no
 * one; a CANCEL with reason DEADLOCK fails the wait with DEADLOCK and lets the queue go on. Two clients of a
 * 2-group cluster that each hold a name of one group and wait for the other's: one of them gets DEADLOCK
 * within a second (the one with the higher client id), the other goes on; a wait behind a holder that waits
 * for nothing is left alone.
 */
import { type Probed, SegmemError, systemEnv } from '@segmem/protocol';
import test from 'ava';
import { connect, type Handle, type Segment } from '../src/index.js';
import { Session, tcpDial } from '../src/session.js';
import type { ShardedSegment } from '../src/sharded-segment.js';
import {
  consecutivePorts,
  namesOfGroup,
  startServerProcess,
  startUp,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

async function openSession(address: string, probed: Probed[]): Promise<Session> {
  return Session.open({
    dial: tcpDial([address], systemEnv),
    env: systemEnv,
    sessionTimeoutMs: 5000,
    reconnect: false,
    onInvalidate: () => {},
    onProbed: (msg) => probed.push(msg),
    onSessionLost: () => {},
    onResumed: () => {},
  });
}

test('a probe goes one hop to the sessions a wait is behind; CANCEL DEADLOCK fails the wait', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'none' });
  const got = { a: [] as Probed[], b: [] as Probed[], c: [] as Probed[], d: [] as Probed[] };
  const a = await openSession(server.address, got.a);
  const b = await openSession(server.address, got.b);
  const c = await openSession(server.address, got.c);
  const d = await openSession(server.address, got.d);
  t.teardown(async () => {
    for (const s of [a, b, c, d]) await s.close().catch(() => {});
    await server.stop();
    dir.cleanup();
  });
  await a.call({ type: 'CREATE', seq: a.seq(), name: 'x', size: 8, ifNotExists: false });
  const acquire = (s: Session, mode: 'read' | 'write') =>
    s.start({
      type: 'ACQUIRE',
      seq: s.seq(),
      name: 'x',
      mode,
      cachedId: 0,
      cachedVersion: 0,
      timeoutMs: 20_000,
      inlineMaxBytes: null,
    });
  const held = await acquire(a, 'write').promise;
  t.truthy(held);
  // b waits behind a's hold; c waits behind a's hold and b's queued write.
  const bWait = acquire(b, 'write');
  const cWait = acquire(c, 'read');
  const initiator = '00112233aabbccdd';
  await waitFor(
    async () => (await c.call({ type: 'PROBE', initiator, probeId: 9, hops: 2 })).pushed === 2,
    'c waits behind a and b',
    5000,
  );
  await waitFor(() => got.a.length > 0 && got.b.length > 0, 'the probes pushed to a and b', 5000);
  t.deepEqual(got.a[0], { initiator, probeId: 9, hops: 3, name: 'x' });
  t.deepEqual(got.b[0], { initiator, probeId: 9, hops: 3, name: 'x' });
  t.is(got.c.length, 0, 'a probe never goes back to the session that sent it');
  // d waits for nothing: its probe reaches no one.
  t.is((await d.call({ type: 'PROBE', initiator, probeId: 10, hops: 0 })).pushed, 0);
  // b gives its wait up for a deadlock: it fails with DEADLOCK, and c's read stays queued behind a.
  const cancelled = await b.call({ type: 'CANCEL', requestId: bWait.requestId, reason: 'DEADLOCK' });
  t.true(cancelled.cancelled);
  const err = await bWait.promise.then(
    () => null,
    (e: unknown) => e,
  );
  t.true(SegmemError.is(err, 'DEADLOCK'), String(err));
  t.regex((err as Error).message, /cycle of waits across shard groups/);
  const aOk = held as { token: number };
  await a.call({
    type: 'RELEASE',
    seq: a.seq(),
    name: 'x',
    mode: 'write',
    token: aOk.token,
    ranges: [],
    keep: false,
    payload: Buffer.alloc(0),
  });
  t.truthy(await cWait.promise, 'the read queued behind goes on once a releases');
});

/** Starts `segmem up --groups 2 --replicas 1` and two clients given one server each. */
async function twoGroups(t: { teardown(fn: () => unknown): void }): Promise<{ a: Segment; b: Segment }> {
  const dir = tempDir();
  const port = await consecutivePorts(2);
  const { up, ready } = startUp(dir.path, port, ['--groups', '2', '--replicas', '1']);
  const segs: Segment[] = [];
  t.teardown(async () => {
    for (const seg of segs) await seg.close().catch(() => {});
    if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
    await up.done.catch(() => {});
    dir.cleanup();
  });
  const servers = (await ready()).servers.split(',');
  for (const address of servers) {
    segs.push(
      await untilItWorks(
        () => connect({ servers: [address], sessionTimeoutMs: 5000 }),
        `a client via ${address}`,
      ),
    );
  }
  return { a: segs[0]!, b: segs[1]! };
}

test('a cycle of waits through two groups: one client gets DEADLOCK within a second, the other goes on', async (t) => {
  const { a, b } = await twoGroups(t);
  const [x] = namesOfGroup(0, 1);
  const [y] = namesOfGroup(1, 1);
  await untilItWorks(() => a.create(x!, 8, { ifNotExists: true }), 'x created');
  await untilItWorks(() => a.create(y!, 8, { ifNotExists: true }), 'y created');
  for (let round = 0; round < 3; round++) {
    const hx = await a.acquireWrite(x!, { timeoutMs: 10_000 });
    const hy = await b.acquireWrite(y!, { timeoutMs: 10_000 });
    // Each now waits for what the other holds, in the other group: neither group sees a cycle.
    const started = Date.now();
    const settle = (p: Promise<Handle>) =>
      p.then(
        (h) => ({ ok: true as const, h, at: Date.now() }),
        (err: unknown) => ({ ok: false as const, err, at: Date.now() }),
      );
    const aWaits = settle(a.acquireWrite(y!, { timeoutMs: 10_000 }));
    const bWaits = settle(b.acquireWrite(x!, { timeoutMs: 10_000 }));
    const first = await Promise.race([aWaits, bWaits]);
    t.false(first.ok, 'the first wait to end is the one given up');
    const err = (first as { err: unknown }).err;
    t.true(SegmemError.is(err, 'DEADLOCK'), String(err));
    t.regex((err as Error).message, /cycle of waits across shard groups/);
    const brokenAfter = first.at - started;
    t.true(brokenAfter < 1000, `the cycle was broken after ${brokenAfter} ms`);
    // The victim is the client with the higher id; it lets go of what it holds, and the other goes on.
    const ids = [(a as ShardedSegment).clientId, (b as ShardedSegment).clientId];
    const victimIsA = first === (await Promise.race([aWaits, Promise.resolve(null)]));
    t.is(victimIsA, ids[0]! > ids[1]!, `victim ${victimIsA ? 'a' : 'b'}, ids ${ids.join(' ')}`);
    await (victimIsA ? hx : hy).release();
    const other = await (victimIsA ? bWaits : aWaits);
    t.true(other.ok, 'the other wait is granted once the victim let go');
    await (other as { h: Handle }).h.release();
    await (victimIsA ? hy : hx).release();
    t.log(`round ${round}: cycle broken after ${brokenAfter} ms`);
  }
});

test('a wait across groups behind a holder that waits for nothing is not a deadlock', async (t) => {
  const { a, b } = await twoGroups(t);
  const [x] = namesOfGroup(0, 1);
  const [y] = namesOfGroup(1, 1);
  await untilItWorks(() => a.create(x!, 8, { ifNotExists: true }), 'x created');
  await untilItWorks(() => a.create(y!, 8, { ifNotExists: true }), 'y created');
  const hx = await a.acquireWrite(x!, { timeoutMs: 10_000 });
  const hy = await b.acquireWrite(y!, { timeoutMs: 10_000 });
  // a holds x and waits for y; b holds y and waits for nothing: a's probes reach b and stop there.
  let granted = false;
  const aWaits = a.acquireWrite(y!, { timeoutMs: 10_000 }).then((h) => {
    granted = true;
    return h;
  });
  await new Promise((resolve) => setTimeout(resolve, 1500));
  t.false(granted, 'still waiting: b holds y');
  await hy.release();
  const h = await aWaits;
  await h.release();
  await hx.release();
  t.pass();
});
