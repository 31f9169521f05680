/**
 * The simulator's {@link Env}: a clock that moves only when the simulation moves it, one queue of timers
 * ordered by due time and then by the order they were set, and the run's seeded PRNG. Code written against
 * Env (the Raft driver, the node's timers) runs under it unchanged and, for one seed, identically.
 *
 * Each simulated process gets an Env of its own ({@link SimEnv.process}) over the shared {@link SimClock};
 * `kill()` (a crash) cancels every timer it set, as the death of a process does.
 */
import type { Env, EnvTimer } from '@segmem/protocol';
import type { Prng } from './prng.js';

/** Who set a timer: it runs only while its owner is alive. */
interface Owner {
  alive: boolean;
}

class SimTimer implements EnvTimer {
  /** Bumped by refresh() and cancel(): queue entries of an older generation are stale. */
  generation = 0;
  cancelled = false;

  constructor(
    readonly clock: SimClock,
    readonly owner: Owner,
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
    if (!this.cancelled) {
      this.generation++;
      this.clock.enqueue(this);
    }
    return this;
  }

  cancel(): void {
    this.cancelled = true;
    this.generation++;
  }
}

interface QueueEntry {
  atMs: number;
  /** Insertion order: the tie-break between timers due at the same time. */
  seq: number;
  timer: SimTimer;
  generation: number;
}

function before(a: QueueEntry, b: QueueEntry): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
}

/** Delays as Node reads them: not a finite non-negative number means 0. */
export function delayOf(ms: number): number {
  return Number.isFinite(ms) && ms > 0 ? ms : 0;
}

/** The simulated clock and its queue of timers, shared by every process of a run. */
export class SimClock {
  private current: number;
  private seq = 0;
  /** A binary min-heap of entries by (atMs, seq). */
  private readonly heap: QueueEntry[] = [];
  /** Timers run so far. */
  fired = 0;

  constructor(startMs = 0) {
    this.current = startMs;
  }

  get nowMs(): number {
    return this.current;
  }

  /**
   * Runs, in order, every timer due at or before `untilMs` (those they set too), moving the clock to each
   * one's time; then the clock reads `untilMs`. A timer that throws stops the run and the error propagates.
   */
  runUntil(untilMs: number): void {
    while (this.runNext(untilMs)) {}
    if (untilMs > this.current) this.current = untilMs;
  }

  /**
   * Runs the next timer due at or before `untilMs`, moving the clock to its time; false if none is due.
   * (Code that awaits promises needs its microtasks run between two timers, as Node does: a caller that
   * simulates such code awaits them after each call.)
   */
  runNext(untilMs: number): boolean {
    for (;;) {
      const top = this.heap[0];
      if (!top || top.atMs > untilMs) return false;
      this.pop();
      const t = top.timer;
      if (t.generation !== top.generation || t.cancelled || !t.owner.alive) continue;
      if (top.atMs > this.current) this.current = top.atMs;
      if (t.repeat) t.refresh();
      else t.cancel();
      this.fired++;
      t.fn();
      return true;
    }
  }

  schedule(owner: Owner, fn: () => void, delayMs: number, repeat: boolean): SimTimer {
    // An interval of 0 would run forever within one instant.
    const delay = repeat ? Math.max(1, delayOf(delayMs)) : delayOf(delayMs);
    const timer = new SimTimer(this, owner, fn, delay, repeat);
    if (owner.alive) this.enqueue(timer);
    else timer.cancel();
    return timer;
  }

  /** Queues `timer` to run its delay from now. */
  enqueue(timer: SimTimer): void {
    const entry: QueueEntry = {
      atMs: this.current + timer.delayMs,
      seq: this.seq++,
      timer,
      generation: timer.generation,
    };
    const h = this.heap;
    h.push(entry);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(entry, h[parent]!)) break;
      h[i] = h[parent]!;
      i = parent;
    }
    h[i] = entry;
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const child = r < h.length && before(h[r]!, h[l]!) ? r : l;
      if (!before(h[child]!, last)) break;
      h[i] = h[child]!;
      i = child;
    }
    h[i] = last;
  }
}

/**
 * An Env over a {@link SimClock} and a seeded PRNG, owned by one simulated process (or by the whole run):
 * `kill()` cancels every timer it set.
 */
export class SimEnv implements Env {
  private readonly owner: Owner = { alive: true };

  constructor(
    readonly clock: SimClock,
    private readonly prng: Prng,
  ) {}

  /** Another process on the same clock, queue and PRNG. */
  process(): SimEnv {
    return new SimEnv(this.clock, this.prng);
  }

  get alive(): boolean {
    return this.owner.alive;
  }

  /** The process dies: none of its timers will run, and it sets no more. */
  kill(): void {
    this.owner.alive = false;
  }

  now(): number {
    return this.clock.nowMs;
  }

  setTimeout(fn: () => void, delayMs: number): EnvTimer {
    return this.clock.schedule(this.owner, fn, delayMs, false);
  }

  setInterval(fn: () => void, intervalMs: number): EnvTimer {
    return this.clock.schedule(this.owner, fn, intervalMs, true);
  }

  clearTimeout(timer: EnvTimer | null | undefined): void {
    if (timer instanceof SimTimer) timer.cancel();
  }

  clearInterval(timer: EnvTimer | null | undefined): void {
    this.clearTimeout(timer);
  }

  setImmediate(fn: () => void): void {
    this.clock.schedule(this.owner, fn, 0, false);
  }

  random(): number {
    return this.prng.float();
  }

  randomBytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const word = this.prng.u32();
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (word >>> (8 * j)) & 0xff;
    }
    return out;
  }
}
