/**
 * UDP invalidation hints: best-effort copies of INVALIDATE pushes, so a client can drop stale pages before the
 * TCP push arrives. A hint is never trusted for correctness (the TCP push and VALIDATE are), so a lost, late or
 * truncated hint costs only a revalidation.
 *
 * | offset | size | field                                                              |
 * |-------:|-----:|--------------------------------------------------------------------|
 * | 0      | 4    | magic "SGMU"                                                       |
 * | 4      | 1    | version u8 (PROTOCOL_VERSION)                                      |
 * | 5      | 1    | kind u8 (1 = invalidation)                                         |
 * | 6      | 2    | reserved, written 0, ignored when read                             |
 * | 8      | ...  | msgpack map `{ sessionId, seq, objects: [id, version][], truncated? }` |
 *
 * At most MAX_DATAGRAM_BYTES in all. The encoder drops the objects that do not fit and sets `truncated: true`,
 * which tells the client to revalidate everything it caches.
 */
import { protocolError, SegmemError } from './errors.js';
import { MAX_DATAGRAM_BYTES, PROTOCOL_VERSION } from './limits.js';
import { decodeHeader, encodeHeader } from './msgpack.js';
import { boolField, uintField, type VersionPair, versionPairsField } from './validate.js';

export const DATAGRAM_MAGIC = 'SGMU';
export const DATAGRAM_KIND_INVALIDATION = 1;
/** Bytes before the msgpack body. */
export const DATAGRAM_PREFIX_BYTES = 8;

const MAGIC = Buffer.from(DATAGRAM_MAGIC, 'latin1');
const MAGIC_U32 = MAGIC.readUInt32LE(0);
/** An `[id, version]` pair takes at least 3 bytes (fixarray header + two fixints). */
const MIN_PAIR_BYTES = 3;

export interface InvalidationDatagram {
  /** The session the hint is for (a client may share a UDP port across sessions). */
  sessionId: number;
  /** The seq of the INVALIDATE push this hint copies. */
  seq: number;
  /** `[id, version]` of changed objects; version 0 means deleted. */
  objects: VersionPair[];
  /** True when objects were left out to fit the datagram: revalidate all cached objects. */
  truncated: boolean;
}

export type InvalidationDatagramInput = Omit<InvalidationDatagram, 'truncated'> & { truncated?: boolean };

function build(msg: InvalidationDatagramInput, objects: VersionPair[], truncated: boolean): Buffer {
  const body: Record<string, unknown> = { sessionId: msg.sessionId, seq: msg.seq, objects };
  if (truncated) body.truncated = true;
  const buf = encodeHeader(body, DATAGRAM_PREFIX_BYTES);
  MAGIC.copy(buf, 0);
  buf[4] = PROTOCOL_VERSION;
  buf[5] = DATAGRAM_KIND_INVALIDATION;
  buf.writeUInt16LE(0, 6);
  return buf;
}

/** Encodes a hint of at most MAX_DATAGRAM_BYTES, dropping objects (and setting `truncated`) when needed. */
export function encodeInvalidationDatagram(msg: InvalidationDatagramInput): Buffer {
  const truncatedIn = msg.truncated === true;
  const all = msg.objects;
  const full = build(msg, all, truncatedIn);
  if (full.length <= MAX_DATAGRAM_BYTES) return full;
  // Largest prefix of objects that fits, by binary search (each probe encodes at most ~400 pairs).
  let lo = 0;
  let hi = Math.min(
    all.length - 1,
    Math.floor((MAX_DATAGRAM_BYTES - DATAGRAM_PREFIX_BYTES) / MIN_PAIR_BYTES),
  );
  let best = build(msg, [], true);
  if (best.length > MAX_DATAGRAM_BYTES) {
    throw new SegmemError('INVALID_ARGUMENT', 'invalidation datagram does not fit even without objects');
  }
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    const candidate = build(msg, all.slice(0, mid), true);
    if (candidate.length <= MAX_DATAGRAM_BYTES) {
      lo = mid;
      best = candidate;
    } else {
      hi = mid - 1;
    }
  }
  return best; // holds the first `lo` objects: every probe that fitted updated both
}

/** Decodes a hint. Anything but a valid hint throws `SegmemError('PROTOCOL')`, never anything else. */
export function decodeInvalidationDatagram(buf: Buffer): InvalidationDatagram {
  if (!Buffer.isBuffer(buf)) throw protocolError('datagram must be a Buffer');
  if (buf.length < DATAGRAM_PREFIX_BYTES + 1) {
    throw protocolError(`datagram of ${buf.length} bytes is too short to be a segmem hint`);
  }
  if (buf.length > MAX_DATAGRAM_BYTES) {
    throw protocolError(`datagram of ${buf.length} bytes exceeds the limit of ${MAX_DATAGRAM_BYTES}`);
  }
  if (buf.readUInt32LE(0) !== MAGIC_U32) throw protocolError('datagram does not start with the magic "SGMU"');
  if (buf[4] !== PROTOCOL_VERSION) {
    throw protocolError(
      `unsupported datagram version ${buf[4]} (this side speaks version ${PROTOCOL_VERSION})`,
    );
  }
  if (buf[5] !== DATAGRAM_KIND_INVALIDATION) throw protocolError(`unknown datagram kind ${buf[5]}`);
  const body = decodeHeader(buf, DATAGRAM_PREFIX_BYTES, buf.length);
  try {
    return {
      sessionId: uintField(body.sessionId, 'sessionId', 1),
      seq: uintField(body.seq, 'seq', 1),
      objects: versionPairsField(body.objects, 'objects', 0),
      truncated:
        body.truncated === undefined || body.truncated === null
          ? false
          : boolField(body.truncated, 'truncated'),
    };
  } catch (err) {
    if (SegmemError.is(err)) {
      throw new SegmemError('PROTOCOL', `bad invalidation datagram: ${err.message}`, err.details);
    }
    throw err;
  }
}
