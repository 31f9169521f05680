/**
 * npm run sim -- --seeds N [--seed S] [--nodes 3|5] [--broken commitWithoutMajority|ackBeforeFsync|skipFencing]
 *                [--ticks T] [--from F] [--verbose] [--trace] [--no-durability-check]
 *                [--params '{"maxEntriesPerMessage":1}']  (override parameters the seed draws)
 * Runs seeds F..F+N-1 (default 1..N), or the one seed S (printing its whole failure, trace included).
 * One line per failure, then "N seeds passed, M failed" with the wall time, seeds per minute and simulated
 * seconds per wall-clock second; exits 1 on any failure.
 */
import { systemEnv } from '@segmem/protocol';
import { CORE_SIM_CLI, simArgs } from './cli-args.js';
import {
  BROKEN_VARIANTS,
  type BrokenVariant,
  runSimulation,
  SIM_TICK_MS,
  type SimOptions,
} from './simulator.js';

const args = process.argv.slice(2);
const { opt, int, fail } = simArgs(args, CORE_SIM_CLI);

const seed = int('seed', opt('seed'), 0);
const seeds = int('seeds', opt('seeds'), 1) ?? (seed === undefined ? 100 : 1);
const from = int('from', opt('from'), 0) ?? 1;
const nodes = int('nodes', opt('nodes'), 1) ?? 3;
const ticks = int('ticks', opt('ticks'), 1);
const broken = opt('broken');
if (broken !== undefined && !BROKEN_VARIANTS.includes(broken as BrokenVariant))
  fail(`unknown --broken ${broken}`);
const verbose = args.includes('--verbose');

const list = seed !== undefined ? [seed] : Array.from({ length: seeds }, (_, i) => from + i);
let passed = 0;
let failed = 0;
let simulatedTicks = 0;
// An entry point: the wall clock it reports on is the real one.
const started = systemEnv.now();
for (const s of list) {
  const o: SimOptions = { seed: s, nodes };
  if (ticks !== undefined) o.ticks = ticks;
  if (broken !== undefined) o.broken = broken as BrokenVariant;
  const params = opt('params');
  if (params !== undefined) o.params = JSON.parse(params);
  if (args.includes('--no-durability-check')) o.skipDurabilityCheck = true;
  if (args.includes('--trace')) o.onTrace = (line) => process.stderr.write(`${line}\n`);
  const r = runSimulation(o);
  simulatedTicks += r.stats.ticks;
  if (r.ok) {
    passed++;
    if (verbose || seed !== undefined) {
      const st = r.stats;
      process.stdout.write(
        `seed ${s} ok: ${st.ticks} ticks, ${st.leaderTerms} leader terms, commit ${st.committed}, ${st.opsCompleted} ops (+${st.opsUnknown} unknown), ${st.crashes} crashes, ${st.partitions} partitions, ${st.snapshotsInstalled} snapshots, ${st.expiries} expiries, ${st.replays} replays, ${st.logAppends} log appends, ${st.replacements} replacements, ${st.transfers} transfers\n`,
      );
    }
  } else {
    failed++;
    const f = r.failure!;
    if (seed !== undefined) process.stdout.write(`${f.message}\n`);
    else process.stdout.write(`FAIL seed ${s}: ${f.checker}: ${f.detail.split('\n')[0]}\n`);
  }
}
const wallSeconds = (systemEnv.now() - started) / 1000;
const simulatedSeconds = (simulatedTicks * SIM_TICK_MS) / 1000;
process.stdout.write(
  `${passed} seeds passed, ${failed} failed (${wallSeconds.toFixed(1)} s: ${((60 * list.length) / wallSeconds).toFixed(0)} seeds/minute, ` +
    `${simulatedSeconds.toFixed(0)} simulated s, ${(simulatedSeconds / wallSeconds).toFixed(0)} simulated s per wall-clock s)\n`,
);
process.exit(failed > 0 ? 1 : 0);
