/**
 * The simulation of the shipped code in CI: one seed must replay the same run, and the checkers must catch
 * each broken variant within a few seeds (the seeds without variants: real-sim-seeds-*.test.ts).
 */
import ava, { type ExecutionContext } from 'ava';
import { type RealBrokenVariant, runRealSimulation } from '../src/real-sim.js';
import { SIM_TEST_TIMEOUT_MS } from './seeds.js';

/**
 * One after the other (the simulations share this process's one thread: at once they gain nothing and end
 * together, minutes in), each with its own timeout: one alone took more than ava's 3-minute wait for any
 * test to end on a loaded machine (73 s of CPU for the file; 4 to 10 minutes of wall time).
 */
const test = (title: string, body: (t: ExecutionContext) => Promise<void>) =>
  ava.serial(title, (t) => {
    t.timeout(SIM_TEST_TIMEOUT_MS);
    return body(t);
  });

/**
 * Runs seeds 1..maxSeed of a broken variant until a checker fails one; a run that stops on an error no
 * checker names (a crash), or that stops making progress (liveness, budget), does not count as caught, and the search goes on.
 */
async function catches(
  t: ExecutionContext,
  broken: RealBrokenVariant,
  maxSeed: number,
  checkers: RegExp,
  fromSeed = 1,
) {
  let caught: string | undefined;
  for (let seed = fromSeed; seed <= maxSeed && caught === undefined; seed++) {
    const r = await runRealSimulation({ seed, broken });
    const line = r.ok ? '' : `seed ${seed}: ${r.failure!.checker}: ${r.failure!.detail.split('\n')[0]}`;
    if (r.ok) continue;
    // Not a safety checker: a run that stops on an unnamed error, or whose members stop making progress; nor
    // a history the linearizability search gave up on (undecided is no proof of a violation).
    if (['crash', 'liveness', 'budget'].includes(r.failure!.checker) || / undecided$/.test(line))
      t.log(`not counted: ${line}`);
    else caught = line;
  }
  t.truthy(caught, `caught within seeds ${fromSeed}..${maxSeed}`);
  t.regex(caught ?? '', checkers);
  t.log(caught);
}

test('real-code simulation: one seed replays the same run (same trace hash), peer handshakes and their faults included', async (t) => {
  // Seed 6 draws every fault of the peer links: handshakes reset, all links reset, a forged peer.
  const a = await runRealSimulation({ seed: 6 });
  const b = await runRealSimulation({ seed: 6 });
  t.true(a.ok, a.failure?.detail);
  t.is(a.traceHash, b.traceHash);
  t.deepEqual(a.stats, b.stats);
  t.true(a.trace.length > 100, `${a.trace.length} trace lines`);
  const s = a.stats;
  t.true(
    s.handshakeResets > 0 && s.linkResets > 0,
    `${s.handshakeResets} handshake resets, ${s.linkResets} link resets`,
  );
  // Every forged connection was refused, each for its proof or its id, and the run stayed green above.
  t.true(s.forgedAttempts > 0, `${s.forgedAttempts} forged attempts`);
  t.is(s.forgedRefused, s.forgedAttempts);
  t.true(s.peerAuthFailures > 0, `${s.peerAuthFailures} proofs refused`);
  const c = await runRealSimulation({ seed: 7 });
  t.not(c.traceHash, a.traceHash, 'another seed, another run');
});

test('the checkers catch a client that keeps its copy after LOCK_LOST (broken variant keepCopyAfterLockLost)', (t) =>
  catches(
    t,
    'keepCopyAfterLockLost',
    70,
    // A kept copy shows as a read of bytes never committed (readsCommitted, readsLatest) or as counts off.
    /^seed \d+: (countedOnce|readsCommitted|readsLatest|linearizability):/,
    // With today's fault mix (peer handshakes, their faults and dial deadlines included) seeds 58, 66, 109
    // and 116 are those of 1..120 it catches; the seeds before pass, which costs a minute of CPU: the
    // search starts at 56. Few seeds catch this variant: a change to the fault mix moves them.
    56,
  ));

