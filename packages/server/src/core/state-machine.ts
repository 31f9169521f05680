/**
 * The segment's replicated state machine: directory of names, page allocator, object bytes with
 * per-page versions, reader/writer locks with FIFO queues and fencing tokens, sessions and
 * exactly-once deduplication of retried commands.
 *
 * Pure: no clock, timers, I/O or randomness. Time-dependent decisions (session expiry, acquire
 * timeouts) are made by the shell and arrive here as commands, so every replica that applies the
 * same log reaches the same state.
 */

import { createHash } from 'node:crypto';
import {
  type AccessRight,
  type AclRule,
  type CancelReason,
  type ErrorCode,
  MAX_OBJECT_BYTES,
  MAX_RULES_PER_USER,
  MAX_USERS,
  ownerOf,
  type PasswordHash,
  SegmemError,
  SLOT_COUNT,
  type SlotTable,
  singleGroupSlotTable,
  slotOf,
  type UserInfo,
  validateAclPrefix,
  validatePasswordHash,
  validateRight,
  validateSlotTable,
  validateStoredName,
  validateUserName,
} from '@segmem/protocol';
import { Packr } from 'msgpackr';
import { PageAllocator } from './allocator.js';
import type { Command, Effect, Grant, LockMode, ObjectRecord, Outcome, Result } from './commands.js';
import { badSnapshot, checkContent, checkGeometry, checkObjectSize } from './content-check.js';
import { type GroupRange, groupRangeProblem, sameGroupRange, wholeSegment } from './group-range.js';
import {
  type MovedLog,
  type MovedObject,
  type MoveState,
  moveEntry,
  moveFromEntry,
  type SlotSpan,
  sameSpans,
  slotNotOwned,
  spansHold,
  validateMoveId,
  validateSlotSpans,
} from './moves.js';
import { type LogRead, SharedLogs } from './shared-logs.js';
import { findCycle, type WaitEdge } from './wait-for.js';

/** How many recent results each session keeps for answering retried commands. */
export const DEDUP_WINDOW = 1024;

/** What a queued request waits to do: take a lock, or delete the object (which waits like a writer). */
type WaitMode = LockMode | 'delete';

/** How far one deadlock search has read an object's queue (see StateMachine.waitEdges). */
interface QueueScan {
  /** Each waiter's position, by `${sessionId}:${seq}`. */
  readonly positions: Map<string, number>;
  /** Every wait before this position was followed (for a write or delete waiter). */
  all: number;
  /** Every conflicting wait of a read waiter (writes and deletes) before this position was followed. */
  writes: number;
  /** The holders were followed for these waiter kinds ('write' covers 'read'). */
  readonly holders: Set<'read' | 'write'>;
}

interface Waiter {
  sessionId: number;
  seq: number;
  mode: WaitMode;
}

interface Hold {
  mode: LockMode;
  /** One token per grant held (a session may hold several read grants of one object). */
  tokens: number[];
}

export interface SegmentObject {
  readonly id: number;
  readonly name: string;
  readonly size: number;
  readonly firstPage: number;
  readonly pageCount: number;
  /** Byte offset of the object in the segment: firstPage * pageBytes. */
  readonly address: number;
  version: number;
  /** Object version at which each page last changed (1 = never written since create). */
  readonly pageVersions: Float64Array;
  /** The object's bytes; null until the first write (all zero). */
  data: Buffer | null;
  lastToken: number;
  writer: number; // session id holding write access, 0 if none
  readers: number; // read grants outstanding
  readonly queue: Waiter[];
  /** Sessions that were granted the object since its last change: they cache its pages. */
  readonly cachedBy: Set<number>;
}

interface Session {
  readonly id: number;
  readonly timeoutMs: number;
  readonly clientName: string | null;
  readonly holds: Map<number, Hold>; // object id -> hold
  readonly waiting: Map<number, { objectId: number }>; // acquire seq -> object waited on
  readonly done: Map<number, Result>; // seq -> result, the last DEDUP_WINDOW of them
  readonly cached: Set<number>; // object ids this session may cache
  readonly secret: string; // what a client shows to resume it ('' : it cannot be resumed)
}

/** The durable content of a state machine: see {@link StateMachine.exportContent}. */
export interface StateContent {
  pageBytes: number;
  segmentBytes: number;
  nextObjectId: number;
  nextSessionId: number;
  objects: {
    id: number;
    name: string;
    size: number;
    firstPage: number;
    version: number;
    /** Version at which each page last changed. */
    pageVersions: Float64Array;
    lastToken: number;
    /** The bytes; null when never written (all zero). */
    data: Buffer | null;
  }[];
  /** Shared logs in {@link SharedLogs.snapshot}'s form. */
  logs: unknown[];
  /**
   * Users, `[name, salt, n, r, p, hash, [[prefix, right], ...]]` sorted by name (rules by prefix); absent
   * in content written before users existed.
   */
  users?: unknown[];
  /** The shard group and its range; absent: group 0 over the whole segment. */
  group?: GroupRange;
  /** The slot table; absent: the table in which the group owns every slot (singleGroupSlotTable). */
  slotTable?: SlotTable;
}

/** A user as the state machine holds it: its password hash and its rules by prefix. */
interface StoredUser {
  readonly name: string;
  readonly password: PasswordHash;
  readonly rules: Map<string, AccessRight>;
}

/**
 * A frozen view of the state at one applied index (see {@link StateMachine.freeze}): the bytes
 * {@link StateMachine.snapshot} returned at that index, as parts to be read in order. The small parts
 * (directory, sessions, counters) were encoded at once; the large ones are the objects' and logs' bytes
 * themselves, not copied, kept unchanged by copy-on-write until {@link release}.
 */
export interface FrozenSnapshot {
  /** The applied index the view holds. */
  readonly index: number;
  readonly pageBytes: number;
  readonly segmentBytes: number;
  /** Total length of the parts. */
  readonly bytes: number;
  readonly parts: readonly Buffer[];
  /**
   * The same bytes with every object's data field nil: what a page-file snapshot stores beside the pages
   * (see `storage/page-file.ts`); {@link StateMachine.restore} takes it with the objects' bytes beside.
   */
  readonly metaParts: readonly Buffer[];
  /** The objects with their bytes and page versions at freezing, by id. */
  readonly objects: readonly FrozenObject[];
  /** Ends copy-on-write for this view (idempotent); its parts and objects' bytes must not be read after. */
  release(): void;
}

/** An object as a frozen view holds it. */
export interface FrozenObject {
  readonly id: number;
  readonly firstPage: number;
  readonly size: number;
  readonly version: number;
  /** A copy: writes change the live object's page versions in place. */
  readonly pageVersions: Float64Array;
  /** The bytes, unchanged until the view is released (copy-on-write); null when never written. */
  readonly data: Buffer | null;
}

export interface StateMachineOptions {
  pageBytes: number;
  segmentBytes: number;
  /** Default: group 0 over the whole segment. */
  group?: GroupRange;
  /**
   * A deliberately broken variant for the simulator's checker tests only: accept a release whatever its
   * token. Never set in a server; it exists so a test can prove the checkers catch a fencing bug.
   */
  unsafeSkipFencing?: boolean;
  /**
   * The slot table a new state starts with (default: its group owning every slot, version 1); a restored one
   * holds its own (see {@link StateMachine.restore}), or, from a snapshot older than slot tables, this one.
   */
  slotTable?: SlotTable;
}

const snapshotCodec = new Packr({
  useRecords: false,
  mapsAsObjects: true,
  int64AsType: 'number',
  moreTypes: false,
});
/**
 * 2 added shared logs, 3 queued deletes (a queue entry's mode may be 'delete'), 4 users and their ACL rules
 * (a tenth element), 5 the group and its range (an eleventh, [groupId, start, bytes]), 6 the slot table
 * (a twelfth, `{ version, ranges, groups }`), 7 slot moves under way (a thirteenth, see moves.ts moveEntry);
 * formats 1 to 6 still restore, as group 0 over the whole segment (before 5) with the slot table a new state
 * would have (before 6) and no move (before 7). The number moved so that a server too old to know the new
 * content refuses such a snapshot instead of dropping it.
 */
const SNAPSHOT_FORMAT = 7;

const ok = (value: unknown): Result => ({ ok: true, value });
const fail = (code: ErrorCode, message: string): Result => ({ ok: false, code, message });

/** Where a name's slot lives, when this group does not own it: what a MOVED redirect carries. */
export interface SlotMove {
  reason: 'MOVED';
  slot: number;
  /** The group that owns the slot. */
  group: number;
  /** The version of the slot table that says so. */
  version: number;
}

/** The redirect for a name owned by another group (the node adds the whole table to its details). */
export function movedError(name: string, move: SlotMove): SegmemError {
  return new SegmemError(
    'UNAVAILABLE',
    `"${name}" (slot ${move.slot}) belongs to group ${move.group} (slot table version ${move.version})`,
    { ...move },
  );
}

export class StateMachine {
  readonly pageBytes: number;
  readonly segmentBytes: number;
  readonly group: GroupRange;
  private readonly allocator: PageAllocator;
  private readonly byName = new Map<string, SegmentObject>();
  private readonly byId = new Map<number, SegmentObject>();
  private readonly sessions = new Map<number, Session>();
  /** Sessions with at least one queued acquire or delete: the vertices deadlock detection walks. */
  private readonly waitingSessions = new Set<Session>();
  private logs = new SharedLogs();
  /** Users by name (Map order: insertion, which is log order, so the same on every replica). */
  private readonly users = new Map<string, StoredUser>();
  private nextObjectId = 1;
  private nextSessionId = 1;
  private readonly unsafeSkipFencing: boolean;
  /** Which group owns each hash slot (replicated: changed only by a 'slots' or 'moveSwitch' command). */
  private slots: SlotTable;
  /** Slot moves this group takes part in, by id (at most one: see freezeMove). */
  private readonly moves = new Map<string, MoveState>();
  /** What the objects take in memory once written (see {@link objectHeldBytes}): a running sum. */
  private objectBytes = 0;
  /** Object bytes held by unreleased frozen views (how many each): written copy-on-write. */
  private readonly frozenData = new Map<Buffer, number>();
  /** Frozen object bytes no object holds any more (a write copied it, or the object was deleted). */
  private readonly retiredData = new Set<Buffer>();
  /** Their bytes: a running sum (the memory budget counts them). */
  private retiredBytes = 0;
  /** Object bytes that answers still being sent read by reference (how many each): written copy-on-write. */
  private readonly pinnedData = new Map<Buffer, number>();
  /** Index of the last applied log entry. */
  appliedIndex = 0;

