/**
 * The log of a single-member group: commands are appended to the WAL and applied to the state
 * machine in log order. This is the seam where consensus slots in: a Raft group offers the same
 * `propose()` and calls the same `apply` hook once an entry is committed on a majority.
 *
 * Ordering rule: entry i is applied only after every data-changing entry at or before i is durable
 * under the fsync policy (see `mustSync`). Lock and session entries do not wait for the disk when
 * nothing durable is pending before them, which keeps uncontended lock traffic off the fsync path;
 * they are safe to lose in a crash because recovery ends every session (the `restart` command).
 */
import { SegmemError } from '@segmem/protocol';
import { type Command, encodeCommand, mustSync, type Outcome } from '../core/commands.js';
import type { StateMachine } from '../core/state-machine.js';
import type { Wal } from '../storage/wal.js';

interface Pending {
  index: number;
  cmd: Command;
  sync: boolean;
  resolve: (outcome: Outcome) => void;
  reject: (err: Error) => void;
}

export type ApplyListener = (index: number, cmd: Command, outcome: Outcome) => void;

export interface ReplicatedLog {
  /** Appends `cmd`; resolves with its outcome once it is applied (and durable, for data changes). */
  propose(cmd: Command): Promise<Outcome>;
  close(): Promise<void>;
}

export class LocalLog implements ReplicatedLog {
  private readonly pending: Pending[] = [];
  private head = 0; // index into `pending` of the next entry to apply
  private failure: SegmemError | null = null;
  private closed = false;
  private readonly waitForDisk: boolean;

  constructor(
    private readonly wal: Wal,
    private readonly sm: StateMachine,
    private readonly onApply: ApplyListener,
  ) {
    this.waitForDisk = wal.policy !== 'none';
    wal.onDurable(() => this.drain());
  }

  propose(cmd: Command): Promise<Outcome> {
    if (this.closed) return Promise.reject(new SegmemError('CLOSED', 'the server is shutting down'));
    if (this.failure) return Promise.reject(this.failure);
    let index: number;
    try {
      index = this.wal.append(encodeCommand(cmd));
    } catch (err) {
      return Promise.reject(this.fail(err));
    }
    const sync = this.waitForDisk && mustSync(cmd);
    const promise = new Promise<Outcome>((resolve, reject) => {
      this.pending.push({ index, cmd, sync, resolve, reject });
    });
    if (sync) {
      this.wal.waitDurable(index).catch((err: unknown) => this.fail(err));
    }
    this.drain();
    return promise;
  }

  private drain(): void {
    const durable = this.wal.durableIndex;
    while (this.head < this.pending.length) {
      const entry = this.pending[this.head]!;
      if (entry.sync && entry.index > durable) break;
      this.pending[this.head++] = undefined as unknown as Pending;
      let outcome: Outcome;
      try {
        outcome = this.sm.apply(entry.index, entry.cmd);
      } catch (err) {
        // An invariant broke inside the state machine: stop rather than diverge.
        entry.reject(this.fail(err));
        return;
      }
      this.onApply(entry.index, entry.cmd, outcome);
      entry.resolve(outcome);
    }
    if (this.head === this.pending.length) {
      this.pending.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending.splice(0, this.head);
      this.head = 0;
    }
  }

  private fail(err: unknown): SegmemError {
    if (!this.failure) {
      this.failure = SegmemError.is(err)
        ? err
        : new SegmemError('UNAVAILABLE', `log failed: ${(err as Error)?.message ?? String(err)}`, undefined, {
            cause: err,
          });
      for (let i = this.head; i < this.pending.length; i++) this.pending[i]!.reject(this.failure);
      this.pending.length = 0;
      this.head = 0;
    }
    return this.failure;
  }

  get stateMachine(): StateMachine {
    return this.sm;
  }

  /** A single member is always its own leader. */
  isLeader(): boolean {
    return true;
  }

  leaderHint(): null {
    return null;
  }

  /** Everything committed is applied already: one member, applying in order. */
  readBarrier(): Promise<void> {
    return Promise.resolve();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.wal.close();
  }
}
