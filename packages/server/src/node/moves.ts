/**
 * Slot moves on a group's leader: the MOVE steps (status, freeze, import, switch, abort) a driver runs, the
 * chunked MOVE_READ of a frozen move's objects and logs, and the wait of a change to a frozen name until its
 * move ends (by its switch: the change is then redirected, MOVED; or by an abort: it goes on here).
 */
import {
  MAX_LOG_BATCH_RECORDS,
  type MoveCursor,
  type MovedLogInfo,
  type MovedObjectInfo,
  type MoveOk,
  type MoveReadOk,
  type MoveReadRequest,
  type MoveRequest,
  SegmemError,
} from '@segmem/protocol';
import type { Command } from '../core/commands.js';
import type { SlotSpan } from '../core/moves.js';
import { objectHeldBytes } from '../core/state-machine.js';
import type { NodeContext } from './context.js';
import { requireSlot } from './slots.js';
import { toBuffer, unwrap } from './util.js';

/** How long a change without a timeout of its own (create, append, truncate) waits for a frozen slot. */
export const FROZEN_WAIT_MS = 60_000;

/**
 * A change the state machine refused because a freeze was applied after the node's check: the connection
 * sends the request again, which then waits for the move.
 */
export function isFrozen(err: unknown): boolean {
  // The state machine's refusal has no waitedMs: that one is the end of a wait here, answered as it is.
  return (
    SegmemError.is(err, 'UNAVAILABLE') &&
    err.details?.reason === 'FROZEN' &&
    err.details.waitedMs === undefined
  );
}
/** How often a frozen wait looks again besides being woken (a missed wake-up, a new leader's state). */
const FROZEN_RECHECK_MS = 250;

export class Moves {
  private readonly woken = new Set<() => void>();

  constructor(private readonly ctx: NodeContext) {}

  /** The log applied a command: a move or table change may end a frozen wait. */
  applied(cmd: Command): void {
    if (cmd.op !== 'moveSwitch' && cmd.op !== 'moveAbort' && cmd.op !== 'slots') return;
    for (const wake of [...this.woken]) wake();
  }

  /**
   * Runs `change` (a create, delete, acquire or log change of `name`) once `name`'s slot is not frozen. When
   * nothing is frozen it is `change` itself, not wrapped (the simulator replays runs turn for turn). The
   * move's switch ends the wait with MOVED; past `timeoutMs` (null: the move's end) it ends with TIMEOUT when
   * the request had a timeout of its own, else UNAVAILABLE (reason FROZEN), which a client may retry. A
   * change that a freeze applied after this check refused is sent again by the connection ({@link isFrozen}).
   */
  whenUnfrozen<T>(
    name: string,
    timeoutMs: number | null,
    ownTimeout: boolean,
    change: (remainingMs: number | null) => Promise<T>,
  ): Promise<T> {
    if (!this.ctx.sm.frozenBy(name)) return change(timeoutMs);
    return this.waitUnfrozen(name, timeoutMs, ownTimeout).then(change);
  }

  /** Waits while `name` is frozen; resolves with what is left of `timeoutMs`. */
  private async waitUnfrozen(
    name: string,
    timeoutMs: number | null,
    ownTimeout: boolean,
  ): Promise<number | null> {
    const env = this.ctx.env;
    const deadline = timeoutMs === null ? null : env.now() + timeoutMs;
    for (;;) {
      const frozen = this.ctx.sm.frozenBy(name);
      if (!frozen) return deadline === null ? null : Math.max(0, deadline - env.now());
      const left = deadline === null ? FROZEN_RECHECK_MS : deadline - env.now();
      if (left <= 0) {
        const msg = `"${name}" (slot ${frozen.slot}) stayed frozen by move ${frozen.moveId}`;
        if (ownTimeout) throw new SegmemError('TIMEOUT', `${msg} until the request timed out`);
        throw new SegmemError('UNAVAILABLE', `${msg} for ${timeoutMs} ms; retry`, {
          reason: 'FROZEN',
          slot: frozen.slot,
          moveId: frozen.moveId,
          waitedMs: timeoutMs,
        });
      }
      await this.wake(Math.min(left, FROZEN_RECHECK_MS));
      // The move may have ended by its switch (MOVED), or this member stopped leading.
      this.ctx.requireLeader();
      requireSlot(this.ctx.sm, name);
    }
  }

  private wake(ms: number): Promise<void> {
    const env = this.ctx.env;
    return new Promise<void>((resolve) => {
      const done = () => {
        this.woken.delete(done);
        env.clearTimeout(timer);
        resolve();
      };
      const timer = env.setTimeout(done, ms);
      this.woken.add(done);
    });
  }

  /** MOVE: one step of a move on this group (committed before it answers), then the group's move state. */
  async move(req: MoveRequest): Promise<MoveOk> {
    const { ctx } = this;
    ctx.requireLeader();
    const moveId = req.moveId!;
    let cmd: Command | null = null;
    switch (req.op) {
      case 'status':
        await ctx.log.readBarrier();
        return this.status(req.slots ?? null);
      case 'freeze':
        cmd = { op: 'moveFreeze', moveId, from: req.from!, to: req.to!, slots: req.slots! };
        break;
      case 'import':
        cmd = {
          op: 'moveImport',
          moveId,
          objects: req.objects ?? [],
          logs: req.logs ?? [],
          data: req.payload && req.payload.byteLength > 0 ? toBuffer(req.payload) : null,
        };
        break;
      case 'switch':
        cmd = { op: 'moveSwitch', moveId, table: req.table! };
        break;
      case 'abort':
        cmd = { op: 'moveAbort', moveId };
        break;
      case 'install':
        cmd = { op: 'slots', table: req.table! };
        break;
    }
    const admitted = req.op === 'import' ? this.admitImport(req) : null;
    try {
      unwrap((await ctx.propose(cmd)).result);
    } finally {
      admitted?.();
    }
    return this.status(null);
  }

