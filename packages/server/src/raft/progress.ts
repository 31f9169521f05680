/**
 * What a leader knows about one follower's log, and the flow control of appends to it (after etcd's
 * tracker.Progress):
 * - probe: the leader does not know where the logs match; one append at a time, resumed by the answer or
 *   by a heartbeat answer;
 * - replicate: the logs match up to `match`; appends are pipelined optimistically (next advances as they
 *   are sent), at most `maxInflight` unanswered;
 * - snapshot: the follower needs entries the leader compacted away; nothing is sent until it acknowledges
 *   the snapshot (or the snapshot is reported lost or times out).
 */
export type ProgressState = 'probe' | 'replicate' | 'snapshot';

export class Progress {
  /** Highest index known to be replicated on the follower (durably: it acknowledged after persisting). */
  match = 0;
  /** Next index to send. Invariant: next > match. */
  next: number;
  state: ProgressState = 'probe';
  /** probe: an append was sent and is unanswered. */
  probeSent = false;
  /** snapshot: the index of the snapshot sent. */
  pendingSnapshot = 0;
  /** snapshot: ticks since it was sent. */
  snapshotTicks = 0;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  /** replicate: the last index of each unanswered append, ascending. */
  private inflight: number[] = [];

  constructor(
    next: number,
    private readonly maxInflight: number,
  ) {
    this.next = next;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflight.length >= this.maxInflight;
      case 'snapshot':
        return true;
    }
  }

  get inflightCount(): number {
    return this.inflight.length;
  }

  becomeProbe(): void {
    // After a snapshot, the follower has at least the snapshot (if it arrived); probing from there
    // either succeeds or walks back with the follower's hints.
    this.next =
      this.state === 'snapshot' ? Math.max(this.match + 1, this.pendingSnapshot + 1) : this.match + 1;
    this.state = 'probe';
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflight = [];
  }

  becomeReplicate(): void {
    this.state = 'replicate';
    this.next = this.match + 1;
    this.pendingSnapshot = 0;
    this.inflight = [];
  }

  becomeSnapshot(index: number): void {
    this.state = 'snapshot';
    this.pendingSnapshot = index;
    this.snapshotTicks = 0;
    this.next = index + 1;
    this.inflight = [];
  }

  /** An append with entries up to `last` (or none: `last` = next - 1) went out. */
  sentAppend(last: number, entryCount: number): void {
    if (this.state === 'replicate') {
      if (entryCount > 0) {
        this.next = last + 1;
        this.inflight.push(last);
      }
    } else if (this.state === 'probe') {
      this.probeSent = true;
    }
  }

  /**
   * A heartbeat answer from a follower whose window is full: its oldest append may have been lost, so one
   * slot is freed for a new append. If entries are missing, that append is rejected and the follower is
   * probed from its match index (etcd's Inflights.FreeFirstOne).
   */
  freeOneIfFull(): void {
    if (this.state === 'replicate' && this.inflight.length >= this.maxInflight) this.inflight.shift();
  }

  /** The follower acknowledged everything up to `index`. Returns false for a stale acknowledgement. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.match < index) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    if (this.next < index + 1) this.next = index + 1;
    let drop = 0;
    while (drop < this.inflight.length && this.inflight[drop]! <= this.match) drop++;
    if (drop > 0) this.inflight.splice(0, drop);
    return updated;
  }

  /**
   * The follower rejected the append whose previous index was `rejected`; `hint` is the highest index
   * where the logs may match. Returns false for a stale rejection (of an append answered since).
   */
  maybeDecrTo(rejected: number, hint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, hint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }
}
