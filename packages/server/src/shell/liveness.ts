/**
 * Session liveness, kept by the I/O shell (not the state machine): when a session last showed a sign
 * of life, and which sessions are overdue. Expiry itself is a logged command, so every replica agrees.
 */
import type { Env } from '@segmem/protocol';

export class SessionLiveness {
  private readonly lastSeenMs = new Map<number, number>();
  private readonly timeoutMs = new Map<number, number>();

  constructor(private readonly env: Env) {}

  track(sessionId: number, timeoutMs: number): void {
    this.timeoutMs.set(sessionId, timeoutMs);
    this.lastSeenMs.set(sessionId, this.env.now());
  }

  touch(sessionId: number): void {
    if (this.lastSeenMs.has(sessionId)) this.lastSeenMs.set(sessionId, this.env.now());
  }

  forget(sessionId: number): void {
    this.lastSeenMs.delete(sessionId);
    this.timeoutMs.delete(sessionId);
  }

  /** Sessions not heard from within their timeout. */
  overdue(): number[] {
    const now = this.env.now();
    const out: number[] = [];
    for (const [id, seen] of this.lastSeenMs) if (now - seen > this.timeoutMs.get(id)!) out.push(id);
    return out;
  }

  /** How often to look for overdue sessions: a quarter of the shortest timeout, at least 25 ms. */
  checkEveryMs(defaultMs: number): number {
    let min = defaultMs;
    for (const t of this.timeoutMs.values()) if (t < min) min = t;
    return Math.max(25, Math.floor(min / 4));
  }
}
