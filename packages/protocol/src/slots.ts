/**
 * Hash slots: where an object or shared log lives in a cluster of several shard groups.
 *
 * A name hashes to one of {@link SLOT_COUNT} slots (CRC16/XMODEM of its UTF-8 bytes, as Redis Cluster
 * does, hash tags included); a {@link SlotTable} says which group owns each slot and which servers serve
 * each group. The table is versioned: a newer one (a higher version) replaces an older one wherever both
 * are seen, so a client keeps the newest table any server told it of.
 */
import { invalidArgument } from './errors.js';
import { MAX_GROUP_MEMBERS, MAX_SLOT_GROUPS } from './limits.js';
import { arrayField, describeValue, mapField, parseHostPort, uintField } from './validate.js';

/** How many hash slots a cluster has (Redis Cluster's number). */
export const SLOT_COUNT = 16384;

/** `[first, last, group]`: slots first..last (inclusive) belong to group `group`. */
export type SlotRange = [first: number, last: number, group: number];

/**
 * A shard group as a slot table lists it: its id and its servers, `[serverId, host:port]` (none where the
 * table does not say: a client then uses the addresses it was given).
 */
export interface SlotGroup {
  id: number;
  members: [serverId: string, address: string][];
}

/**
 * Which group owns each slot. `ranges` are sorted and cover 0..SLOT_COUNT-1 exactly, without gap or
 * overlap; every group a range names is in `groups`.
 */
export interface SlotTable {
  /** >= 1; grows with every change of the table. */
  version: number;
  ranges: SlotRange[];
  groups: SlotGroup[];
}

/** CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection), by table. */
const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let bit = 0; bit < 8; bit++)
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    t[i] = crc;
  }
  return t;
})();

/** CRC16/XMODEM of `bytes[start..end)`: the checksum Redis Cluster hashes keys with. */
export function crc16(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0;
  for (let i = start; i < end; i++)
    crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ bytes[i]!) & 0xff]!;
  return crc;
}

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

/**
 * The hash slot of an object or log name: CRC16/XMODEM of its UTF-8 bytes mod SLOT_COUNT. When the name has
 * a `{` and, after it, a `}` with at least one byte between them, only the bytes between the first `{` and
 * the first `}` after it are hashed, so `user{42}/a` and `user{42}/b` share a slot (Redis's hash tags).
 *
 * @example
 * ```ts
 * slotOf('user{42}/a') === slotOf('user{42}/b'); // true
 * ```
 */
export function slotOf(name: string): number {
  // Servers hash the name of every request twice (before proposing, and in apply): names fit the scratch
  // buffer (UTF-8 takes at most 3 bytes per UTF-16 unit), so no allocation per request.
  let bytes: Uint8Array = slotScratch;
  let length: number;
  if (name.length * 3 <= slotScratch.length) length = slotScratch.write(name, 'utf8');
  else {
    bytes = Buffer.from(name, 'utf8');
    length = bytes.length;
  }
  const open = bytes.indexOf(OPEN_BRACE);
  if (open >= 0 && open < length) {
    for (let close = open + 1; close < length; close++) {
      if (bytes[close] !== CLOSE_BRACE) continue;
      if (close > open + 1) return crc16(bytes, open + 1, close) % SLOT_COUNT;
      break;
    }
  }
  return crc16(bytes, 0, length) % SLOT_COUNT;
}

/** Names are at most 255 bytes of UTF-8; longer strings (refused elsewhere) are encoded on their own. */
const slotScratch = Buffer.allocUnsafe(1024);

/** The largest group id: frames carry it in 16 bits. */
const MAX_GROUP_ID = 0xffff;

/** Server ids as segmem writes them: 1..64 characters of [A-Za-z0-9._-]. */
const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

function slotTableError(message: string, field: string): never {
  throw invalidArgument(`slot table: ${message}`, { field, reason: 'BAD_SLOT_TABLE' });
}

/** A group of a table; `seen` holds the server ids of the groups before it (a server serves one group). */
function validateSlotGroup(value: unknown, field: string, seen: Set<string>): SlotGroup {
  const g = mapField(value, field);
  const id = uintField(g.id, `${field}.id`, 0, MAX_GROUP_ID);
  const list = arrayField(g.members, `${field}.members`);
  if (list.length > MAX_GROUP_MEMBERS) {
    slotTableError(
      `${field}.members must list at most ${MAX_GROUP_MEMBERS} servers; got ${list.length}`,
      `${field}.members`,
    );
  }
  const members = list.map((m, i) => {
    const at = `${field}.members[${i}]`;
    if (!Array.isArray(m) || m.length !== 2) slotTableError(`${at} must be [serverId, host:port]`, at);
    const [serverId, address] = m as unknown[];
    if (typeof serverId !== 'string' || !SERVER_ID.test(serverId)) {
      slotTableError(
        `${at} server id must be 1..64 characters of [A-Za-z0-9._-]; got ${describeValue(serverId)}`,
        at,
      );
    }
    if (seen.has(serverId)) slotTableError(`${at} lists server ${serverId} a second time`, at);
    seen.add(serverId);
    if (typeof address !== 'string' || address.length > 261)
      slotTableError(`${at} address must be host:port; got ${describeValue(address)}`, at);
    parseHostPort(address, `slot table: ${at} address`);
    return [serverId, address] as [string, string];
  });
  return { id, members };
}

