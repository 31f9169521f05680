/**
 * The commands of the replicated log, and the results and effects of applying them.
 * Every change to the segment's state is one of these, applied in log order by {@link StateMachine.apply}.
 */
import type {
  AccessRight,
  AclRule,
  CancelReason,
  ErrorCode,
  PasswordHash,
  SlotTable,
} from '@segmem/protocol';
import { Packr } from 'msgpackr';
import type { MovedLog, MovedObject, SlotSpan } from './moves.js';

export type LockMode = 'read' | 'write';

export type Command =
  /** `secret`: what a client must show to resume the session (chosen by the leader; none: not resumable). */
  | { op: 'open'; timeoutMs: number; clientName: string | null; secret?: string }
  | { op: 'close'; sessionId: number }
  | { op: 'expire'; sessionIds: number[] }
  /**
   * Appended once after recovery: sessions do not survive a restart of a single-member group. Session ids
   * continue from `sessionIdFloor` (chosen from the clock by the node), so an id handed out just before a
   * crash, in a log record the crash lost, is never handed out again to someone else.
   */
  | { op: 'restart'; sessionIdFloor: number }
  | { op: 'create'; sessionId: number; seq: number; name: string; size: number; ifNotExists: boolean }
  /** Deletes at once, or queues like a writer until the object's holders release it. */
  | { op: 'delete'; sessionId: number; seq: number; name: string }
  | { op: 'acquire'; sessionId: number; seq: number; name: string; mode: LockMode }
  | { op: 'cancel'; sessionId: number; seq: number; reason: CancelReason }
  | {
      op: 'release';
      sessionId: number;
      seq: number;
      name: string;
      mode: LockMode;
      token: number;
      /** [offset, length] pairs, sorted and disjoint; their bytes are `data`, concatenated. */
      ranges: [number, number][];
      data: Buffer | null;
      /** A write release: keep the write lock (a write delegation) unless another session waits. */
      keep?: boolean;
    }
  /** Appends records to a shared log (created on first use with retention `maxBytes`, null: the default). */
  | {
      op: 'append';
      sessionId: number;
      seq: number;
      name: string;
      /** Byte length of each record; the records are `data`, concatenated. */
      sizes: number[];
      maxBytes: number | null;
      data: Buffer | null;
    }
  /** Drops a shared log's records before sequence number `before`. */
  | { op: 'truncate'; sessionId: number; seq: number; name: string; before: number }
  /**
   * Adds a user (ALREADY_EXISTS if the name is taken). The password arrives hashed (the admin's client ran
   * scrypt): the state machine stays pure, and the password itself is never in the log.
   */
  | {
      op: 'userAdd';
      sessionId: number;
      seq: number;
      user: string;
      password: PasswordHash;
      /** Rules the user starts with (so a first admin can be made in one step). */
      rules?: AclRule[];
    }
  /** Removes a user and its rules (NOT_FOUND if there is no such user). */
  | { op: 'userRemove'; sessionId: number; seq: number; user: string }
  /** Sets the right of a user's rule for a name prefix (adding the rule or replacing its right). */
  | { op: 'aclSet'; sessionId: number; seq: number; user: string; prefix: string; right: AccessRight }
  /** Removes a user's rule for a name prefix (NOT_FOUND if the user has none for it). */
  | { op: 'aclRemove'; sessionId: number; seq: number; user: string; prefix: string }
  /**
   * Installs a newer slot table (its version above the one held; INVALID_ARGUMENT and no change otherwise).
   * Not tied to a session: whoever moves slots between groups proposes it.
   */
  | { op: 'slots'; table: SlotTable }
  /**
   * Starts moving `slots` from group `from` to group `to` (core/moves.ts): the source freezes them (new
   * creates, deletes, acquires and log changes on their names wait), the target accepts imports for them.
   */
  | { op: 'moveFreeze'; moveId: string; from: number; to: number; slots: SlotSpan[] }
  /**
   * Copies objects and log records of a move's slots into the target (allocated in its range, served only
   * once it owns the slots). `data`: the written objects' bytes in order, then the log pieces' records.
   */
  | { op: 'moveImport'; moveId: string; objects: MovedObject[]; logs: MovedLog[]; data: Buffer | null }
  /** Ends a move by installing the table that gives its slots to the target (the source drops them). */
  | { op: 'moveSwitch'; moveId: string; table: SlotTable }
  /** Rolls a move back: the source unfreezes, the target drops what the move imported. */
  | { op: 'moveAbort'; moveId: string };

/**
 * Commands that change durable data. Under fsync "always"/"batch" they are applied (made visible)
 * only once the log holds them on disk. The others (locks, sessions) only matter while sessions live,
 * and sessions end with the process that holds them, so they need not wait for the disk.
 */
