// Shared bits of the per-system adapters.

/** Thrown by an adapter when its system cannot run a workload (reported as "not available", not a failure). */
export class Unavailable extends Error {}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Deterministic PRNG (xorshift32), so every system changes the same offsets. */
export function xorshift(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