/**
 * Checks a slot table (from the wire, a config file or a command) and returns a fresh copy holding only its
 * fields. INVALID_ARGUMENT (details `{ field, reason: 'BAD_SLOT_TABLE' }`) naming what is wrong: a version
 * that is not a positive integer, a group listed twice, a server listed twice (in one group or two), a range out of order,
 * overlapping another, leaving a gap, or naming a group the table does not list.
 *
 * @example
 * ```ts
 * const table = validateSlotTable(JSON.parse(text));
 * ```
 */
export function validateSlotTable(value: unknown): SlotTable {
  const t = mapField(value, 'slot table');
  const version = uintField(t.version, 'slot table version', 1);
  const groupList = arrayField(t.groups, 'slot table groups');
  if (groupList.length < 1 || groupList.length > MAX_SLOT_GROUPS)
    slotTableError(`groups must list 1..${MAX_SLOT_GROUPS} groups; got ${groupList.length}`, 'groups');
  const servers = new Set<string>();
  const groups = groupList.map((g, i) => validateSlotGroup(g, `groups[${i}]`, servers));
  const groupIds = new Set<number>();
  for (const [i, g] of groups.entries()) {
    if (groupIds.has(g.id)) slotTableError(`groups[${i}] lists group ${g.id} a second time`, `groups[${i}]`);
    groupIds.add(g.id);
  }
  const rangeList = arrayField(t.ranges, 'slot table ranges');
  if (rangeList.length < 1 || rangeList.length > SLOT_COUNT)
    slotTableError(`ranges must list 1..${SLOT_COUNT} ranges; got ${rangeList.length}`, 'ranges');
  const ranges: SlotRange[] = rangeList.map((r, i) => {
    const at = `ranges[${i}]`;
    if (!Array.isArray(r) || r.length !== 3) slotTableError(`${at} must be [first, last, group]`, at);
    const first = uintField(r[0], `slot table ${at} first`, 0, SLOT_COUNT - 1);
    const last = uintField(r[1], `slot table ${at} last`, 0, SLOT_COUNT - 1);
    const group = uintField(r[2], `slot table ${at} group`, 0, MAX_GROUP_ID);
    if (last < first) slotTableError(`${at} ends (${last}) before it starts (${first})`, at);
    if (!groupIds.has(group)) slotTableError(`${at} names group ${group}, which groups does not list`, at);
    if (i > 0 && first < (rangeList[i - 1] as number[])[0]!)
      slotTableError(`${at} (from slot ${first}) is out of order: ranges must be sorted by first slot`, at);
    return [first, last, group];
  });
  // Sorted: each range must start right after the one before it.
  let next = 0;
  for (const [i, [first, last]] of ranges.entries()) {
    const at = `ranges[${i}]`;
    if (first < next)
      slotTableError(`${at} overlaps the range before it: slots ${first}..${Math.min(last, next - 1)}`, at);
    if (first > next)
      slotTableError(`slots ${next}..${first - 1} belong to no group (a gap before ${at})`, at);
    next = last + 1;
  }
  if (next !== SLOT_COUNT)
    slotTableError(`slots ${next}..${SLOT_COUNT - 1} belong to no group (a gap at the end)`, 'ranges');
  return { version, ranges, groups };
}

/**
 * The group that owns `slot` in a valid table (binary search over the sorted ranges).
 *
 * @example
 * ```ts
 * ownerOf(table, slotOf('jobs/queue')); // e.g. 1
 * ```
 */
export function ownerOf(table: SlotTable, slot: number): number {
  const ranges = table.ranges;
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ranges[mid]![0] <= slot) lo = mid;
    else hi = mid - 1;
  }
  const r = ranges[lo]!;
  if (slot < r[0] || slot > r[1]) throw invalidArgument(`slot must be 0..${SLOT_COUNT - 1}; got ${slot}`);
  return r[2];
}

/**
 * The first table of a cluster of `groups`: version 1, the slots split into contiguous ranges of nearly
 * equal size (they differ by at most one slot), given to the groups in order of their ids. One group owns
 * every slot.
 *
 * @example
 * ```ts
 * initialSlotTable([{ id: 0, members: [['s1', '127.0.0.1:7401']] }]).ranges; // [[0, 16383, 0]]
 * ```
 */
export function initialSlotTable(groups: readonly SlotGroup[]): SlotTable {
  const sorted = [...groups]
    .map((g) => ({ id: g.id, members: g.members.map(([id, address]) => [id, address] as [string, string]) }))
    .sort((a, b) => a.id - b.id);
  const n = sorted.length;
  const ranges: SlotRange[] = sorted.map((g, i) => [
    Math.floor((i * SLOT_COUNT) / n),
    Math.floor(((i + 1) * SLOT_COUNT) / n) - 1,
    g.id,
  ]);
  return validateSlotTable({ version: 1, ranges, groups: sorted });
}

/**
 * The table in which one group (default 0, the group of a cluster configured without groups) owns every
 * slot: what a server started without a slot table uses, so it serves every name. It lists no servers: a
 * client of such a group reaches it at the addresses it was given.
 */
export function singleGroupSlotTable(groupId = 0): SlotTable {
  return { version: 1, ranges: [[0, SLOT_COUNT - 1, groupId]], groups: [{ id: groupId, members: [] }] };
}
