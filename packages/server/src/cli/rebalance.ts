/**
 * The driver of slot moves between shard groups (`segmem cluster rebalance`, `move-slots`): it reads every
 * group's move state, finishes a move an earlier run left (or rolls it back when the target never took it),
 * then moves slots group pair by group pair: freeze in the source and the target, wait until the source holds
 * no grant in the slots, copy their objects and logs in bounded chunks, then install the new slot table in
 * the target, the source, and every other group. Every step is idempotent by move id, so a crash of the
 * driver or of a leader is mended by running it again.
 */
import { randomBytes } from 'node:crypto';
import {
  type MoveInfo,
  type MoveOk,
  type MoveReadOk,
  type MoveRequest,
  SegmemError,
  SLOT_COUNT,
  type SlotTable,
} from '@segmem/protocol';
import { type AdminOptions, AdminSession } from './admin-client.js';
import { formatBytes } from './common.js';

/** Bytes one MOVE_READ asks for (an object larger than this still comes whole, alone). */
export const COPY_CHUNK_BYTES = 8 * 1024 * 1024;
/** How long the driver waits, by default, for the source's holders to give the frozen objects back. */
export const DRAIN_WAIT_MS = 60_000;
const DRAIN_POLL_MS = 50;

/** For tests: stop after this step (the move stays half done, as a crash would leave it). */
export type StopAfter = 'freeze' | 'copy' | 'target-switch' | null;

export interface GroupEndpoint {
  id: number;
  session: AdminSession;
}

export interface MovePlan {
  from: number;
  to: number;
  slots: [number, number][];
}

export interface DriverOptions {
  report: (line: string) => void;
  stopAfter: StopAfter;
  drainWaitMs: number;
}

/** A session per group, each on its leader (found from the group's members). */
export function groupSessions(
  groups: { id: number; members: string[] }[],
  base: AdminOptions,
): GroupEndpoint[] {
  return groups.map((g) => ({ id: g.id, session: new AdminSession({ ...base, servers: g.members }) }));
}

export class Rebalancer {
  private readonly byId: Map<number, GroupEndpoint>;
  /** What this run moved, resumed moves included. */
  readonly moved = { objects: 0, bytes: 0, slots: 0 };

  constructor(
    private readonly groups: GroupEndpoint[],
    private readonly opts: DriverOptions,
  ) {
    this.byId = new Map(groups.map((g) => [g.id, g]));
  }

  private group(id: number): GroupEndpoint {
    const g = this.byId.get(id);
    if (!g) throw new SegmemError('INVALID_ARGUMENT', `group ${id} is not in the config file`);
    return g;
  }

  private call(id: number, req: MoveRequest): Promise<MoveOk> {
    return this.group(id).session.call(req);
  }

  status(id: number, slots?: [number, number][]): Promise<MoveOk> {
    return this.call(id, { type: 'MOVE', op: 'status', moveId: null, ...(slots ? { slots } : {}) });
  }

  /** The newest slot table any group holds (each group's leader asked). */
  async newestTable(): Promise<SlotTable> {
    let best: SlotTable | null = null;
    for (const g of this.groups) {
      const r = await g.session.call({ type: 'SLOTS' });
      if (!best || r.table.version > best.version) best = r.table;
    }
    return best!;
  }

  /**
   * Finishes or rolls back what an earlier run left: a move the target switched is finished in the source;
   * a move frozen in the source is copied and switched; a move only the target knows is aborted there.
   * Then every group gets the newest table.
   */
  async resume(): Promise<void> {
    const states = new Map<number, MoveOk>();
    for (const g of this.groups) states.set(g.id, await this.status(g.id));
    const moves = new Map<string, MoveInfo>();
    for (const s of states.values()) for (const m of s.moves) moves.set(m.id, m);
    for (const m of moves.values()) {
      const source = states.get(m.from)?.moves.find((x) => x.id === m.id);
      const target = states.get(m.to)?.moves.find((x) => x.id === m.id);
      const table = await this.newestTable();
      const switched = slotsOwnedBy(table, m.slots, m.to);
      if (source && switched) {
        this.opts.report(
          `move ${m.id}: group ${m.to} took slots ${spansText(m.slots)}; finishing in group ${m.from}`,
        );
        await this.switchGroup(m.from, m.id, table);
      } else if (source) {
        this.opts.report(`move ${m.id}: resuming (slots ${spansText(m.slots)}, group ${m.from} -> ${m.to})`);
        await this.runMove({ from: m.from, to: m.to, slots: m.slots }, m.id);
      } else if (target && !switched) {
        this.opts.report(`move ${m.id}: group ${m.from} holds no freeze; rolling back group ${m.to}`);
        await this.abortGroup(m.to, m.id);
      } else if (target) {
        await this.switchGroup(m.to, m.id, table);
      }
    }
    await this.spreadTable(await this.newestTable());
  }

