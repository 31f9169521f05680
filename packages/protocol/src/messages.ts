/**
 * The message catalogue: every message segmem sends over TCP, its type code, header fields, payload, answer,
 * and the validation each field gets when decoded. docs/protocol.md has the same table for readers.
 *
 * Conventions:
 * - Integers are non-negative safe integers unless a field says otherwise; `name` fields follow
 *   {@link validateName}. Unknown extra header fields are ignored (forward compatibility); a missing or bad
 *   required field is refused.
 * - Encoders trust their TypeScript-typed input and do not validate it (keep them fast); decoders validate
 *   everything and return fresh objects holding only the known fields.
 * - {@link decodeRequest} throws PROTOCOL for a frame that is not a request (unknown type, a response or push
 *   type, requestId 0, a HELLO of another protocol version): the connection is then closed. It throws
 *   INVALID_ARGUMENT, its message naming the message type and field, for a bad field: only that request fails.
 * - {@link decodeOk}, {@link decodeError}, {@link decodeInvalidate} decode what a server sent; a client never
 *   trusts a bad answer, so every problem there is PROTOCOL.
 */
import { type ErrorCode, invalidArgument, isErrorCode, protocolError, SegmemError } from './errors.js';
import { EMPTY_PAYLOAD, encodeFrame, type Frame, frameLength, MAX_U32 } from './frame.js';
import {
  MAX_BARRIER_HOLD_MS,
  MAX_ERROR_MESSAGE_CHARS,
  MAX_HEADER_DEPTH,
  MAX_LOG_BATCH_BYTES,
  MAX_LOG_BATCH_RECORDS,
  MAX_LOG_MAX_BYTES,
  MAX_LOG_READ_BYTES,
  MAX_LOG_RECORD_BYTES,
  MAX_NAME_BYTES,
  MAX_OBJECT_BYTES,
  MAX_RULES_PER_USER,
  MAX_SEGMENT_BYTES,
  MAX_SESSION_SECRET_BYTES,
  MAX_SNAPSHOT_CHUNK_BYTES,
  MAX_TIMEOUT_MS,
  MAX_TOKEN_BYTES,
  MAX_WATCHES_PER_SESSION,
  PAGE_BYTES,
  PROTOCOL_VERSION,
} from './limits.js';
import { sanitizeHeaderValue } from './msgpack.js';
import { type SlotTable, validateSlotTable } from './slots.js';
import {
  type AccessRight,
  type AclRule,
  type PasswordHash,
  type UserInfo,
  validateAclPrefix,
  validatePassword,
  validatePasswordHash,
  validateRight,
  validateUserName,
} from './users.js';
import {
  type AccessMode,
  arrayField,
  type ByteRange,
  boolField,
  describeValue,
  grantPayloadBytes,
  isPlainMap,
  mapField,
  optionalField,
  stringField,
  toWellFormedString,
  uintField,
  type VersionPair,
  validateMode,
  validateName,
  validatePages,
  validatePrefix,
  validateRanges,
  validateSessionTimeoutMs,
  validateSize,
  validateStoredName,
  validateTimeoutMs,
  versionPairsField,
} from './validate.js';

// ---------------------------------------------------------------------------------------------------------------
// Type codes

/** Wire codes of every message type: requests 0x01.., responses 0x40.., server pushes 0x60... */
export const MessageType = {
  HELLO: 0x01,
  KEEPALIVE: 0x02,
  CREATE: 0x03,
  DELETE: 0x04,
  STAT: 0x05,
  LIST: 0x06,
  ACQUIRE: 0x07,
  RELEASE: 0x08,
  CANCEL: 0x09,
  VALIDATE: 0x0a,
  GOODBYE: 0x0b,
  MEMBERSHIP: 0x0c,
  LOG_APPEND: 0x0d,
  LOG_READ: 0x0e,
  LOG_TRUNCATE: 0x0f,
  READ_PAGES: 0x10,
  SNAPSHOT: 0x11,
  SNAPSHOT_READ: 0x12,
  STATUS: 0x13,
  OK: 0x40,
  ERROR: 0x41,
  INVALIDATE: 0x60,
  REVOKE: 0x61,
  WATCH: 0x14,
  UNWATCH: 0x15,
  CHANGED: 0x62,
  USERS: 0x16,
  SLOTS: 0x17,
  BARRIER: 0x18,
  PROBE: 0x1d,
  PROBED: 0x63,
  MOVE: 0x1a,
  MOVE_READ: 0x1b,
} as const;

export type MessageTypeName = keyof typeof MessageType;

/** The request types, each answered by OK or ERROR with the request's requestId. */
export const REQUEST_TYPES = [
  'HELLO',
  'KEEPALIVE',
  'CREATE',
  'DELETE',
  'STAT',
  'LIST',
  'ACQUIRE',
  'RELEASE',
  'CANCEL',
  'VALIDATE',
  'GOODBYE',
  'MEMBERSHIP',
  'LOG_APPEND',
  'LOG_READ',
  'LOG_TRUNCATE',
  'READ_PAGES',
  'SNAPSHOT',
  'SNAPSHOT_READ',
  'STATUS',
  'WATCH',
  'UNWATCH',
  'USERS',
  'SLOTS',
  'BARRIER',
  'PROBE',
  'MOVE',
  'MOVE_READ',
] as const;

export type RequestType = (typeof REQUEST_TYPES)[number];

/** Reasons a CANCEL may give. */
export const CANCEL_REASONS = ['TIMEOUT', 'ABORTED', 'DEADLOCK'] as const;
export type CancelReason = (typeof CANCEL_REASONS)[number];

const NAME_BY_CODE: (MessageTypeName | undefined)[] = new Array(256).fill(undefined);
for (const [name, code] of Object.entries(MessageType)) NAME_BY_CODE[code] = name as MessageTypeName;

/** The name of a type code, or undefined for a code no message uses. */
export function messageTypeName(code: number): MessageTypeName | undefined {
  return NAME_BY_CODE[code];
}

/** True when `code` is the type code of a request. */
export function isRequestCode(code: number): boolean {
  return (
    (code >= MessageType.HELLO && code <= MessageType.BARRIER) ||
    code === MessageType.MOVE ||
    code === MessageType.MOVE_READ ||
    code === MessageType.PROBE
  );
}

