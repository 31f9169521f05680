/**
 * The core's view of the log: what stable storage holds (read through {@link RaftStorage}), plus what the
 * core has accepted but the driver has not yet persisted (the "unstable" tail and a received snapshot).
 *
 *   storage:  [firstIndex ............ storage.lastIndex]
 *   unstable:                    [offset ........ lastIndex]     (entries not yet known to be durable)
 *
 * Entries at and above `offset` are read only from the unstable tail, never from storage, because storage
 * may still hold an older, conflicting suffix there until the driver writes the next Ready.
 */
import { invariant } from './invariant.js';
import { CompactedError, type Entry, type RaftStorage, type Snapshot } from './types.js';

export class RaftLogView {
  private unstable: Entry[] = [];
  /** Index of unstable[0]. */
  private offset: number;
  /** A snapshot received from a leader and not yet persisted; the log restarts after it. */
  private snap: Snapshot | null = null;
  /** Highest index known to be committed. */
  committed: number;
  /** Highest index handed to the application in a Ready. */
  applying: number;
  /** Highest index the application has applied (advanced by advance()). */
  applied: number;

  constructor(
    private readonly storage: RaftStorage,
    committed: number,
    applied: number,
  ) {
    this.offset = storage.lastIndex() + 1;
    this.committed = committed;
    this.applying = applied;
    this.applied = applied;
  }

  get pendingSnapshot(): Snapshot | null {
    return this.snap;
  }

  firstIndex(): number {
    return this.snap ? this.snap.meta.index + 1 : this.storage.firstIndex();
  }

  /** The last index known durable here: everything before the unstable tail (and a pending snapshot). */
  durableLastIndex(): number {
    if (this.unstable.length > 0) return this.offset - 1;
    if (this.snap) return this.snap.meta.index;
    return this.storage.lastIndex();
  }

  lastIndex(): number {
    if (this.unstable.length > 0) return this.offset + this.unstable.length - 1;
    if (this.snap) return this.snap.meta.index;
    return this.storage.lastIndex();
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    invariant(t !== undefined, 'the last entry has a term');
    return t;
  }

  /** Term of entry i, or undefined if it is compacted (below firstIndex - 1) or beyond the last index. */
  term(i: number): number | undefined {
    const snap = this.snap;
    if (snap && i === snap.meta.index) return snap.meta.term;
    if (i < this.firstIndex() - 1 || i > this.lastIndex()) return undefined;
    if (i >= this.offset) return this.unstable[i - this.offset]!.term;
    try {
      return this.storage.term(i);
    } catch (err) {
      if (err instanceof CompactedError) return undefined;
      throw err;
    }
  }

  matchTerm(i: number, term: number): boolean {
    return this.term(i) === term;
  }

  /** Raft §5.4.1: is a log ending at (lastIndex, lastTerm) at least as up to date as this one? */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const myTerm = this.lastTerm();
    return lastTerm > myTerm || (lastTerm === myTerm && lastIndex >= this.lastIndex());
  }

  /** Entries [lo, hi), at most `max` of them. Throws {@link CompactedError} below firstIndex. */
  entries(lo: number, hi: number, max = Number.POSITIVE_INFINITY): Entry[] {
    if (lo < this.firstIndex()) throw new CompactedError(lo);
    hi = Math.min(hi, this.lastIndex() + 1, lo + max);
    if (lo >= hi) return [];
    const out: Entry[] = lo < this.offset ? this.storage.entries(lo, Math.min(hi, this.offset)) : [];
    invariant(
      lo >= this.offset || out.length === Math.min(hi, this.offset) - lo,
      () => `storage returned ${out.length} entries for [${lo}, ${Math.min(hi, this.offset)})`,
    );
    if (hi > this.offset) {
      const from = Math.max(lo, this.offset) - this.offset;
      for (let i = from; i < hi - this.offset; i++) out.push(this.unstable[i]!);
    }
    return out;
  }

  /**
   * Appends entries that follow on from index ents[0].index - 1, replacing whatever the log holds from
   * ents[0].index on. Committed entries are never replaced.
   */
  append(ents: readonly Entry[]): void {
    if (ents.length === 0) return;
    const after = ents[0]!.index;
    invariant(
      after > this.committed,
      () => `appending at ${after} would replace committed ${this.committed}`,
    );
    invariant(
      after <= this.lastIndex() + 1,
      () => `append at ${after} leaves a gap after ${this.lastIndex()}`,
    );
    const end = this.offset + this.unstable.length;
    if (after === end) {
      for (const e of ents) this.unstable.push(e);
    } else if (after <= this.offset) {
      // Replaces part of the stable log too; the next Ready rewrites storage from `after`.
      this.offset = after;
      this.unstable = ents.slice();
    } else {
      this.unstable = this.unstable.slice(0, after - this.offset).concat(ents);
    }
  }

  hasUnstable(): boolean {
    return this.unstable.length > 0;
  }

  unstableEntries(): Entry[] {
    return this.unstable.slice();
  }

  /**
   * `written` (a Ready's entries) is now durable. Only the front of the unstable tail that still holds the
   * same entries becomes stable: anything replaced meanwhile is written again by the next Ready. (Marking
   * per entry, rather than "all or nothing" as etcd's stableTo does, keeps a Ready from ever rewriting
   * entries it does not replace, which a torn write could otherwise truncate.)
   */
  stableTo(written: readonly Entry[]): void {
    let n = 0;
    for (const e of written) {
      const u = this.unstable[n];
      if (e.index !== this.offset + n || !u || u.term !== e.term) break;
      n++;
    }
    if (n > 0) {
      this.unstable = this.unstable.slice(n);
      this.offset += n;
    }
  }

  stableSnapTo(index: number): void {
    if (this.snap && this.snap.meta.index === index) this.snap = null;
  }

  /** Replaces the whole log with a snapshot from the leader (newer than anything committed here). */
  restore(snap: Snapshot): void {
    invariant(snap.meta.index > this.committed, 'a restored snapshot is newer than the commit index');
    this.snap = snap;
    this.unstable = [];
    this.offset = snap.meta.index + 1;
    this.committed = snap.meta.index;
  }

  commitTo(index: number): boolean {
    if (index <= this.committed) return false;
    invariant(
      index <= this.lastIndex(),
      () => `commit ${index} is beyond the last index ${this.lastIndex()} (was the log truncated or lost?)`,
    );
    this.committed = index;
    return true;
  }

  hasNextCommitted(): boolean {
    return this.committed > this.applying;
  }

  /** Committed entries not yet handed out, at most `max`; marks them as handed out. */
  takeCommitted(max: number): Entry[] {
    if (this.committed <= this.applying) return [];
    const lo = this.applying + 1;
    invariant(
      lo >= this.firstIndex(),
      () => `entry ${lo} to apply was compacted (first ${this.firstIndex()})`,
    );
    const out = this.entries(lo, this.committed + 1, max);
    if (out.length > 0) this.applying = out[out.length - 1]!.index;
    return out;
  }

  /**
   * The largest index <= `index` whose term is <= `term` (or the first index whose term is unknown): where
   * two logs may match, given that the other log has `term` at `index`. Raft's fast back-off.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    let i = Math.min(index, this.lastIndex());
    for (;;) {
      const t = this.term(i);
      if (t === undefined) return { index: i, term: 0 };
      if (t <= term) return { index: i, term: t };
      i--;
    }
  }

  /** The newest snapshot to send a follower: a received one not yet persisted, else storage's. */
  snapshotForFollower(): Snapshot {
    return this.snap ?? this.storage.snapshot();
  }
}
