/**
 * Which shard group serves a name: the newest slot table the client has seen (from SLOTS, or from a MOVED
 * redirect), and the group that owns each name's hash slot. Pure: it keeps the table; connecting to the
 * group's servers is the caller's business.
 */
import {
  ownerOf,
  SegmemError,
  type SlotTable,
  singleGroupSlotTable,
  slotOf,
  validateSlotTable,
} from '@segmem/protocol';

/** Where a name lives: its slot, the group owning it, and that group's servers as the table lists them. */
export interface Route {
  slot: number;
  group: number;
  /** `[serverId, host:port]` of the group's servers; empty when the table lists none (a single group). */
  members: [serverId: string, address: string][];
}

export class SlotRouter {
  private current: SlotTable;

  /** Starts from `table` (validated), or from a single group (0) owning every slot, version 1. */
  constructor(table?: SlotTable) {
    this.current = table === undefined ? singleGroupSlotTable() : validateSlotTable(table);
  }

  /** The newest table seen. */
  get table(): SlotTable {
    return this.current;
  }

  /**
   * Keeps `table` if its version is above the one held; a table with a lower or equal version never
   * replaces a newer one. Returns whether it was kept. INVALID_ARGUMENT for a table that is not valid.
   */
  learn(table: unknown): boolean {
    const checked = validateSlotTable(table);
    if (checked.version <= this.current.version) return false;
    this.current = checked;
    return true;
  }

  /** The group that owns `name`'s slot in the newest table (no allocation: the hot path of every acquire). */
  groupOf(name: string): number {
    return ownerOf(this.current, slotOf(name));
  }

  /** The group that owns `name`'s slot in the newest table, with its servers. */
  route(name: string): Route {
    const slot = slotOf(name);
    const group = ownerOf(this.current, slot);
    const members = this.current.groups.find((g) => g.id === group)?.members ?? [];
    return { slot, group, members: members.map(([id, address]) => [id, address]) };
  }

  /**
   * Takes the slot table out of a MOVED redirect (UNAVAILABLE, details `{ reason: 'MOVED', ..., table }`)
   * and learns it. Returns the table the redirect carried, or null when `err` is not a MOVED redirect.
   * PROTOCOL when a redirect carries no table or a bad one: a server's answer is never trusted blindly.
   */
  fromRedirect(err: unknown): SlotTable | null {
    if (!SegmemError.is(err, 'UNAVAILABLE') || err.details?.reason !== 'MOVED') return null;
    let table: SlotTable;
    try {
      table = validateSlotTable(err.details.table);
    } catch (bad) {
      throw new SegmemError(
        'PROTOCOL',
        `a MOVED redirect carried a bad slot table: ${(bad as Error).message}`,
        undefined,
        { cause: bad },
      );
    }
    this.learn(table);
    return table;
  }
}