function hex(code: number): string {
  return `0x${code.toString(16).padStart(2, '0')}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Shared records

/** An object as the directory knows it. */
export interface ObjectRecord {
  /** Object id, >= 1, never reused. */
  id: number;
  name: string;
  /** Bytes, 1..MAX_OBJECT_BYTES. */
  size: number;
  /** Byte offset of the object in the segment, a multiple of PAGE_BYTES. */
  address: number;
  /** >= 1; increases with every write release. */
  version: number;
}

/** Validates an ObjectRecord (INVALID_ARGUMENT naming the field) and returns a copy with only its fields. */
export function validateObjectRecord(value: unknown, field = 'object'): ObjectRecord {
  const o = mapField(value, field);
  const id = uintField(o.id, `${field}.id`, 1);
  const name = validateStoredName(o.name, `${field}.name`);
  const size = validateSize(o.size, `${field}.size`);
  const address = uintField(o.address, `${field}.address`, 0, MAX_SEGMENT_BYTES - size);
  if (address % PAGE_BYTES !== 0) {
    throw invalidArgument(`${field}.address must be a multiple of ${PAGE_BYTES}; got ${address}`, {
      field: `${field}.address`,
    });
  }
  const version = uintField(o.version, `${field}.version`, 1);
  return { id, name, size, address, version };
}

function objectRecordsField(value: unknown, field: string): ObjectRecord[] {
  const list = arrayField(value, field);
  const out: ObjectRecord[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) out[i] = validateObjectRecord(list[i], `${field}[${i}]`);
  return out;
}

function copyRecord(o: ObjectRecord): ObjectRecord {
  return { id: o.id, name: o.name, size: o.size, address: o.address, version: o.version };
}

// ---------------------------------------------------------------------------------------------------------------
// Requests (client -> server)

/** 0x01: opens or resumes a session; must be the first request on a connection. */
export interface HelloRequest {
  type: 'HELLO';
  /** The client's PROTOCOL_VERSION; another version is refused with ERROR PROTOCOL naming both. */
  protocol: number;
  /** The cluster the client expects to reach; null accepts any. 1..255 bytes. */
  clusterId?: string | null;
  /** Credential, 0..MAX_TOKEN_BYTES bytes; null for none. */
  token?: string | null;
  /** Log in as this user (validateUserName), with `password`; null or absent for none. */
  user?: string | null;
  /** The user's password, 1..MAX_PASSWORD_BYTES bytes; required with `user`, refused without. */
  password?: string | null;
  /** MIN_SESSION_TIMEOUT_MS..MAX_SESSION_TIMEOUT_MS. */
  sessionTimeoutMs: number;
  /** A session to resume after a reconnect (>= 1), or null for a new session. */
  resumeSessionId?: number | null;
  /** The `sessionSecret` the session was opened with: without the right one, a new session is opened. */
  resumeSecret?: string | null;
  /** The client's UDP port for invalidation hints (1..65535), or null for none. */
  udpPort?: number | null;
  /** Free text for logs, 0..255 bytes. */
  clientName?: string | null;
  /**
   * A connection that only reads pages (READ_PAGES) from whichever member it reaches, follower or leader:
   * no session is opened (the answer's sessionId is 0) and no redirect is given. Default false.
   */
  pageReader?: boolean | null;
}

/** 0x02: keeps the session alive. */
export interface KeepaliveRequest {
  type: 'KEEPALIVE';
  /**
   * Renews the session's lease on its cached grants: answered only once the server confirmed it still leads
   * its group (a Raft group: a heartbeat round with a majority) and everything it logged before is durable
   * (a single server). Absent or false: answered at once.
   */
  lease?: boolean | null;
}

/** 0x03: creates a zero-filled object. */
export interface CreateRequest {
  type: 'CREATE';
  /** Session sequence number (>= 1) for exactly-once retries. */
  seq: number;
  name: string;
  size: number;
  /** With true, an existing object of that name is answered `created: false` instead of ALREADY_EXISTS. */
  ifNotExists: boolean;
}

/**
 * 0x04: deletes an object, once its holders have released it (it waits in the object's queue like a write
 * ACQUIRE, and CANCEL names it the same way), or a shared log at once.
 */
export interface DeleteRequest {
  type: 'DELETE';
  seq: number;
  name: string;
  /** How long the server may keep the request waiting (0..MAX_TIMEOUT_MS); null or absent for no limit. */
  timeoutMs?: number | null;
}

/** 0x05: describes an object. */
export interface StatRequest {
  type: 'STAT';
  name: string;
}

/** 0x06: lists the objects whose name starts with `prefix` (empty: all). */
export interface ListRequest {
  type: 'LIST';
  prefix: string;
}

/** 0x07: takes read (shared) or write (exclusive) access; may wait (see CANCEL). */
export interface AcquireRequest {
  type: 'ACQUIRE';
  seq: number;
  name: string;
  mode: AccessMode;
  /** Id of the object the client has cached under this name, 0 for nothing cached. */
  cachedId: number;
  /** Version of the cached copy, 0 for nothing cached. */
  cachedVersion: number;
  /** How long the server may keep the request waiting (0..MAX_TIMEOUT_MS), null for no limit. */
  timeoutMs: number | null;
  /**
   * Most page bytes the grant may carry; when more pages changed, the grant lists them with `deferred` and
   * the client reads them with READ_PAGES (from a follower). Null or absent: no limit.
   */
  inlineMaxBytes?: number | null;
}

/** 0x08: gives access back; a write release carries the changed bytes. */
export interface ReleaseRequest {
  type: 'RELEASE';
  seq: number;
  name: string;
  mode: AccessMode;
  /** The fencing token of the grant being released. */
  token: number;
  /** Changed byte ranges, sorted and non-overlapping; empty for a read release. */
  ranges: ByteRange[];
  /** The bytes of `ranges`, concatenated (length = sum of range lengths); empty for a read release. */
  payload: Uint8Array;
  /**
   * A write release only: keep the write lock as a cached grant (a write delegation) if no other session
   * waits for the object; the answer's `kept` says whether it was kept. Absent or false: the lock goes back.
   */
  keep?: boolean | null;
}

/** 0x09: cancels a waiting ACQUIRE sent earlier on this connection. */
export interface CancelRequest {
  type: 'CANCEL';
  /** requestId of the ACQUIRE to cancel (>= 1). */
  requestId: number;
  reason: CancelReason;
}

/** 0x0A: asks which cached objects are stale. */
export interface ValidateRequest {
  type: 'VALIDATE';
  /** `[id, version]` of each cached object (id >= 1, version >= 1). */
  objects: VersionPair[];
}

/** 0x0B: ends the session (locks released at once). */
export interface GoodbyeRequest {
  type: 'GOODBYE';
}

/** Server ids: 1..64 characters of [A-Za-z0-9._-]. */
const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;
/** host:port, as members and clients write addresses. */
const HOST_PORT = /^(\[[^\]]{1,253}\]|[^:\s]{1,253}):(\d{1,5})$/;

/** 0x0C: the group's membership: list it, or add or remove one server (one change at a time). */
export interface MembershipRequest {
  type: 'MEMBERSHIP';
  op: 'list' | 'add' | 'remove';
  /** The server to add or remove (not for 'list'). */
  id: string | null;
  /** host:port of a server to add (where the members reach it). */
  address: string | null;
}

/** 0x10: reads pages of an object at a version, on a page-reader connection to any member (or on a session's). */
export interface ReadPagesRequest {
  type: 'READ_PAGES';
  /** The object (>= 1), as a grant named it. */
  objectId: number;
  /** The version the pages must be read at (>= 1): a member that has not applied it yet waits for it. */
  version: number;
  /** Page numbers, strictly ascending, at least one. */
  pages: number[];
  /** How long a member behind `version` may wait to catch up (0..MAX_TIMEOUT_MS) before answering UNAVAILABLE. */
  waitMs: number;
}

/** 0x11: the leader writes a consolidated snapshot of the whole segment into memory and names it. */
export interface SnapshotRequest {
  type: 'SNAPSHOT';
}

/** 0x12: reads part of a consolidated snapshot made by SNAPSHOT on this connection's server. */
export interface SnapshotReadRequest {
  type: 'SNAPSHOT_READ';
  /** The id SNAPSHOT answered (>= 1). */
  id: number;
  offset: number;
  /** 1..MAX_SNAPSHOT_CHUNK_BYTES. */
  length: number;
}

/** 0x13: where the member that answers stands (any member answers, on a page-reader connection too). */
export interface StatusRequest {
  type: 'STATUS';
}

/** 0x0D: appends records to a shared log, atomically and contiguously; creates the log on first use. */
export interface LogAppendRequest {
  type: 'LOG_APPEND';
  seq: number;
  name: string;
  /** Byte length of each record, 0..MAX_LOG_RECORD_BYTES; 1..MAX_LOG_BATCH_RECORDS records. */
  sizes: number[];
  /** Retention (1..MAX_LOG_MAX_BYTES) if this append creates the log; null for the default. Ignored otherwise. */
  maxBytes: number | null;
  /** The records, concatenated (length = sum of sizes, at most MAX_LOG_BATCH_BYTES). */
  payload: Uint8Array;
}

/** 0x0E: reads records of a shared log from a sequence number; may wait for new ones. */
export interface LogReadRequest {
  type: 'LOG_READ';
  name: string;
  /** First sequence number wanted; null for the oldest retained. */
  from: number | null;
  /** Most record bytes to answer with, 0..MAX_LOG_READ_BYTES (0: only the log's bounds). */
  maxBytes: number;
  /** When no record at `from` exists yet: how long the server may hold the request for one (0..MAX_TIMEOUT_MS). */
  waitMs: number;
}

/** 0x0F: drops the records of a shared log before a sequence number. */
export interface LogTruncateRequest {
  type: 'LOG_TRUNCATE';
  seq: number;
  name: string;
  /** Records with a smaller sequence number are dropped (at most the log's next sequence number). */
  before: number;
}

/**
 * 0x14: this session watches an object: every committed change of it (write release, delete) is pushed as
 * CHANGED while the session lives on this member. Idempotent. Not replicated: a client re-sends it after a
 * reconnect or to a new leader. At most MAX_WATCHES_PER_SESSION objects per session.
 */
export interface WatchRequest {
  type: 'WATCH';
  name: string;
}

/** 0x15: ends this session's watch of an object (CHANGED pushes for it stop). */
export interface UnwatchRequest {
  type: 'UNWATCH';
  /** The object (>= 1), as WATCH answered it. */
  objectId: number;
}

/** What USERS does: list users, add or remove one, set or remove one of a user's rules. */
export const USERS_OPS = ['list', 'add', 'remove', 'aclSet', 'aclRemove'] as const;
export type UsersOp = (typeof USERS_OPS)[number];

/**
 * 0x16: manages users and their access rules (replicated; needs the admin right on every name). The
 * password travels hashed (the client hashes it), never in clear: see {@link PasswordHash}.
 */
export interface UsersRequest {
  type: 'USERS';
  op: UsersOp;
  /** Session sequence number (>= 1) of a change, for exactly-once retries; 0 for 'list'. */
  seq: number;
  /** The user (validateUserName); required except for 'list', where it restricts the answer to that user. */
  user: string | null;
  /** 'add' only: the new user's password hash. */
  password?: PasswordHash | null;
  /** 'add' only: rules the user starts with (at most MAX_RULES_PER_USER); absent: none. */
  rules?: AclRule[] | null;
  /** 'aclSet' and 'aclRemove': the rule's name prefix, 0..255 bytes ('' : every name). */
  prefix?: string | null;
  /** 'aclSet' only. */
  right?: AccessRight | null;
}

/**
 * 0x17: the cluster's slot table as the answering group's leader holds it (any logged-in session may ask):
 * which shard group owns each hash slot, and the servers of each group.
 */
export interface SlotsRequest {
  type: 'SLOTS';
}

/** What a BARRIER asks: hold new writes back for a consistent cut, or let them go. */
export const BARRIER_OPS = ['hold', 'release'] as const;
export type BarrierOp = (typeof BARRIER_OPS)[number];

/**
 * 0x18 (leader only, admin right): `hold` stops the group's leader from proposing new write releases,
 * creates, deletes and log appends (they wait, they do not fail) and answers once everything proposed before
 * is applied; the hold ends by itself after `holdMs` (a dead coordinator cannot freeze the group). `release`
 * ends it at once. A snapshot coordinator holds every group, snapshots each, then releases them all.
 */
export interface BarrierRequest {
  type: 'BARRIER';
  op: BarrierOp;
  /** 'hold': how long it may last, 1..MAX_BARRIER_HOLD_MS; a repeated hold restarts it. 'release': 0. */
  holdMs: number;
}

/** Bytes of a client id in PROBE (a client that routes across shard groups draws one at random). */
export const CLIENT_ID_BYTES = 8;
/** Most hops a probe travels: a cycle of waits longer than this is not looked for. */
export const MAX_PROBE_HOPS = 32;

/**
 * 0x1D: a probe of a cycle of waits across shard groups (edge chasing). The session waits here (an ACQUIRE
 * or DELETE queued); the leader pushes PROBED, with `hops` + 1, to every other session its waits here are
 * behind: the holders of the objects and the conflicting waits queued ahead. `initiator` is the client that
 * started the probe; a client that is itself waiting passes a probe it receives on to the groups it waits in,
 * and a probe that comes back to its initiator closes a cycle. Answered with how many pushes went out.
 */
export interface ProbeRequest {
  type: 'PROBE';
  /** The initiating client's id: CLIENT_ID_BYTES bytes as lowercase hex. */
  initiator: string;
  /** The initiator's number for the wait it probes for (1..2^32-1). */
  probeId: number;
  /** Hops travelled so far (0..MAX_PROBE_HOPS - 1). */
  hops: number;
}

/** What MOVE does (see {@link MoveRequest}). */
export const MOVE_OPS = ['status', 'freeze', 'import', 'switch', 'abort', 'install'] as const;
export type MoveOp = (typeof MOVE_OPS)[number];

/** `[first, last]`: hash slots first..last, inclusive. */
export type SlotSpanWire = [first: number, last: number];

/** An object a move copies: its bytes follow in the payload when `written` (else it is all zero). */
export interface MovedObjectInfo {
  name: string;
  size: number;
  version: number;
  /** The source's last fencing token: the target hands out only tokens above it. */
  lastToken: number;
  written: boolean;
}

/** A piece of a shared log a move copies: records `first`.. of `sizes` bytes each, after the objects' bytes. */
export interface MovedLogInfo {
  name: string;
  /** The log's retention. */
  maxBytes: number;
  first: number;
  sizes: number[];
}

/**
 * 0x1A: one step of moving hash slots between shard groups, on the leader of one group (replicated; needs the
 * admin right on every name). 'status' proposes nothing; the others are commands of the group's log,
 * idempotent by `moveId`: 'freeze' (`from`, `to`, `slots`: the source freezes them, the target accepts
 * imports), 'import' (`objects`, `logs`, their bytes in the payload), 'switch' (`table`: the new slot table),
 * 'abort'; and 'install' (`table`, no move id: a newer table for a group no move involves). Every op answers
 * the group's move state after it.
 */
export interface MoveRequest {
  type: 'MOVE';
  op: MoveOp;
  /** Required except for 'status' and 'install'. */
  moveId: string | null;
  from?: number;
  to?: number;
  /** 'freeze'; for 'status', the slots to count objects in (default: those of the move under way). */
  slots?: SlotSpanWire[];
  table?: SlotTable;
  objects?: MovedObjectInfo[];
  logs?: MovedLogInfo[];
  payload?: Uint8Array;
}

/** Where a MOVE_READ stands: objects by name after `after`, then logs by name from record `from`. */
export interface MoveCursor {
  phase: 'objects' | 'logs';
  /** objects: the last name read (null: from the first); logs: the log being read (null: from the first). */
  after: string | null;
  /** logs: the next record of log `after`. */
  from: number;
}

/**
 * 0x1B: reads the objects and shared logs of a frozen move's slots from its source group's leader, in
 * chunks of about `maxBytes` (at least one object or log piece). Refused (UNAVAILABLE, reason 'BUSY') while
 * an object of the slots is still held or waited for.
 */
export interface MoveReadRequest {
  type: 'MOVE_READ';
  moveId: string;
  cursor: MoveCursor;
  maxBytes: number;
}

export type Request =
  | HelloRequest
  | KeepaliveRequest
  | CreateRequest
  | DeleteRequest
  | StatRequest
  | ListRequest
  | AcquireRequest
  | ReleaseRequest
  | CancelRequest
  | ValidateRequest
  | GoodbyeRequest
  | MembershipRequest
  | LogAppendRequest
  | LogReadRequest
  | LogTruncateRequest
  | ReadPagesRequest
  | SnapshotRequest
  | SnapshotReadRequest
  | StatusRequest
  | WatchRequest
  | UnwatchRequest
  | UsersRequest
  | SlotsRequest
  | BarrierRequest
  | ProbeRequest
  | MoveRequest
  | MoveReadRequest;

export type RequestOf<T extends RequestType> = Extract<Request, { type: T }>;

// ---------------------------------------------------------------------------------------------------------------
// OK answers (0x40), one body per request type

export type EmptyBody = Record<string, never>;

export interface HelloOk {
  sessionId: number;
  /** True when `resumeSessionId` was honoured. */
  resumed: boolean;
  /**
   * What the client must send as `resumeSecret` to resume this session (128 random bits, hex); '' for a
   * page-reader connection, which has no session.
   */
  sessionSecret: string;
  clusterId: string;
  serverId: string;
  pageBytes: number;
  segmentBytes: number;
  maxFrameBytes: number;
  maxObjectBytes: number;
  /** The session timeout the server applies. */
  sessionTimeoutMs: number;
  /** How often the client should send KEEPALIVE. */
  keepaliveMs: number;
  /** The server's UDP port for hints, or null. */
  udpPort: number | null;
  /** The shard group the server is a member of (0: a cluster without groups); absent from older servers. */
  groupId?: number;
}

export interface CreateOk {
  object: ObjectRecord;
  /** False when `ifNotExists` found an existing object. */
  created: boolean;
}

export interface StatOk {
  object: ObjectRecord;
}

export interface ListOk {
  objects: ObjectRecord[];
}

/** A grant. */
export interface AcquireOk {
  object: ObjectRecord;
  /** Fencing token, increasing per object across leader changes. */
  token: number;
  /** Pages whose bytes the payload carries: strictly ascending, each < pageCount(object.size). */
  pages: number[];
  /** The listed pages' bytes, concatenated; each PAGE_BYTES except the object's last page (see grantPayloadBytes). */
  payload: Uint8Array;
  /** True when the pages' bytes were left out (over the request's `inlineMaxBytes`): the payload is empty. */
  deferred?: boolean;
  /** True when other sessions wait for the object behind this grant: the client should not cache it. */
  contended?: boolean;
}

/** The pages READ_PAGES asked for, at the version asked for. */
export interface ReadPagesOk {
  object: ObjectRecord;
  pages: number[];
  /** The pages' bytes, as in a grant. */
  payload: Uint8Array;
}

export interface ReleaseOk {
  /** The object's version after the release. */
  version: number;
  /** A write release with `keep`: whether the session still holds the write lock (no one waited). */
  kept?: boolean;
}

export interface CancelOk {
  /** False when the ACQUIRE had already been answered (or was unknown). */
  cancelled: boolean;
}

export interface ValidateOk {
  /** `[id, currentVersion]` of each stale object; currentVersion 0 means deleted. */
  stale: VersionPair[];
}

export interface MembershipOk {
  /** `[id, address]` of every voting member after the change (address null where unknown). */
  members: [string, string | null][];
  /** The leader that answered. */
  leader: string;
}

export interface LogAppendOk {
  /** Sequence number of the batch's first record; the others follow contiguously. */
  first: number;
  count: number;
}

/** A log's bounds, and the records read (`sizes` may be empty). */
export interface LogReadOk {
  /** Oldest retained sequence number (= next when the log is empty). */
  first: number;
  /** Sequence number the next appended record will get. */
  next: number;
  /** Bytes of the retained records. */
  bytes: number;
  /** Sequence number of the first record in the payload. */
  from: number;
  /** Byte length of each record in the payload. */
  sizes: number[];
  payload: Uint8Array;
}

/** The records of a LOG_READ answer, in order: views into its payload (no copy). */
export function logRecords(answer: Pick<LogReadOk, 'sizes' | 'payload'>): Buffer[] {
  const p = answer.payload;
  const out: Buffer[] = new Array(answer.sizes.length);
  let at = 0;
  for (let i = 0; i < out.length; i++) {
    const n = answer.sizes[i]!;
    out[i] = Buffer.from(p.buffer, p.byteOffset + at, n);
    at += n;
  }
  return out;
}

export interface LogTruncateOk {
  /** Oldest retained sequence number after the truncation. */
  first: number;
}

export interface SnapshotOk {
  /** Names the snapshot for SNAPSHOT_READ (kept by the server until the session ends or it is idle for a minute). */
  id: number;
  /** Bytes of the file. */
  bytes: number;
  /** The Raft index and term the snapshot was taken at (term 0 for a single server). */
  index: number;
  term: number;
}

export interface SnapshotReadOk {
  offset: number;
  /** The file's bytes from `offset` (fewer than asked at the end). */
  payload: Uint8Array;
}

/** Roles a member reports in STATUS; a single server (no consensus group) is the `leader` of its own. */
export const MEMBER_ROLES = ['leader', 'follower', 'candidate', 'preCandidate'] as const;
export type MemberRole = (typeof MEMBER_ROLES)[number];

/** An object locked now, as STATUS lists it: `[name, mode, holders, waiting]`. */
export type LockedObject = [name: string, mode: AccessMode, holders: number, waiting: number];

/** Most locked objects one STATUS answer lists (`lockedObjects` counts them all). */
export const MAX_STATUS_LOCKS = 1000;

/** Where one member stands: its consensus position, its disk use, and what its applied state holds. */
export interface StatusOk {
  serverId: string;
  clusterId: string;
  role: MemberRole;
  /** The leader as far as this member knows, or null. */
  leader: string | null;
  /** Raft term (0 for a single server). */
  term: number;
  /** Highest log index known committed. */
  commitIndex: number;
  /** Log index of the last command applied to the state machine. */
  appliedIndex: number;
  /** Log index of the last entry in this member's log. */
  lastIndex: number;
  /** `[id, address]` of every voting member as this member knows them (address null where unknown). */
  members: [string, string | null][];
  /** The leader only: `[id, matchIndex]` of every other member (the last entry known to be in its log). */
  progress: [string, number][];
  /** The write-ahead log's files and their bytes. */
  walFiles: number;
  walBytes: number;
  /** Snapshot files, the disk space they take (allocated, not apparent: they are sparse), the newest one's index. */
  snapshotFiles: number;
  snapshotBytes: number;
  snapshotIndex: number;
  sessions: number;
  objects: number;
  logs: number;
  /** Objects locked now (first MAX_STATUS_LOCKS by name), and how many are locked in all. */
  locks: LockedObject[];
  lockedObjects: number;
  /** The WAL durability policy: 'always', 'batch' or 'none'. */
  fsync: string;
  /** The member's shard group and the range of the segment it allocates in; absent from older servers. */
  group?: GroupInfo;
  /**
   * While a BARRIER hold is on at this member: milliseconds until the last one ends by itself
   * (1..MAX_BARRIER_HOLD_MS); content changes wait meanwhile. Absent when none is on.
   */
  writesHeldMs?: number;
}

/** A shard group as STATUS reports it: id 0 is the one group of a cluster without groups. */
export interface GroupInfo {
  id: number;
  /** First byte of the group's range of the segment. */
  start: number;
  bytes: number;
}

/** Group ids are u16: frames carry one. */
export const MAX_GROUP_ID = 0xffff;

/** The object now watched, and its version when the watch began (later changes are pushed). */
export interface WatchOk {
  objectId: number;
  version: number;
}

export interface UnwatchOk {
  /** False when the session did not watch that object. */
  removed: boolean;
}

/** The users listed (by name), or after a change the changed user ([] after 'remove'). */
export interface UsersOk {
  users: UserInfo[];
}

/** The slot table, and the group of the server that answered. */
export interface SlotsOk {
  /** The answering server's shard group (0..65535). */
  groupId: number;
  table: SlotTable;
}

/** Where the group stands after a BARRIER. */
export interface BarrierOk {
  /** Whether a hold is on now. */
  held: boolean;
  /** The Raft index and term the applied state stands at (term 0 for a single server). */
  index: number;
  term: number;
  /** Milliseconds until the hold ends by itself (0 when none is on). */
  remainingMs: number;
}

/** How many sessions the probe was pushed to. */
export interface ProbeOk {
  pushed: number;
}

/** A move a group takes part in. */
export interface MoveInfo {
  id: string;
  role: 'source' | 'target';
  from: number;
  to: number;
  slots: SlotSpanWire[];
}

/** A group's move state (every MOVE op answers it). */
export interface MoveOk {
  groupId: number;
  /** The version of the slot table the group holds. */
  tableVersion: number;
  /** Bytes of the group's range no object takes. */
  freeBytes: number;
  moves: MoveInfo[];
  /** In the slots counted (see MoveRequest.slots): objects, their bytes, and how many are held or waited for. */
  objects: number;
  objectBytes: number;
  logs: number;
  busy: number;
}

/** A chunk of a move's copy: objects and log pieces, their bytes in the payload; `next` null: all read. */
export interface MoveReadOk {
  objects: MovedObjectInfo[];
  logs: MovedLogInfo[];
  next: MoveCursor | null;
  payload: Uint8Array;
}

export interface OkBodies {
  HELLO: HelloOk;
  KEEPALIVE: EmptyBody;
  CREATE: CreateOk;
  DELETE: EmptyBody;
  STAT: StatOk;
  LIST: ListOk;
  ACQUIRE: AcquireOk;
  RELEASE: ReleaseOk;
  CANCEL: CancelOk;
  VALIDATE: ValidateOk;
  GOODBYE: EmptyBody;
  MEMBERSHIP: MembershipOk;
  LOG_APPEND: LogAppendOk;
  LOG_READ: LogReadOk;
  LOG_TRUNCATE: LogTruncateOk;
  READ_PAGES: ReadPagesOk;
  SNAPSHOT: SnapshotOk;
  SNAPSHOT_READ: SnapshotReadOk;
  STATUS: StatusOk;
  WATCH: WatchOk;
  UNWATCH: UnwatchOk;
  USERS: UsersOk;
  SLOTS: SlotsOk;
  BARRIER: BarrierOk;
  PROBE: ProbeOk;
  MOVE: MoveOk;
  MOVE_READ: MoveReadOk;
}

/** What {@link encodeOk} takes: the body, where a grant's payload may instead come as the separate argument. */
export type OkBodyInput<T extends RequestType> = T extends 'ACQUIRE'
  ? Omit<AcquireOk, 'payload'> & { payload?: Uint8Array }
  : T extends 'LOG_READ'
    ? Omit<LogReadOk, 'payload'> & { payload?: Uint8Array }
    : T extends 'READ_PAGES'
      ? Omit<ReadPagesOk, 'payload'> & { payload?: Uint8Array }
      : T extends 'SNAPSHOT_READ'
        ? Omit<SnapshotReadOk, 'payload'> & { payload?: Uint8Array }
        : T extends 'MOVE_READ'
          ? Omit<MoveReadOk, 'payload'> & { payload?: Uint8Array | readonly Uint8Array[] }
          : OkBodies[T];

// ---------------------------------------------------------------------------------------------------------------
// ERROR (0x41) and the INVALIDATE push (0x60)

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details: Record<string, unknown> | null;
}

/**
 * Server push: another session waits for this object, so the session should give back the grant it holds
 * (its cached grant at once, a grant in use when its handles are released).
 */
export interface Revoke {
  objectId: number;
}

/** Server push: these objects changed (version) or were deleted (version 0). */
export interface Invalidate {
  /** Per-session push sequence number, >= 1, increasing by one per push: a gap means a missed push. */
  seq: number;
  objects: VersionPair[];
}

/**
 * Server push to a session that watches objects (WATCH): each listed object changed to `version` (a write
 * release committed) or was deleted (version 0). Pushes of one connection arrive in apply order; a client that
 * lost its connection re-sends WATCH, whose answer carries the version it may have missed.
 */
export interface Changed {
  objects: VersionPair[];
}

/**
 * Server push: a waiting client's probe reached this session, because a wait of the probe's path is behind
 * this session's hold of (or queued wait for) the object `name` (see PROBE).
 */
export interface Probed {
  initiator: string;
  probeId: number;
  /** Hops including this one (1..MAX_PROBE_HOPS). */
  hops: number;
  /** The object this session holds or waits for that the probed wait is behind. */
  name: string;
}

/** The bytes carried for `pages` of a `size`-byte object (a grant, a READ_PAGES answer) must be exactly theirs. */
/** Bytes of a payload given whole or in parts (page bytes by reference: views of several runs of pages). */
function partsBytes(payload: Uint8Array | readonly Uint8Array[]): number {
  if (!Array.isArray(payload)) return (payload as Uint8Array).byteLength;
  let n = 0;
  for (const p of payload as readonly Uint8Array[]) n += p.byteLength;
  return n;
}

function checkPagesPayload(size: number, pages: readonly number[], carried: number, what = ''): void {
  const expected = grantPayloadBytes(size, pages);
  if (carried !== expected) {
    throw invalidArgument(
      `${what}payload is ${carried} bytes; ${pages.length} pages of a ${size}-byte object need ${expected}`,
      { field: 'payload' },
    );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding

/** Encodes a request (see {@link encodeFrame} for the returned parts). requestId must be 1..2^32-1. */
export function encodeRequest(req: Request, requestId: number, groupId = 0): Buffer[] {
  if (requestId === 0) throw invalidArgument('requestId 0 is reserved for pushes; requests use 1..2^32-1');
  switch (req.type) {
    case 'HELLO':
      return encodeFrame(MessageType.HELLO, requestId, groupId, {
        protocol: req.protocol,
        clusterId: req.clusterId ?? null,
        token: req.token ?? null,
        sessionTimeoutMs: req.sessionTimeoutMs,
        resumeSessionId: req.resumeSessionId ?? null,
        resumeSecret: req.resumeSecret ?? null,
        udpPort: req.udpPort ?? null,
        clientName: req.clientName ?? null,
        pageReader: req.pageReader ?? false,
        // Only when given, so a HELLO without them stays as it was.
        ...(req.user != null ? { user: req.user, password: req.password ?? null } : {}),
      });
    case 'USERS':
      return encodeFrame(MessageType.USERS, requestId, groupId, {
        op: req.op,
        seq: req.seq,
        user: req.user,
        ...(req.password ? { password: req.password } : {}),
        ...(req.rules?.length ? { rules: req.rules } : {}),
        ...(req.prefix != null ? { prefix: req.prefix } : {}),
        ...(req.right != null ? { right: req.right } : {}),
      });
    case 'KEEPALIVE':
      return encodeFrame(MessageType.KEEPALIVE, requestId, groupId, req.lease ? { lease: true } : {});
    case 'CREATE':
      return encodeFrame(MessageType.CREATE, requestId, groupId, {
        seq: req.seq,
        name: req.name,
        size: req.size,
        ifNotExists: req.ifNotExists,
      });
    case 'DELETE':
      return encodeFrame(MessageType.DELETE, requestId, groupId, {
        seq: req.seq,
        name: req.name,
        ...(req.timeoutMs != null ? { timeoutMs: req.timeoutMs } : {}),
      });
    case 'STAT':
      return encodeFrame(MessageType.STAT, requestId, groupId, { name: req.name });
    case 'LIST':
      return encodeFrame(MessageType.LIST, requestId, groupId, { prefix: req.prefix });
    case 'ACQUIRE':
      return encodeFrame(MessageType.ACQUIRE, requestId, groupId, {
        seq: req.seq,
        name: req.name,
        mode: req.mode,
        cachedId: req.cachedId,
        cachedVersion: req.cachedVersion,
        timeoutMs: req.timeoutMs,
        inlineMaxBytes: req.inlineMaxBytes ?? null,
      });
    case 'RELEASE':
      return encodeFrame(
        MessageType.RELEASE,
        requestId,
        groupId,
        req.keep
          ? { seq: req.seq, name: req.name, mode: req.mode, token: req.token, ranges: req.ranges, keep: true }
          : { seq: req.seq, name: req.name, mode: req.mode, token: req.token, ranges: req.ranges },
        req.payload,
      );
    case 'CANCEL':
      return encodeFrame(MessageType.CANCEL, requestId, groupId, {
        requestId: req.requestId,
        reason: req.reason,
      });
    case 'VALIDATE':
      return encodeFrame(MessageType.VALIDATE, requestId, groupId, { objects: req.objects });
    case 'GOODBYE':
      return encodeFrame(MessageType.GOODBYE, requestId, groupId, {});
    case 'MEMBERSHIP':
      return encodeFrame(MessageType.MEMBERSHIP, requestId, groupId, {
        op: req.op,
        id: req.id,
        address: req.address,
      });
    case 'LOG_APPEND':
      return encodeFrame(
        MessageType.LOG_APPEND,
        requestId,
        groupId,
        { seq: req.seq, name: req.name, sizes: req.sizes, maxBytes: req.maxBytes },
        req.payload,
      );
    case 'LOG_READ':
      return encodeFrame(MessageType.LOG_READ, requestId, groupId, {
        name: req.name,
        from: req.from,
        maxBytes: req.maxBytes,
        waitMs: req.waitMs,
      });
    case 'LOG_TRUNCATE':
      return encodeFrame(MessageType.LOG_TRUNCATE, requestId, groupId, {
        seq: req.seq,
        name: req.name,
        before: req.before,
      });
    case 'READ_PAGES':
      return encodeFrame(MessageType.READ_PAGES, requestId, groupId, {
        objectId: req.objectId,
        version: req.version,
        pages: req.pages,
        waitMs: req.waitMs,
      });
    case 'SNAPSHOT':
      return encodeFrame(MessageType.SNAPSHOT, requestId, groupId, {});
    case 'SNAPSHOT_READ':
      return encodeFrame(MessageType.SNAPSHOT_READ, requestId, groupId, {
        id: req.id,
        offset: req.offset,
        length: req.length,
      });
    case 'STATUS':
      return encodeFrame(MessageType.STATUS, requestId, groupId, {});
    case 'WATCH':
      return encodeFrame(MessageType.WATCH, requestId, groupId, { name: req.name });
    case 'UNWATCH':
      return encodeFrame(MessageType.UNWATCH, requestId, groupId, { objectId: req.objectId });
    case 'SLOTS':
      return encodeFrame(MessageType.SLOTS, requestId, groupId, {});
    case 'BARRIER':
      return encodeFrame(MessageType.BARRIER, requestId, groupId, { op: req.op, holdMs: req.holdMs });
    case 'PROBE':
      return encodeFrame(MessageType.PROBE, requestId, groupId, {
        initiator: req.initiator,
        probeId: req.probeId,
        hops: req.hops,
      });
    case 'MOVE':
      return encodeFrame(
        MessageType.MOVE,
        requestId,
        groupId,
        {
          op: req.op,
          moveId: req.moveId,
          ...(req.from != null ? { from: req.from } : {}),
          ...(req.to != null ? { to: req.to } : {}),
          ...(req.slots ? { slots: req.slots } : {}),
          ...(req.table ? { table: req.table } : {}),
          ...(req.objects ? { objects: req.objects } : {}),
          ...(req.logs ? { logs: req.logs } : {}),
        },
        req.payload,
      );
    case 'MOVE_READ':
      return encodeFrame(MessageType.MOVE_READ, requestId, groupId, {
        moveId: req.moveId,
        cursor: req.cursor,
        maxBytes: req.maxBytes,
      });
    default:
      throw invalidArgument(`unknown request type ${describeValue((req as { type: unknown }).type)}`);
  }
}

/**
 * Encodes the OK answer to a request of `requestType`. For ACQUIRE the grant's page bytes come from `payload`
 * or, if that is absent, `body.payload`; their length must match the pages (INVALID_ARGUMENT otherwise).
 */
export function encodeOk<T extends RequestType>(
  requestType: T,
  requestId: number,
  body: OkBodyInput<T>,
  payload?: Uint8Array | readonly Uint8Array[],
  groupId = 0,
): Buffer[] {
  const b = body as OkBodyInput<RequestType> & Record<string, unknown>;
  let header: object;
  switch (requestType as RequestType) {
    case 'HELLO': {
      const h = b as HelloOk;
      header = {
        sessionId: h.sessionId,
        resumed: h.resumed,
        sessionSecret: h.sessionSecret,
        clusterId: h.clusterId,
        serverId: h.serverId,
        pageBytes: h.pageBytes,
        segmentBytes: h.segmentBytes,
        maxFrameBytes: h.maxFrameBytes,
        maxObjectBytes: h.maxObjectBytes,
        sessionTimeoutMs: h.sessionTimeoutMs,
        keepaliveMs: h.keepaliveMs,
        udpPort: h.udpPort ?? null,
        ...(h.groupId !== undefined ? { groupId: h.groupId } : {}),
      };
      break;
    }
    case 'KEEPALIVE':
    case 'DELETE':
    case 'GOODBYE':
      header = {};
      break;
    case 'CREATE':
      header = { object: copyRecord((b as CreateOk).object), created: (b as CreateOk).created };
      break;
    case 'STAT':
      header = { object: copyRecord((b as StatOk).object) };
      break;
    case 'LIST':
      header = { objects: (b as ListOk).objects.map(copyRecord) };
      break;
    case 'ACQUIRE': {
      const g = b as OkBodyInput<'ACQUIRE'>;
      const bytes = payload ?? g.payload ?? EMPTY_PAYLOAD;
      if (g.deferred) {
        if (partsBytes(bytes) !== 0) throw invalidArgument('a deferred grant carries no page bytes');
        return encodeFrame(
          MessageType.OK,
          requestId,
          groupId,
          g.contended
            ? {
                object: copyRecord(g.object),
                token: g.token,
                pages: g.pages,
                deferred: true,
                contended: true,
              }
            : { object: copyRecord(g.object), token: g.token, pages: g.pages, deferred: true },
          EMPTY_PAYLOAD,
        );
      }
      checkPagesPayload(g.object.size, g.pages, partsBytes(bytes), 'ACQUIRE grant ');
      return encodeFrame(
        MessageType.OK,
        requestId,
        groupId,
        g.contended
          ? { object: copyRecord(g.object), token: g.token, pages: g.pages, contended: true }
          : { object: copyRecord(g.object), token: g.token, pages: g.pages },
        bytes,
      );
    }
    case 'RELEASE': {
      const r = b as ReleaseOk;
      header = r.kept === undefined ? { version: r.version } : { version: r.version, kept: r.kept };
      break;
    }
    case 'CANCEL':
      header = { cancelled: (b as CancelOk).cancelled };
      break;
    case 'MEMBERSHIP':
      header = { members: (b as MembershipOk).members, leader: (b as MembershipOk).leader };
      break;
    case 'VALIDATE':
      header = { stale: (b as ValidateOk).stale };
      break;
    case 'LOG_APPEND':
      header = { first: (b as LogAppendOk).first, count: (b as LogAppendOk).count };
      break;
    case 'LOG_READ': {
      const r = b as OkBodyInput<'LOG_READ'>;
      // The records may come as parts (views into the log's memory): they are written out uncopied.
      const bytes = payload ?? r.payload ?? EMPTY_PAYLOAD;
      let total = 0;
      for (const n of r.sizes) total += n;
      const carried = Array.isArray(bytes) ? frameLength(bytes) : (bytes as Uint8Array).byteLength;
      if (carried !== total) {
        throw invalidArgument(`LOG_READ payload is ${carried} bytes; the sizes add up to ${total}`);
      }
      return encodeFrame(
        MessageType.OK,
        requestId,
        groupId,
        { first: r.first, next: r.next, bytes: r.bytes, from: r.from, sizes: r.sizes },
        bytes,
      );
    }
    case 'LOG_TRUNCATE':
      header = { first: (b as LogTruncateOk).first };
      break;
    case 'SNAPSHOT': {
      const r = b as SnapshotOk;
      header = { id: r.id, bytes: r.bytes, index: r.index, term: r.term };
      break;
    }
    case 'SNAPSHOT_READ': {
      const r = b as SnapshotReadOk;
      return encodeFrame(MessageType.OK, requestId, groupId, { offset: r.offset }, payload ?? r.payload);
    }
    case 'STATUS': {
      const r = b as StatusOk;
      header = {
        serverId: r.serverId,
        clusterId: r.clusterId,
        role: r.role,
        leader: r.leader,
        term: r.term,
        commitIndex: r.commitIndex,
        appliedIndex: r.appliedIndex,
        lastIndex: r.lastIndex,
        members: r.members,
        progress: r.progress,
        walFiles: r.walFiles,
        walBytes: r.walBytes,
        snapshotFiles: r.snapshotFiles,
        snapshotBytes: r.snapshotBytes,
        snapshotIndex: r.snapshotIndex,
        sessions: r.sessions,
        objects: r.objects,
        logs: r.logs,
        locks: r.locks.slice(0, MAX_STATUS_LOCKS),
        lockedObjects: r.lockedObjects,
        fsync: r.fsync,
        ...(r.group ? { group: { id: r.group.id, start: r.group.start, bytes: r.group.bytes } } : {}),
        ...(r.writesHeldMs !== undefined ? { writesHeldMs: r.writesHeldMs } : {}),
      };
      break;
    }
    case 'READ_PAGES': {
      const r = b as OkBodyInput<'READ_PAGES'>;
      const bytes = payload ?? r.payload ?? EMPTY_PAYLOAD;
      checkPagesPayload(r.object.size, r.pages, partsBytes(bytes), 'READ_PAGES ');
      return encodeFrame(
        MessageType.OK,
        requestId,
        groupId,
        { object: copyRecord(r.object), pages: r.pages },
        bytes,
      );
    }
    case 'WATCH':
      header = { objectId: (b as WatchOk).objectId, version: (b as WatchOk).version };
      break;
    case 'UNWATCH':
      header = { removed: (b as UnwatchOk).removed };
      break;
    case 'USERS':
      header = { users: (b as UsersOk).users.map((u) => ({ name: u.name, rules: u.rules })) };
      break;
    case 'SLOTS': {
      const { groupId: group, table } = b as SlotsOk;
      header = {
        groupId: group,
        table: { version: table.version, ranges: table.ranges, groups: table.groups },
      };
      break;
    }
    case 'BARRIER': {
      const r = b as BarrierOk;
      header = { held: r.held, index: r.index, term: r.term, remainingMs: r.remainingMs };
      break;
    }
    case 'PROBE':
      header = { pushed: (b as ProbeOk).pushed };
      break;
    case 'MOVE': {
      const m = b as MoveOk;
      header = {
        groupId: m.groupId,
        tableVersion: m.tableVersion,
        freeBytes: m.freeBytes,
        moves: m.moves,
        objects: m.objects,
        objectBytes: m.objectBytes,
        logs: m.logs,
        busy: m.busy,
      };
      break;
    }
    case 'MOVE_READ': {
      const r = b as OkBodyInput<'MOVE_READ'>;
      const bytes = payload ?? r.payload ?? EMPTY_PAYLOAD;
      const carried = Array.isArray(bytes) ? frameLength(bytes) : (bytes as Uint8Array).byteLength;
      const needed = movedBytes(r.objects, r.logs);
      if (carried !== needed)
        throw invalidArgument(
          `MOVE_READ payload is ${carried} bytes; its objects and records need ${needed}`,
        );
      return encodeFrame(
        MessageType.OK,
        requestId,
        groupId,
        { objects: r.objects, logs: r.logs, next: r.next },
        bytes,
      );
    }
    default:
      throw invalidArgument(`unknown request type ${describeValue(requestType)}`);
  }
  return encodeFrame(MessageType.OK, requestId, groupId, header);
}

/**
 * Encodes an ERROR frame. requestId 0 answers a frame-level problem (the connection is then closed).
 * The message is made well-formed and cut to MAX_ERROR_MESSAGE_CHARS; details are reduced to values a header
 * can carry (see {@link sanitizeHeaderValue}).
 */
export function encodeError(requestId: number, err: SegmemError, groupId = 0): Buffer[] {
  const code: ErrorCode = isErrorCode(err.code) ? err.code : 'PROTOCOL';
  let message = typeof err.message === 'string' ? err.message : String(err.message);
  if (message.length > MAX_ERROR_MESSAGE_CHARS)
    message = `${message.slice(0, MAX_ERROR_MESSAGE_CHARS - 3)}...`;
  message = toWellFormedString(message);
  const details = err.details === undefined ? null : sanitizeHeaderValue(err.details, MAX_HEADER_DEPTH - 1);
  return encodeFrame(MessageType.ERROR, requestId, groupId, {
    code,
    message,
    details: isPlainMap(details) ? details : null,
  });
}

/** Encodes an INVALIDATE push (requestId 0). */
export function encodeInvalidate(msg: Invalidate, groupId = 0): Buffer[] {
  return encodeFrame(MessageType.INVALIDATE, 0, groupId, { seq: msg.seq, objects: msg.objects });
}

/** Encodes a REVOKE push (requestId 0). */
export function encodeRevoke(msg: Revoke, groupId = 0): Buffer[] {
  return encodeFrame(MessageType.REVOKE, 0, groupId, { objectId: msg.objectId });
}

/** Encodes a PROBED push (requestId 0). */
export function encodeProbed(msg: Probed, groupId = 0): Buffer[] {
  return encodeFrame(MessageType.PROBED, 0, groupId, {
    initiator: msg.initiator,
    probeId: msg.probeId,
    hops: msg.hops,
    name: msg.name,
  });
}

/** Encodes a CHANGED push (requestId 0). */
export function encodeChanged(msg: Changed, groupId = 0): Buffer[] {
  return encodeFrame(MessageType.CHANGED, 0, groupId, { objects: msg.objects });
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding requests

type Header = Record<string, unknown>;

function noPayload(payload: Buffer): void {
  if (payload.length !== 0) {
    throw invalidArgument(`this request carries no payload; got ${payload.length} payload bytes`, {
      field: 'payload',
    });
  }
}

const seqField = (v: unknown) => uintField(v, 'seq', 1);

const REQUEST_DECODERS: ((h: Header, payload: Buffer) => Request)[] = [];

REQUEST_DECODERS[MessageType.HELLO] = (h, payload) => {
  const protocol = uintField(h.protocol, 'protocol', 0, MAX_U32);
  if (protocol !== PROTOCOL_VERSION) {
    throw protocolError(
      `protocol version mismatch: the client speaks version ${protocol}, this server speaks version ${PROTOCOL_VERSION}`,
      { clientVersion: protocol, serverVersion: PROTOCOL_VERSION },
    );
  }
  noPayload(payload);
  return {
    type: 'HELLO',
    protocol,
    clusterId: optionalField(h.clusterId, 'clusterId', (v, f) => stringField(v, f, 1, MAX_NAME_BYTES)),
    token: optionalField(h.token, 'token', (v, f) => stringField(v, f, 0, MAX_TOKEN_BYTES)),
    sessionTimeoutMs: validateSessionTimeoutMs(h.sessionTimeoutMs),
    resumeSessionId: optionalField(h.resumeSessionId, 'resumeSessionId', (v, f) => uintField(v, f, 1)),
    resumeSecret: optionalField(h.resumeSecret, 'resumeSecret', (v, f) =>
      stringField(v, f, 0, MAX_SESSION_SECRET_BYTES),
    ),
    udpPort: optionalField(h.udpPort, 'udpPort', (v, f) => uintField(v, f, 1, 65535)),
    clientName: optionalField(h.clientName, 'clientName', (v, f) => stringField(v, f, 0, MAX_NAME_BYTES)),
    pageReader: optionalField(h.pageReader, 'pageReader', boolField) ?? false,
    ...helloLogin(h),
  };
};

/** `[prefix, right]` pairs, at most MAX_RULES_PER_USER. */
function aclRulesField(value: unknown, field: string): AclRule[] {
  const list = arrayField(value, field);
  if (list.length > MAX_RULES_PER_USER)
    throw invalidArgument(`${field} must hold at most ${MAX_RULES_PER_USER} rules; got ${list.length}`, {
      field,
    });
  return list.map((r, j) => {
    const pair = arrayField(r, `${field}[${j}]`);
    if (pair.length !== 2) throw invalidArgument(`${field}[${j}] must be [prefix, right]`, { field });
    return [
      validateAclPrefix(pair[0], `${field}[${j}].prefix`),
      validateRight(pair[1], `${field}[${j}].right`),
    ] as AclRule;
  });
}

/** HELLO's user and password: both or neither. */
function helloLogin(h: Header): { user?: string; password?: string } {
  const user = optionalField(h.user, 'user', validateUserName);
  const password = optionalField(h.password, 'password', validatePassword);
  if ((user === null) !== (password === null)) {
    throw invalidArgument('user and password come together: give both or neither', {
      field: user === null ? 'user' : 'password',
    });
  }
  return user === null ? {} : { user, password: password! };
}

REQUEST_DECODERS[MessageType.KEEPALIVE] = (h, payload) => {
  noPayload(payload);
  // Present only when set, so a plain KEEPALIVE decodes as it was encoded.
  return optionalField(h.lease, 'lease', boolField)
    ? { type: 'KEEPALIVE', lease: true }
    : { type: 'KEEPALIVE' };
};

REQUEST_DECODERS[MessageType.CREATE] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'CREATE',
    seq: seqField(h.seq),
    name: validateName(h.name),
    size: validateSize(h.size),
    ifNotExists: boolField(h.ifNotExists, 'ifNotExists'),
  };
};

REQUEST_DECODERS[MessageType.DELETE] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'DELETE',
    seq: seqField(h.seq),
    name: validateName(h.name),
    timeoutMs: validateTimeoutMs(h.timeoutMs),
  };
};

REQUEST_DECODERS[MessageType.STAT] = (h, payload) => {
  noPayload(payload);
  return { type: 'STAT', name: validateName(h.name) };
};

REQUEST_DECODERS[MessageType.LIST] = (h, payload) => {
  noPayload(payload);
  return { type: 'LIST', prefix: validatePrefix(h.prefix) };
};

REQUEST_DECODERS[MessageType.ACQUIRE] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'ACQUIRE',
    seq: seqField(h.seq),
    name: validateName(h.name),
    mode: validateMode(h.mode),
    cachedId: uintField(h.cachedId, 'cachedId'),
    cachedVersion: uintField(h.cachedVersion, 'cachedVersion'),
    timeoutMs: validateTimeoutMs(h.timeoutMs),
    inlineMaxBytes: optionalField(h.inlineMaxBytes, 'inlineMaxBytes', (v, f) => uintField(v, f, 0, MAX_U32)),
  };
};

REQUEST_DECODERS[MessageType.RELEASE] = (h, payload) => {
  const seq = seqField(h.seq);
  const name = validateName(h.name);
  const mode = validateMode(h.mode);
  const token = uintField(h.token, 'token');
  const keep = optionalField(h.keep, 'keep', boolField) ?? false;
  if (keep && mode === 'read') {
    throw invalidArgument(
      'only a write RELEASE may keep its lock (a read grant is kept by not releasing it)',
      {
        field: 'keep',
      },
    );
  }
  const { ranges, totalBytes } = validateRanges(h.ranges);
  if (mode === 'read' && ranges.length > 0) {
    throw invalidArgument(`a read RELEASE carries no ranges; got ${ranges.length}`, { field: 'ranges' });
  }
  if (totalBytes !== payload.length) {
    throw invalidArgument(`payload is ${payload.length} bytes but the ranges add up to ${totalBytes}`, {
      field: 'payload',
    });
  }
  return keep
    ? { type: 'RELEASE', seq, name, mode, token, ranges, payload, keep }
    : { type: 'RELEASE', seq, name, mode, token, ranges, payload };
};

REQUEST_DECODERS[MessageType.CANCEL] = (h, payload) => {
  noPayload(payload);
  const reason = h.reason;
  if (!(CANCEL_REASONS as readonly unknown[]).includes(reason)) {
    throw invalidArgument(
      `reason must be one of ${CANCEL_REASONS.join(', ')}; got ${describeValue(reason)}`,
      {
        field: 'reason',
      },
    );
  }
  return {
    type: 'CANCEL',
    requestId: uintField(h.requestId, 'requestId', 1, MAX_U32),
    reason: reason as CancelReason,
  };
};

REQUEST_DECODERS[MessageType.VALIDATE] = (h, payload) => {
  noPayload(payload);
  return { type: 'VALIDATE', objects: versionPairsField(h.objects, 'objects', 1) };
};

REQUEST_DECODERS[MessageType.GOODBYE] = (_h, payload) => {
  noPayload(payload);
  return { type: 'GOODBYE' };
};

REQUEST_DECODERS[MessageType.MEMBERSHIP] = (h, payload) => {
  noPayload(payload);
  const op = h.op;
  if (op !== 'list' && op !== 'add' && op !== 'remove') {
    throw invalidArgument(`op must be 'list', 'add' or 'remove'; got ${describeValue(op)}`, { field: 'op' });
  }
  const id = optionalField(h.id, 'id', (v, f) => stringField(v, f, 1, 64));
  const address = optionalField(h.address, 'address', (v, f) => stringField(v, f, 3, 261));
  if (op !== 'list' && (id === null || !SERVER_ID.test(id))) {
    throw invalidArgument('id must be a server id: 1..64 characters of [A-Za-z0-9._-]', { field: 'id' });
  }
  if (
    op === 'add' &&
    (address === null || !HOST_PORT.test(address) || Number(HOST_PORT.exec(address)![2]) > 65535)
  ) {
    throw invalidArgument(`address must be host:port; got ${describeValue(address)}`, { field: 'address' });
  }
  return { type: 'MEMBERSHIP', op, id, address };
};

/** Record sizes of a batch or a read answer; their sum must be the payload's length. */
function logSizesField(value: unknown, payloadBytes: number, maxRecords: number): number[] {
  const list = arrayField(value, 'sizes');
  if (list.length > maxRecords) {
    throw invalidArgument(`sizes lists ${list.length} records; at most ${maxRecords} are allowed`, {
      field: 'sizes',
    });
  }
  const sizes: number[] = new Array(list.length);
  let total = 0;
  for (let i = 0; i < list.length; i++) {
    const n = list[i];
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > MAX_LOG_RECORD_BYTES) {
      throw invalidArgument(
        `sizes[${i}] must be a record length of 0..${MAX_LOG_RECORD_BYTES} bytes; got ${describeValue(n)}`,
        { field: `sizes[${i}]` },
      );
    }
    sizes[i] = n;
    total += n;
  }
  if (total !== payloadBytes) {
    throw invalidArgument(`payload is ${payloadBytes} bytes but the record sizes add up to ${total}`, {
      field: 'payload',
    });
  }
  return sizes;
}

REQUEST_DECODERS[MessageType.LOG_APPEND] = (h, payload) => {
  const seq = seqField(h.seq);
  const name = validateName(h.name);
  if (payload.length > MAX_LOG_BATCH_BYTES) {
    throw invalidArgument(`a batch carries at most ${MAX_LOG_BATCH_BYTES} bytes; got ${payload.length}`, {
      field: 'payload',
    });
  }
  const sizes = logSizesField(h.sizes, payload.length, MAX_LOG_BATCH_RECORDS);
  if (sizes.length === 0) throw invalidArgument('a batch needs at least one record', { field: 'sizes' });
  const maxBytes = optionalField(h.maxBytes, 'maxBytes', (v, f) => uintField(v, f, 1, MAX_LOG_MAX_BYTES));
  return { type: 'LOG_APPEND', seq, name, sizes, maxBytes, payload };
};

REQUEST_DECODERS[MessageType.LOG_READ] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'LOG_READ',
    name: validateName(h.name),
    from: optionalField(h.from, 'from', (v, f) => uintField(v, f)),
    maxBytes: uintField(h.maxBytes, 'maxBytes', 0, MAX_LOG_READ_BYTES),
    waitMs: uintField(h.waitMs, 'waitMs', 0, MAX_TIMEOUT_MS),
  };
};

REQUEST_DECODERS[MessageType.READ_PAGES] = (h, payload) => {
  noPayload(payload);
  // The object's size is not known here: pages are checked against the largest object, then by the server.
  const pages = validatePages(h.pages, MAX_OBJECT_BYTES);
  if (pages.length === 0) throw invalidArgument('pages must list at least one page', { field: 'pages' });
  return {
    type: 'READ_PAGES',
    objectId: uintField(h.objectId, 'objectId', 1),
    version: uintField(h.version, 'version', 1),
    pages,
    waitMs: uintField(h.waitMs, 'waitMs', 0, MAX_TIMEOUT_MS),
  };
};

REQUEST_DECODERS[MessageType.SNAPSHOT] = (_h, payload) => {
  noPayload(payload);
  return { type: 'SNAPSHOT' };
};

REQUEST_DECODERS[MessageType.SNAPSHOT_READ] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'SNAPSHOT_READ',
    id: uintField(h.id, 'id', 1),
    offset: uintField(h.offset, 'offset'),
    length: uintField(h.length, 'length', 1, MAX_SNAPSHOT_CHUNK_BYTES),
  };
};

REQUEST_DECODERS[MessageType.STATUS] = (_h, payload) => {
  noPayload(payload);
  return { type: 'STATUS' };
};

REQUEST_DECODERS[MessageType.LOG_TRUNCATE] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'LOG_TRUNCATE',
    seq: seqField(h.seq),
    name: validateName(h.name),
    before: uintField(h.before, 'before'),
  };
};

REQUEST_DECODERS[MessageType.WATCH] = (h, payload) => {
  noPayload(payload);
  return { type: 'WATCH', name: validateName(h.name) };
};

REQUEST_DECODERS[MessageType.UNWATCH] = (h, payload) => {
  noPayload(payload);
  return { type: 'UNWATCH', objectId: uintField(h.objectId, 'objectId', 1) };
};

REQUEST_DECODERS[MessageType.USERS] = (h, payload) => {
  noPayload(payload);
  const op = h.op as UsersOp;
  if (!USERS_OPS.includes(op)) {
    throw invalidArgument(`op must be one of ${USERS_OPS.join(', ')}; got ${describeValue(h.op)}`, {
      field: 'op',
    });
  }
  if (op === 'list') {
    return { type: 'USERS', op, seq: 0, user: optionalField(h.user, 'user', validateUserName) };
  }
  const seq = seqField(h.seq);
  const user = validateUserName(h.user);
  if (op === 'add') {
    const password = validatePasswordHash(h.password);
    const rules = optionalField(h.rules, 'rules', aclRulesField);
    return rules && rules.length > 0
      ? { type: 'USERS', op, seq, user, password, rules }
      : { type: 'USERS', op, seq, user, password };
  }
  if (op === 'remove') return { type: 'USERS', op, seq, user };
  const prefix = validateAclPrefix(h.prefix);
  if (op === 'aclRemove') return { type: 'USERS', op, seq, user, prefix };
  return { type: 'USERS', op, seq, user, prefix, right: validateRight(h.right) };
};

REQUEST_DECODERS[MessageType.SLOTS] = (_h, payload) => {
  noPayload(payload);
  return { type: 'SLOTS' };
};

REQUEST_DECODERS[MessageType.BARRIER] = (h, payload) => {
  noPayload(payload);
  const op = h.op;
  if (op !== 'hold' && op !== 'release')
    throw invalidArgument(`op must be 'hold' or 'release'; got ${describeValue(op)}`, { field: 'op' });
  const holdMs =
    op === 'hold'
      ? uintField(h.holdMs, 'holdMs', 1, MAX_BARRIER_HOLD_MS)
      : uintField(h.holdMs, 'holdMs', 0, 0);
  return { type: 'BARRIER', op, holdMs };
};

REQUEST_DECODERS[MessageType.PROBE] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'PROBE',
    initiator: clientIdField(h.initiator, 'initiator'),
    probeId: uintField(h.probeId, 'probeId', 1, MAX_U32),
    hops: uintField(h.hops, 'hops', 0, MAX_PROBE_HOPS - 1),
  };
};

/** A client id: CLIENT_ID_BYTES bytes as lowercase hex. */
function clientIdField(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.length !== CLIENT_ID_BYTES * 2 || !/^[0-9a-f]+$/.test(v)) {
    throw invalidArgument(
      `${field} must be ${CLIENT_ID_BYTES * 2} lowercase hex digits; got ${describeValue(v)}`,
      {
        field,
      },
    );
  }
  return v;
}

/** Bytes a move's objects (the written ones) and log pieces carry in a payload. */
export function movedBytes(objects: readonly MovedObjectInfo[], logs: readonly MovedLogInfo[]): number {
  let n = 0;
  for (const o of objects) if (o.written) n += o.size;
  for (const l of logs) for (const size of l.sizes) n += size;
  return n;
}

const MOVE_ID = /^[A-Za-z0-9._-]{1,64}$/;

function moveIdField(value: unknown): string {
  if (typeof value !== 'string' || !MOVE_ID.test(value))
    throw invalidArgument('moveId must be 1..64 characters of [A-Za-z0-9._-]', { field: 'moveId' });
  return value;
}

function slotSpansField(value: unknown): SlotSpanWire[] {
  return arrayField(value, 'slots').map((span, i) => {
    const pair = arrayField(span, `slots[${i}]`);
    if (pair.length !== 2)
      throw invalidArgument(`slots[${i}] must be [first, last]`, { field: `slots[${i}]` });
    return [uintField(pair[0], `slots[${i}][0]`, 0, 16383), uintField(pair[1], `slots[${i}][1]`, 0, 16383)];
  });
}

function movedObjectsField(value: unknown): MovedObjectInfo[] {
  return arrayField(value, 'objects').map((o, i) => {
    const m = mapField(o, `objects[${i}]`);
    return {
      name: validateStoredName(m.name, `objects[${i}].name`),
      size: validateSize(m.size, `objects[${i}].size`),
      version: uintField(m.version, `objects[${i}].version`, 1),
      lastToken: uintField(m.lastToken, `objects[${i}].lastToken`),
      written: boolField(m.written, `objects[${i}].written`),
    };
  });
}

function movedLogsField(value: unknown): MovedLogInfo[] {
  return arrayField(value, 'logs').map((l, i) => {
    const m = mapField(l, `logs[${i}]`);
    const sizes = arrayField(m.sizes, `logs[${i}].sizes`).map((n, j) =>
      uintField(n, `logs[${i}].sizes[${j}]`, 0, MAX_LOG_RECORD_BYTES),
    );
    return {
      name: validateStoredName(m.name, `logs[${i}].name`),
      maxBytes: uintField(m.maxBytes, `logs[${i}].maxBytes`, 1, MAX_LOG_MAX_BYTES),
      first: uintField(m.first, `logs[${i}].first`),
      sizes,
    };
  });
}

function moveCursorField(value: unknown): MoveCursor {
  const m = mapField(value, 'cursor');
  if (m.phase !== 'objects' && m.phase !== 'logs')
    throw invalidArgument(`cursor.phase must be 'objects' or 'logs'; got ${describeValue(m.phase)}`);
  return {
    phase: m.phase,
    after: optionalField(m.after, 'cursor.after', (v, f) => validateStoredName(v, f)),
    from: uintField(m.from, 'cursor.from'),
  };
}

REQUEST_DECODERS[MessageType.MOVE] = (h, payload) => {
  const op = h.op as MoveOp;
  if (!MOVE_OPS.includes(op))
    throw invalidArgument(`op must be one of ${MOVE_OPS.join(', ')}; got ${describeValue(h.op)}`, {
      field: 'op',
    });
  if (op !== 'import') noPayload(payload);
  if (op === 'status') {
    const slots = optionalField(h.slots, 'slots', slotSpansField);
    return { type: 'MOVE', op, moveId: null, ...(slots ? { slots } : {}) };
  }
  if (op === 'install') return { type: 'MOVE', op, moveId: null, table: validateSlotTable(h.table) };
  const moveId = moveIdField(h.moveId);
  switch (op) {
    case 'freeze':
      return {
        type: 'MOVE',
        op,
        moveId,
        from: uintField(h.from, 'from', 0, MAX_GROUP_ID),
        to: uintField(h.to, 'to', 0, MAX_GROUP_ID),
        slots: slotSpansField(h.slots),
      };
    case 'import': {
      const objects = movedObjectsField(h.objects ?? []);
      const logs = movedLogsField(h.logs ?? []);
      const needed = movedBytes(objects, logs);
      if (needed !== payload.length)
        throw invalidArgument(`payload is ${payload.length} bytes; the objects and records need ${needed}`, {
          field: 'payload',
        });
      return { type: 'MOVE', op, moveId, objects, logs, payload };
    }
    case 'switch':
      return { type: 'MOVE', op, moveId, table: validateSlotTable(h.table) };
    default:
      return { type: 'MOVE', op, moveId };
  }
};

REQUEST_DECODERS[MessageType.MOVE_READ] = (h, payload) => {
  noPayload(payload);
  return {
    type: 'MOVE_READ',
    moveId: moveIdField(h.moveId),
    cursor: moveCursorField(h.cursor),
    maxBytes: uintField(h.maxBytes, 'maxBytes', 1, MAX_SNAPSHOT_CHUNK_BYTES),
  };
};

/**
 * Decodes and validates a request frame. PROTOCOL: not a request (unknown or non-request type, requestId 0) or
 * a HELLO of another protocol version. INVALID_ARGUMENT: a bad field, the message naming type and field.
 */
export function decodeRequest(frame: Frame): Request {
  const name = NAME_BY_CODE[frame.type];
  if (name === undefined) {
    throw protocolError(`unknown message type ${hex(frame.type)}`, { type: frame.type });
  }
  if (!isRequestCode(frame.type)) {
    throw protocolError(`message type ${name} (${hex(frame.type)}) is not a request`, { type: frame.type });
  }
  if (frame.requestId === 0) {
    throw protocolError(`${name} request with requestId 0 (reserved for pushes)`, { type: frame.type });
  }
  try {
    return REQUEST_DECODERS[frame.type](frame.header, frame.payload);
  } catch (err) {
    if (SegmemError.is(err, 'INVALID_ARGUMENT')) {
      throw new SegmemError('INVALID_ARGUMENT', `${name}: ${err.message}`, { ...err.details, type: name });
    }
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding answers and pushes (client side: every problem is PROTOCOL)

const OK_DECODERS: { [T in RequestType]: (h: Header, payload: Buffer) => OkBodies[T] } = {
  HELLO: (h, payload) => {
    noPayload(payload);
    return {
      sessionId: uintField(h.sessionId, 'sessionId', 0),
      resumed: boolField(h.resumed, 'resumed'),
      // A server from before resume secrets sends none: its sessions resume by id, so '' is what to send.
      sessionSecret:
        optionalField(h.sessionSecret, 'sessionSecret', (v, f) =>
          stringField(v, f, 0, MAX_SESSION_SECRET_BYTES),
        ) ?? '',
      clusterId: stringField(h.clusterId, 'clusterId', 1, MAX_NAME_BYTES),
      serverId: stringField(h.serverId, 'serverId', 1, MAX_NAME_BYTES),
      pageBytes: uintField(h.pageBytes, 'pageBytes', 1),
      segmentBytes: uintField(h.segmentBytes, 'segmentBytes', 1, MAX_SEGMENT_BYTES),
      maxFrameBytes: uintField(h.maxFrameBytes, 'maxFrameBytes', 1, MAX_U32),
      maxObjectBytes: uintField(h.maxObjectBytes, 'maxObjectBytes', 1),
      sessionTimeoutMs: validateSessionTimeoutMs(h.sessionTimeoutMs),
      keepaliveMs: uintField(h.keepaliveMs, 'keepaliveMs', 1),
      udpPort: optionalField(h.udpPort, 'udpPort', (v, f) => uintField(v, f, 1, 65535)),
      ...(h.groupId !== undefined ? { groupId: uintField(h.groupId, 'groupId', 0, MAX_GROUP_ID) } : {}),
    };
  },
  KEEPALIVE: emptyOk,
  CREATE: (h, payload) => {
    noPayload(payload);
    return { object: validateObjectRecord(h.object), created: boolField(h.created, 'created') };
  },
  DELETE: emptyOk,
  STAT: (h, payload) => {
    noPayload(payload);
    return { object: validateObjectRecord(h.object) };
  },
  LIST: (h, payload) => {
    noPayload(payload);
    return { objects: objectRecordsField(h.objects, 'objects') };
  },
  ACQUIRE: (h, payload) => {
    const object = validateObjectRecord(h.object);
    const token = uintField(h.token, 'token');
    const pages = validatePages(h.pages, object.size);
    const contended = optionalField(h.contended, 'contended', boolField) ? { contended: true } : {};
    if (h.deferred !== undefined && h.deferred !== null && boolField(h.deferred, 'deferred')) {
      noPayload(payload);
      return { object, token, pages, payload, deferred: true, ...contended };
    }
    checkPagesPayload(object.size, pages, payload.length);
    return { object, token, pages, payload, ...contended };
  },
  RELEASE: (h, payload) => {
    noPayload(payload);
    const kept = optionalField(h.kept, 'kept', boolField);
    return kept === null
      ? { version: uintField(h.version, 'version', 1) }
      : { version: uintField(h.version, 'version', 1), kept };
  },
  CANCEL: (h, payload) => {
    noPayload(payload);
    return { cancelled: boolField(h.cancelled, 'cancelled') };
  },
  VALIDATE: (h, payload) => {
    noPayload(payload);
    return { stale: versionPairsField(h.stale, 'stale', 0) };
  },
  GOODBYE: emptyOk,
  MEMBERSHIP: (h, payload) => {
    noPayload(payload);
    return { members: membersField(h.members), leader: stringField(h.leader, 'leader', 1, 64) };
  },
  LOG_APPEND: (h, payload) => {
    noPayload(payload);
    return {
      first: uintField(h.first, 'first'),
      count: uintField(h.count, 'count', 1, MAX_LOG_BATCH_RECORDS),
    };
  },
  LOG_READ: (h, payload) => {
    const first = uintField(h.first, 'first');
    const next = uintField(h.next, 'next', first);
    const bytes = uintField(h.bytes, 'bytes');
    const from = uintField(h.from, 'from', first, next);
    const sizes = logSizesField(h.sizes, payload.length, next - from);
    return { first, next, bytes, from, sizes, payload };
  },
  LOG_TRUNCATE: (h, payload) => {
    noPayload(payload);
    return { first: uintField(h.first, 'first') };
  },
  SNAPSHOT: (h, payload) => {
    noPayload(payload);
    return {
      id: uintField(h.id, 'id', 1),
      bytes: uintField(h.bytes, 'bytes'),
      index: uintField(h.index, 'index'),
      term: uintField(h.term, 'term'),
    };
  },
  SNAPSHOT_READ: (h, payload) => {
    if (payload.length > MAX_SNAPSHOT_CHUNK_BYTES) {
      throw invalidArgument(`a snapshot chunk is at most ${MAX_SNAPSHOT_CHUNK_BYTES} bytes`, {
        field: 'payload',
      });
    }
    return { offset: uintField(h.offset, 'offset'), payload };
  },
  READ_PAGES: (h, payload) => {
    const object = validateObjectRecord(h.object);
    const pages = validatePages(h.pages, object.size);
    checkPagesPayload(object.size, pages, payload.length);
    return { object, pages, payload };
  },
  STATUS: (h, payload) => {
    noPayload(payload);
    const role = h.role;
    if (!(MEMBER_ROLES as readonly unknown[]).includes(role))
      throw invalidArgument(`role must be one of ${MEMBER_ROLES.join(', ')}; got ${describeValue(role)}`);
    const progress = arrayField(h.progress, 'progress').map((p, i) => {
      const pair = arrayField(p, `progress[${i}]`);
      if (pair.length !== 2) throw invalidArgument(`progress[${i}] must be [id, matchIndex]`);
      return [
        stringField(pair[0], `progress[${i}].id`, 1, 64),
        uintField(pair[1], `progress[${i}].match`),
      ] as [string, number];
    });
    const locks = arrayField(h.locks, 'locks').map((l, i) => {
      const entry = arrayField(l, `locks[${i}]`);
      if (entry.length !== 4) throw invalidArgument(`locks[${i}] must be [name, mode, holders, waiting]`);
      return [
        validateStoredName(entry[0], `locks[${i}].name`),
        validateMode(entry[1], `locks[${i}].mode`),
        uintField(entry[2], `locks[${i}].holders`),
        uintField(entry[3], `locks[${i}].waiting`),
      ] as LockedObject;
    });
    if (locks.length > MAX_STATUS_LOCKS)
      throw invalidArgument(`locks lists ${locks.length} objects; at most ${MAX_STATUS_LOCKS}`);
    return {
      serverId: stringField(h.serverId, 'serverId', 1, MAX_NAME_BYTES),
      clusterId: stringField(h.clusterId, 'clusterId', 1, MAX_NAME_BYTES),
      role: role as MemberRole,
      leader: optionalField(h.leader, 'leader', (v, f) => stringField(v, f, 1, 64)),
      term: uintField(h.term, 'term'),
      commitIndex: uintField(h.commitIndex, 'commitIndex'),
      appliedIndex: uintField(h.appliedIndex, 'appliedIndex'),
      lastIndex: uintField(h.lastIndex, 'lastIndex'),
      members: membersField(h.members),
      progress,
      walFiles: uintField(h.walFiles, 'walFiles'),
      walBytes: uintField(h.walBytes, 'walBytes'),
      snapshotFiles: uintField(h.snapshotFiles, 'snapshotFiles'),
      snapshotBytes: uintField(h.snapshotBytes, 'snapshotBytes'),
      snapshotIndex: uintField(h.snapshotIndex, 'snapshotIndex'),
      sessions: uintField(h.sessions, 'sessions'),
      objects: uintField(h.objects, 'objects'),
      logs: uintField(h.logs, 'logs'),
      locks,
      lockedObjects: uintField(h.lockedObjects, 'lockedObjects', locks.length),
      fsync: stringField(h.fsync, 'fsync', 1, 16),
      ...(h.group !== undefined ? { group: groupInfoField(h.group) } : {}),
      ...(h.writesHeldMs !== undefined
        ? { writesHeldMs: uintField(h.writesHeldMs, 'writesHeldMs', 1, MAX_BARRIER_HOLD_MS) }
        : {}),
    };
  },
  WATCH: (h, payload) => {
    noPayload(payload);
    return { objectId: uintField(h.objectId, 'objectId', 1), version: uintField(h.version, 'version', 1) };
  },
  UNWATCH: (h, payload) => {
    noPayload(payload);
    return { removed: boolField(h.removed, 'removed') };
  },
  USERS: (h, payload) => {
    noPayload(payload);
    const users = arrayField(h.users, 'users').map((u, i) => {
      const m = mapField(u, `users[${i}]`);
      return {
        name: validateUserName(m.name, `users[${i}].name`),
        rules: aclRulesField(m.rules, `users[${i}].rules`),
      };
    });
    return { users };
  },
  SLOTS: (h, payload) => {
    noPayload(payload);
    return {
      groupId: uintField(h.groupId, 'groupId', 0, 0xffff),
      table: validateSlotTable(h.table),
    };
  },
  BARRIER: (h, payload) => {
    noPayload(payload);
    if (typeof h.held !== 'boolean')
      throw invalidArgument(`held must be a boolean; got ${describeValue(h.held)}`, { field: 'held' });
    return {
      held: h.held,
      index: uintField(h.index, 'index'),
      term: uintField(h.term, 'term'),
      remainingMs: uintField(h.remainingMs, 'remainingMs', 0, MAX_BARRIER_HOLD_MS),
    };
  },
  PROBE: (h, payload) => {
    noPayload(payload);
    return { pushed: uintField(h.pushed, 'pushed', 0, MAX_U32) };
  },
  MOVE: (h, payload) => {
    noPayload(payload);
    const moves = arrayField(h.moves, 'moves').map((v, i) => {
      const m = mapField(v, `moves[${i}]`);
      if (m.role !== 'source' && m.role !== 'target')
        throw invalidArgument(`moves[${i}].role must be 'source' or 'target'`);
      return {
        id: moveIdField(m.id),
        role: m.role as 'source' | 'target',
        from: uintField(m.from, `moves[${i}].from`, 0, MAX_GROUP_ID),
        to: uintField(m.to, `moves[${i}].to`, 0, MAX_GROUP_ID),
        slots: slotSpansField(m.slots),
      };
    });
    return {
      groupId: uintField(h.groupId, 'groupId', 0, MAX_GROUP_ID),
      tableVersion: uintField(h.tableVersion, 'tableVersion', 1),
      freeBytes: uintField(h.freeBytes, 'freeBytes'),
      moves,
      objects: uintField(h.objects, 'objects'),
      objectBytes: uintField(h.objectBytes, 'objectBytes'),
      logs: uintField(h.logs, 'logs'),
      busy: uintField(h.busy, 'busy'),
    };
  },
  MOVE_READ: (h, payload) => {
    const objects = movedObjectsField(h.objects);
    const logs = movedLogsField(h.logs);
    const needed = movedBytes(objects, logs);
    if (needed !== payload.length)
      throw invalidArgument(`payload is ${payload.length} bytes; the objects and records need ${needed}`);
    const next = h.next === null || h.next === undefined ? null : moveCursorField(h.next);
    return { objects, logs, next, payload };
  },
};

/** STATUS's group: `{ id, start, bytes }`, the range inside the largest segment. */
function groupInfoField(v: unknown): GroupInfo {
  if (!isPlainMap(v)) throw invalidArgument(`group must be a map; got ${describeValue(v)}`);
  const g = v as Record<string, unknown>;
  const start = uintField(g.start, 'group.start', 0, MAX_SEGMENT_BYTES);
  return {
    id: uintField(g.id, 'group.id', 0, MAX_GROUP_ID),
    start,
    bytes: uintField(g.bytes, 'group.bytes', 1, MAX_SEGMENT_BYTES - start),
  };
}

/** `[id, address]` pairs of members (MEMBERSHIP, STATUS). */
function membersField(value: unknown): [string, string | null][] {
  return arrayField(value, 'members').map((m, i) => {
    const pair = arrayField(m, `members[${i}]`);
    if (pair.length !== 2) throw invalidArgument(`members[${i}] must be [id, address]`);
    const id = stringField(pair[0], `members[${i}].id`, 1, 64);
    const address = optionalField(pair[1], `members[${i}].address`, (v, f) => stringField(v, f, 3, 261));
    return [id, address] as [string, string | null];
  });
}

function emptyOk(_h: Header, payload: Buffer): EmptyBody {
  noPayload(payload);
  return {};
}

function asProtocol(err: unknown, context: string): unknown {
  if (SegmemError.is(err, 'INVALID_ARGUMENT')) {
    return new SegmemError('PROTOCOL', `${context}: ${err.message}`, err.details, { cause: err });
  }
  return err;
}

/** Decodes and validates the OK answer to a request of `requestType`; PROTOCOL for anything wrong. */
export function decodeOk<T extends RequestType>(requestType: T, frame: Frame): OkBodies[T] {
  if (frame.type !== MessageType.OK) {
    const got = NAME_BY_CODE[frame.type] ?? 'unknown type';
    throw protocolError(`expected OK (0x40) answering ${requestType}; got ${got} (${hex(frame.type)})`);
  }
  const decode = OK_DECODERS[requestType] as (h: Header, payload: Buffer) => OkBodies[T];
  if (decode === undefined) throw invalidArgument(`unknown request type ${describeValue(requestType)}`);
  try {
    return decode(frame.header, frame.payload);
  } catch (err) {
    throw asProtocol(err, `bad OK answer to ${requestType}`);
  }
}

/** Decodes an ERROR frame into the SegmemError it carries. An unknown code or a bad field is PROTOCOL. */
export function decodeError(frame: Frame): SegmemError {
  if (frame.type !== MessageType.ERROR) {
    throw protocolError(
      `expected ERROR (0x41); got ${NAME_BY_CODE[frame.type] ?? 'unknown type'} (${hex(frame.type)})`,
    );
  }
  const h = frame.header;
  const message = h.message;
  if (typeof message !== 'string') {
    throw protocolError(`bad ERROR frame: message must be a string; got ${describeValue(message)}`);
  }
  if (!isErrorCode(h.code)) {
    throw protocolError(`peer sent an ERROR with unknown code ${describeValue(h.code)}: ${message}`, {
      remoteCode: typeof h.code === 'string' ? h.code : null,
    });
  }
  const details = h.details;
  if (details !== undefined && details !== null && !isPlainMap(details)) {
    throw protocolError(`bad ERROR frame: details must be a map or null; got ${describeValue(details)}`);
  }
  return new SegmemError(h.code, message, details ?? undefined);
}

/**
 * Decodes an answer to a request of `requestType`: the OK body, or throws the SegmemError an ERROR frame
 * carries (or PROTOCOL for anything else).
 */
export function decodeResponse<T extends RequestType>(requestType: T, frame: Frame): OkBodies[T] {
  if (frame.type === MessageType.ERROR) throw decodeError(frame);
  return decodeOk(requestType, frame);
}

/** Decodes an INVALIDATE push; PROTOCOL for anything wrong. */
export function decodeInvalidate(frame: Frame): Invalidate {
  if (frame.type !== MessageType.INVALIDATE) {
    throw protocolError(
      `expected INVALIDATE (0x60); got ${NAME_BY_CODE[frame.type] ?? 'unknown type'} (${hex(frame.type)})`,
    );
  }
  if (frame.requestId !== 0)
    throw protocolError(`INVALIDATE push with requestId ${frame.requestId}; pushes use 0`);
  try {
    noPayload(frame.payload);
    return {
      seq: uintField(frame.header.seq, 'seq', 1),
      objects: versionPairsField(frame.header.objects, 'objects', 0),
    };
  } catch (err) {
    throw asProtocol(err, 'bad INVALIDATE push');
  }
}

/** Decodes a REVOKE push; PROTOCOL for anything wrong. */
export function decodeRevoke(frame: Frame): Revoke {
  if (frame.type !== MessageType.REVOKE || frame.requestId !== 0) {
    throw protocolError(`expected a REVOKE push (0x61, requestId 0); got ${hex(frame.type)}`);
  }
  try {
    noPayload(frame.payload);
    return { objectId: uintField(frame.header.objectId, 'objectId', 1) };
  } catch (err) {
    throw asProtocol(err, 'bad REVOKE push');
  }
}

/** Most objects one CHANGED push may list (a server sends one per push; the bound keeps a decoder honest). */
const MAX_CHANGED_OBJECTS = MAX_WATCHES_PER_SESSION;

/** Decodes a CHANGED push; PROTOCOL for anything wrong. */
export function decodeChanged(frame: Frame): Changed {
  if (frame.type !== MessageType.CHANGED) {
    throw protocolError(
      `expected CHANGED (0x62); got ${NAME_BY_CODE[frame.type] ?? 'unknown type'} (${hex(frame.type)})`,
    );
  }
  if (frame.requestId !== 0)
    throw protocolError(`CHANGED push with requestId ${frame.requestId}; pushes use 0`);
  try {
    noPayload(frame.payload);
    const objects = versionPairsField(frame.header.objects, 'objects', 0);
    if (objects.length === 0 || objects.length > MAX_CHANGED_OBJECTS) {
      throw invalidArgument(`objects must list 1..${MAX_CHANGED_OBJECTS} objects; got ${objects.length}`, {
        field: 'objects',
      });
    }
    return { objects };
  } catch (err) {
    throw asProtocol(err, 'bad CHANGED push');
  }
}

/** Decodes a PROBED push; PROTOCOL for anything wrong. */
export function decodeProbed(frame: Frame): Probed {
  if (frame.type !== MessageType.PROBED) {
    throw protocolError(
      `expected PROBED (0x63); got ${NAME_BY_CODE[frame.type] ?? 'unknown type'} (${hex(frame.type)})`,
    );
  }
  if (frame.requestId !== 0)
    throw protocolError(`PROBED push with requestId ${frame.requestId}; pushes use 0`);
  try {
    noPayload(frame.payload);
    const h = frame.header;
    return {
      initiator: clientIdField(h.initiator, 'initiator'),
      probeId: uintField(h.probeId, 'probeId', 1, MAX_U32),
      hops: uintField(h.hops, 'hops', 1, MAX_PROBE_HOPS),
      name: validateName(h.name),
    };
  } catch (err) {
    throw asProtocol(err, 'bad PROBED push');
  }
}