  /** Installs `table` in every group holding an older one. */
  async spreadTable(table: SlotTable): Promise<void> {
    for (const g of this.groups) {
      const s = await this.status(g.id);
      if (s.tableVersion >= table.version) continue;
      await this.tolerant(
        g.id,
        () => this.call(g.id, { type: 'MOVE', op: 'install', moveId: null, table }),
        table.version,
      );
    }
  }

  /** Runs every move of `plans`, one after the other. */
  async runAll(plans: MovePlan[]): Promise<void> {
    for (const plan of plans) await this.runMove(plan, newMoveId());
  }

  /** One move, from its freeze (again, harmlessly, when resumed) to the table in every group. */
  async runMove(plan: MovePlan, moveId: string): Promise<{ objects: number; bytes: number }> {
    const { from, to, slots } = plan;
    const { report, stopAfter } = this.opts;
    const label = `move ${moveId} (slots ${spansText(slots)}, group ${from} -> ${to})`;
    const source = await this.status(from, slots);
    const target = await this.status(to);
    const frozenAlready = source.moves.some((m) => m.id === moveId);
    // Nothing changes when the target cannot take the objects (the import checks again, extent by extent).
    if (!frozenAlready && source.objectBytes > target.freeBytes) {
      throw new SegmemError(
        'NO_SPACE',
        `group ${to} has ${formatBytes(target.freeBytes)} free; the ${source.objects} objects of slots ${spansText(slots)} in group ${from} take ${formatBytes(source.objectBytes)}: nothing was moved`,
        { group: to },
      );
    }
    const freeze: MoveRequest = { type: 'MOVE', op: 'freeze', moveId, from, to, slots };
    await this.call(from, freeze);
    await this.call(to, freeze);
    report(`${label}: frozen`);
    if (stopAfter === 'freeze') throw stopped('freeze');
    await this.drain(from, moveId, slots);
    const started = Date.now();
    let copied: { objects: number; bytes: number };
    try {
      copied = await this.copy(from, to, moveId, (objects, bytes) => {
        const s = Math.max(0.001, (Date.now() - started) / 1000);
        report(
          `${label}: copied ${objects} objects, ${formatBytes(bytes)} (${(bytes / 1048576 / s).toFixed(1)} MiB/s)`,
        );
      });
    } catch (err) {
      if (SegmemError.is(err, 'NO_SPACE')) {
        await this.abortGroup(to, moveId);
        await this.abortGroup(from, moveId);
        throw new SegmemError(
          'NO_SPACE',
          `${err.message}: move ${moveId} was rolled back, nothing was moved`,
          {
            group: to,
          },
        );
      }
      throw err;
    }
    if (stopAfter === 'copy') throw stopped('copy');
    const current = await this.newestTable();
    const table = withSlots(current, slots, to);
    await this.switchGroup(to, moveId, table);
    if (stopAfter === 'target-switch') throw stopped('target-switch');
    await this.switchGroup(from, moveId, table);
    await this.spreadTable(table);
    this.moved.objects += copied.objects;
    this.moved.bytes += copied.bytes;
    this.moved.slots += spanCount(slots);
    const s = Math.max(0.001, (Date.now() - started) / 1000);
    report(
      `${label}: done, ${copied.objects} objects, ${formatBytes(copied.bytes)} in ${s.toFixed(1)} s (${(copied.bytes / 1048576 / s).toFixed(1)} MiB/s); slot table version ${table.version}`,
    );
    return copied;
  }

