/**
 * The simulation of the shipped code in CI (the seeds without variants: real-sim-seeds-*.test.ts): one seed
 * must replay the same run, and the checkers must catch a client that keeps trusting a copy a lost write
 * handle wrote (the bug SegmentImpl's dropUncommitted fixes) within a few seeds.
 */
import test from 'ava';
import { runRealSimulation } from '../src/real-sim.js';

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
