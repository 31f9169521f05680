// The closed-loop load driver: N concurrent clients, each running one operation after another.
//
// Every loop is bounded twice: by time (warm-up, then the measured window) and by a hard operation count
// (`cap`, split evenly across clients). Latency is measured per operation with performance.now().
import { performance } from 'node:perf_hooks';
import { mergeSorted, Samples, summarize } from './stats.mjs';

/**
 * ops: one async function per client (each call = one operation).
 * hooks.beforeWindow / afterWindow: called around the measured window (e.g. to snapshot traffic counters).
 * hooks.onSamples(sorted): gets the window's sorted latencies (µs), e.g. to merge rounds run in other processes.
 * Returns { ops, seconds, opsPerSec, p50, p99, warmupOps, perClientCap }.
 */
export async function drive(ops, { warmupMs, windowMs, cap }, hooks = {}) {
  const perClientCap = Math.max(1, Math.floor(cap / ops.length));
  let warmupOps = 0;
  const warmEnd = performance.now() + warmupMs;
  await Promise.all(
    ops.map(async (op) => {
      for (let n = 0; n < perClientCap && performance.now() < warmEnd; n++) {
        await op();
        warmupOps++;
      }
    }),
  );
  hooks.beforeWindow?.();
  const samples = ops.map(() => new Samples(perClientCap));
  const start = performance.now();
  const end = start + windowMs;
  await Promise.all(
    ops.map(async (op, i) => {
      const s = samples[i];
      while (!s.full && performance.now() < end) {
        const t0 = performance.now();
        await op();
        s.add((performance.now() - t0) * 1000);
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  hooks.afterWindow?.();
  const sorted = mergeSorted(samples);
  hooks.onSamples?.(sorted);
  const capped = samples.some((s) => s.full);
  return { ...summarize(sorted, seconds), warmupOps, perClientCap, capped };
}

/**
 * For operations far below a microsecond (codec): runs `op` in batches of `batch` calls and records the mean
 * time per call of each batch. Bounded by time and by `cap` calls in all.
 */
export function driveBatched(op, { warmupMs, windowMs, cap, batch = 256 }) {
  const warmEnd = performance.now() + warmupMs;
  let done = 0;
  while (performance.now() < warmEnd && done < cap) {
    for (let i = 0; i < batch; i++) op();
    done += batch;
  }
  const batches = Math.max(1, Math.floor(cap / batch));
  const samples = new Samples(batches);
  const start = performance.now();
  const end = start + windowMs;
  while (!samples.full && performance.now() < end) {
    const t0 = performance.now();
    for (let i = 0; i < batch; i++) op();
    samples.add(((performance.now() - t0) * 1000) / batch);
  }
  const seconds = (performance.now() - start) / 1000;
  const sorted = mergeSorted([samples]);
  const ops = sorted.length * batch;
  const s = summarize(sorted, seconds);
  return { ...s, ops, opsPerSec: ops / seconds, capped: samples.full };
}
