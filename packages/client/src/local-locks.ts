/**
 * Which of this process's acquires of an object may go to the server now.
 *
 * A process's tasks share one session, and the server refuses (DEADLOCK) an acquire from a session that
 * already holds a conflicting grant of the object: it cannot tell a second task from a session waiting for
 * itself. So the tasks queue here first, first in, first out per object name: reads share; a write waits
 * for every local holder and every earlier local waiter. A turn lasts from the moment its acquire may be
 * sent until its release has been answered (or the acquire failed), so the server never sees the next
 * one before the last one's release. `timeoutMs` and `signal` bound the local wait with the same TIMEOUT
 * and ABORTED errors as the server's.
 */
import { type Env, type EnvTimer, SegmemError } from '@segmem/protocol';

export type LocalMode = 'read' | 'write';

/** Leave when the access ends; leaving twice is harmless. */
export interface LocalTurn {
  leave(): void;
}

interface Waiting {
  readonly mode: LocalMode;
  readonly admit: () => void;
}

interface LocalObject {
  readers: number;
  writer: boolean;
  readonly queue: Waiting[];
}

export class LocalLocks {
  private readonly objects = new Map<string, LocalObject>();

  /** Resolves when an acquire of `name` in `mode` may be sent; rejects with TIMEOUT or ABORTED. */
  enter(
    name: string,
    mode: LocalMode,
    opts: { timeoutMs?: number | undefined; signal?: AbortSignal | undefined },
    env: Pick<Env, 'setTimeout' | 'clearTimeout'>,
  ): Promise<LocalTurn> {
    let obj = this.objects.get(name);
    if (!obj) {
      obj = { readers: 0, writer: false, queue: [] };
      this.objects.set(name, obj);
    }
    if (obj.queue.length === 0 && fits(obj, mode)) return Promise.resolve(this.take(name, obj, mode));
    const { timeoutMs, signal } = opts;
    if (signal?.aborted)
      return Promise.reject(new SegmemError('ABORTED', `acquire of "${name}" was aborted`));
    const o = obj;
    return new Promise<LocalTurn>((resolve, reject) => {
      let timer: EnvTimer | undefined;
      const done = () => {
        env.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiting: Waiting = {
        mode,
        admit: () => {
          done();
          resolve(this.take(name, o, mode));
        },
      };
      const giveUp = (err: SegmemError) => {
        done();
        const at = o.queue.indexOf(waiting);
        if (at < 0) return;
        o.queue.splice(at, 1);
        reject(err);
        // A write given up at the head may have held back reads behind it.
        this.pump(name, o);
      };
      const onAbort = () => giveUp(new SegmemError('ABORTED', `acquire of "${name}" was aborted`));
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = env.setTimeout(
          () => giveUp(new SegmemError('TIMEOUT', `acquire of "${name}" timed out after ${timeoutMs} ms`)),
          timeoutMs,
        );
      }
      o.queue.push(waiting);
    });
  }

  /** Local holders and waiters of `name` (for tests and diagnostics). */
  count(name: string): { holders: number; waiting: number } {
    const obj = this.objects.get(name);
    if (!obj) return { holders: 0, waiting: 0 };
    return { holders: obj.readers + (obj.writer ? 1 : 0), waiting: obj.queue.length };
  }

  private take(name: string, obj: LocalObject, mode: LocalMode): LocalTurn {
    if (mode === 'write') obj.writer = true;
    else obj.readers++;
    let left = false;
    return {
      leave: () => {
        if (left) return;
        left = true;
        if (mode === 'write') obj.writer = false;
        else obj.readers--;
        this.pump(name, obj);
      },
    };
  }

  private pump(name: string, obj: LocalObject): void {
    while (obj.queue.length > 0 && fits(obj, obj.queue[0]!.mode)) obj.queue.shift()!.admit();
    if (obj.queue.length === 0 && obj.readers === 0 && !obj.writer && this.objects.get(name) === obj)
      this.objects.delete(name);
  }
}

function fits(obj: LocalObject, mode: LocalMode): boolean {
  return mode === 'read' ? !obj.writer : !obj.writer && obj.readers === 0;
}