  constructor(opts: StateMachineOptions) {
    if (opts.segmentBytes % opts.pageBytes !== 0)
      throw new RangeError('segmentBytes must be a multiple of pageBytes');
    this.pageBytes = opts.pageBytes;
    this.segmentBytes = opts.segmentBytes;
    const group = opts.group ?? wholeSegment(opts.segmentBytes);
    const problem = groupRangeProblem(group, opts.pageBytes, opts.segmentBytes);
    if (problem) throw new RangeError(problem);
    this.group = { id: group.id, start: group.start, bytes: group.bytes };
    this.allocator = new PageAllocator(group.bytes / opts.pageBytes, group.start / opts.pageBytes);
    this.unsafeSkipFencing = opts.unsafeSkipFencing === true;
    // Checked here too: a config file may hold anything.
    this.slots = opts.slotTable ? validateSlotTable(opts.slotTable) : singleGroupSlotTable(this.group.id);
  }

  /** The slot table this state holds (do not change it: install a newer one with a 'slots' command). */
  get slotTable(): SlotTable {
    return this.slots;
  }

  /** Null when this group owns `name`'s slot; otherwise where the slot lives. */
  slotMove(name: string): SlotMove | null {
    // A group owning every slot (every server started without a table) skips hashing the name.
    const ranges = this.slots.ranges;
    if (ranges.length === 1 && ranges[0]![2] === this.group.id) return null;
    const slot = slotOf(name);
    const group = ownerOf(this.slots, slot);
    return group === this.group.id ? null : { reason: 'MOVED', slot, group, version: this.slots.version };
  }

  /** Applies the command at log index `index`. Deterministic: same log, same state, same outcomes. */
  apply(index: number, cmd: Command): Outcome {
    if (index !== this.appliedIndex + 1) {
      throw new Error(`state machine invariant: applying index ${index} after ${this.appliedIndex}`);
    }
    this.appliedIndex = index;
    const effects: Effect[] = [];
    const result = this.applyCommand(cmd, effects);
    return { result, effects };
  }

  private applyCommand(cmd: Command, effects: Effect[]): Result {
    switch (cmd.op) {
      case 'open':
        return this.openSession(cmd.timeoutMs, cmd.clientName, cmd.secret ?? '');
      case 'close':
        this.closeSession(cmd.sessionId, 'goodbye', effects);
        return ok(null);
      case 'expire':
        for (const id of cmd.sessionIds) this.closeSession(id, 'expired', effects);
        return ok(null);
      case 'restart':
        for (const id of [...this.sessions.keys()]) this.closeSession(id, 'restart', effects);
        if (Number.isSafeInteger(cmd.sessionIdFloor) && cmd.sessionIdFloor > this.nextSessionId) {
          this.nextSessionId = cmd.sessionIdFloor;
        }
        return ok(null);
      case 'cancel':
        return this.cancel(cmd.sessionId, cmd.seq, cmd.reason, effects);
      case 'slots':
        return this.installSlots(cmd.table);
      case 'moveFreeze':
        return this.freezeMove(cmd, effects);
      case 'moveImport':
        return this.importMove(cmd);
      case 'moveSwitch':
        return this.switchMove(cmd.moveId, cmd.table, effects);
      case 'moveAbort':
        return this.abortMove(cmd.moveId, effects);
      default:
        return this.applySessionCommand(cmd, effects);
    }
  }

  /** Commands that carry (session, seq): retried ones answer with the stored result. */
  private applySessionCommand(cmd: Command & { sessionId: number; seq: number }, effects: Effect[]): Result {
    const session = this.sessions.get(cmd.sessionId);
    if (!session) return fail('LOCK_LOST', `session ${cmd.sessionId} has expired or was closed`);
    const previous = session.done.get(cmd.seq);
    if (previous) return previous;
    if ((cmd.op === 'acquire' || cmd.op === 'delete') && session.waiting.has(cmd.seq))
      return ok({ queued: true });
    // A name whose slot another group owns is refused here as well as at the node: the table may have
    // changed between the node's check and this entry. Not remembered, so nothing changes.
    if ('name' in cmd) {
      const move = this.slotMove(cmd.name);
      if (move) {
        const { message, details } = movedError(cmd.name, move);
        return { ok: false, code: 'UNAVAILABLE', message, details: details! };
      }
      // A frozen slot (a move under way) takes no change: the node waits and proposes again. Not remembered.
      if (cmd.op !== 'release') {
        const frozen = this.frozenBy(cmd.name);
        if (frozen) return frozenRefusal(cmd.name, frozen);
      }
    }
    let result: Result;
    switch (cmd.op) {
      case 'create':
        result = this.create(cmd.name, cmd.size, cmd.ifNotExists);
        break;
      case 'delete':
        result = this.delete(session, cmd.seq, cmd.name, effects);
        break;
      case 'acquire':
        result = this.acquire(session, cmd.seq, cmd.name, cmd.mode, effects);
        break;
      case 'release':
        result = this.release(session, cmd, effects);
        break;
      case 'append':
        result = this.append(cmd, effects);
        break;
      case 'truncate':
        result = this.truncate(cmd.name, cmd.before, effects);
        break;
      case 'userAdd':
      case 'userRemove':
      case 'aclSet':
      case 'aclRemove':
        result = this.changeUsers(cmd);
        break;
      default:
        throw new Error(`state machine invariant: unknown command ${(cmd as { op: string }).op}`);
    }
    const queued = result.ok && (result.value as { queued?: boolean } | null)?.queued === true;
    if (!queued) this.remember(session, cmd.seq, result);
    return result;
  }

  private remember(session: Session, seq: number, result: Result): void {
    session.done.set(seq, result);
    if (session.done.size > DEDUP_WINDOW) {
      const oldest = session.done.keys().next().value as number;
      session.done.delete(oldest);
    }
  }

  // --- slots ---

  /** `given` if it is a valid slot table newer than the installed one; else the refusal (INVALID_ARGUMENT). */
  private newerSlotTable(given: unknown): SlotTable | Result {
    let table: SlotTable;
    try {
      table = validateSlotTable(given);
    } catch (err) {
      return fail('INVALID_ARGUMENT', (err as Error).message);
    }
    if (table.version <= this.slots.version) {
      return fail(
        'INVALID_ARGUMENT',
        `slot table version ${table.version} is not newer than the installed version ${this.slots.version}`,
      );
    }
    return table;
  }

  private installSlots(given: unknown): Result {
    const table = this.newerSlotTable(given);
    if (!('ranges' in table)) return table;
    this.slots = table;
    return ok({ version: table.version });
  }

  // --- slot moves (core/moves.ts) ---

  /** The move that froze `name`'s slot in this group (the source), or null. */
  frozenBy(name: string): { moveId: string; slot: number } | null {
    if (this.moves.size === 0) return null;
    for (const m of this.moves.values()) {
      if (m.role !== 'source') continue;
      const slot = slotOf(name);
      return spansHold(m.slots, slot) ? { moveId: m.id, slot } : null;
    }
    return null;
  }

  /** The moves this group takes part in (copies), sorted by id. */
  moveList(): { id: string; role: 'source' | 'target'; from: number; to: number; slots: SlotSpan[] }[] {
    return [...this.moves.values()]
      .sort((a, b) => compare(a.id, b.id))
      .map((m) => ({
        id: m.id,
        role: m.role,
        from: m.from,
        to: m.to,
        slots: m.slots.map(([f, l]) => [f, l]),
      }));
  }

  /** Objects whose slot is in `spans`, sorted by name. */
  objectsInSlots(spans: readonly SlotSpan[]): SegmentObject[] {
    const out: SegmentObject[] = [];
    for (const obj of this.byName.values()) if (spansHold(spans, slotOf(obj.name))) out.push(obj);
    return out.sort((a, b) => compare(a.name, b.name));
  }

  /** Names of the shared logs whose slot is in `spans`, sorted. */
  logsInSlots(spans: readonly SlotSpan[]): string[] {
    return this.logs.names().filter((name) => spansHold(spans, slotOf(name)));
  }

  /** How many objects of `spans` someone holds or waits for: a move copies them once this is 0. */
  busyInSlots(spans: readonly SlotSpan[]): number {
    let n = 0;
    for (const obj of this.byId.values()) {
      if (obj.writer === 0 && obj.readers === 0 && obj.queue.length === 0) continue;
      if (spansHold(spans, slotOf(obj.name))) n++;
    }
    return n;
  }

  private freezeMove(cmd: Command & { op: 'moveFreeze' }, effects: Effect[]): Result {
    let moveId: string;
    let slots: SlotSpan[];
    try {
      moveId = validateMoveId(cmd.moveId);
      slots = validateSlotSpans(cmd.slots);
    } catch (err) {
      return fail('INVALID_ARGUMENT', (err as Error).message);
    }
    const { from, to } = cmd;
    const self = this.group.id;
    const known = this.moves.get(moveId);
    if (known) {
      if (known.from === from && known.to === to && sameSpans(known.slots, slots))
        return ok({ role: known.role, already: true });
      return fail('INVALID_ARGUMENT', `move ${moveId} is under way with other groups or slots`);
    }
    if (this.moves.size > 0) {
      const [other] = this.moves.keys();
      return fail(
        'INVALID_ARGUMENT',
        `group ${self} takes part in move ${other} already: finish or abort it first`,
      );
    }
    const ids = new Set(this.slots.groups.map((g) => g.id));
    if (from === to || !ids.has(from) || !ids.has(to))
      return fail(
        'INVALID_ARGUMENT',
        `a move needs two different groups of the slot table; got ${from} -> ${to}`,
      );
    if (self !== from && self !== to)
      return fail(
        'INVALID_ARGUMENT',
        `group ${self} is neither the source (${from}) nor the target (${to}) of move ${moveId}`,
      );
    const notOwned = slotNotOwned(this.slots, slots, from);
    if (notOwned >= 0)
      return fail(
        'INVALID_ARGUMENT',
        `slot ${notOwned} does not belong to group ${from} (slot table version ${this.slots.version})`,
      );
    const role = self === from ? 'source' : 'target';
    this.moves.set(moveId, { id: moveId, role, from, to, slots, imported: new Set() });
    // Holders of the frozen objects are asked to give their grants back (as when a writer waits).
    if (role === 'source') {
      for (const obj of this.objectsInSlots(slots)) this.revokeHolders(obj, 0, effects);
    }
    return ok({ role, already: false });
  }

