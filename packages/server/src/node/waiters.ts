/**
 * Long-polls: requests that may wait for the applied state to give them something to say (a LOG_READ for
 * a record not appended yet, a READ_PAGES for a version not applied yet). Each is answered as soon as the
 * apply path wakes its key and it has its answer, or when its wait ends (then it answers whatever it has).
 */
import type { Env, EnvTimer } from '@segmem/protocol';
import type { Port } from './port.js';

export interface Waiter<R> {
  readonly port: Port;
  readonly requestId: number;
  readonly req: R;
  timer: EnvTimer | null;
  /** Called once the request is answered, or forgotten (so its connection counts it in flight until then). */
  readonly done: (() => void) | undefined;
}

/**
 * `answer` answers the waiter on its port and returns true, or returns false when it has nothing to say
 * yet and `mustAnswer` is false (it is then held).
 */
export type Answer<R> = (w: Waiter<R>, mustAnswer: boolean) => boolean;

export class Waiters<K, R> {
  private readonly byKey = new Map<K, Set<Waiter<R>>>();

  constructor(
    private readonly env: Env,
    private readonly answer: Answer<R>,
  ) {}

  /** Answers now if it can (or if `waitMs` is 0); otherwise holds the request under `key` for up to `waitMs`. */
  wait(key: K, port: Port, requestId: number, req: R, waitMs: number, done?: () => void): void {
    const waiter: Waiter<R> = { port, requestId, req, timer: null, done };
    if (this.answer(waiter, waitMs === 0)) {
      done?.();
      return;
    }
    let set = this.byKey.get(key);
    if (!set) {
      set = new Set();
      this.byKey.set(key, set);
    }
    set.add(waiter);
    waiter.timer = this.env.setTimeout(() => {
      waiter.timer = null;
      this.remove(key, waiter);
      this.answer(waiter, true);
      done?.();
    }, waitMs);
  }

  /** Something under `key` changed: answers every waiter there that now has its answer. */
  wake(key: K): void {
    const set = this.byKey.get(key);
    if (!set) return;
    for (const w of set) {
      if (this.answer(w, false)) {
        set.delete(w);
        this.env.clearTimeout(w.timer);
        w.done?.();
      }
    }
    if (set.size === 0) this.byKey.delete(key);
  }

  wakeAll(): void {
    for (const key of [...this.byKey.keys()]) this.wake(key);
  }

  get size(): number {
    return this.byKey.size;
  }

  /** Forgets every waiter without answering (the connections are being closed or the node is). */
  clear(): void {
    const all = [...this.byKey.values()];
    this.byKey.clear();
    for (const set of all) {
      for (const w of set) {
        this.env.clearTimeout(w.timer);
        w.done?.();
      }
    }
  }

  private remove(key: K, waiter: Waiter<R>): void {
    const set = this.byKey.get(key);
    if (!set) return;
    set.delete(waiter);
    if (set.size === 0) this.byKey.delete(key);
  }
}
