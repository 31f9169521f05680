/**
 * A process's clock as a real machine's is: set to a different time than the others' (an offset), running
 * a little fast or slow (a drift rate), and now and then jumping forward (a VM paused and resumed, a clock
 * slewed hard): still monotonic, as Env.now() promises, but not the simulated true time. Timers run by the
 * process's own clock: a timer of d ms runs after d / rate true ms, and a forward jump makes every timer
 * that falls due within it run at once, as on a real machine whose monotonic clock leapt.
 */
import type { Env, EnvTimer } from '@segmem/protocol';
import { delayOf } from './env.js';

class SkewedTimer implements EnvTimer {
  inner: EnvTimer | null = null;
  /** The process-clock time at which it runs next. */
  dueMs = 0;
  cleared = false;

  constructor(
    readonly env: SkewedEnv,
    readonly fn: () => void,
    readonly delayMs: number,
    readonly repeat: boolean,
  ) {}

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  refresh(): this {
    if (!this.cleared) this.env.arm(this, this.delayMs);
    return this;
  }
}

export class SkewedEnv implements Env {
  /** Process-clock ms added by jumps so far. */
  private jumpedMs = 0;
  private readonly startTrueMs: number;
  private readonly timers = new Set<SkewedTimer>();

  /**
   * `offsetMs`: how far this process's clock reads from true time at its start; `rate`: process ms per
   * true ms (1.01: 1% fast). Both stay fixed for the process's life.
   */
  constructor(
    readonly inner: Env,
    readonly offsetMs: number,
    readonly rate: number,
  ) {
    if (!(rate > 0)) throw new RangeError(`a clock rate must be positive; got ${rate}`);
    this.startTrueMs = inner.now();
  }

  now(): number {
    return (
      this.startTrueMs + this.offsetMs + (this.inner.now() - this.startTrueMs) * this.rate + this.jumpedMs
    );
  }

  /** The clock leaps `ms` forward; every timer due within the leap runs now (in due order). */
  jump(ms: number): void {
    if (!(ms > 0)) return;
    this.jumpedMs += ms;
    const now = this.now();
    const pending = [...this.timers].sort((a, b) => a.dueMs - b.dueMs);
    for (const timer of pending) this.schedule(timer, Math.max(0, timer.dueMs - now));
  }

  /** (Re)starts `timer` to run `delayMs` of this process's clock from now. */
  arm(timer: SkewedTimer, delayMs: number): void {
    timer.dueMs = this.now() + delayMs;
    this.schedule(timer, delayMs);
  }

  private schedule(timer: SkewedTimer, delayMs: number): void {
    if (timer.inner) this.inner.clearTimeout(timer.inner);
    this.timers.add(timer);
    timer.inner = this.inner.setTimeout(() => this.fire(timer), delayMs / this.rate);
  }

  private fire(timer: SkewedTimer): void {
    if (timer.cleared) return;
    timer.inner = null;
    if (timer.repeat) this.arm(timer, timer.delayMs);
    else this.timers.delete(timer);
    timer.fn();
  }

  setTimeout(fn: () => void, delayMs: number): EnvTimer {
    const timer = new SkewedTimer(this, fn, delayOf(delayMs), false);
    this.arm(timer, timer.delayMs);
    return timer;
  }

  setInterval(fn: () => void, intervalMs: number): EnvTimer {
    const timer = new SkewedTimer(this, fn, Math.max(1, delayOf(intervalMs)), true);
    this.arm(timer, timer.delayMs);
    return timer;
  }

  clearTimeout(timer: EnvTimer | null | undefined): void {
    if (!(timer instanceof SkewedTimer) || timer.env !== this) return;
    timer.cleared = true;
    this.timers.delete(timer);
    if (timer.inner) this.inner.clearTimeout(timer.inner);
    timer.inner = null;
  }

  clearInterval(timer: EnvTimer | null | undefined): void {
    this.clearTimeout(timer);
  }

  setImmediate(fn: () => void): void {
    this.inner.setImmediate(fn);
  }

  random(): number {
    return this.inner.random();
  }

  randomBytes(n: number): Buffer {
    return this.inner.randomBytes(n);
  }
}
