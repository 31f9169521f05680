/**
 * Probes of cycles of waits across shard groups, against a real server over real sockets: a PROBE from a
 * waiting session reaches, one hop further, every session its wait is behind; a session that waits for
 * nothing reaches no one; a CANCEL with reason DEADLOCK fails the wait with DEADLOCK and lets the queue go on.
 */
import { type Probed, SegmemError, systemEnv } from '@segmem/protocol';
import test from 'ava';
import { Session, tcpDial } from '../src/session.js';
import { startServerProcess, tempDir, waitFor } from './helpers.js';

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
