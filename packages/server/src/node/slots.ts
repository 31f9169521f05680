/**
 * MOVED redirects: a request naming an object or log whose hash slot another shard group owns is answered
 * with where the slot lives and the whole slot table, so the client can route this and later requests.
 */
import { SegmemError, type SlotTable } from '@segmem/protocol';
import { movedError, type StateMachine } from '../core/state-machine.js';

/** The table as an error's details carry it (a copy: the details are encoded later). */
function tableDetails(table: SlotTable): SlotTable {
  return { version: table.version, ranges: table.ranges, groups: table.groups };
}

/** Throws the MOVED redirect, with the table, when this group does not own `name`'s slot. */
export function requireSlot(sm: StateMachine, name: string): void {
  const move = sm.slotMove(name);
  if (!move) return;
  const err = movedError(name, move);
  throw new SegmemError(err.code, err.message, { ...err.details, table: tableDetails(sm.slotTable) });
}

/** A MOVED refusal from the state machine (the table changed after the node's check) gains the table. */
export function withSlotTable(err: unknown, sm: StateMachine): unknown {
  if (!SegmemError.is(err, 'UNAVAILABLE') || err.details?.reason !== 'MOVED' || err.details.table) return err;
  return new SegmemError(err.code, err.message, { ...err.details, table: tableDetails(sm.slotTable) });
}
