/**
 * Serialises a frozen state-machine view ({@link StateMachine.freeze}) into one buffer in slices, with a
 * turn of the event loop between them, so a large state does not hold up heartbeats, requests and
 * session renewals while it is copied. Commands keep applying meanwhile: the view is copy-on-write.
 *
 * @module
 */
import type { FrozenSnapshot } from '../core/state-machine.js';

/** Bytes copied between two turns of the event loop (about a millisecond of copying). */
export const SERIALISE_SLICE_BYTES = 4 * 1024 * 1024;

/** Resolves on a later turn of the event loop, after pending I/O callbacks. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The view's bytes (what `snapshot()` returned at its index), then releases the view, also on failure.
 * `between` runs at every yield (tests use it to apply commands between slices).
 */
export async function serialiseSnapshot(
  view: FrozenSnapshot,
  opts: { sliceBytes?: number; between?: () => void } = {},
): Promise<Buffer> {
  const slice = opts.sliceBytes ?? SERIALISE_SLICE_BYTES;
  try {
    const out = Buffer.allocUnsafeSlow(view.bytes);
    let at = 0;
    let sinceYield = 0;
    for (const part of view.parts) {
      for (let from = 0; from < part.length; ) {
        const n = Math.min(part.length - from, slice - sinceYield);
        part.copy(out, at, from, from + n);
        at += n;
        from += n;
        sinceYield += n;
        if (sinceYield >= slice) {
          sinceYield = 0;
          await nextTurn();
          opts.between?.();
        }
      }
    }
    return out;
  } finally {
    view.release();
  }
}
