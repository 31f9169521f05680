/**
 * Driving simulated code: the simulated clock runs one timer at a time, and after each the promise
 * continuations of the code it woke run to the end (the real event loop's microtasks), as Node runs them
 * between two timers. Used by every harness that runs members or clients on a {@link SimClock}.
 */
import type { SimClock } from './env.js';

/** Lets the promise continuations of the simulated code run (all of them: a macrotask comes after). */
export function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Moves `clock` forward by `ms`, one timer at a time, letting each one's continuations run; `afterEach`
 * runs after each timer's continuations and may stop the run by throwing (a checker's failure).
 */
export async function runFor(clock: SimClock, ms: number, afterEach?: () => void): Promise<void> {
  const until = clock.nowMs + ms;
  while (clock.runNext(until)) {
    await drainMicrotasks();
    afterEach?.();
  }
  clock.runUntil(until);
  await drainMicrotasks();
}
