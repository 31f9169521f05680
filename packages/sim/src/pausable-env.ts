/**
 * A client process's Env that can be paused, as a process stalls (a long GC, SIGSTOP, a swapped-out VM):
 * while paused none of its timers run and nothing is delivered to it (its network deliveries are its own
 * timers); what fell due meanwhile runs after resume(), in the order it fell due, one timer per turn.
 * The other processes of the run go on meanwhile.
 */
import type { Env, EnvTimer } from '@segmem/protocol';
import type { SimEnv } from '@segmem/server/internal/sim/env';

class PausableTimer implements EnvTimer {
  inner: EnvTimer | null = null;
  cleared = false;
  /** An interval is owed at most one run after a pause, whatever number of ticks fell in it. */
  owed = false;

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  refresh(): this {
    this.inner?.refresh();
    return this;
  }
}

export class PausableEnv implements Env {
  private paused = false;
  private readonly backlog: { timer: PausableTimer; fn: () => void }[] = [];
  /** Simulated ms spent paused, in total. */
  pausedMs = 0;
  private pausedAt = 0;

  constructor(readonly inner: SimEnv) {}

  get isPaused(): boolean {
    return this.paused;
  }

  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.pausedAt = this.inner.now();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.pausedMs += this.inner.now() - this.pausedAt;
    for (const { timer, fn } of this.backlog.splice(0)) {
      // One per turn, as Node runs timers: each one's promise continuations run before the next.
      this.inner.setTimeout(() => {
        timer.owed = false;
        if (!timer.cleared) this.run(timer, fn);
      }, 0);
    }
  }

  private run(timer: PausableTimer, fn: () => void): void {
    if (this.paused) {
      if (!timer.owed) {
        timer.owed = true;
        this.backlog.push({ timer, fn });
      }
      return;
    }
    fn();
  }

  now(): number {
    return this.inner.now();
  }

  setTimeout(fn: () => void, delayMs: number): EnvTimer {
    const timer = new PausableTimer();
    timer.inner = this.inner.setTimeout(() => this.run(timer, fn), delayMs);
    return timer;
  }

  setInterval(fn: () => void, intervalMs: number): EnvTimer {
    const timer = new PausableTimer();
    timer.inner = this.inner.setInterval(() => this.run(timer, fn), intervalMs);
    return timer;
  }

  clearTimeout(timer: EnvTimer | null | undefined): void {
    if (!(timer instanceof PausableTimer)) return;
    timer.cleared = true;
    this.inner.clearTimeout(timer.inner);
  }

  clearInterval(timer: EnvTimer | null | undefined): void {
    this.clearTimeout(timer);
  }

  setImmediate(fn: () => void): void {
    this.setTimeout(fn, 0);
  }

  random(): number {
    return this.inner.random();
  }

  randomBytes(n: number): Buffer {
    return this.inner.randomBytes(n);
  }
}
