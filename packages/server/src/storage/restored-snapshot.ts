/**
 * The snapshot a Raft member restarts from, as the consensus core sees it: its bytes (what a follower
 * that needs a snapshot is sent) are serialised only when first read, from a frozen view of the state
 * restored from the snapshot file. A restart then holds the restored state, not the state and its
 * serialised copy at once; a member whose followers never need a snapshot never serialises it.
 *
 * The view is copy-on-write, so it holds at most what the serialised bytes would (an object written after
 * the restart keeps its old bytes here until the view goes): {@link dataBytes} counts that much from the
 * start, and the memory budget's count is the same before and after the bytes are made.
 *
 * @module
 */
import { SegmemError } from '@segmem/protocol';
import type { FrozenSnapshot } from '../core/state-machine.js';
import type { Snapshot, SnapshotMeta } from '../raft/types.js';

export class RestoredSnapshot implements Snapshot {
  private bytes: Buffer | null = null;
  private view: FrozenSnapshot | null;
  /** The length of {@link data}, known without serialising. */
  readonly dataBytes: number;

  constructor(
    readonly meta: SnapshotMeta,
    view: FrozenSnapshot,
  ) {
    this.view = view;
    this.dataBytes = view.bytes;
  }

  /**
   * The state's bytes at the snapshot's index, serialised on first use (the view is released then).
   * Throws once {@link release} came first: a message still holding a replaced snapshot is dropped like a
   * lost one, and the leader sends the newer snapshot instead.
   */
  get data(): Buffer {
    if (this.bytes) return this.bytes;
    const view = this.view;
    if (!view) {
      throw new SegmemError(
        'UNAVAILABLE',
        `the snapshot at index ${this.meta.index} was replaced by a newer one before its bytes were needed`,
      );
    }
    this.bytes = Buffer.concat(view.parts, view.bytes);
    this.view = null;
    view.release();
    return this.bytes;
  }

  /** Whether the bytes were made (for tests). */
  get serialised(): boolean {
    return this.bytes !== null;
  }

  /** The snapshot was replaced: ends the view's copy-on-write (its bytes, if made, stay readable). */
  release(): void {
    this.view?.release();
    this.view = null;
  }
}
