/**
 * Real members under the simulated Env: three openClusterNode members (SegmemNode, RaftLog and its Raft
 * driver, DiskRaftStorage, the whole data directory on the simulated disk (SimFs), the real connection handling and peer
 * codec) on one simulated clock and seed, and a client speaking the real protocol through an in-process
 * connection. Nothing here waits for real time: election timeouts, fsyncs, network latency, session expiry
 * all happen on the simulated clock, which the test moves. This is the step towards running the shipped
 * server (and later the client) in the simulator.
 */
import { PROTOCOL_VERSION, SegmemError } from '@segmem/protocol';
import test from 'ava';
import { connectLocal } from '../src/shell/local.js';
import { FrameClient, RealSim } from './sim-members.js';

interface Outcome {
  electedAfterMs: number;
  expiredAfterMs: number;
  trace: string[];
  digests: string[];
  syncs: number;
}

/** Elect, open a session, write, go silent until the session expires; what happened, on the simulated clock. */
async function scenario(seed: number): Promise<Outcome> {
  const sim = new RealSim(seed);
  await sim.start(['s1', 's2', 's3']);
  try {
    const electedAfterMs = await sim.until(() => sim.leaders().length === 1, 10_000, 'a leader');
    const leader = sim.nodes.get(sim.leaders()[0]!)!;
    const client = new FrameClient(sim, connectLocal(leader));
    const hello = await client.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000 });
    const created = await client.call({
      type: 'CREATE',
      seq: 1,
      name: 'counter',
      size: 8,
      ifNotExists: false,
    });
    const grant = await client.call({
      type: 'ACQUIRE',
      seq: 2,
      name: 'counter',
      mode: 'write',
      cachedId: 0,
      cachedVersion: 0,
      timeoutMs: null,
    });
    const bytes = Buffer.from([1, 2, 3, 4]);
    const released = await client.call({
      type: 'RELEASE',
      seq: 3,
      name: 'counter',
      mode: 'write',
      token: grant.token,
      ranges: [[0, bytes.length]],
      payload: bytes,
    });
    if (released.version !== created.object.version + 1)
      throw new Error(`version ${released.version} after one write to version ${created.object.version}`);
    // Every member applies the same commands: the same state.
    const nodes = [...sim.nodes.values()];
    await sim.until(
      () => new Set(nodes.map((n) => n.status().digest)).size === 1,
      5000,
      'the members agreeing',
    );
    if (nodes.some((n) => n.status().sessions !== 1)) throw new Error('the session is not on every member');
    // Silence: no keepalive. The leader expires the session on the simulated clock.
    const silentAt = sim.nowMs;
    await sim.until(() => nodes.every((n) => n.status().sessions === 0), 10_000, 'the session expiring');
    const expiredAfterMs = sim.nowMs - silentAt;
    if (hello.sessionId < 1) throw new Error('no session id');
    const digests = nodes.map((n) => n.status().digest);
    const syncs = sim.fs.syncs;
    return { electedAfterMs, expiredAfterMs, trace: [...sim.trace], digests, syncs };
  } finally {
    await sim.stop();
  }
}

test('real members elect, replicate, fsync and expire a silent session on the simulated clock', async (t) => {
  const wallStarted = performance.now();
  const r = await scenario(7);
  const wallMs = performance.now() - wallStarted;
  // Election timeouts are 10..19 ticks of 50 ms: a first leader within a few of them.
  t.true(r.electedAfterMs >= 500 && r.electedAfterMs < 5000, `elected after ${r.electedAfterMs} ms`);
  // Expiry: the 2000 ms timeout, checked every quarter of it, then one commit.
  t.true(r.expiredAfterMs >= 2000 && r.expiredAfterMs < 3500, `expired after ${r.expiredAfterMs} ms`);
  t.true(r.syncs > 0, 'the WALs were fsynced (on the simulated disk)');
  t.true(r.trace.some((l) => /raft: leader in term \d+/.test(l)));
  t.log(
    `leader after ${r.electedAfterMs} simulated ms, session expired ${r.expiredAfterMs} ms after the client went silent; ` +
      `${r.syncs} fsyncs; ${wallMs.toFixed(0)} ms of wall time (opening and closing the data directories included)`,
  );
});

test('real members under the simulated Env: one seed replays the same run', async (t) => {
  const a = await scenario(11);
  const b = await scenario(11);
  t.deepEqual(a.trace, b.trace, 'the same role changes at the same simulated times');
  t.deepEqual(
    { ...a, trace: undefined },
    { ...b, trace: undefined },
    'the same timings, fsync count and states',
  );
  t.true(a.trace.length > 0);
});

test('a SegmemError reaches the client through the simulated members as on TCP', async (t) => {
  const sim = new RealSim(3);
  await sim.start(['s1', 's2', 's3']);
  try {
    await sim.until(() => sim.leaders().length === 1, 10_000, 'a leader');
    const follower = [...sim.nodes].find(([, n]) => !n.status().leader)![1];
    // A follower names the leader once it has heard from it (the leader's first append reaches it over
    // its link, which may still be in its handshake when the votes are in).
    await sim.until(
      () => follower.stats().log.leader !== null,
      10_000,
      'the follower to hear from the leader',
    );
    const client = new FrameClient(sim, connectLocal(follower));
    const err = await t.throwsAsync(
      client.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000 }),
    );
    t.true(SegmemError.is(err));
    t.is((err as SegmemError).code, 'UNAVAILABLE');
    t.is((err as SegmemError).details?.reason, 'NOT_LEADER');
    t.is((err as SegmemError).details?.leader, sim.leaders()[0]);
  } finally {
    await sim.stop();
  }
});
