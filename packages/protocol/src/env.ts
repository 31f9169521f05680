/**
 * Time and randomness, injected. Code that waits, reads the clock or draws random numbers does it through
 * an {@link Env} it was given, never through the globals (`setTimeout`, `Date.now`, `Math.random`, ...), so
 * a deterministic simulator can run the same code under a simulated clock, an ordered timer queue and a
 * seeded generator. A process uses {@link systemEnv}; only entry points choose it (as a default).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';

/** A scheduled timer. */
export interface EnvTimer {
  /** The timer keeps the process alive (the default). */
  ref(): unknown;
  /** The timer alone does not keep the process alive (a no-op where there is no process). */
  unref(): unknown;
  /** Restarts the countdown with the same delay, as if it had just been set. */
  refresh(): unknown;
}

export interface Env {
  /**
   * Milliseconds since the Unix epoch, from a clock that never goes back: for deadlines, durations and
   * timestamps alike.
   */
  now(): number;
  /** Runs `fn` once, `delayMs` from now (timers due at the same time run in the order they were set). */
  setTimeout(fn: () => void, delayMs: number): EnvTimer;
  /** Runs `fn` every `intervalMs` until cleared. */
  setInterval(fn: () => void, intervalMs: number): EnvTimer;
  /** Cancels a timer of either kind; null, undefined or a timer that ran already: nothing happens. */
  clearTimeout(timer: EnvTimer | null | undefined): void;
  clearInterval(timer: EnvTimer | null | undefined): void;
  /** Runs `fn` on a later turn of the event loop, after the I/O callbacks already due. */
  setImmediate(fn: () => void): void;
  /** Uniform in [0, 1). */
  random(): number;
  /** `n` random bytes; from a cryptographic source in {@link systemEnv} (session secrets use them). */
  randomBytes(n: number): Buffer;
}

/**
 * The real one: Node's timers, the process's monotonic clock anchored at the wall-clock time the process
 * started (`performance.timeOrigin`, so a clock step after start-up moves no deadline), `Math.random` and
 * `crypto.randomBytes`.
 */
export const systemEnv: Env = {
  now: () => performance.timeOrigin + performance.now(),
  setTimeout: (fn, delayMs) => setTimeout(fn, delayMs),
  setInterval: (fn, intervalMs) => setInterval(fn, intervalMs),
  clearTimeout: (timer) => {
    if (timer) clearTimeout(timer as NodeJS.Timeout);
  },
  clearInterval: (timer) => {
    if (timer) clearInterval(timer as NodeJS.Timeout);
  },
  setImmediate: (fn) => {
    setImmediate(fn);
  },
  random: () => Math.random(),
  randomBytes: (n) => randomBytes(n),
};
