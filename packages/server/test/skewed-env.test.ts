/**
 * The simulator's skewed process clocks: a process reads its own time (offset and drift), its timers run
 * by that time, and a forward jump runs at once every timer it skipped, in order.
 */
import test from 'ava';
import { SimClock, SimEnv } from '../src/sim/env.js';
import { Prng } from '../src/sim/prng.js';
import { SkewedEnv } from '../src/sim/skewed-env.js';

function world(): { clock: SimClock; env: SimEnv } {
  const clock = new SimClock(1_000_000);
  return { clock, env: new SimEnv(clock, new Prng(1)) };
}

test('a fast clock reads ahead of true time and runs its timers early by the same rate', (t) => {
  const { clock, env } = world();
  const fast = new SkewedEnv(env.process(), 5000, 1.25);
  t.is(fast.now(), 1_005_000);
  const ranAt: number[] = [];
  fast.setTimeout(() => ranAt.push(clock.nowMs), 1000);
  clock.runUntil(1_000_000 + 2000);
  t.deepEqual(ranAt, [1_000_800], '1000 ms of a 1.25x clock are 800 true ms');
  t.is(fast.now(), 1_005_000 + 2500);
});

test('a forward jump runs every timer it skipped, in due order; the others keep their process time', (t) => {
  const { clock, env } = world();
  const skewed = new SkewedEnv(env.process(), 0, 1);
  const ran: string[] = [];
  skewed.setTimeout(() => ran.push('b'), 300);
  skewed.setTimeout(() => ran.push('a'), 100);
  skewed.setTimeout(() => ran.push('late'), 5000);
  const every = skewed.setInterval(() => ran.push('tick'), 1000);
  const before = skewed.now();
  skewed.jump(400);
  t.is(skewed.now(), before + 400);
  clock.runUntil(clock.nowMs);
  t.deepEqual(ran, ['a', 'b']);
  clock.runUntil(1_000_000 + 600);
  t.deepEqual(
    ran,
    ['a', 'b', 'tick'],
    'the interval falls due at 1000 of process time: 600 true ms after the jump',
  );
  skewed.clearInterval(every);
  clock.runUntil(1_000_000 + 4600);
  t.deepEqual(ran, ['a', 'b', 'tick', 'late']);
});

test('a cleared or refreshed timer follows the process clock too', (t) => {
  const { clock, env } = world();
  const slow = new SkewedEnv(env.process(), 0, 0.5);
  const ran: number[] = [];
  const timer = slow.setTimeout(() => ran.push(clock.nowMs), 100);
  clock.runUntil(1_000_000 + 150);
  timer.refresh();
  clock.runUntil(1_000_000 + 1000);
  t.deepEqual(ran, [1_000_350], 'refreshed at 150 true ms: 100 process ms later is 200 true ms later');
  const cleared = slow.setTimeout(() => ran.push(-1), 10);
  slow.clearTimeout(cleared);
  clock.runUntil(1_000_000 + 2000);
  t.deepEqual(ran, [1_000_350]);
});