  private importMove(cmd: Command & { op: 'moveImport' }): Result {
    const move = this.moves.get(cmd.moveId);
    if (!move)
      return fail(
        'NOT_FOUND',
        `no move ${String(cmd.moveId).slice(0, 64)} under way in group ${this.group.id}`,
      );
    if (move.role !== 'target')
      return fail(
        'INVALID_ARGUMENT',
        `group ${this.group.id} is the source of move ${move.id}: it imports nothing`,
      );
    const objects = Array.isArray(cmd.objects) ? cmd.objects : [];
    const logs = Array.isArray(cmd.logs) ? cmd.logs : [];
    const data = cmd.data ?? Buffer.alloc(0);
    // Everything is checked before anything changes.
    let total = 0;
    const names = new Set<string>();
    for (const o of objects) {
      const problem = movedObjectProblem(o, move);
      if (problem) return fail('INVALID_ARGUMENT', problem);
      if (names.has(o.name)) return fail('INVALID_ARGUMENT', `"${o.name}" is imported twice`);
      names.add(o.name);
      if (!move.imported.has(o.name) && (this.byName.has(o.name) || this.logs.has(o.name)))
        return fail('ALREADY_EXISTS', `"${o.name}" exists in group ${this.group.id} already`);
      if (o.written) total += o.size;
    }
    for (const l of logs) {
      const problem = movedLogProblem(l, move);
      if (problem) return fail('INVALID_ARGUMENT', problem);
      if (this.byName.has(l.name) || (this.logs.has(l.name) && !move.imported.has(l.name)))
        return fail('ALREADY_EXISTS', `"${l.name}" exists in group ${this.group.id} already`);
      for (const n of l.sizes) total += n;
    }
    if (total !== data.length)
      return fail(
        'INVALID_ARGUMENT',
        `import carries ${data.length} bytes; its objects and records need ${total}`,
      );
    // Space: every new object is placed, or none is.
    const placed: { o: MovedObject; firstPage: number; pageCount: number }[] = [];
    for (const o of objects) {
      if (move.imported.has(o.name)) continue;
      const pageCount = Math.ceil(o.size / this.pageBytes);
      const firstPage = this.allocator.allocate(pageCount);
      if (firstPage < 0) {
        for (const p of placed) this.allocator.release(p.firstPage, p.pageCount);
        const { id, start, bytes } = this.group;
        return fail(
          'NO_SPACE',
          `group ${id} (range [${start}, ${start + bytes})) has no free extent of ${pageCount} pages for "${o.name}" (${o.size} bytes); ${this.allocator.freePages * this.pageBytes} bytes free in all`,
        );
      }
      placed.push({ o, firstPage, pageCount });
    }
    for (const l of logs) {
      const held = this.logs.get(l.name);
      if (held && l.first !== held.next && l.first + l.sizes.length > held.next) {
        for (const p of placed) this.allocator.release(p.firstPage, p.pageCount);
        return fail(
          'INVALID_ARGUMENT',
          `log "${l.name}" piece from ${l.first} does not continue at ${held.next}`,
        );
      }
    }
    // placeObject reserves the pages itself: the allocation above only chose them.
    for (const p of placed) this.allocator.release(p.firstPage, p.pageCount);
    let at = 0;
    const byName = new Map(placed.map((p) => [p.o.name, p]));
    for (const o of objects) {
      const bytes = o.written ? data.subarray(at, at + o.size) : null;
      if (o.written) at += o.size;
      const p = byName.get(o.name);
      if (!p) continue; // imported by an earlier copy of this chunk
      const obj = this.placeObject({
        id: this.nextObjectId++,
        name: o.name,
        size: o.size,
        firstPage: p.firstPage,
        version: o.version,
        pageVersions: new Float64Array(p.pageCount).fill(o.version),
        lastToken: o.lastToken,
        data: bytes,
      });
      move.imported.add(obj.name);
    }
    for (const l of logs) {
      let n = 0;
      for (const size of l.sizes) n += size;
      this.logs.importRecords(l.name, l.maxBytes, l.first, l.sizes, data.subarray(at, at + n));
      at += n;
      move.imported.add(l.name);
    }
    return ok({ objects: placed.length, imported: move.imported.size });
  }

  private switchMove(moveId: string, given: unknown, effects: Effect[]): Result {
    const move = this.moves.get(moveId);
    if (!move)
      return fail('NOT_FOUND', `no move ${String(moveId).slice(0, 64)} under way in group ${this.group.id}`);
    const table = this.newerSlotTable(given);
    if (!('ranges' in table)) return table;
    const notMoved = slotNotOwned(table, move.slots, move.to);
    if (notMoved >= 0)
      return fail(
        'INVALID_ARGUMENT',
        `the table gives slot ${notMoved} of move ${move.id} to a group other than ${move.to}`,
      );
    this.slots = table;
    this.moves.delete(move.id);
    if (move.role === 'source') this.dropSlots(move.slots, effects);
    return ok({ version: table.version });
  }

  private abortMove(moveId: string, effects: Effect[]): Result {
    const move = this.moves.get(moveId);
    if (!move)
      return fail('NOT_FOUND', `no move ${String(moveId).slice(0, 64)} under way in group ${this.group.id}`);
    this.moves.delete(move.id);
    for (const name of move.imported) {
      const obj = this.byName.get(name);
      if (obj) this.removeObject(obj, effects);
      else if (this.logs.delete(name)) effects.push({ kind: 'logChanged', name });
    }
    return ok({ role: move.role, dropped: move.imported.size });
  }

  /** The source's part of a switch: the moved slots' objects and logs go; their waiters are told where. */
  private dropSlots(spans: readonly SlotSpan[], effects: Effect[]): void {
    for (const obj of this.objectsInSlots(spans)) {
      const move = this.slotMove(obj.name)!;
      const { message, details } = movedError(obj.name, move);
      this.removeObject(obj, effects, { code: 'UNAVAILABLE', message, details: details! });
    }
    for (const name of this.logsInSlots(spans)) {
      this.logs.delete(name);
      effects.push({ kind: 'logChanged', name });
    }
  }

  // --- users and ACL rules ---

  private changeUsers(cmd: Command & { op: 'userAdd' | 'userRemove' | 'aclSet' | 'aclRemove' }): Result {
    // Validated here as well as on the wire: the log is the authority, and a bad command must fail the same
    // way on every replica instead of entering the state.
    let user: string;
    try {
      user = validateUserName(cmd.user);
    } catch (err) {
      return fail('INVALID_ARGUMENT', (err as Error).message);
    }
    const existing = this.users.get(user);
    if (cmd.op === 'userAdd') {
      if (existing) return fail('ALREADY_EXISTS', `user ${user} already exists`);
      if (this.users.size >= MAX_USERS)
        return fail('INVALID_ARGUMENT', `a group holds at most ${MAX_USERS} users`);
      let password: PasswordHash;
      const rules = new Map<string, AccessRight>();
      try {
        password = validatePasswordHash(cmd.password);
        for (const [prefix, right] of cmd.rules ?? [])
          rules.set(validateAclPrefix(prefix), validateRight(right));
      } catch (err) {
        return fail('INVALID_ARGUMENT', (err as Error).message);
      }
      if (rules.size > MAX_RULES_PER_USER)
        return fail('INVALID_ARGUMENT', `a user holds at most ${MAX_RULES_PER_USER} rules`);
      this.users.set(user, { name: user, password, rules });
      return ok({ users: [userInfo(this.users.get(user)!)] });
    }
    if (!existing) return fail('NOT_FOUND', `no user named ${user}`);
    if (cmd.op === 'userRemove') {
      this.users.delete(user);
      return ok({ users: [] });
    }
    let prefix: string;
    try {
      prefix = validateAclPrefix(cmd.prefix);
    } catch (err) {
      return fail('INVALID_ARGUMENT', (err as Error).message);
    }
    if (cmd.op === 'aclRemove') {
      if (!existing.rules.delete(prefix))
        return fail('NOT_FOUND', `user ${user} has no rule for prefix ${JSON.stringify(prefix)}`);
      return ok({ users: [userInfo(existing)] });
    }
    let right: AccessRight;
    try {
      right = validateRight(cmd.right);
    } catch (err) {
      return fail('INVALID_ARGUMENT', (err as Error).message);
    }
    if (!existing.rules.has(prefix) && existing.rules.size >= MAX_RULES_PER_USER)
      return fail('INVALID_ARGUMENT', `a user holds at most ${MAX_RULES_PER_USER} rules`);
    existing.rules.set(prefix, right);
    return ok({ users: [userInfo(existing)] });
  }

  /** True once the group has a user: from then on every client must log in (see node/access.ts). */
  hasUsers(): boolean {
    return this.users.size > 0;
  }

  /** A user's password hash, or undefined for no such user. */
  userPassword(name: string): PasswordHash | undefined {
    return this.users.get(name)?.password;
  }

  /** A user's rules, or null for no such user (removed: its sessions lose every right). */
  userRules(name: string): AclRule[] | null {
    const u = this.users.get(name);
    return u ? [...u.rules] : null;
  }

  /** Users sorted by name with their rules sorted by prefix (one user, or none, when `name` is given). */
  listUsers(name: string | null = null): UserInfo[] {
    if (name !== null) {
      const u = this.users.get(name);
      return u ? [userInfo(u)] : [];
    }
    return [...this.users.values()].sort((a, b) => compare(a.name, b.name)).map(userInfo);
  }

  private userEntries(): unknown[] {
    return [...this.users.values()]
      .sort((a, b) => compare(a.name, b.name))
      .map((u) => {
        const { salt, n, r, p, hash } = u.password;
        return [u.name, salt, n, r, p, hash, userInfo(u).rules];
      });
  }

