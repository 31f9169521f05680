/**
 * The server's memory budget (`--max-memory`): one limit on what the server holds in memory, which
 * admission control checks before anything that would grow it is proposed or built.
 *
 * What counts (docs/limits.md, docs/operations.md "Memory"), each a running sum or a constant-time read:
 * - the state: every object at its full size from its creation (as if written), with its page versions
 *   and a fixed record overhead, and every shared log's retained record bytes (`StateMachine.heldBytes`);
 * - the sessions: {@link SESSION_HELD_BYTES} each (its exactly-once table of recent results and its locks);
 * - a cluster member's Raft log since its snapshot and the serialised snapshot it keeps for followers
 *   (`NodeLog.heldBytes`);
 * - the consolidated snapshot exports held for SNAPSHOT_READ and those being built (each counted at the
 *   size of the state it freezes: copy-on-write may copy every object written while it is held), or, when
 *   more, the object bytes that frozen views (exports and periodic snapshots being written) actually keep
 *   alive after a write replaced or a delete dropped them (`StateMachine.frozenCopyBytes`);
 * - the payloads of writes and appends admitted but not applied yet;
 * - what connections hold: bytes received and not yet decoded (a frame being received) and answers queued
 *   and not yet sent, and a snapshot arriving in pieces from the leader;
 * - a fixed allowance for the runtime ({@link RUNTIME_ALLOWANCE_BYTES}).
 *
 * Refusals: state growth (create, append) gets `NO_SPACE`, transient holdings (exports, new sessions)
 * `UNAVAILABLE`, all with `details: { budget: 'max-memory', limitBytes, usedBytes }`; nothing is proposed, so
 * nothing changes. Growth and exports stop SESSION_RESERVE_BYTES short of the limit, so that a client can
 * still log in to make room. What arrives unasked is not refused but slowed: a client connection starting a large
 * frame that does not fit stops being read until it does ({@link mayReceive}, {@link whenRoom}), unless the
 * frames being received together stay within RECEIVE_RESERVE_BYTES, so one write at a time always gets
 * through. A snapshot announced in pieces larger than the budget's room for data is refused outright, its
 * link closed.
 *
 * The check runs on the leader, before proposing: replicated commands are never refused by the state
 * machine for memory, so every member applies the same log to the same state whatever its own limit. A
 * follower's state is the leader's, so giving every member the same limit keeps them all within it.
 */
import { type Env, type EnvTimer, SegmemError } from '@segmem/protocol';

/**
 * Counted on top of what the server holds: the Node runtime and code (about 50 MiB), the WAL being read
 * at recovery and requests being handled once decoded.
 */
export const RUNTIME_ALLOWANCE_BYTES = 128 * 1024 * 1024;
/** The smallest `--max-memory`: the runtime allowance and as much again for data. */
export const MIN_MAX_MEMORY_BYTES = 2 * RUNTIME_ALLOWANCE_BYTES;
/**
 * What one session counts: its exactly-once table keeps its last DEDUP_WINDOW (1024) results, about
 * 140 KiB measured with small results (an append's), more with larger ones; plus its locks and clocks.
 */
export const SESSION_HELD_BYTES = 256 * 1024;
/**
 * Room that state growth and exports leave for new sessions (64 of them): once data has filled its share
 * of the budget, clients can still connect to delete objects or truncate logs.
 */
export const SESSION_RESERVE_BYTES = 64 * SESSION_HELD_BYTES;
/**
 * Frames being received that connections may hold together past a full budget: one of the largest
 * (MAX_FRAME_BYTES), so that writes, which are never refused, keep arriving one at a time even when the
 * count is over the limit (a member's Raft log holds written bytes until its next snapshot).
 */
export const RECEIVE_RESERVE_BYTES = 64 * 1024 * 1024;
/** How often a connection waiting for room looks again (the state shrinks unseen by the budget). */
export const ROOM_RETRY_MS = 50;

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

/** What the budget reads of the node at each count (a Raft follower may swap its state). */
export interface BudgetSources {
  /** The state and the log's own holdings. */
  stateBytes(): number;
  /** Sessions open. */
  sessions(): number;
  /** Object bytes only frozen views keep alive (replaced or deleted since they froze). */
  frozenCopyBytes(): number;
}

/** What the budget counts now, part by part (the metrics show them). */
export interface CountedBytes {
  runtime: number;
  state: number;
  sessions: number;
  snapshots: number;
  pending: number;
  /** Bytes connections received and did not decode yet. */
  received: number;
  /** Answers connections queued and did not send yet. */
  unsent: number;
  /** Snapshots arriving in pieces from the leader. */
  receiving_snapshots: number;
}

/** What a {@link Holding} counts as. */
export type HoldingKind = 'received' | 'unsent' | 'receiving_snapshots';

/** Bytes a holder counts while it grows and shrinks (a connection's buffers, a snapshot arriving). */
export interface Holding {
  /** Counts `bytes` now, in place of what it counted before. */
  set(bytes: number): void;
  /** Counts nothing any more (idempotent). */
  release(): void;
}

export class MemoryBudget {
  private exportBytes = 0;
  private pendingBytes = 0;
  private readonly held: Record<HoldingKind, number> = { received: 0, unsent: 0, receiving_snapshots: 0 };
  /** Connections that stopped reading until there is room: each is called once its test passes. */
  private readonly roomWaiters = new Map<() => void, () => boolean>();
  private roomTimer: EnvTimer | null = null;

  /**
   * @param limitBytes the budget; null: none (everything is counted, nothing refused)
   * @param sources what the node holds now (read at each count)
   * @param env timers for {@link whenRoom}
   */
  constructor(
    readonly limitBytes: number | null,
    private readonly sources: BudgetSources,
    private readonly env: Env,
  ) {}

