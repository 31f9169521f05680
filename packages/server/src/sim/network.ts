/**
 * The simulated network: per-packet latency (with an occasional long tail, which also reorders), loss,
 * duplication, and directed link cuts (partitions, symmetric or one-way) checked when a packet is sent and
 * again when it would arrive. Packets are kept in per-tick buckets, delivered in send order within a tick.
 */
import type { Prng } from './prng.js';

export interface NetworkParams {
  lossP: number;
  dupP: number;
  latencyMin: number;
  latencyMax: number;
  /** Probability of a long delay, uniform in (latencyMax, tailMax]. */
  tailP: number;
  tailMax: number;
}

export interface Packet<P> {
  from: string;
  to: string;
  payload: P;
}

export class SimNetwork<P> {
  private readonly buckets = new Map<number, Packet<P>[]>();
  private readonly blocked = new Set<string>();
  inFlight = 0;
  sent = 0;
  dropped = 0;

  constructor(
    private readonly prng: Prng,
    public params: NetworkParams,
  ) {}

  cut(from: string, to: string): void {
    this.blocked.add(`${from}>${to}`);
  }

  isCut(from: string, to: string): boolean {
    return this.blocked.size > 0 && this.blocked.has(`${from}>${to}`);
  }

  heal(): void {
    this.blocked.clear();
  }

  get partitioned(): boolean {
    return this.blocked.size > 0;
  }

  send(now: number, from: string, to: string, payload: P): void {
    this.sent++;
    if (this.isCut(from, to) || this.prng.chance(this.params.lossP)) {
      this.dropped++;
      return;
    }
    const copies = this.prng.chance(this.params.dupP) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const p = this.params;
      const latency = this.prng.chance(p.tailP)
        ? this.prng.int(p.latencyMax + 1, Math.max(p.latencyMax + 1, p.tailMax))
        : this.prng.int(p.latencyMin, p.latencyMax);
      const at = now + Math.max(1, latency);
      let bucket = this.buckets.get(at);
      if (!bucket) this.buckets.set(at, (bucket = []));
      bucket.push({ from, to, payload });
      this.inFlight++;
    }
  }

  /** The packets arriving at tick `now` (and not cut meanwhile). */
  deliver(now: number): Packet<P>[] {
    const bucket = this.buckets.get(now);
    if (!bucket) return [];
    this.buckets.delete(now);
    this.inFlight -= bucket.length;
    if (this.blocked.size === 0) return bucket;
    const out = bucket.filter((p) => !this.isCut(p.from, p.to));
    this.dropped += bucket.length - out.length;
    return out;
  }
}
