/**
 * Consolidated snapshots of the applied state: made for the schedule (shell/consolidated-schedule.ts) and
 * for clients (SNAPSHOT), which then read them in pieces (SNAPSHOT_READ).
 */
import { type EnvTimer, SegmemError } from '@segmem/protocol';
import { type ConsolidatedExport, encodeConsolidated } from '../storage/consolidated.js';
import type { NodeContext } from './context.js';

/** An unread consolidated snapshot is dropped after this long without a SNAPSHOT_READ. */
const SNAPSHOT_EXPORT_IDLE_MS = 60_000;

interface HeldExport {
  parts: Buffer[];
  bytes: number;
  release: () => void;
  timer: EnvTimer;
  sessionId: number;
}

export class SnapshotExports {
  private readonly held = new Map<number, HeldExport>();
  private nextExportId = 1;

  constructor(private readonly ctx: NodeContext) {}

  /**
   * A consolidated snapshot of the applied state after a read barrier (so it holds everything acknowledged
   * before the call): the file's bytes as parts over a frozen copy-on-write view, so the content stays as of
   * `index` while it is encoded, read or written in pieces, and commands keep applying meanwhile (their
   * writes copy the objects they change). Call `release()` once the parts are no longer needed.
   *
   * Admitted by the memory budget first (`UNAVAILABLE` when it does not fit), for as much as the state
   * holds: every object written while the export is held is copied once. Counted until `release()`.
   */
  async consolidate(): Promise<ConsolidatedExport> {
    const ctx = this.ctx;
    ctx.requireLeader();
    const admitted = ctx.budget.admitExport(
      ctx.sm.heldBytes(),
      `a consolidated snapshot of the state (${ctx.budget.heldByExports} bytes held by other exports)`,
    );
    try {
      const ex = await this.build();
      return {
        ...ex,
        release: () => {
          ex.release();
          admitted();
        },
      };
    } catch (err) {
      admitted();
      throw err;
    }
  }

  private async build(): Promise<ConsolidatedExport> {
    const ctx = this.ctx;
    await ctx.log.readBarrier();
    const { index, term } = ctx.log.appliedPosition();
    const sm = ctx.sm;
    const view = sm.freeze();
    const createdAt = new Date(ctx.env.now()).toISOString();
    let parts: Buffer[];
    try {
      parts = await encodeConsolidated(sm.exportContent(), {
        clusterId: ctx.clusterId,
        createdAt,
        groups: [[sm.group.id, index, term]],
      });
    } catch (err) {
      view.release();
      throw err;
    }
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    return { parts, bytes, index, term, createdAt, release: () => view.release() };
  }

  /**
   * SNAPSHOT: {@link consolidate}, kept under an id for SNAPSHOT_READ until the session that asked ends
   * (its GOODBYE, expiry, or this member's loss of leadership) or nobody read it for a minute.
   */
  async export(sessionId: number): Promise<{ id: number; bytes: number; index: number; term: number }> {
    const ex = await this.consolidate();
    const id = this.nextExportId++;
    const timer = this.ctx.env.setTimeout(() => this.drop(id), SNAPSHOT_EXPORT_IDLE_MS);
    timer.unref();
    this.held.set(id, { parts: ex.parts, bytes: ex.bytes, release: ex.release, timer, sessionId });
    return { id, bytes: ex.bytes, index: ex.index, term: ex.term };
  }

  /**
   * SNAPSHOT_READ: a piece of an export, as views of its frozen bytes (no copy). They may wait in the
   * socket's queue after this returns: the export, and so the frozen view, lives until its session ends,
   * by which time the reader has had every piece it asked for.
   */
  read(
    req: { id: number; offset: number; length: number },
    mayRead: (owner: number) => boolean = () => true,
  ): Buffer[] {
    const ex = this.held.get(req.id);
    // Ids are sequential, so guessing another session's is easy: it takes the admin right to read it.
    if (ex && !mayRead(ex.sessionId)) {
      throw new SegmemError('UNAUTHORIZED', `snapshot ${req.id} belongs to another session`, {
        reason: 'FORBIDDEN',
        right: 'admin',
        name: null,
      });
    }
    if (!ex)
      throw new SegmemError(
        'NOT_FOUND',
        `no snapshot ${req.id} here (its session ended, idle for a minute, or another server's)`,
      );
    if (req.offset > ex.bytes) {
      throw new SegmemError('INVALID_ARGUMENT', `offset ${req.offset} is past the end (${ex.bytes} bytes)`);
    }
    const end = Math.min(ex.bytes, req.offset + req.length);
    const piece: Buffer[] = [];
    let partStart = 0;
    for (const p of ex.parts) {
      const partEnd = partStart + p.length;
      if (partEnd > req.offset && partStart < end) {
        piece.push(
          p.subarray(Math.max(req.offset, partStart) - partStart, Math.min(end, partEnd) - partStart),
        );
      }
      if (partEnd >= end) break;
      partStart = partEnd;
    }
    ex.timer.refresh();
    return piece;
  }

  /** A session ended: every piece it read has reached it (it ended after them), so its exports go. */
  sessionEnded(sessionId: number): void {
    for (const [id, ex] of this.held) if (ex.sessionId === sessionId) this.drop(id);
  }

  close(): void {
    for (const id of [...this.held.keys()]) this.drop(id);
  }

  private drop(id: number): void {
    const ex = this.held.get(id);
    if (!ex) return;
    this.ctx.env.clearTimeout(ex.timer);
    ex.release();
    this.held.delete(id);
  }
}
