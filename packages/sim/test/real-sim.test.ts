/**
 * The simulation of the shipped code in CI: a bounded number of seeds must pass every checker, one seed
 * must replay the same run, and the checkers must catch a client that keeps trusting a copy a lost write
 * handle wrote (the bug SegmentImpl's dropUncommitted fixes) within a few seeds.
 */
import test from 'ava';
import { runRealSimulation } from '../src/real-sim.js';

const SEEDS = 30;

test(`real members and real clients: seeds 1..${SEEDS} pass every checker, faults and liveness included`, async (t) => {
  const failures: string[] = [];
  let simulatedMs = 0;
  let pauses = 0;
  let lockLost = 0;
  let partitions = 0;
  let increments = 0;
  let pagesFromFollowers = 0;
  const started = performance.now();
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = await runRealSimulation({ seed });
    simulatedMs += r.stats.simulatedMs;
    pauses += r.stats.pauses;
    lockLost += r.stats.lockLost;
    partitions += r.stats.partitions;
    increments += r.stats.increments;
    pagesFromFollowers += r.stats.pagesFromFollowers;
    if (!r.ok) failures.push(`seed ${seed}: ${r.failure!.checker}: ${r.failure!.detail}`);
  }
  const wallS = (performance.now() - started) / 1000;
  t.deepEqual(failures, []);
  // The faults that matter happened: stalls past the session timeout that lost write locks, and partitions.
  t.true(
    pauses > 0 && lockLost > 0 && partitions > 0,
    `${pauses} pauses, ${lockLost} LOCK_LOST, ${partitions} partitions`,
  );
  t.true(increments > 1000, `${increments} acknowledged increments`);
  t.true(pagesFromFollowers > 0, 'deferred grants had their pages read from followers');
  t.log(
    `${SEEDS} seeds in ${wallS.toFixed(1)} s (${((60 * SEEDS) / wallS).toFixed(0)} seeds/minute, ${(simulatedMs / 1000 / wallS).toFixed(1)} simulated s per wall s); ` +
      `${increments} increments, ${pauses} pauses, ${lockLost} LOCK_LOST, ${partitions} partitions`,
  );
});

test('real-code simulation: one seed replays the same run (same trace hash)', async (t) => {
  const a = await runRealSimulation({ seed: 7 });
  const b = await runRealSimulation({ seed: 7 });
  t.true(a.ok, a.failure?.detail);
  t.is(a.traceHash, b.traceHash);
  t.deepEqual(a.stats, b.stats);
  t.true(a.trace.length > 100, `${a.trace.length} trace lines`);
  const c = await runRealSimulation({ seed: 8 });
  t.not(c.traceHash, a.traceHash, 'another seed, another run');
});

test('the checkers catch a client that keeps its copy after LOCK_LOST (broken variant keepCopyAfterLockLost)', async (t) => {
  const caught: string[] = [];
  for (let seed = 1; seed <= 12 && caught.length === 0; seed++) {
    const r = await runRealSimulation({ seed, broken: 'keepCopyAfterLockLost' });
    if (!r.ok) caught.push(`seed ${seed}: ${r.failure!.checker}: ${r.failure!.detail.split('\n')[0]}`);
  }
  t.is(caught.length, 1, 'caught within seeds 1..12');
  t.regex(caught[0] ?? '', /countedOnce|readsCommitted|linearizability/);
  t.log(caught[0]);
});
