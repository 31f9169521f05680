/**
 * Work on a frozen state-machine view ({@link StateMachine.freeze}) in slices, with a turn of the event
 * loop between them, so a large state does not hold up heartbeats, requests and session renewals while
 * it is copied or checksummed. Commands keep applying meanwhile: the view is copy-on-write.
 *
 * @module
 */
import type { FrozenSnapshot } from '../core/state-machine.js';
import { crc32c } from './crc32c.js';

/** Bytes copied between two turns of the event loop (about a millisecond of copying). */
export const SERIALISE_SLICE_BYTES = 4 * 1024 * 1024;

/** Resolves on a later turn of the event loop, after pending I/O callbacks. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** CRC-32C of `parts` one after the other, continuing from `initial`, with a turn of the event loop every 4 MiB. */
export async function crc32cInSlices(parts: readonly Uint8Array[], initial = 0): Promise<number> {
  let crc = initial;
  let sinceYield = 0;
  for (const part of parts) {
    for (let at = 0; at < part.length; ) {
      const end = Math.min(part.length, at + SERIALISE_SLICE_BYTES - sinceYield);
      crc = crc32c(part, crc, at, end);
      sinceYield += end - at;
      at = end;
      if (sinceYield >= SERIALISE_SLICE_BYTES) {
        sinceYield = 0;
        await nextTurn();
      }
    }
  }
  return crc;
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