export function mustSync(cmd: Command): boolean {
  return (
    cmd.op === 'create' ||
    cmd.op === 'delete' ||
    cmd.op === 'append' ||
    cmd.op === 'truncate' ||
    cmd.op === 'userAdd' ||
    cmd.op === 'userRemove' ||
    cmd.op === 'aclSet' ||
    cmd.op === 'aclRemove' ||
    cmd.op === 'slots' ||
    cmd.op === 'moveFreeze' ||
    cmd.op === 'moveImport' ||
    cmd.op === 'moveSwitch' ||
    cmd.op === 'moveAbort' ||
    (cmd.op === 'release' && cmd.mode === 'write')
  );
}

export interface ObjectRecord {
  id: number;
  name: string;
  size: number;
  address: number;
  version: number;
}

export interface Grant {
  object: ObjectRecord;
  token: number;
  mode: LockMode;
  /**
   * Other sessions wait behind this grant for a mode it excludes: it should not be cached. Present only when
   * true, so grants (kept in the replicated dedup results) read as before when nobody waits.
   */
  contended?: true;
}

/**
 * What applying a command answered. A failure's `details` (machine-readable facts, such as where a name's slot
 * lives) are present only on failures that are never remembered for retries, so the replicated dedup
 * results read as before.
 */
export type Result =
  | { ok: true; value: unknown }
  | { ok: false; code: ErrorCode; message: string; details?: Record<string, unknown> };

export type Effect =
  /** A queued acquire was granted. */
  | { kind: 'grant'; sessionId: number; seq: number; grant: Grant }
  /** A queued delete was applied (the object's holders had released it). */
  | { kind: 'deleted'; sessionId: number; seq: number }
  /**
   * A queued acquire or delete ended without its effect (cancelled, deadlock, object deleted, session closed,
   * its slot moved to another group: then `details` say where, as a MOVED refusal's do).
   */
  | {
      kind: 'fail';
      sessionId: number;
      seq: number;
      code: ErrorCode;
      message: string;
      details?: Record<string, unknown>;
    }
  /** Another session waits for the object: these sessions should give back the grants they hold of it. */
  | { kind: 'revoke'; sessionIds: number[]; objectId: number }
  /** These sessions cache a stale copy of the object (version 0: deleted). */
  | { kind: 'invalidate'; sessionIds: number[]; objectId: number; version: number }
  /** A shared log gained records, was truncated or was deleted: readers waiting on it should look again. */
  | { kind: 'logChanged'; name: string }
  /** A session ended; its connection should be told. */
  | { kind: 'sessionClosed'; sessionId: number; reason: 'goodbye' | 'expired' | 'restart' };

export interface Outcome {
  result: Result;
  effects: Effect[];
}

// --- log record codec: u32 header length | msgpack header | raw data bytes (never re-encoded) ---

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export function encodeCommand(cmd: Command): Buffer[] {
  let data: Buffer | null = null;
  let header: unknown = cmd;
  if ((cmd.op === 'release' || cmd.op === 'append' || cmd.op === 'moveImport') && cmd.data) {
    data = cmd.data;
    header = { ...cmd, data: null };
  }
  const body = packr.pack(header);
  const prefix = Buffer.allocUnsafe(4);
  prefix.writeUInt32LE(body.length, 0);
  return data && data.length > 0 ? [prefix, body, data] : [prefix, body];
}

/**
 * A command as the head of its encoding (length prefix and header, one small buffer) and its data (page
 * bytes or log records, the very buffer the command holds): a replicated log keeps the two apart so that
 * the data is never copied into one record.
 */
export function encodeCommandHead(cmd: Command): { head: Buffer; data: Buffer | undefined } {
  const [prefix, body, data] = encodeCommand(cmd);
  return { head: Buffer.concat([prefix!, body!]), data: data && retainable(data) };
}

/**
 * `data` itself, or a copy when it is a small view of a much larger buffer (a few bytes of one socket read):
 * the log keeps entries in memory until compaction, and a view would keep the whole read alive with it.
 */
function retainable(data: Buffer): Buffer {
  return data.byteLength * 2 >= data.buffer.byteLength ? data : Buffer.from(data);
}

/**
 * Decodes a command from its record; `data`, when given, is the rest of the record held apart (see
 * {@link encodeCommandHead}), and `record` then holds the head alone.
 */
export function decodeCommand(record: Buffer, data?: Buffer): Command {
  if (record.length < 4) throw new Error('log record too short for a command');
  const headerBytes = record.readUInt32LE(0);
  if (4 + headerBytes > record.length) throw new Error('log record header runs past its end');
  if (data && 4 + headerBytes !== record.length)
    throw new Error('log record head has bytes after its header');
  const cmd = packr.unpack(record.subarray(4, 4 + headerBytes)) as Command;
  if ((cmd.op === 'release' && cmd.mode === 'write') || cmd.op === 'append' || cmd.op === 'moveImport') {
    cmd.data = data ?? record.subarray(4 + headerBytes);
  }
  return cmd;
}