  /** Waits until the source holds no grant and no waiter in the slots (frozen holders finish and give back). */
  private async drain(from: number, moveId: string, slots: [number, number][]): Promise<void> {
    const deadline = Date.now() + this.opts.drainWaitMs;
    for (;;) {
      const s = await this.status(from, slots);
      if (s.busy === 0) return;
      if (Date.now() >= deadline) {
        throw new SegmemError(
          'TIMEOUT',
          `move ${moveId}: ${s.busy} objects of group ${from} were still held after ${this.opts.drainWaitMs} ms; run the command again to go on, or let it roll back`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
  }

  private async copy(
    from: number,
    to: number,
    moveId: string,
    progress: (objects: number, bytes: number) => void,
  ): Promise<{ objects: number; bytes: number }> {
    let cursor: { phase: 'objects' | 'logs'; after: string | null; from: number } | null = {
      phase: 'objects',
      after: null,
      from: 0,
    };
    let objects = 0;
    let bytes = 0;
    while (cursor) {
      const chunk: MoveReadOk = await this.group(from).session.call({
        type: 'MOVE_READ',
        moveId,
        cursor,
        maxBytes: COPY_CHUNK_BYTES,
      });
      if (chunk.objects.length > 0 || chunk.logs.length > 0) {
        await this.call(to, {
          type: 'MOVE',
          op: 'import',
          moveId,
          objects: chunk.objects,
          logs: chunk.logs,
          payload: chunk.payload,
        });
      }
      objects += chunk.objects.length;
      bytes += chunk.payload.byteLength;
      progress(objects, bytes);
      cursor = chunk.next;
    }
    return { objects, bytes };
  }

  /** The switch in one group; an answer lost on the way is checked against the group's state. */
  private switchGroup(id: number, moveId: string, table: SlotTable): Promise<unknown> {
    return this.tolerant(
      id,
      () => this.call(id, { type: 'MOVE', op: 'switch', moveId, table }),
      table.version,
    );
  }

  private async abortGroup(id: number, moveId: string): Promise<void> {
    try {
      await this.call(id, { type: 'MOVE', op: 'abort', moveId });
    } catch (err) {
      // Aborted by an earlier attempt whose answer was lost.
      if (!SegmemError.is(err, 'NOT_FOUND')) throw err;
    }
  }

  /** Runs a table change; refused because the group holds that version already: it was done. */
  private async tolerant(id: number, change: () => Promise<unknown>, version: number): Promise<unknown> {
    try {
      return await change();
    } catch (err) {
      if (!SegmemError.is(err, 'INVALID_ARGUMENT') && !SegmemError.is(err, 'NOT_FOUND')) throw err;
      const s = await this.status(id);
      if (s.tableVersion >= version) return s;
      throw err;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.groups.map((g) => g.session.close()));
  }
}

function stopped(step: string): SegmemError {
  return new SegmemError('ABORTED', `stopped after the ${step} step (SEGMEM_REBALANCE_STOP_AFTER)`, {
    reason: 'STOPPED',
  });
}

export function newMoveId(): string {
  return `m-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

/** Whether `table` gives every slot of `spans` to `group`. */
export function slotsOwnedBy(table: SlotTable, spans: [number, number][], group: number): boolean {
  for (const [first, last] of spans)
    for (const [rf, rl, g] of table.ranges) if (rl >= first && rf <= last && g !== group) return false;
  return true;
}

/** `table` with `spans` given to `group`, one version newer. */
export function withSlots(table: SlotTable, spans: [number, number][], group: number): SlotTable {
  const owner = ownerArray(table);
  for (const [first, last] of spans) owner.fill(group, first, last + 1);
  return { version: table.version + 1, ranges: rangesOf(owner), groups: table.groups };
}

function ownerArray(table: SlotTable): Int32Array {
  const owner = new Int32Array(SLOT_COUNT);
  for (const [first, last, g] of table.ranges) owner.fill(g, first, last + 1);
  return owner;
}

function rangesOf(owner: Int32Array): [number, number, number][] {
  const ranges: [number, number, number][] = [];
  for (let s = 0; s < SLOT_COUNT; s++) {
    const last = ranges.at(-1);
    if (last && last[2] === owner[s] && last[1] === s - 1) last[1] = s;
    else ranges.push([s, s, owner[s]!]);
  }
  return ranges;
}

/**
 * The moves that take `table` to an even spread over `groupIds`: contiguous runs of nearly equal size (as a
 * new cluster's table), in order of group id; each move is the slots one group gives one other group.
 */
export function evenSpreadPlans(table: SlotTable, groupIds: number[]): MovePlan[] {
  const ids = [...groupIds].sort((a, b) => a - b);
  const owner = ownerArray(table);
  const byPair = new Map<string, MovePlan>();
  for (let i = 0; i < ids.length; i++) {
    const first = Math.floor((i * SLOT_COUNT) / ids.length);
    const end = Math.floor(((i + 1) * SLOT_COUNT) / ids.length);
    for (let s = first; s < end; s++) {
      const from = owner[s]!;
      if (from === ids[i]) continue;
      const key = `${from}>${ids[i]}`;
      let plan = byPair.get(key);
      if (!plan) byPair.set(key, (plan = { from, to: ids[i]!, slots: [] }));
      const last = plan.slots.at(-1);
      if (last && last[1] === s - 1) last[1] = s;
      else plan.slots.push([s, s]);
    }
  }
  return [...byPair.values()];
}

/** The moves that take every slot of `group` to the other groups, spread evenly over them. */
export function drainPlans(table: SlotTable, group: number, others: number[]): MovePlan[] {
  if (others.length === 0) throw new SegmemError('INVALID_ARGUMENT', `group ${group} is the only group`);
  const owned: number[] = [];
  for (const [first, last, g] of table.ranges)
    if (g === group) for (let s = first; s <= last; s++) owned.push(s);
  const plans = new Map<number, MovePlan>();
  owned.forEach((s, i) => {
    const to = others[Math.floor((i * others.length) / owned.length)]!;
    let plan = plans.get(to);
    if (!plan) plans.set(to, (plan = { from: group, to, slots: [] }));
    const last = plan.slots.at(-1);
    if (last && last[1] === s - 1) last[1] = s;
    else plan.slots.push([s, s]);
  });
  return [...plans.values()];
}

export function spanCount(spans: [number, number][]): number {
  let n = 0;
  for (const [f, l] of spans) n += l - f + 1;
  return n;
}

export function spansText(spans: [number, number][]): string {
  const text = spans.map(([f, l]) => (f === l ? `${f}` : `${f}-${l}`));
  return text.length > 4 ? `${text.slice(0, 3).join(',')},... (${spanCount(spans)} slots)` : text.join(',');
}