  // --- sessions ---

  private openSession(timeoutMs: number, clientName: string | null, secret: string): Result {
    const id = this.nextSessionId++;
    this.sessions.set(id, {
      id,
      timeoutMs,
      clientName,
      secret,
      holds: new Map(),
      waiting: new Map(),
      done: new Map(),
      cached: new Set(),
    });
    return ok({ sessionId: id });
  }

  private closeSession(id: number, reason: 'goodbye' | 'expired' | 'restart', effects: Effect[]): void {
    const session = this.sessions.get(id);
    if (!session) return;
    this.sessions.delete(id);
    this.waitingSessions.delete(session);
    const touched = new Set<SegmentObject>();
    for (const [seq, w] of session.waiting) {
      const obj = this.byId.get(w.objectId);
      if (obj) {
        removeWaiter(obj, id, seq);
        touched.add(obj);
      }
      effects.push({
        kind: 'fail',
        sessionId: id,
        seq,
        code: 'LOCK_LOST',
        message: `session ${id} ${reason}`,
      });
    }
    // Locks go back; a write that was never released never reached us, so it is discarded.
    for (const [objectId, hold] of session.holds) {
      const obj = this.byId.get(objectId);
      if (!obj) continue;
      if (hold.mode === 'write') obj.writer = 0;
      else obj.readers -= hold.tokens.length;
      touched.add(obj);
    }
    for (const objectId of session.cached) this.byId.get(objectId)?.cachedBy.delete(id);
    effects.push({ kind: 'sessionClosed', sessionId: id, reason });
    for (const obj of touched) this.pump(obj, effects);
  }

  /**
   * Objects other sessions wait for (or a slot move waits for), with the sessions holding them: their grants
   * are asked back again now and then, in case a REVOKE was lost with a connection.
   */
  contendedHolders(): { objectId: number; sessionIds: number[] }[] {
    const out: { objectId: number; sessionIds: number[] }[] = [];
    // From the waiting sessions, not every object: this runs several times a second on the leader.
    const waited = new Set<SegmentObject>();
    for (const s of this.waitingSessions)
      for (const w of s.waiting.values()) {
        const obj = this.byId.get(w.objectId);
        if (obj) waited.add(obj);
      }
    // Holders of frozen objects too: a move waits for them (a REVOKE lost with a connection is sent again).
    for (const m of this.moves.values())
      if (m.role === 'source')
        for (const obj of this.objectsInSlots(m.slots))
          if (obj.writer !== 0 || obj.readers > 0) waited.add(obj);
    for (const obj of waited) {
      const sessionIds: number[] = [];
      for (const id of obj.cachedBy) if (this.sessions.get(id)?.holds.has(obj.id)) sessionIds.push(id);
      if (sessionIds.length > 0) out.push({ objectId: obj.id, sessionIds });
    }
    return out;
  }

  /** The longest session timeout among sessions that hold a lock (0: none holds any). */
  lockHolderTimeoutMs(): number {
    let max = 0;
    for (const s of this.sessions.values()) if (s.holds.size > 0 && s.timeoutMs > max) max = s.timeoutMs;
    return max;
  }

  // --- directory ---

  private create(name: string, size: number, ifNotExists: boolean): Result {
    if (this.logs.has(name)) return fail('ALREADY_EXISTS', `"${name}" already exists as a shared log`);
    const existing = this.byName.get(name);
    if (existing) {
      if (ifNotExists && existing.size === size) return ok({ object: record(existing), created: false });
      const sizeNote = existing.size === size ? '' : ` with size ${existing.size}`;
      return fail('ALREADY_EXISTS', `object "${name}" already exists${sizeNote}`);
    }
    const pageCount = Math.ceil(size / this.pageBytes);
    const firstPage = this.allocator.allocate(pageCount);
    if (firstPage < 0) {
      const free = this.allocator.freePages;
      if (this.group.id === 0) {
        return fail(
          'NO_SPACE',
          `no free extent of ${pageCount} pages for "${name}" (${size} bytes); ${free} pages free in all`,
        );
      }
      const { id, start, bytes } = this.group;
      return fail(
        'NO_SPACE',
        `group ${id} (range [${start}, ${start + bytes})) has no free extent of ${pageCount} pages for "${name}" (${size} bytes); ${free * this.pageBytes} bytes free in all`,
      );
    }
    const obj: SegmentObject = {
      id: this.nextObjectId++,
      name,
      size,
      firstPage,
      pageCount,
      address: firstPage * this.pageBytes,
      version: 1,
      pageVersions: new Float64Array(pageCount).fill(1),
      data: null,
      lastToken: 0,
      writer: 0,
      readers: 0,
      queue: [],
      cachedBy: new Set(),
    };
    this.byName.set(name, obj);
    this.byId.set(obj.id, obj);
    this.objectBytes += objectHeldBytes(size, pageCount);
    return ok({ object: record(obj), created: true });
  }

  /**
   * Deletes a shared log at once; an object waits for its holders like a writer (queued first in, first
   * out with the acquires), then goes, failing the acquires queued behind it with NOT_FOUND.
   */
  private delete(session: Session, seq: number, name: string, effects: Effect[]): Result {
    if (this.logs.delete(name)) {
      effects.push({ kind: 'logChanged', name });
      return ok(null);
    }
    const obj = this.byName.get(name);
    if (!obj) return fail('NOT_FOUND', `no object named "${name}"`);
    const hold = session.holds.get(obj.id);
    if (hold) {
      return fail(
        'DEADLOCK',
        `this session holds ${hold.mode} access to "${name}": a delete would wait for its own release forever`,
      );
    }
    if (obj.queue.length === 0 && compatible(obj, 'delete')) {
      this.removeObject(obj, effects);
      return ok(null);
    }
    return this.enqueue(session, seq, obj, 'delete', effects);
  }

  private removeObject(
    obj: SegmentObject,
    effects: Effect[],
    why: { code: ErrorCode; message: string; details?: Record<string, unknown> } = {
      code: 'NOT_FOUND',
      message: `object "${obj.name}" was deleted`,
    },
  ): void {
    const name = obj.name;
    this.byName.delete(name);
    this.byId.delete(obj.id);
    this.objectBytes -= objectHeldBytes(obj.size, obj.pageCount);
    if (obj.data) this.retireIfFrozen(obj.data);
    this.allocator.release(obj.firstPage, obj.pageCount);
    for (const w of obj.queue) {
      const waiter = this.sessions.get(w.sessionId);
      if (waiter) this.unwait(waiter, w.seq);
      effects.push({ kind: 'fail', sessionId: w.sessionId, seq: w.seq, ...why });
    }
    obj.queue.length = 0;
    // Nobody holds it (a delete waits for the holders), but a restored or old state may say otherwise:
    // their releases then answer LOCK_LOST.
    for (const session of this.sessions.values()) {
      session.holds.delete(obj.id);
      session.cached.delete(obj.id);
    }
    if (obj.cachedBy.size > 0) {
      effects.push({ kind: 'invalidate', sessionIds: [...obj.cachedBy], objectId: obj.id, version: 0 });
    }
  }

  // --- locks ---

  private acquire(session: Session, seq: number, name: string, mode: LockMode, effects: Effect[]): Result {
    const obj = this.byName.get(name);
    if (!obj) return fail('NOT_FOUND', `no object named "${name}"`);
    // A session's acquires queue like anyone's: a process's concurrent tasks share one session, and a
    // second acquire of an object the session holds waits for the first release (as with a mutex). The
    // client queues its tasks' conflicting acquires itself, so a conflicting one that reaches us is a
    // protocol client waiting for itself: refused at once.
    const hold = session.holds.get(obj.id);
    if (hold?.mode === 'write') {
      return fail(
        'DEADLOCK',
        `this session already holds write access to "${name}": a ${mode} acquire would wait for its own release forever`,
      );
    }
    if (hold && mode === 'write' && (obj.readers > hold.tokens.length || this.othersWait(obj, session.id))) {
      return fail(
        'DEADLOCK',
        `this session holds read access to "${name}" and asks for write while another session holds or waits for it`,
      );
    }
    // A session already reading shares its reads past queued writers: the writer waits for its reads
    // anyway, and queuing the new read behind the writer would be a cycle (reader -> writer -> reader).
    if (obj.queue.length === 0 || (hold && mode === 'read')) {
      if (compatible(obj, mode)) return ok({ granted: this.grant(session, obj, mode) });
    }
    return this.enqueue(session, seq, obj, mode, effects);
  }

  private othersWait(obj: SegmentObject, sessionId: number): boolean {
    for (const w of obj.queue) if (w.sessionId !== sessionId) return true;
    return false;
  }

  /**
   * Queues an acquire or delete, unless waiting would close a cycle of waits between sessions (see
   * core/wait-for.ts): then it fails with DEADLOCK and the waits already queued go on. The refused request
   * is the youngest of its cycle, by log order: every other wait of the cycle was queued by an earlier
   * entry, since the graph has no cycle before this one.
   */
  private enqueue(
    session: Session,
    seq: number,
    obj: SegmentObject,
    mode: WaitMode,
    effects: Effect[],
  ): Result {
    const blockers = this.blockers(obj, obj.queue.length, session.id, mode, session.id);
    const memo = new Map<number, QueueScan>();
    const cycle = findCycle(
      { edges: (sid, target) => this.waitEdges(sid, target, memo) },
      session.id,
      obj.id,
      blockers,
    );
    if (cycle) {
      const names = cycle.map((id) => `"${this.byId.get(id)?.name}"`).join(' -> ');
      const what = mode === 'delete' ? 'delete' : `${mode} acquire`;
      return fail(
        'DEADLOCK',
        `this ${what} of "${obj.name}" would close a cycle of waits between sessions over ${names}: it was refused, the others wait on`,
      );
    }
    obj.queue.push({ sessionId: session.id, seq, mode });
    session.waiting.set(seq, { objectId: obj.id });
    this.waitingSessions.add(session);
    this.revokeHolders(obj, session.id, effects);
    return ok({ queued: true });
  }

