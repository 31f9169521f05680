/**
 * Slot moves as a group's replicated state records them: a move of a set of hash slots from one shard group
 * (the source, which freezes them) to another (the target, which imports their objects and logs), until the
 * new slot table is installed or the move is aborted. Pure: the checks and the snapshot form.
 */
import { invalidArgument, SLOT_COUNT, type SlotTable } from '@segmem/protocol';

/** `[first, last]`: slots first..last, inclusive. */
export type SlotSpan = [first: number, last: number];

export interface MoveState {
  readonly id: string;
  /** What this group does in the move. */
  readonly role: 'source' | 'target';
  readonly from: number;
  readonly to: number;
  /** Sorted, disjoint, not adjacent. */
  readonly slots: SlotSpan[];
  /** Target only: names of the objects and logs this move imported (dropped again by an abort). */
  readonly imported: Set<string>;
}

/** An object as a move copies it: its bytes follow in the command's data when `written`. */
export interface MovedObject {
  name: string;
  size: number;
  version: number;
  /** The source's last fencing token: the target hands out only tokens above it. */
  lastToken: number;
  written: boolean;
}

/** A piece of a shared log as a move copies it: records first.. (their bytes follow the objects' in the data). */
export interface MovedLog {
  name: string;
  maxBytes: number;
  first: number;
  sizes: number[];
}

/** Move ids: 1..64 characters of [A-Za-z0-9._-] (the driver picks one per move). */
const MOVE_ID = /^[A-Za-z0-9._-]{1,64}$/;

export function validateMoveId(value: unknown): string {
  if (typeof value !== 'string' || !MOVE_ID.test(value))
    throw invalidArgument('move id must be 1..64 characters of [A-Za-z0-9._-]', { field: 'moveId' });
  return value;
}

/** Checks slot spans (sorted, disjoint, within 0..SLOT_COUNT-1, at least one) and returns them merged. */
export function validateSlotSpans(value: unknown): SlotSpan[] {
  if (!Array.isArray(value) || value.length < 1 || value.length > SLOT_COUNT)
    throw invalidArgument(`slots must list 1..${SLOT_COUNT} [first, last] spans`, { field: 'slots' });
  const out: SlotSpan[] = [];
  let next = 0;
  for (const [i, span] of value.entries()) {
    const [first, last] = Array.isArray(span) ? (span as unknown[]) : [];
    if (
      !Number.isInteger(first) ||
      !Number.isInteger(last) ||
      (first as number) < next ||
      (last as number) < (first as number) ||
      (last as number) >= SLOT_COUNT
    ) {
      throw invalidArgument(
        `slots[${i}] must be [first, last] within 0..${SLOT_COUNT - 1}, sorted and not overlapping the span before it`,
        { field: `slots[${i}]` },
      );
    }
    const prev = out.at(-1);
    if (prev && prev[1] + 1 === first) prev[1] = last as number;
    else out.push([first as number, last as number]);
    next = (last as number) + 1;
  }
  return out;
}

/** Whether `slot` is in the sorted spans (binary search). */
export function spansHold(spans: readonly SlotSpan[], slot: number): boolean {
  let lo = 0;
  let hi = spans.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [first, last] = spans[mid]!;
    if (slot < first) hi = mid - 1;
    else if (slot > last) lo = mid + 1;
    else return true;
  }
  return false;
}

/** The first slot of `spans` that `table` does not give to `group`, or -1 when it gives them all. */
export function slotNotOwned(table: SlotTable, spans: readonly SlotSpan[], group: number): number {
  for (const [first, last] of spans) {
    for (const [rf, rl, g] of table.ranges) {
      if (rl < first || rf > last || g === group) continue;
      return Math.max(rf, first);
    }
  }
  return -1;
}

export function sameSpans(a: readonly SlotSpan[], b: readonly SlotSpan[]): boolean {
  return a.length === b.length && a.every(([f, l], i) => b[i]![0] === f && b[i]![1] === l);
}

/** A move as its snapshot entry: `[id, role, from, to, slots, imported names (sorted)]`. */
export function moveEntry(m: MoveState): unknown[] {
  return [m.id, m.role, m.from, m.to, m.slots, [...m.imported].sort()];
}

/** A move read back from {@link moveEntry}'s form; throws on anything else. */
export function moveFromEntry(entry: unknown): MoveState {
  const [id, role, from, to, slots, imported] = Array.isArray(entry) ? (entry as unknown[]) : [];
  if (role !== 'source' && role !== 'target') throw new Error('a move role must be source or target');
  if (!Number.isInteger(from) || !Number.isInteger(to) || from === to)
    throw new Error('a move must name two different groups');
  if (!Array.isArray(imported) || !imported.every((n) => typeof n === 'string'))
    throw new Error('a move must list the names it imported');
  return {
    id: validateMoveId(id),
    role,
    from: from as number,
    to: to as number,
    slots: validateSlotSpans(slots),
    imported: new Set(imported as string[]),
  };
}
