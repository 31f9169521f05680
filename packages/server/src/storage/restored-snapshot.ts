/**
 * The snapshot a Raft member restarts from, as the consensus core sees it: its bytes (what a follower
 * that needs a snapshot is sent) are serialised only once a follower first needs them, from a frozen view
 * of the state restored from the snapshot file. A restart then holds the restored state, not the state
 * and its serialised copy at once; a member whose followers never need a snapshot never serialises it.
 *
 * The first read of {@link RestoredSnapshot.data} starts serialising the view in 4 MiB slices between
 * turns of the event loop (as a compaction does: heartbeats keep flowing) and throws meanwhile, so the
 * message asking for it is dropped like a lost one; once the bytes are made, `onReady` is called for the
 * leader to offer them again at once.
 *
 * The view is copy-on-write, so it holds at most what the serialised bytes would (an object written after
 * the restart keeps its old bytes here until the view goes): {@link RestoredSnapshot.dataBytes} counts
 * that much from the start, and the memory budget's count is the same before and after the bytes are made.
 *
 * @module
 */
import { SegmemError } from '@segmem/protocol';
import type { FrozenSnapshot } from '../core/state-machine.js';
import type { Snapshot, SnapshotMeta } from '../raft/types.js';
import { serialiseSnapshot } from './snapshot-serialise.js';

export class RestoredSnapshot implements Snapshot {
  private bytes: Buffer | null = null;
  /** The view, until the bytes are made or the snapshot is replaced. */
  private view: FrozenSnapshot | null;
  private serialising = false;
  /** The length of {@link data}, known without serialising. */
  readonly dataBytes: number;

  constructor(
    readonly meta: SnapshotMeta,
    view: FrozenSnapshot,
    private readonly onReady: () => void,
    private readonly log?: (line: string) => void,
  ) {
    this.view = view;
    this.dataBytes = view.bytes;
  }

  /**
   * The state's bytes at the snapshot's index. Until they are made, throws `UNAVAILABLE` (and starts making
   * them); once the snapshot was replaced before they were, throws for good (the leader sends the newer one).
   */
  get data(): Buffer {
    if (this.bytes) return this.bytes;
    if (!this.view) {
      throw new SegmemError(
        'UNAVAILABLE',
        `the snapshot at index ${this.meta.index} was replaced by a newer one before its bytes were needed`,
      );
    }
    this.serialise();
    throw new SegmemError(
      'UNAVAILABLE',
      `the snapshot at index ${this.meta.index} is being serialised for the first follower that needs it; ` +
        'it is sent once ready',
    );
  }

  /** Whether the bytes were made (for tests). */
  get serialised(): boolean {
    return this.bytes !== null;
  }

  /** The snapshot was replaced: ends the view's copy-on-write (bytes already made stay readable). */
  release(): void {
    const view = this.view;
    this.view = null;
    view?.release();
  }

  private serialise(): void {
    if (this.serialising) return;
    this.serialising = true;
    const view = this.view!;
    // serialiseSnapshot releases the view when done. Replaced meanwhile (release()), the bytes it makes
    // from a view no longer kept unchanged are dropped.
    serialiseSnapshot(view).then(
      (bytes) => {
        if (this.view !== view) return;
        this.view = null;
        this.bytes = bytes;
        this.onReady();
      },
      (err: unknown) => {
        // The view was released: this snapshot is not sent; the next one (a compaction) is.
        if (this.view === view) this.view = null;
        this.log?.(`cannot serialise the snapshot at index ${this.meta.index}: ${(err as Error).message}`);
      },
    );
  }
}