  /** What an import grows the state by, admitted by the memory budget first (node/budget.ts). */
  private admitImport(req: MoveRequest): (() => void) | null {
    const { sm, budget } = this.ctx;
    let bytes = 0;
    for (const o of req.objects ?? []) bytes += objectHeldBytes(o.size, Math.ceil(o.size / sm.pageBytes));
    for (const l of req.logs ?? []) for (const n of l.sizes) bytes += n;
    return bytes > 0 ? budget.admitGrowth(bytes, `importing move ${req.moveId} (${bytes} bytes)`) : null;
  }

  /** The group's move state; counts over `slots`, or the slots of the move under way. */
  status(slots: SlotSpan[] | null): MoveOk {
    const sm = this.ctx.sm;
    const moves = sm.moveList();
    const spans = slots ?? moves[0]?.slots ?? [];
    let objectBytes = 0;
    const objects = spans.length > 0 ? sm.objectsInSlots(spans) : [];
    for (const o of objects) objectBytes += o.size;
    return {
      groupId: sm.group.id,
      tableVersion: sm.slotTable.version,
      freeBytes: sm.freePages * sm.pageBytes,
      moves,
      objects: objects.length,
      objectBytes,
      logs: spans.length > 0 ? sm.logsInSlots(spans).length : 0,
      busy: spans.length > 0 ? sm.busyInSlots(spans) : 0,
    };
  }

  /**
   * MOVE_READ: the next chunk of a frozen move's objects, then its logs' records, from `cursor`. The bytes
   * come by reference (object buffers, log chunks, which never change): the objects' buffers are pinned
   * until `sent` is called, so a write after an abort copies them instead of changing what is being sent.
   */
  async read(
    req: MoveReadRequest,
  ): Promise<{ body: Omit<MoveReadOk, 'payload'>; parts: Buffer[]; sent: () => void }> {
    const unpin: (() => void)[] = [];
    const sent = () => {
      for (const f of unpin) f();
    };
    try {
      const { body, parts } = await this.readChunk(req, unpin);
      return { body, parts, sent };
    } catch (err) {
      sent();
      throw err;
    }
  }

  private async readChunk(
    req: MoveReadRequest,
    unpin: (() => void)[],
  ): Promise<{ body: Omit<MoveReadOk, 'payload'>; parts: Buffer[] }> {
    const { ctx } = this;
    ctx.requireLeader();
    await ctx.log.readBarrier();
    const sm = ctx.sm;
    const move = sm.moveList().find((m) => m.id === req.moveId);
    if (move?.role !== 'source')
      throw new SegmemError('NOT_FOUND', `group ${sm.group.id} is not the source of a move ${req.moveId}`);
    const busy = sm.busyInSlots(move.slots);
    if (busy > 0) {
      throw new SegmemError(
        'UNAVAILABLE',
        `${busy} objects of move ${move.id} are still held or waited for; read again once they are given back`,
        { reason: 'BUSY', busy },
      );
    }
    const objects: MovedObjectInfo[] = [];
    const logs: MovedLogInfo[] = [];
    const parts: Buffer[] = [];
    let bytes = 0;
    const full = () => bytes >= req.maxBytes;
    let cursor: MoveCursor = req.cursor;
    if (cursor.phase === 'objects') {
      for (const o of sm.objectsInSlots(move.slots)) {
        if (cursor.after !== null && o.name <= cursor.after) continue;
        if (objects.length > 0 && bytes + (o.data ? o.size : 0) > req.maxBytes) break;
        objects.push({
          name: o.name,
          size: o.size,
          version: o.version,
          lastToken: o.lastToken,
          written: o.data !== null,
        });
        if (o.data) {
          unpin.push(sm.pinData(o.data));
          parts.push(o.data);
          bytes += o.size;
        }
        cursor = { phase: 'objects', after: o.name, from: 0 };
      }
      if (objects.length > 0 && !this.objectsDone(move.slots, cursor.after))
        return { body: { objects, logs, next: cursor }, parts };
      cursor = { phase: 'logs', after: null, from: 0 };
    }
    const names = sm.logsInSlots(move.slots).filter((n) => cursor.after === null || n >= cursor.after);
    for (const name of names) {
      if (full()) return { body: { objects, logs, next: { phase: 'logs', after: name, from: 0 } }, parts };
      const size = sm.logSize(name)!;
      const r = sm.readLog(
        name,
        name === cursor.after ? cursor.from : null,
        req.maxBytes - bytes,
        MAX_LOG_BATCH_RECORDS,
      );
      if (!r.ok) throw new SegmemError(r.code, r.message);
      const read = r.read;
      logs.push({ name, maxBytes: size.maxBytes, first: read.from, sizes: read.sizes });
      for (const p of read.parts) parts.push(p);
      for (const n of read.sizes) bytes += n;
      const nextSeq = read.from + read.sizes.length;
      if (nextSeq < read.next)
        return { body: { objects, logs, next: { phase: 'logs', after: name, from: nextSeq } }, parts };
    }
    return { body: { objects, logs, next: null }, parts };
  }

  private objectsDone(spans: SlotSpan[], after: string | null): boolean {
    const all = this.ctx.sm.objectsInSlots(spans);
    return after !== null && (all.length === 0 || all.at(-1)!.name <= after);
  }
}
