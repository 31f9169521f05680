/** Runs a range of seeds of the real-code simulation for CI, with what the faults did, for the test's log. */
import type { ExecutionContext } from 'ava';
import { runRealSimulation } from '../src/real-sim.js';

/** Seeds per test: a test of 25 takes about 20 s alone, far inside ava's timeout on a loaded machine. */
export const SEEDS_PER_TEST = 25;
/**
 * How long one simulation test may run: its CPU time, and room for a loaded machine. It must stay below
 * ava's own timeout (package.json, 6 min): ava ignores its inactivity timer while a test's longer timeout
 * runs and does not arm it again, so one hung test elsewhere would then stall the whole run for good.
 */
export const SIM_TEST_TIMEOUT_MS = 5 * 60_000;

/**
 * Seeds `from`..`to` must pass every checker, and the faults that matter must have happened among them:
 * stalls past the session timeout that lost write locks, partitions, pages read from followers, peer
 * handshakes reset, peer links reset, and forged peers (every one refused).
 */
export async function checkSeeds(t: ExecutionContext, from: number, to: number): Promise<void> {
  // 20 s alone, minutes on a loaded machine: with both seeds files running (one per worker) no test may end
  // for longer than ava's own timeout. A test's own timeout replaces that one while it runs.
  t.timeout(SIM_TEST_TIMEOUT_MS);
  const failures: string[] = [];
  let simulatedMs = 0;
  let pauses = 0;
  let lockLost = 0;
  let partitions = 0;
  let increments = 0;
  let pagesFromFollowers = 0;
  let handshakeResets = 0;
  let linkResets = 0;
  let forgedAttempts = 0;
  let forgedRefused = 0;
  const started = performance.now();
  for (let seed = from; seed <= to; seed++) {
    const r = await runRealSimulation({ seed });
    simulatedMs += r.stats.simulatedMs;
    pauses += r.stats.pauses;
    lockLost += r.stats.lockLost;
    partitions += r.stats.partitions;
    increments += r.stats.increments;
    pagesFromFollowers += r.stats.pagesFromFollowers;
    handshakeResets += r.stats.handshakeResets;
    linkResets += r.stats.linkResets;
    forgedAttempts += r.stats.forgedAttempts;
    forgedRefused += r.stats.forgedRefused;
    if (!r.ok) failures.push(`seed ${seed}: ${r.failure!.checker}: ${r.failure!.detail}`);
  }
  const wallS = (performance.now() - started) / 1000;
  const seeds = to - from + 1;
  t.deepEqual(failures, []);
  t.true(
    pauses > 0 && lockLost > 0 && partitions > 0,
    `${pauses} pauses, ${lockLost} LOCK_LOST, ${partitions} partitions`,
  );
  t.true(increments > 30 * seeds, `${increments} acknowledged increments`);
  t.true(pagesFromFollowers > 0, 'deferred grants had their pages read from followers');
  t.true(
    handshakeResets > 0 && linkResets > 0 && forgedAttempts > 0,
    `${handshakeResets} handshake resets, ${linkResets} link resets, ${forgedAttempts} forged peers`,
  );
  t.is(forgedRefused, forgedAttempts, 'every forged peer was refused');
  t.log(
    `${seeds} seeds in ${wallS.toFixed(1)} s (${((60 * seeds) / wallS).toFixed(0)} seeds/minute, ${(simulatedMs / 1000 / wallS).toFixed(1)} simulated s per wall s); ` +
      `${increments} increments, ${pauses} pauses, ${lockLost} LOCK_LOST, ${partitions} partitions, ${pagesFromFollowers} pages from followers, ` +
      `${handshakeResets} handshake resets, ${linkResets} link resets, ${forgedRefused}/${forgedAttempts} forged peers refused`,
  );
}