test('the checkers catch members that answer before a majority has the command (broken variant replyBeforeCommit)', (t) =>
  catches(
    t,
    'replyBeforeCommit',
    18,
    /^seed \d+: (countedOnce|readsCommitted|linearizability|statVersions|logAppends):/,
    // Seed 15 catches it with today's runs (seed 11 did before the client retried a DEADLOCK through an idle
    // kept grant); seeds 1 and 2 end in budget and liveness (its members spin once their logs diverge) after
    // a minute of CPU between them, which counts for nothing, and 3..12 pass or stall: the search starts at 13.
    13,
  ));

test('the checkers catch a follower that serves pages at a version it has not applied (broken variant followerReadsUnapplied)', (t) =>
  catches(
    t,
    'followerReadsUnapplied',
    // About one seed in ten catches it (seeds 1..100 before and after the members' disk was simulated):
    // 48 seeds miss it with probability below 1%.
    48,
    /^seed \d+: (readsLatest|readsCommitted|countedOnce|linearizability):/,
  ));

test('the checkers catch a WAL that skips an fsync before its member crashes (broken variant walSkipsFsync)', (t) =>
  catches(
    t,
    'walSkipsFsync',
    12,
    /^seed \d+: (durability|countedOnce|readsCommitted|linearizability|statVersions|logAppends):/,
  ));

test('the checkers catch a client that uses its kept grants past their lease (broken variant grantPastLease)', (t) =>
  catches(t, 'grantPastLease', 24, /^seed \d+: (linearizability|readsLatest|readsCommitted|countedOnce):/));

test('the checkers catch a client that trusts its clock without the drift margin, at the lease edge (broken variant leaseWithoutDriftMargin)', (t) =>
  catches(
    t,
    'leaseWithoutDriftMargin',
    40,
    /^seed \d+: (linearizability: \w+: no linearization exists|readsLatest|readsCommitted|countedOnce)/,
  ));

test('the checkers catch a member that takes a peer without checking its proof of the cluster secret (broken variant acceptUnprovenPeer)', (t) =>
  catches(t, 'acceptUnprovenPeer', 6, /^seed \d+: termGrowth:/));

test('the lease holds at its edge: clocks at the drift bound, a client cut off as its lease is renewed, others writing what it keeps', async (t) => {
  for (let seed = 1; seed <= 12; seed++) {
    const r = await runRealSimulation({ seed, leaseEdge: true });
    const detail = r.failure ? `${r.failure.checker}: ${r.failure.detail.split('\n')[0]}` : '';
    // An undecided search is not a violation; anything else is.
    t.true(r.ok || / undecided$/.test(detail), `seed ${seed}: ${detail}`);
  }
});

// Seeds that found bugs, kept as regression tests (their runs change when the fault mix does; the seed
// files 1..200 keep covering the same ground).
for (const [seed, bug] of [
  [
    34,
    'a write release answered by no one when its session was replaced was reported LOCK_LOST though applied',
  ],
  [
    914734917,
    'a write release kept its lock at the servers after its caller had given up on it: nobody could take the object again',
  ],
  [
    118438628,
    'a kept write lock was left at the servers when its release failed over a partition: the session met DEADLOCK for ever',
  ],
  [
    2099,
    'a read met DEADLOCK through a read grant its session kept with no handle using it (the revoke crossed the acquire)',
  ],
  [
    940184755,
    'a write release redirected by a deposed leader, then re-sent under a new session, was reported LOCK_LOST though applied',
  ],
] as const) {
  test(`regression, seed ${seed}: ${bug}`, async (t) => {
    const r = await runRealSimulation({ seed });
    t.true(r.ok, r.failure && `${r.failure.checker}: ${r.failure.detail}`);
  });
}