  /** Everything counted now: see the module comment. */
  usedBytes(): number {
    const s = this.sources;
    return (
      RUNTIME_ALLOWANCE_BYTES +
      s.stateBytes() +
      s.sessions() * SESSION_HELD_BYTES +
      Math.max(this.exportBytes, s.frozenCopyBytes()) +
      this.pendingBytes +
      this.held.received +
      this.held.unsent +
      this.held.receiving_snapshots
    );
  }

  /** {@link usedBytes} part by part. */
  counted(): CountedBytes {
    const s = this.sources;
    return {
      runtime: RUNTIME_ALLOWANCE_BYTES,
      state: s.stateBytes(),
      sessions: s.sessions() * SESSION_HELD_BYTES,
      snapshots: Math.max(this.exportBytes, s.frozenCopyBytes()),
      pending: this.pendingBytes,
      ...this.held,
    };
  }

  /** What the exports (held and being built) count now. */
  get heldByExports(): number {
    return this.exportBytes;
  }

  /**
   * Whether a connection may receive a frame of `frameBytes` of which it holds `holding` already: when it
   * fits the budget, or when the frames being received together stay within RECEIVE_RESERVE_BYTES.
   */
  mayReceive(frameBytes: number, holding: number): boolean {
    const limitBytes = this.limitBytes;
    if (limitBytes === null) return true;
    const more = frameBytes - holding;
    return this.usedBytes() + more <= limitBytes || this.held.received + more <= RECEIVE_RESERVE_BYTES;
  }

  /**
   * The largest snapshot a member accepts from its leader: the budget's room for data. The leader's state
   * was admitted under the same budget (members share one), so a larger one cannot be a real snapshot.
   * Null without a limit.
   */
  get snapshotBoundBytes(): number | null {
    return this.limitBytes === null ? null : this.limitBytes - RUNTIME_ALLOWANCE_BYTES;
  }

  /**
   * Admits `bytes` of state growth for a command about to be proposed (`what` says which, for the
   * message), counted until the returned function is called (once the command is applied, the state
   * counts it). Throws `NO_SPACE` when it does not fit.
   */
  admitGrowth(bytes: number, what: string): Reservation {
    this.check(
      bytes,
      SESSION_RESERVE_BYTES,
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
      SESSION_RESERVE_BYTES,
      'UNAVAILABLE',
      what,
      'try again once other snapshot exports were read to the end or dropped (their sessions ended, or idle for a minute)',
    );
    return this.hold('export', bytes);
  }

  /**
   * Admits a new session (the state counts it once opened); throws `UNAVAILABLE` when it does not fit. A
   * session resumed grows nothing and is not asked about.
   */
  admitSession(): void {
    this.check(
      SESSION_HELD_BYTES,
      0,
      'UNAVAILABLE',
      'a new session',
      'try again once other sessions ended, or delete objects or shared logs, or raise --max-memory',
    );
  }

  /** Counts `bytes` that are in memory already and are not refused (a write release's payload). */
  count(bytes: number): Reservation {
    return this.hold('pending', bytes);
  }

  /** Bytes held by a connection or a snapshot arriving, counted as `kind` while they change. */
  holding(kind: HoldingKind): Holding {
    let held = 0;
    let released = false;
    return {
      set: (bytes) => {
        if (released) return;
        this.held[kind] += bytes - held;
        held = bytes;
      },
      release: () => {
        if (released) return;
        released = true;
        this.held[kind] -= held;
        held = 0;
      },
    };
  }

  /**
   * Calls `cb` once `hasRoom()` says so (a connection's {@link mayReceive}), looking every ROOM_RETRY_MS:
   * the state shrinks by applied commands the budget does not see. Returns a function that cancels the
   * wait.
   */
  whenRoom(hasRoom: () => boolean, cb: () => void): () => void {
    this.roomWaiters.set(cb, hasRoom);
    if (!this.roomTimer) {
      this.roomTimer = this.env.setInterval(() => this.wakeWithRoom(), ROOM_RETRY_MS);
      this.roomTimer.unref();
    }
    return () => {
      this.roomWaiters.delete(cb);
      this.stopTimerIfIdle();
    };
  }

  /** Connections waiting for room. */
  get waitingForRoom(): number {
    return this.roomWaiters.size;
  }

  /** The node closes: nobody waits any more. */
  close(): void {
    this.roomWaiters.clear();
    this.stopTimerIfIdle();
  }

  private wakeWithRoom(): void {
    for (const [cb, hasRoom] of this.roomWaiters) {
      if (!hasRoom()) continue;
      this.roomWaiters.delete(cb);
      cb();
    }
    this.stopTimerIfIdle();
  }

  private stopTimerIfIdle(): void {
    if (this.roomWaiters.size === 0 && this.roomTimer) {
      this.env.clearInterval(this.roomTimer);
      this.roomTimer = null;
    }
  }

  /** Throws `code` unless `bytes` more fit in the budget with `keepFree` of it left over. */
  private check(
    bytes: number,
    keepFree: number,
    code: 'NO_SPACE' | 'UNAVAILABLE',
    what: string,
    advice: string,
  ): void {
    const limitBytes = this.limitBytes;
    if (limitBytes === null) return;
    const usedBytes = this.usedBytes();
    if (usedBytes + bytes + keepFree <= limitBytes) return;
    throw new SegmemError(
      code,
      `memory budget full: ${what} needs ${formatBytes(bytes)}, and ${formatBytes(usedBytes)} of the ` +
        `--max-memory ${formatBytes(limitBytes)} are in use${keepFree > 0 ? ` (${formatBytes(keepFree)} of it kept for new sessions)` : ''}; ${advice}`,
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
