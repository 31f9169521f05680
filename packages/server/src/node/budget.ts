/**
 * The server's memory budget (`--max-memory`): one limit on what the server holds in memory, which
 * admission control checks before anything that would grow it is proposed or built.
 *
 * What counts (docs/limits.md, docs/operations.md "Memory"):
 * - the state: every object at its full size from its creation (as if written), with its page versions
 *   and a fixed record overhead, and every shared log's retained record bytes (`StateMachine.heldBytes`);
 * - a cluster member's Raft log since its snapshot and the serialised snapshot it keeps for followers
 *   (`NodeLog.heldBytes`);
 * - the consolidated snapshot exports held for SNAPSHOT_READ and those being built (each counted at the
 *   size of the state it freezes: copy-on-write may copy every object written while it is held);
 * - the payloads of writes and appends admitted but not applied yet;
 * - a fixed allowance for the runtime ({@link RUNTIME_ALLOWANCE_BYTES}).
 *
 * Refusals: state growth (create, append) gets `NO_SPACE`, transient holdings (exports) `UNAVAILABLE`, both
 * with `details: { budget: 'max-memory', limitBytes, usedBytes }`; nothing is proposed, so nothing changes.
 *
 * The check runs on the leader, before proposing: replicated commands are never refused by the state
 * machine for memory, so every member applies the same log to the same state whatever its own limit. A
 * follower's state is the leader's, so giving every member the same limit keeps them all within it.
 */
import { SegmemError } from '@segmem/protocol';

/**
 * Counted on top of what the server holds: the Node runtime and code (about 50 MiB), the WAL being read
 * at recovery and request frames being decoded.
 */
export const RUNTIME_ALLOWANCE_BYTES = 128 * 1024 * 1024;
/** The smallest `--max-memory`: the runtime allowance and as much again for data. */
export const MIN_MAX_MEMORY_BYTES = 2 * RUNTIME_ALLOWANCE_BYTES;

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[u]}`;
}

/** Gives back what an admission reserved (idempotent). */
export type Reservation = () => void;

export class MemoryBudget {
  private exportBytes = 0;
  private pendingBytes = 0;

  /**
   * @param limitBytes the budget; null: none (everything is counted, nothing refused)
   * @param stateBytes what the state holds now (read at each check: a Raft follower may swap its state)
   */
  constructor(
    readonly limitBytes: number | null,
    private readonly stateBytes: () => number,
  ) {}

  /** Everything counted now: see the module comment. */
  usedBytes(): number {
    return RUNTIME_ALLOWANCE_BYTES + this.stateBytes() + this.exportBytes + this.pendingBytes;
  }

  /** What the exports (held and being built) count now. */
  get heldByExports(): number {
    return this.exportBytes;
  }

  /**
   * Admits `bytes` of state growth for a command about to be proposed (`what` says which, for the
   * message), counted until the returned function is called (once the command is applied, the state
   * counts it). Throws `NO_SPACE` when it does not fit.
   */
  admitGrowth(bytes: number, what: string): Reservation {
    this.check(
      bytes,
      'NO_SPACE',
      what,
      'delete objects or shared logs, truncate logs, or raise --max-memory',
    );
    return this.hold('pending', bytes);
  }

  /** Admits a snapshot export of `bytes`; throws `UNAVAILABLE` when it does not fit. */
  admitExport(bytes: number, what: string): Reservation {
    this.check(
      bytes,
      'UNAVAILABLE',
      what,
      'try again once other snapshot exports were read to the end or dropped (their sessions ended, or idle for a minute)',
    );
    return this.hold('export', bytes);
  }

  /** Counts `bytes` that are in memory already and are not refused (a write release's payload). */
  count(bytes: number): Reservation {
    return this.hold('pending', bytes);
  }

  private check(bytes: number, code: 'NO_SPACE' | 'UNAVAILABLE', what: string, advice: string): void {
    const limitBytes = this.limitBytes;
    if (limitBytes === null) return;
    const usedBytes = this.usedBytes();
    if (usedBytes + bytes <= limitBytes) return;
    throw new SegmemError(
      code,
      `memory budget full: ${what} needs ${formatBytes(bytes)}, and ${formatBytes(usedBytes)} of the ` +
        `--max-memory ${formatBytes(limitBytes)} are in use; ${advice}`,
      { budget: 'max-memory', limitBytes, usedBytes, neededBytes: bytes },
    );
  }

  private hold(kind: 'pending' | 'export', bytes: number): Reservation {
    if (kind === 'export') this.exportBytes += bytes;
    else this.pendingBytes += bytes;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      if (kind === 'export') this.exportBytes -= bytes;
      else this.pendingBytes -= bytes;
    };
  }
}
