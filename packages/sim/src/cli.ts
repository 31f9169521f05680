/**
 * npm run sim -- [--real | --core | --both] --seeds N [--from F] [--seed S] [--broken VARIANT] [--trace]
 *
 * --real (the default): the simulation of the shipped code (real members and real clients, real-sim.ts).
 * --core: the core simulator of @segmem/server (its model clients; every option of its own CLI passes on).
 * --both: the core simulator, then the real one, with the same options.
 * Without --seed or --from the seeds start at a random one, printed, so a failure replays with --seed S.
 * Prints one line per failure, then the count, seeds per minute and simulated seconds per wall second;
 * exits 1 on any failure.
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { systemEnv } from '@segmem/protocol';
import { CORE_SIM_CLI, simArgs } from '@segmem/server/internal/sim/cli-args';
import { REAL_BROKEN_VARIANTS, type RealBrokenVariant, runRealSimulation } from './real-sim.js';

const args = process.argv.slice(2);
const mode = args.includes('--core') ? 'core' : args.includes('--both') ? 'both' : 'real';
const { opt, int, fail } = simArgs(
  args,
  mode === 'real'
    ? {
        usage: `usage: npm run sim -- [--real] --seeds N [--from F] [--seed S] [--broken ${REAL_BROKEN_VARIANTS.join('|')}] [--lease-edge [--edge-drift PERCENT]] [--groups G] [--trace] [--verbose]\n       npm run sim -- --both ... (the core simulator, then this one)\n${CORE_SIM_CLI.usage}`,
        values: ['seeds', 'seed', 'from', 'broken', 'edge-drift', 'groups'],
        flags: ['real', 'trace', 'verbose', 'lease-edge'],
      }
    : { ...CORE_SIM_CLI, flags: [...CORE_SIM_CLI.flags, 'core', 'both'] },
);

/** The core simulator's own CLI, in a process of its own, with the arguments it knows. */
function runCore(): number {
  const coreCli = createRequire(import.meta.url).resolve('@segmem/server/internal/sim/cli');
  const passOn = args.filter((a) => a !== '--core' && a !== '--both');
  process.stdout.write('core simulation (model clients):\n');
  return spawnSync(process.execPath, [coreCli, ...passOn], { stdio: 'inherit' }).status ?? 1;
}

async function runReal(): Promise<number> {
  const seed = int('seed', opt('seed'), 0);
  const seeds = int('seeds', opt('seeds'), 1) ?? (seed === undefined ? 20 : 1);
  // A random start by default (printed): every run explores new seeds, and any of them replays.
  const from = int('from', opt('from'), 0) ?? Math.floor(systemEnv.random() * 1_000_000_000);
  const broken = opt('broken');
  const edgeDrift = int('edge-drift', opt('edge-drift'), 0);
  if (edgeDrift !== undefined && (edgeDrift > 50 || !args.includes('--lease-edge')))
    fail('--edge-drift takes a percentage 0..50, with --lease-edge');
  if (broken !== undefined && !REAL_BROKEN_VARIANTS.includes(broken as RealBrokenVariant))
    fail(`unknown --broken ${broken}`);
  const groups = int('groups', opt('groups'), 1) ?? (broken === 'noCrossGroupProbes' ? 3 : 1);
  if (groups > 5) fail('--groups takes 1..5 shard groups');
  if (groups > 1 && args.includes('--lease-edge')) fail('--lease-edge runs with one group');
  const list = seed !== undefined ? [seed] : Array.from({ length: seeds }, (_, i) => from + i);
  process.stdout.write(
    `real-code simulation (${groups === 1 ? '3 real members' : `${groups} shard groups of 3 real members`}, real clients): seeds ${list[0]}..${list[list.length - 1]}${broken ? `, broken ${broken}` : ''}${args.includes('--lease-edge') ? ', lease edge' : ''}\n`,
  );
  let passed = 0;
  let failed = 0;
  let simulatedMs = 0;
  // An entry point: the wall clock it reports on is the real one.
  const started = systemEnv.now();
  for (const s of list) {
    const r = await runRealSimulation({
      seed: s,
      ...(broken ? { broken: broken as RealBrokenVariant } : {}),
      ...(args.includes('--lease-edge') ? { leaseEdge: true } : {}),
      ...(edgeDrift !== undefined ? { edgeDrift: edgeDrift / 100 } : {}),
      ...(groups > 1 ? { groups } : {}),
      ...(args.includes('--trace') ? { onTrace: (line: string) => process.stderr.write(`${line}\n`) } : {}),
    });
    simulatedMs += r.stats.simulatedMs;
    if (r.ok) {
      passed++;
      if (args.includes('--verbose') || seed !== undefined) {
        const st = r.stats;
        process.stdout.write(
          `seed ${s} ok: ${(st.simulatedMs / 1000).toFixed(1)} simulated s, ${st.increments} increments (+${st.incrementsUnknown} unknown), ${st.reads} reads, ${st.stats} stats, ${st.appends} appends, ${st.failedOps} failed ops (${st.lockLost} LOCK_LOST, ${st.deadlocks} DEADLOCK)${st.pairs > 0 ? `, ${st.pairs} pair increments` : ''}, ${st.pauses} pauses, ${st.partitions} partitions, ${st.clockJumps} clock jumps, ${st.crashes} crashes (${st.restarts} restarts), ${st.bitFlips} bit flips, ${st.readErrors} read errors, ${st.fullDisks} full disks, ${st.brokenConnections}/${st.connections} connections broken, ${st.peerConnections} peer connections (${st.handshakeResets} handshake resets, ${st.linkResets} link resets, ${st.peerAuthFailures} refused proofs), ${st.forgedRefused}/${st.forgedAttempts} forged peers refused, ${st.timersRun} timers, trace ${r.traceHash.slice(0, 16)}\n`,
        );
      }
    } else {
      failed++;
      const f = r.failure!;
      if (seed !== undefined) process.stdout.write(`FAIL seed ${s}: ${f.checker}: ${f.detail}\n`);
      else process.stdout.write(`FAIL seed ${s}: ${f.checker}: ${f.detail.split('\n')[0]}\n`);
    }
  }
  const wallSeconds = (systemEnv.now() - started) / 1000;
  const simulatedSeconds = simulatedMs / 1000;
  process.stdout.write(
    `${passed} seeds passed, ${failed} failed (${wallSeconds.toFixed(1)} s: ${((60 * list.length) / wallSeconds).toFixed(0)} seeds/minute, ` +
      `${simulatedSeconds.toFixed(0)} simulated s, ${(simulatedSeconds / wallSeconds).toFixed(1)} simulated s per wall-clock s)\n`,
  );
  return failed > 0 ? 1 : 0;
}

let code = 0;
if (mode !== 'real') code = runCore();
if (mode !== 'core') code = Math.max(code, await runReal());
process.exit(code);