  /**
   * A session now waits for `obj`: every other session holding it is asked to give its grant back (a cached
   * grant is kept by a client only while nobody waits). Current holders were all granted since the object's
   * last write, so they are among `cachedBy`.
   */
  private revokeHolders(obj: SegmentObject, waiterId: number, effects: Effect[]): void {
    const holders: number[] = [];
    for (const id of obj.cachedBy) {
      if (id !== waiterId && this.sessions.get(id)?.holds.has(obj.id)) holders.push(id);
    }
    if (holders.length > 0) effects.push({ kind: 'revoke', sessionIds: holders, objectId: obj.id });
  }

  private unwait(session: Session, seq: number): void {
    session.waiting.delete(seq);
    if (session.waiting.size === 0) this.waitingSessions.delete(session);
  }

  /**
   * The sessions other than `self` that a wait in `mode` at position `at` of `obj`'s queue waits for and
   * that could lead a search back to `target`: conflicting holders that wait themselves (or are `target`),
   * and the sessions of conflicting waits queued before it.
   */
  private blockers(obj: SegmentObject, at: number, self: number, mode: WaitMode, target: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < at; i++) {
      const w = obj.queue[i]!;
      if (w.sessionId !== self && conflicts(mode, w.mode)) out.push(w.sessionId);
    }
    // The object's holders were all granted since its last write: they are among `cachedBy` (a few sessions,
    // where the waiting sessions may be thousands; this runs for every session the search visits).
    for (const id of obj.cachedBy) {
      if (id === self) continue;
      const s = this.sessions.get(id);
      const hold = s?.holds.get(obj.id);
      if (hold && conflicts(mode, hold.mode) && (id === target || this.waitingSessions.has(s!))) out.push(id);
    }
    return out;
  }

  /**
   * The edges of a waiting session for one search ({@link findCycle}). `memo` is the search's own: a waiter
   * reaches every conflicting wait queued before it, so once the queue of an object was scanned up to a
   * position for a mode, the waiters before that position need not scan it again (they reach a subset, all
   * of it already on the search's path); likewise its holders. Each queue is then read once per search, not
   * once per waiter (thousands of waiters on one object made every queued acquire quadratic).
   */
  private *waitEdges(sessionId: number, target: number, memo: Map<number, QueueScan>): Iterable<WaitEdge> {
    const session = this.sessions.get(sessionId);
    if (!session) return;
    for (const [seq, w] of session.waiting) {
      const obj = this.byId.get(w.objectId);
      if (!obj) continue;
      let scan = memo.get(obj.id);
      if (!scan) {
        const positions = new Map<string, number>();
        for (let i = 0; i < obj.queue.length; i++) {
          const q = obj.queue[i]!;
          positions.set(`${q.sessionId}:${q.seq}`, i);
        }
        scan = { positions, all: 0, writes: 0, holders: new Set() };
        memo.set(obj.id, scan);
      }
      const at = scan.positions.get(`${sessionId}:${seq}`);
      if (at === undefined) continue;
      const mode = obj.queue[at]!.mode;
      const from = mode === 'read' ? Math.max(scan.all, scan.writes) : scan.all;
      for (let i = from; i < at; i++) {
        const q = obj.queue[i]!;
        if (q.sessionId !== sessionId && conflicts(mode, q.mode)) yield { to: q.sessionId, objectId: obj.id };
      }
      if (mode === 'read') scan.writes = Math.max(scan.writes, at);
      else scan.all = Math.max(scan.all, at);
      const holderKind = mode === 'read' ? 'read' : 'write';
      if (scan.holders.has('write') || scan.holders.has(holderKind)) continue;
      scan.holders.add(holderKind);
      for (const to of this.blockers(obj, 0, sessionId, mode, target)) yield { to, objectId: obj.id };
    }
  }

  private grant(session: Session, obj: SegmentObject, mode: LockMode): Grant {
    const token = ++obj.lastToken;
    const hold = session.holds.get(obj.id);
    if (mode === 'write') {
      obj.writer = session.id;
      session.holds.set(obj.id, { mode, tokens: [token] });
    } else {
      obj.readers++;
      if (hold) hold.tokens.push(token);
      else session.holds.set(obj.id, { mode, tokens: [token] });
    }
    obj.cachedBy.add(session.id);
    session.cached.add(obj.id);
    // Called with the waiters still queued behind this grant (the pump shifts its head first).
    // A frozen object must come back soon (a move waits for it): never cached.
    const contended =
      obj.queue.some((w) => mode === 'write' || w.mode === 'write') || this.frozenBy(obj.name) !== null;
    return contended ? { object: record(obj), token, mode, contended } : { object: record(obj), token, mode };
  }

  /**
   * Grants queued waiters in FIFO order while the head is compatible with the holders; a delete at the
   * head, once nobody holds the object, deletes it and fails the waiters behind it.
   */
  private pump(obj: SegmentObject, effects: Effect[]): void {
    while (obj.queue.length > 0) {
      const head = obj.queue[0]!;
      if (!compatible(obj, head.mode)) return;
      obj.queue.shift();
      const session = this.sessions.get(head.sessionId);
      if (!session) continue;
      this.unwait(session, head.seq);
      if (head.mode === 'delete') {
        this.remember(session, head.seq, ok(null));
        effects.push({ kind: 'deleted', sessionId: session.id, seq: head.seq });
        this.removeObject(obj, effects);
        return;
      }
      const grant = this.grant(session, obj, head.mode);
      this.remember(session, head.seq, ok({ granted: grant }));
      effects.push({ kind: 'grant', sessionId: session.id, seq: head.seq, grant });
    }
  }

  private cancel(sessionId: number, seq: number, reason: CancelReason, effects: Effect[]): Result {
    const session = this.sessions.get(sessionId);
    const waiting = session?.waiting.get(seq);
    if (!session || !waiting) return ok({ cancelled: false });
    this.unwait(session, seq);
    const obj = this.byId.get(waiting.objectId);
    const what =
      obj?.queue.find((w) => w.sessionId === sessionId && w.seq === seq)?.mode === 'delete'
        ? 'delete'
        : 'acquire';
    const message =
      reason === 'TIMEOUT'
        ? `${what} of "${obj?.name}" timed out`
        : reason === 'DEADLOCK'
          ? `${what} of "${obj?.name}" was given up: it closed a cycle of waits across shard groups`
          : `${what} of "${obj?.name}" was aborted`;
    const result = fail(reason, message);
    this.remember(session, seq, result);
    effects.push({ kind: 'fail', sessionId, seq, code: reason, message });
    if (obj) {
      removeWaiter(obj, sessionId, seq);
      // A cancelled writer at the head may have been holding back readers behind it.
      this.pump(obj, effects);
    }
    return ok({ cancelled: true });
  }

  private release(session: Session, cmd: Command & { op: 'release' }, effects: Effect[]): Result {
    const obj = this.byName.get(cmd.name);
    if (!obj) return fail('LOCK_LOST', `object "${cmd.name}" was deleted while held`);
    let hold = session.holds.get(obj.id);
    let at = hold && hold.mode === cmd.mode ? hold.tokens.indexOf(cmd.token) : -1;
    if (this.unsafeSkipFencing && at < 0) {
      // Broken on purpose (see StateMachineOptions): act as if the release held the lock.
      hold = { mode: cmd.mode, tokens: [cmd.token] };
      at = 0;
      if (cmd.mode === 'write') obj.writer = session.id;
      else obj.readers++;
    }
    if (!hold || at < 0) {
      return fail(
        'LOCK_LOST',
        `this session does not hold ${cmd.mode} access to "${cmd.name}" with token ${cmd.token} (released already, or lost)`,
      );
    }
    if (cmd.mode === 'write') {
      let total = 0;
      for (const [offset, length] of cmd.ranges) {
        if (offset < 0 || length < 1 || offset + length > obj.size) {
          return fail(
            'INVALID_ARGUMENT',
            `range ${offset}+${length} is outside "${cmd.name}" (${obj.size} bytes)`,
          );
        }
        total += length;
      }
      if (total !== (cmd.data?.length ?? 0)) {
        return fail('INVALID_ARGUMENT', 'release ranges do not match the bytes sent');
      }
      if (cmd.ranges.length > 0) this.writeRanges(obj, cmd.ranges, cmd.data!, session.id, effects);
      // A write delegation: the lock stays with the session (same token) while nobody waits for it.
      if (cmd.keep === true && obj.queue.length === 0 && !this.frozenBy(obj.name))
        return ok({ version: obj.version, kept: true });
      obj.writer = 0;
      session.holds.delete(obj.id);
    } else {
      hold.tokens.splice(at, 1);
      obj.readers--;
      if (hold.tokens.length === 0) session.holds.delete(obj.id);
    }
    this.pump(obj, effects);
    return ok({ version: obj.version });
  }

  private writeRanges(
    obj: SegmentObject,
    ranges: [number, number][],
    data: Buffer,
    writerId: number,
    effects: Effect[],
  ): void {
    if (!obj.data) obj.data = Buffer.alloc(obj.size);
    // Copy-on-write: a frozen snapshot or an unsent answer still reads these bytes. Copied once; the copy is
    // neither frozen nor pinned.
    else if (this.frozenData.has(obj.data) || this.pinnedData.has(obj.data)) {
      this.retireIfFrozen(obj.data);
      obj.data = Buffer.from(obj.data);
    }
    const version = ++obj.version;
    let at = 0;
    for (const [offset, length] of ranges) {
      data.copy(obj.data, offset, at, at + length);
      at += length;
      const first = Math.floor(offset / this.pageBytes);
      const last = Math.floor((offset + length - 1) / this.pageBytes);
      for (let p = first; p <= last; p++) obj.pageVersions[p] = version;
    }
    const stale = [...obj.cachedBy].filter((id) => id !== writerId);
    if (stale.length > 0) effects.push({ kind: 'invalidate', sessionIds: stale, objectId: obj.id, version });
    for (const id of stale) {
      obj.cachedBy.delete(id);
      this.sessions.get(id)?.cached.delete(obj.id);
    }
  }

  // --- shared logs ---

  private append(cmd: Command & { op: 'append' }, effects: Effect[]): Result {
    if (this.byName.has(cmd.name)) {
      return fail('INVALID_ARGUMENT', `"${cmd.name}" is an object, not a shared log`);
    }
    let total = 0;
    for (const n of cmd.sizes) total += n;
    if (cmd.sizes.length === 0 || total !== (cmd.data?.length ?? 0)) {
      return fail('INVALID_ARGUMENT', 'append record sizes do not match the bytes sent');
    }
    const first = this.logs.append(cmd.name, cmd.sizes, cmd.data, cmd.maxBytes);
    effects.push({ kind: 'logChanged', name: cmd.name });
    return ok({ first, count: cmd.sizes.length });
  }

  private truncate(name: string, before: number, effects: Effect[]): Result {
    const log = this.logs.get(name);
    if (!log) return fail('NOT_FOUND', `no shared log named "${name}"`);
    if (before > log.next) {
      return fail(
        'INVALID_ARGUMENT',
        `cannot truncate "${name}" before ${before}: its next sequence number is ${log.next}`,
      );
    }
    const first = this.logs.truncate(log, before);
    effects.push({ kind: 'logChanged', name });
    return ok({ first });
  }

  /**
   * Reads records of log `name` from `from` (null: the oldest retained). Throws-free: NOT_FOUND for an
   * unknown log or for records already dropped (details carry the first retained number), INVALID_ARGUMENT
   * for a `from` past the end.
   */
  readLog(
    name: string,
    from: number | null,
    maxBytes: number,
    maxRecords: number,
  ): { ok: true; read: LogRead } | { ok: false; code: ErrorCode; message: string; first?: number } {
    const log = this.logs.get(name);
    if (!log) {
      if (this.byName.has(name)) {
        return { ok: false, code: 'INVALID_ARGUMENT', message: `"${name}" is an object, not a shared log` };
      }
      return { ok: false, code: 'NOT_FOUND', message: `no shared log named "${name}"` };
    }
    const start = from ?? log.first;
    if (start < log.first) {
      return {
        ok: false,
        code: 'NOT_FOUND',
        message: `records of "${name}" before ${log.first} were truncated (asked for ${start})`,
        first: log.first,
      };
    }
    if (start > log.next) {
      return {
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: `"${name}" has no record ${start} yet and will number the next one ${log.next}`,
      };
    }
    return { ok: true, read: this.logs.read(log, start, maxBytes, maxRecords) };
  }

  /** How many shared logs exist. */
  logCount(): number {
    return this.logs.size;
  }

  // --- snapshots ---

  /**
   * The whole state as bytes: what a snapshot stores and what a lagging replica installs. Deterministic:
   * two machines that applied the same log produce the same bytes (the simulator compares digests).
   */
  snapshot(): Buffer {
    return snapshotCodec.pack([
      ...this.snapshotCounters(),
      this.sortedObjects().map(objectEntry),
      this.sessionEntries(),
      this.logs.snapshot(),
      this.userEntries(),
      this.groupEntry(),
      this.slotsEntry(),
      this.moveEntries(),
    ]);
  }

  private moveEntries(): unknown[] {
    return [...this.moves.values()].sort((a, b) => compare(a.id, b.id)).map(moveEntry);
  }

  private slotsEntry(): SlotTable {
    const t = this.slots;
    return { version: t.version, ranges: t.ranges, groups: t.groups };
  }

  /**
   * Freezes the state at the applied index without copying the object or log bytes: returns
   * {@link snapshot}'s bytes as parts (the metadata encoded now, it is small; the bytes by reference).
   * Until the view is released, the first write to a frozen object's bytes copies them first, so the
   * view keeps reading what was there at freezing while later commands apply. Deletions and creations
   * do not touch it, and shared log chunks never change once appended.
   */
  freeze(): FrozenSnapshot {
    // Two lists of the same pieces: with the objects' bytes (snapshot()'s) and with nil in their place.
    const full = new PartList();
    const meta = new PartList();
    const both = (piece: Buffer) => {
      full.add(piece);
      meta.add(piece);
    };
    both(arrayHeader(13));
    both(packElements(this.snapshotCounters()));
    const objects = this.sortedObjects();
    both(arrayHeader(objects.length));
    const frozen: Buffer[] = [];
    const frozenObjects: FrozenObject[] = [];
    for (const o of objects) {
      const entry = objectEntry(o);
      both(arrayHeader(entry.length));
      both(packElements(entry.slice(0, OBJECT_DATA_AT)));
      if (o.data) {
        full.add(binHeader(o.data.length));
        full.addShared(o.data);
        frozen.push(o.data);
        this.frozenData.set(o.data, (this.frozenData.get(o.data) ?? 0) + 1);
      } else {
        full.add(MSGPACK_NIL);
      }
      meta.add(MSGPACK_NIL);
      both(packElements(entry.slice(OBJECT_DATA_AT + 1)));
      frozenObjects.push({
        id: o.id,
        firstPage: o.firstPage,
        size: o.size,
        version: o.version,
        pageVersions: Float64Array.from(o.pageVersions),
        data: o.data,
      });
    }
    both(snapshotCodec.pack(this.sessionEntries()));
    const logs = this.logs.freeze();
    both(arrayHeader(logs.length));
    for (const log of logs) {
      both(arrayHeader(log.head.length + 1));
      both(packElements(log.head));
      both(binHeader(log.bytes));
      for (const part of log.parts) {
        full.addShared(part);
        meta.addShared(part);
      }
    }
    both(snapshotCodec.pack(this.userEntries()));
    both(snapshotCodec.pack(this.groupEntry()));
    both(snapshotCodec.pack(this.slotsEntry()));
    both(snapshotCodec.pack(this.moveEntries()));
    const parts = full.finish();
    const metaParts = meta.finish();
    let released = false;
    return {
      index: this.appliedIndex,
      pageBytes: this.pageBytes,
      segmentBytes: this.segmentBytes,
      bytes: full.bytes,
      parts,
      metaParts,
      objects: frozenObjects,
      release: () => {
        if (released) return;
        released = true;
        for (const data of frozen) {
          const n = this.frozenData.get(data)!;
          if (n > 1) this.frozenData.set(data, n - 1);
          else {
            this.frozenData.delete(data);
            if (this.retiredData.delete(data)) this.retiredBytes -= data.length;
          }
        }
      },
    };
  }

  /** `data` leaves its object: while frozen views still hold it, it counts as theirs. */
  private retireIfFrozen(data: Buffer): void {
    if (!this.frozenData.has(data) || this.retiredData.has(data)) return;
    this.retiredData.add(data);
    this.retiredBytes += data.length;
  }

  /**
   * Object bytes that only frozen views (exports, snapshots being written) keep alive: copied away from by a
   * write, or deleted, since they froze. Local to this member (when it snapshots), unlike {@link heldBytes}.
   */
  frozenCopyBytes(): number {
    return this.retiredBytes;
  }

  /**
   * Keeps an object's bytes as they are while an answer reads them by reference: until the returned function
   * is called (once), a write to the object replaces its buffer with a changed copy instead of changing it.
   */
  pinData(data: Buffer): () => void {
    this.pinnedData.set(data, (this.pinnedData.get(data) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = this.pinnedData.get(data)!;
      if (n > 1) this.pinnedData.set(data, n - 1);
      else this.pinnedData.delete(data);
    };
  }

  /** How many object buffers answers being sent hold by reference (for tests). */
  pinnedObjectCount(): number {
    return this.pinnedData.size;
  }

  /** How many object buffers unreleased frozen views hold (for tests). */
  frozenObjectCount(): number {
    return this.frozenData.size;
  }

  private snapshotCounters(): number[] {
    return [
      SNAPSHOT_FORMAT,
      this.pageBytes,
      this.segmentBytes,
      this.appliedIndex,
      this.nextObjectId,
      this.nextSessionId,
    ];
  }

  private groupEntry(): number[] {
    return [this.group.id, this.group.start, this.group.bytes];
  }

  private sortedObjects(): SegmentObject[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  private sessionEntries(): unknown[] {
    return [...this.sessions.values()]
      .sort((a, b) => a.id - b.id)
      .map((s) => [
        s.id,
        s.timeoutMs,
        s.clientName,
        [...s.holds].map(([id, h]) => [id, h.mode, h.tokens]),
        [...s.waiting].map(([seq, w]) => [seq, w.objectId]),
        [...s.done].map(([seq, r]) => [seq, r]),
        [...s.cached],
        s.secret,
      ]);
  }

  /**
   * Rebuilds a state machine from {@link snapshot} bytes, or from {@link FrozenSnapshot.metaParts}' bytes
   * (objects' data nil) with the objects' bytes in `objectBytes` by id, which the machine takes over
   * without copying. Throws if `objectBytes` does not fit the objects the bytes name.
   */
  static restore(
    bytes: Buffer,
    opts: Partial<StateMachineOptions> = {},
    objectBytes?: ReadonlyMap<number, Buffer>,
  ): StateMachine {
    const [
      format,
      pageBytes,
      segmentBytes,
      appliedIndex,
      nextObjectId,
      nextSessionId,
      objects,
      sessions,
      logs,
      users,
      groupEntry,
      slots,
      moves,
    ] = snapshotCodec.unpack(bytes) as [
      number,
      number,
      number,
      number,
      number,
      number,
      unknown[][],
      unknown[][],
      unknown[] | undefined,
      unknown[] | undefined,
      unknown[] | undefined,
      unknown,
      unknown,
    ];
    if (!Number.isInteger(format) || format < 1 || format > SNAPSHOT_FORMAT)
      throw new Error(`unknown state machine snapshot format ${format}`);
    // The same invariants a restore from a file is held to (names by the rule a server stored them under),
    // so a snapshot that is well-formed but wrong is refused here, not discovered far from its cause.
    checkGeometry('snapshot', pageBytes, segmentBytes);
    const group = format >= 5 ? snapshotGroup(groupEntry, pageBytes, segmentBytes) : undefined;
    const placed: StateContent['objects'] = [];
    for (const o of objects) {
      const [id, name, size, firstPage, version, pv, data, lastToken] = o as [
        number,
        string,
        number,
        number,
        number,
        Buffer,
        Buffer | null,
        number,
      ];
      checkObjectSize('snapshot', id, name, size);
      const pageCount = Math.ceil(size / pageBytes);
      if (!(pv instanceof Uint8Array) || pv.length !== pageCount * 8) {
        throw badSnapshot(
          'snapshot',
          `object ${id}`,
          'pageVersions',
          `pageVersions must hold one version per page (${pageCount})`,
        );
      }
      const given = objectBytes?.get(id);
      if (given && (data || given.length !== size))
        throw new Error(`object ${id}: ${given.length} bytes given beside the snapshot for ${size}`);
      const pageVersions = pageVersionsFrom(pv, pageCount);
      placed.push({ id, name, size, firstPage, version, pageVersions, lastToken, data: given ?? data });
    }
    const restoredLogs = format >= 2 && logs ? logs : [];
    const restoredUsers = format >= 4 && users ? users : [];
    checkContent(
      {
        pageBytes,
        segmentBytes,
        nextObjectId,
        nextSessionId,
        objects: placed,
        logs: restoredLogs,
        users: restoredUsers,
      },
      { what: 'snapshot', storedNames: true },
    );
    const sm = new StateMachine({ ...opts, pageBytes, segmentBytes, ...(group ? { group } : {}) });
    if (format >= 6) {
      try {
        sm.slots = validateSlotTable(slots);
      } catch (err) {
        throw badSnapshot('snapshot', '', 'slots', (err as Error).message);
      }
    }
    if (format >= 7) {
      try {
        if (!Array.isArray(moves)) throw new Error('moves must be a list');
        for (const entry of moves) {
          const m = moveFromEntry(entry);
          sm.moves.set(m.id, m);
        }
      } catch (err) {
        throw badSnapshot('snapshot', '', 'moves', (err as Error).message);
      }
    }
    sm.appliedIndex = appliedIndex;
    sm.nextObjectId = nextObjectId;
    sm.nextSessionId = nextSessionId;
    sm.logs = SharedLogs.restore(restoredLogs);
    sm.restoreUsers(restoredUsers);
    for (let i = 0; i < objects.length; i++) {
      const o = objects[i]!;
      const writer = o[8] as number;
      const readers = o[9] as number;
      const queue = o[10] as [number, number, WaitMode][];
      const cachedBy = o[11] as number[];
      const c = placed[i]!;
      const obj = sm.placeObject(c, objectBytes?.get(c.id) !== undefined);
      obj.writer = writer;
      obj.readers = readers;
      for (const [sessionId, seq, mode] of queue) {
        if (mode !== 'read' && mode !== 'write' && (mode !== 'delete' || format < 3)) {
          throw badSnapshot(
            'snapshot',
            `object ${c.id}`,
            'queue',
            `a queued wait's mode must be read, write or (format 3) delete; got ${describeMode(mode)}`,
          );
        }
        obj.queue.push({ sessionId, seq, mode });
      }
      for (const sid of cachedBy) obj.cachedBy.add(sid);
    }
    if (objectBytes) {
      for (const id of objectBytes.keys())
        if (!sm.byId.has(id)) throw new Error(`bytes given for object ${id}, which the snapshot lacks`);
    }
    for (const s of sessions) {
      // A session from a snapshot written before secrets existed has none: it cannot be resumed.
      const [id, timeoutMs, clientName, holds, waiting, done, cached, secret = ''] = s as [
        number,
        number,
        string | null,
        [number, LockMode, number[]][],
        [number, number][],
        [number, Result][],
        number[],
        string?,
      ];
      // Ids are handed out from nextSessionId: one at or above it would be handed out again.
      if (!Number.isSafeInteger(id) || id < 1 || id >= nextSessionId || sm.sessions.has(id)) {
        throw badSnapshot(
          'snapshot',
          `session ${id}`,
          'sessionId',
          `session id ${id} must be a unique integer >= 1 below nextSessionId (${nextSessionId})`,
        );
      }
      sm.sessions.set(id, {
        id,
        timeoutMs,
        clientName,
        holds: new Map(holds.map(([oid, mode, tokens]) => [oid, { mode, tokens }])),
        waiting: new Map(waiting.map(([seq, objectId]) => [seq, { objectId }])),
        done: new Map(done),
        cached: new Set(cached),
        secret,
      });
      if (waiting.length > 0) sm.waitingSessions.add(sm.sessions.get(id)!);
    }
    return sm;
  }

  /**
   * The durable content only (objects with their bytes and versions, shared logs, id counters, users and
   * their rules, a shard group's range and slot table), without sessions, locks or caches: what a
   * consolidated snapshot keeps and a restored cluster starts from.
   */
  exportContent(): StateContent {
    const objects = this.sortedObjects().map((o) => ({
      id: o.id,
      name: o.name,
      size: o.size,
      firstPage: o.firstPage,
      version: o.version,
      // A copy: writes change page versions in place (the bytes are protected by freeze() instead).
      pageVersions: Float64Array.from(o.pageVersions),
      lastToken: o.lastToken,
      data: o.data,
    }));
    return {
      pageBytes: this.pageBytes,
      segmentBytes: this.segmentBytes,
      nextObjectId: this.nextObjectId,
      nextSessionId: this.nextSessionId,
      objects,
      logs: this.logs.snapshot(),
      // Only when there are users, so content from before users (and without them) reads the same.
      ...(this.users.size > 0 ? { users: this.userEntries() } : {}),
      // Likewise only a group's, or a table other than the default: an ungrouped state exports as before.
      ...(sameGroupRange(this.group, wholeSegment(this.segmentBytes)) ? {} : { group: { ...this.group } }),
      ...(isSingleGroupSlotTable(this.slots, this.group.id) ? {} : { slotTable: this.slotsEntry() }),
    };
  }

  /**
   * A state machine holding `content` and nothing else (no sessions, no locks), applied up to `appliedIndex`.
   * The content comes from a file (a consolidated snapshot), so it is checked first: INVALID_ARGUMENT with
   * details { reason: 'BAD_SNAPSHOT', field } and nothing built when it breaks an invariant (see
   * core/content-check.ts); `what` starts that error's message.
   */
  static fromContent(content: StateContent, appliedIndex = 0, what = 'restore'): StateMachine {
    checkContent(content, { what });
    const sm = new StateMachine({
      pageBytes: content.pageBytes,
      segmentBytes: content.segmentBytes,
      ...(content.group ? { group: content.group } : {}),
      ...(content.slotTable ? { slotTable: content.slotTable } : {}),
    });
    sm.appliedIndex = appliedIndex;
    sm.nextObjectId = content.nextObjectId;
    sm.nextSessionId = content.nextSessionId;
    for (const o of content.objects)
      sm.placeObject({ ...o, pageVersions: Float64Array.from(o.pageVersions) });
    sm.logs = SharedLogs.restore(content.logs);
    sm.restoreUsers(content.users ?? []);
    return sm;
  }

  /** Users from checked entries (see {@link StateContent.users}). */
  private restoreUsers(entries: unknown[]): void {
    for (const e of entries) {
      const [name, salt, n, r, p, hash, rules] = e as [
        string,
        string,
        number,
        number,
        number,
        string,
        AclRule[],
      ];
      this.users.set(name, { name, password: { salt, n, r, p, hash }, rules: new Map(rules) });
    }
  }

  /**
   * Puts an object back at its pages (restore paths), unlocked and cached by nobody; its bytes are copied
   * so the state never shares memory with a decoded buffer, unless `owned` (a buffer made for it alone).
   * Throws if it overlaps another object or the end.
   */
  private placeObject(o: StateContent['objects'][number], owned = false): SegmentObject {
    const pageCount = Math.ceil(o.size / this.pageBytes);
    this.allocator.reserve(o.firstPage, pageCount);
    const obj: SegmentObject = {
      id: o.id,
      name: o.name,
      size: o.size,
      firstPage: o.firstPage,
      pageCount,
      address: o.firstPage * this.pageBytes,
      version: o.version,
      pageVersions: o.pageVersions,
      data: o.data && !owned ? Buffer.from(o.data) : o.data,
      lastToken: o.lastToken,
      writer: 0,
      readers: 0,
      queue: [],
      cachedBy: new Set(),
    };
    this.byName.set(o.name, obj);
    this.byId.set(o.id, obj);
    this.objectBytes += objectHeldBytes(o.size, pageCount);
    return obj;
  }

  /** A short digest of the whole state, for comparing replicas. */
  digest(): string {
    return createHash('sha256').update(this.snapshot()).digest('hex').slice(0, 16);
  }

  // --- queries (read-only; not commands) ---

  stat(name: string): ObjectRecord | undefined {
    const obj = this.byName.get(name);
    return obj ? record(obj) : undefined;
  }

  list(prefix: string): ObjectRecord[] {
    const out: ObjectRecord[] = [];
    for (const obj of this.byName.values()) if (obj.name.startsWith(prefix)) out.push(record(obj));
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  object(id: number): SegmentObject | undefined {
    return this.byId.get(id);
  }

  /**
   * Whom the waits of session `sessionId` are behind, for a probe of a cycle across shard groups: for each
   * object it waits for, the other sessions holding it in a conflicting mode (waiting themselves or not:
   * they may wait in another group) and those with a conflicting wait queued ahead. One entry per session
   * and object.
   */
  waitsBehind(sessionId: number): { sessionId: number; name: string }[] {
    const session = this.sessions.get(sessionId);
    if (!session) return [];
    const out: { sessionId: number; name: string }[] = [];
    const seen = new Set<string>();
    const add = (id: number, name: string) => {
      const key = `${id}:${name}`;
      if (id === sessionId || seen.has(key)) return;
      seen.add(key);
      out.push({ sessionId: id, name });
    };
    for (const [seq, w] of session.waiting) {
      const obj = this.byId.get(w.objectId);
      if (!obj) continue;
      const at = obj.queue.findIndex((q) => q.sessionId === sessionId && q.seq === seq);
      if (at < 0) continue;
      const mode = obj.queue[at]!.mode;
      for (let i = 0; i < at; i++) {
        const q = obj.queue[i]!;
        if (conflicts(mode, q.mode)) add(q.sessionId, obj.name);
      }
      for (const id of obj.cachedBy) {
        const hold = this.sessions.get(id)?.holds.get(obj.id);
        if (hold && conflicts(mode, hold.mode)) add(id, obj.name);
      }
    }
    return out;
  }

  /** Objects someone holds now (read or write), in no particular order: one pass, no copy of the others. */
  lockedObjects(): SegmentObject[] {
    const out: SegmentObject[] = [];
    for (const obj of this.byId.values()) if (obj.writer !== 0 || obj.readers > 0) out.push(obj);
    return out;
  }

  objectNamed(name: string): SegmentObject | undefined {
    return this.byName.get(name);
  }

  hasSession(id: number): boolean {
    return this.sessions.has(id);
  }

  sessionIds(): number[] {
    return [...this.sessions.keys()];
  }

  /** The secret session `id` was opened with ('' if none, or no such session). */
  sessionSecret(id: number): string {
    return this.sessions.get(id)?.secret ?? '';
  }

  sessionTimeoutMs(id: number): number | undefined {
    return this.sessions.get(id)?.timeoutMs;
  }

  /** Pages of `obj` a client holding (cachedId, cachedVersion) lacks, ascending. */
  pagesSince(obj: SegmentObject, cachedId: number, cachedVersion: number): number[] {
    // A fresh local copy starts zero-filled, which is what version 1 (just created) holds.
    const since = cachedId === obj.id && cachedVersion >= 1 ? cachedVersion : 1;
    const pages: number[] = [];
    if (since >= obj.version) return pages;
    const versions = obj.pageVersions;
    for (let p = 0; p < versions.length; p++) if (versions[p]! > since) pages.push(p);
    return pages;
  }

  get freePages(): number {
    return this.allocator.freePages;
  }

  /**
   * Bytes the state holds for its objects (each counted at its full size from its creation, as if written)
   * and its shared logs' retained records: what the memory budget counts as the state. Derived from the
   * applied commands only, so every replica at the same index says the same.
   */
  heldBytes(): number {
    return this.objectBytes + this.logs.retainedBytes;
  }

  /** The retained bytes of shared log `name` and its retention, or null when there is no such log. */
  logSize(name: string): { bytes: number; maxBytes: number } | null {
    const log = this.logs.get(name);
    return log ? { bytes: log.bytes, maxBytes: log.maxBytes } : null;
  }

  objectCount(): number {
    return this.byName.size;
  }

  sessionCount(): number {
    return this.sessions.size;
  }

  /** Locks held and waited for, over all objects (a scan: for metrics, read when scraped). */
  lockStats(): { readHolds: number; writeHolds: number; waiters: number } {
    let readHolds = 0;
    let writeHolds = 0;
    let waiters = 0;
    for (const obj of this.byId.values()) {
      readHolds += obj.readers;
      if (obj.writer !== 0) writeHolds++;
      waiters += obj.queue.length;
    }
    return { readHolds, writeHolds, waiters };
  }
}

/** Where an object's bytes sit in its snapshot entry. */
const OBJECT_DATA_AT = 6;

/** An object as its snapshot entry; the bytes at {@link OBJECT_DATA_AT}. */
function objectEntry(o: SegmentObject): unknown[] {
  return [
    o.id,
    o.name,
    o.size,
    o.firstPage,
    o.version,
    pageVersionBytes(o.pageVersions),
    o.data,
    o.lastToken,
    o.writer,
    o.readers,
    o.queue.map((w) => [w.sessionId, w.seq, w.mode]),
    [...o.cachedBy],
  ];
}

/** Per object, beside its bytes and page versions: its record, maps and sets (an estimate, the same everywhere). */
export const OBJECT_OVERHEAD_BYTES = 512;

/** What an object of `size` bytes takes in memory once written: its bytes, its page versions, its record. */
export function objectHeldBytes(size: number, pageCount: number): number {
  return size + pageCount * 8 + OBJECT_OVERHEAD_BYTES;
}

/** An object's page versions as the bytes snapshots store them (a view, not a copy). */
export function pageVersionBytes(versions: Float64Array): Buffer {
  return Buffer.from(versions.buffer, versions.byteOffset, versions.byteLength);
}

/** Page versions read back from {@link pageVersionBytes}' bytes, for an object of `pageCount` pages. */
export function pageVersionsFrom(bytes: Uint8Array, pageCount: number): Float64Array {
  const versions = new Float64Array(pageCount);
  Buffer.from(versions.buffer).set(bytes);
  return versions;
}

// msgpack framing, so a frozen view can frame the bytes it does not copy exactly as the codec would.
const MSGPACK_NIL = Buffer.of(0xc0);

function lengthHeader(n: number, tag16: number, tag32: number): Buffer {
  const wide = n >= 0x10000;
  const b = Buffer.alloc(wide ? 5 : 3);
  b[0] = wide ? tag32 : tag16;
  if (wide) b.writeUInt32BE(n, 1);
  else b.writeUInt16BE(n, 1);
  return b;
}

function arrayHeader(n: number): Buffer {
  return n < 16 ? Buffer.of(0x90 | n) : lengthHeader(n, 0xdc, 0xdd);
}

function binHeader(n: number): Buffer {
  return n < 0x100 ? Buffer.of(0xc4, n) : lengthHeader(n, 0xc5, 0xc6);
}

/** The codec's encoding of `values` one after the other (an array's encoding without its header). */
function packElements(values: unknown[]): Buffer {
  return snapshotCodec.pack(values).subarray(arrayHeader(values.length).length);
}

/** Gathers small encoded pieces into one part between the large parts that are kept by reference. */
class PartList {
  private readonly parts: Buffer[] = [];
  private small: Buffer[] = [];
  bytes = 0;

  add(piece: Buffer): void {
    this.small.push(piece);
    this.bytes += piece.length;
  }

  addShared(part: Buffer): void {
    this.flush();
    if (part.length > 0) this.parts.push(part);
    this.bytes += part.length;
  }

  finish(): Buffer[] {
    this.flush();
    return this.parts;
  }

  private flush(): void {
    if (this.small.length > 0) this.parts.push(Buffer.concat(this.small));
    this.small = [];
  }
}

function record(obj: SegmentObject): ObjectRecord {
  return { id: obj.id, name: obj.name, size: obj.size, address: obj.address, version: obj.version };
}

function compatible(obj: SegmentObject, mode: WaitMode): boolean {
  return mode === 'read' ? obj.writer === 0 : obj.writer === 0 && obj.readers === 0;
}

/** Whether a wait in `mode` must wait for a grant (held or queued before it) in `other`. */
function conflicts(mode: WaitMode, other: WaitMode): boolean {
  return mode !== 'read' || other !== 'read';
}

function describeMode(mode: unknown): string {
  return typeof mode === 'string' ? JSON.stringify(mode.slice(0, 20)) : typeof mode;
}

function removeWaiter(obj: SegmentObject, sessionId: number, seq: number): void {
  const i = obj.queue.findIndex((w) => w.sessionId === sessionId && w.seq === seq);
  if (i >= 0) obj.queue.splice(i, 1);
}

/** Code-unit order, the same everywhere (localeCompare is not). */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function userInfo(u: StoredUser): UserInfo {
  return { name: u.name, rules: [...u.rules].sort((a, b) => compare(a[0], b[0])) };
}

/** True when `t` is the table a state of group `id` starts with when given none (singleGroupSlotTable). */
function isSingleGroupSlotTable(t: SlotTable, id: number): boolean {
  const [range] = t.ranges;
  const [group] = t.groups;
  return (
    t.version === 1 &&
    t.ranges.length === 1 &&
    range![0] === 0 &&
    range![1] === SLOT_COUNT - 1 &&
    range![2] === id &&
    t.groups.length === 1 &&
    group!.id === id &&
    group!.members.length === 0
  );
}

/** A format 5 snapshot's [groupId, start, bytes], checked. */
function snapshotGroup(entry: unknown, pageBytes: number, segmentBytes: number): GroupRange {
  const [id, start, bytes] = Array.isArray(entry) ? (entry as number[]) : [];
  const group = { id: id as number, start: start as number, bytes: bytes as number };
  const problem =
    Array.isArray(entry) && entry.length === 3
      ? groupRangeProblem(group, pageBytes, segmentBytes)
      : 'the group must be [groupId, start, bytes]';
  if (problem) throw badSnapshot('snapshot', '', 'group', problem);
  return group;
}

/** The refusal of a change to a name whose slot a move froze: the node waits for the move and proposes again. */
function frozenRefusal(name: string, frozen: { moveId: string; slot: number }): Result {
  return {
    ok: false,
    code: 'UNAVAILABLE',
    message: `"${name}" (slot ${frozen.slot}) is frozen while move ${frozen.moveId} copies it to another group`,
    details: { reason: 'FROZEN', slot: frozen.slot, moveId: frozen.moveId },
  };
}

const isUint = (v: unknown, min = 0): v is number => Number.isSafeInteger(v) && (v as number) >= min;

/** What is wrong with an object a move imports, or null. */
function movedObjectProblem(o: MovedObject, move: MoveState): string | null {
  if (!o || typeof o !== 'object') return 'an imported object must be a map';
  try {
    validateStoredName(o.name);
  } catch (err) {
    return (err as Error).message;
  }
  if (!spansHold(move.slots, slotOf(o.name)))
    return `"${o.name}" (slot ${slotOf(o.name)}) is not in the slots of move ${move.id}`;
  if (!isUint(o.size, 1) || o.size > MAX_OBJECT_BYTES)
    return `"${o.name}": size must be 1..${MAX_OBJECT_BYTES}; got ${String(o.size)}`;
  if (!isUint(o.version, 1)) return `"${o.name}": version must be an integer >= 1`;
  if (!isUint(o.lastToken)) return `"${o.name}": lastToken must be an integer >= 0`;
  if (typeof o.written !== 'boolean') return `"${o.name}": written must be true or false`;
  return null;
}

/** What is wrong with a log piece a move imports, or null. */
function movedLogProblem(l: MovedLog, move: MoveState): string | null {
  if (!l || typeof l !== 'object') return 'an imported log must be a map';
  try {
    validateStoredName(l.name);
  } catch (err) {
    return (err as Error).message;
  }
  if (!spansHold(move.slots, slotOf(l.name)))
    return `log "${l.name}" (slot ${slotOf(l.name)}) is not in the slots of move ${move.id}`;
  if (!isUint(l.maxBytes, 1) || !isUint(l.first))
    return `log "${l.name}": maxBytes and first must be integers`;
  if (!Array.isArray(l.sizes) || !l.sizes.every((n) => isUint(n)))
    return `log "${l.name}": sizes must be a list of byte counts`;
  return null;
}
