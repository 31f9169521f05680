/**
 * Safe msgpack for frame headers.
 *
 * Encoding uses one shared msgpackr `Packr` (plain maps, no records, `undefined` written as nil).
 * Decoding first walks the bytes with a strict scanner ({@link checkHeaderBytes}) and only then hands them to
 * one shared msgpackr `Unpackr`, so msgpackr only ever sees plain msgpack. The scanner refuses, with
 * `SegmemError('PROTOCOL')` naming the problem and its byte offset:
 * - a top-level value that is not a map, trailing or missing bytes;
 * - nesting deeper than MAX_HEADER_DEPTH (the top-level map is depth 1);
 * - a count of elements or entries the bytes left cannot hold, and more maps and arrays in all than
 *   HEADER_FREE_CONTAINERS + one per HEADER_BYTES_PER_CONTAINER bytes of the header (so what msgpackr
 *   allocates stays a small multiple of the header's size: millions of 1-byte empty maps are refused); a
 *   bin value counts as BIN_CONTAINER_WEIGHT containers, a Buffer view being that much larger than a map;
 * - more array elements and map entries in all than the caller's `maxElements` (a server passes
 *   MAX_REQUEST_HEADER_ELEMENTS for requests);
 * - map keys that are not strings, and the keys `__proto__`, `constructor`, `prototype` at any depth;
 * - integers outside -(2^53-1)..2^53-1 (so every integer decodes exactly as a number, never a bigint);
 * - every extension type (timestamps, msgpackr's records, structured clone, bundled strings, ...) and the
 *   reserved byte 0xc1;
 * - strings that are not valid UTF-8.
 * What remains decodes to null, booleans, numbers, strings, Buffers (views of the input, no copy),
 * arrays and plain objects whose prototype no key can change.
 */
import { isUtf8 } from 'node:buffer';
import { Packr, RESERVE_START_SPACE, Unpackr } from 'msgpackr';
import { protocolError } from './errors.js';
import { HEADER_BYTES_PER_CONTAINER, HEADER_FREE_CONTAINERS, MAX_HEADER_DEPTH } from './limits.js';
import { toWellFormedString } from './validate.js';

const packr = new Packr({ useRecords: false, encodeUndefinedAsNil: true, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

/** Keys refused in every decoded map: they could reach or shadow an object's prototype machinery. */
export const FORBIDDEN_KEYS: readonly string[] = ['__proto__', 'constructor', 'prototype'];

/**
 * Encodes `value` (a header map) as msgpack. With `reserveBytes` (0..255), the returned Buffer starts with that
 * many unwritten bytes for the caller's fixed prefix, so prefix and header share one buffer without a copy.
 * The returned Buffer may share its ArrayBuffer with other encoded headers (never overlapping).
 */
export function encodeHeader(value: object, reserveBytes = 0): Buffer {
  return reserveBytes > 0 ? packr.pack(value, RESERVE_START_SPACE | reserveBytes) : packr.pack(value);
}

/**
 * Decodes one msgpack map from `buf[start..end)`, which must hold exactly that map and nothing else.
 * Throws `SegmemError('PROTOCOL')` for anything the rules above refuse.
 */
export function decodeHeader(
  buf: Buffer,
  start = 0,
  end = buf.length,
  maxElements = Number.POSITIVE_INFINITY,
): Record<string, unknown> {
  checkHeaderBytes(buf, start, end, maxElements);
  let value: unknown;
  try {
    value = unpackr.unpack(buf, { start, end });
  } catch (err) {
    // The scanner accepted the bytes, so msgpackr should too; keep the promise of PROTOCOL-only failures anyway.
    throw protocolError(`bad msgpack header: ${(err as Error)?.message ?? String(err)}`);
  }
  return value as Record<string, unknown>;
}

/**
 * The strict scan behind {@link decodeHeader}: throws `SegmemError('PROTOCOL')` unless `buf[start..end)` is
 * exactly one msgpack map obeying the header rules. Allocates nothing on the good path.
 */
export function checkHeaderBytes(
  buf: Buffer,
  start: number,
  end: number,
  maxElements = Number.POSITIVE_INFINITY,
): void {
  if (start >= end) bad('empty header; a header is one msgpack map', start);
  scannedHeaderBytes = end - start;
  elementsLeft = maxElements;
  maxHeaderElements = maxElements;
  containersLeft = HEADER_FREE_CONTAINERS + Math.floor(scannedHeaderBytes / HEADER_BYTES_PER_CONTAINER);
  const first = buf[start];
  if (!((first >= 0x80 && first <= 0x8f) || first === 0xde || first === 0xdf)) {
    bad(`header must be a msgpack map; found type byte 0x${first.toString(16).padStart(2, '0')}`, start);
  }
  const after = scanValue(buf, start, end, 0);
  if (after !== end) bad(`${end - after} bytes after the header map`, after);
}

function bad(problem: string, offset: number): never {
  throw protocolError(`bad msgpack header: ${problem} (at byte ${offset})`, { offset });
}

function need(pos: number, bytes: number, end: number): void {
  if (pos + bytes > end) bad('truncated', pos);
}

/** Maps and arrays the header being scanned may still open (the scan is synchronous: one at a time). */
let containersLeft = 0;
let scannedHeaderBytes = 0;
/** Elements and entries the header being scanned may still declare. */
let elementsLeft = 0;
let maxHeaderElements = 0;

/**
 * Containers one bin value counts as: it decodes to a Buffer view (a hundred bytes or so of memory, and
 * slow to make) from as little as 2 header bytes. Headers of real messages carry no bytes at all.
 */
export const BIN_CONTAINER_WEIGHT = 8;

/** Counts one bin value against the container budget. */
function openBin(pos: number): void {
  containersLeft -= BIN_CONTAINER_WEIGHT - 1;
  openContainer(pos, 0);
}

/** Counts one more map or array, of `count` elements or entries, against the header's budgets. */
function openContainer(pos: number, count: number): void {
  elementsLeft -= count;
  if (elementsLeft < 0) {
    bad(`more than ${maxHeaderElements} array elements and map entries in one header refused`, pos);
  }
  if (--containersLeft < 0) {
    bad(
      `more maps and arrays than a header of ${scannedHeaderBytes} bytes may hold ` +
        `(${HEADER_FREE_CONTAINERS} plus one per ${HEADER_BYTES_PER_CONTAINER} bytes, a bin value counting as ${BIN_CONTAINER_WEIGHT}) refused`,
      pos,
    );
  }
}

const MAX_SAFE_HIGH_WORD = 0x1fffff; // 2^53 - 1 = 0x001fffff_ffffffff

/** Checks one value at `pos` and returns the position after it. `depth` counts the containers around it. */
function scanValue(buf: Buffer, pos: number, end: number, depth: number): number {
  if (pos >= end) bad('truncated', pos);
  const t = buf[pos];
  pos++;
  if (t <= 0x7f || t >= 0xe0) return pos; // positive and negative fixint
  if (t <= 0x8f) return scanMap(buf, pos, end, t & 0x0f, depth + 1);
  if (t <= 0x9f) return scanArray(buf, pos, end, t & 0x0f, depth + 1);
  if (t <= 0xbf) return scanString(buf, pos, end, t & 0x1f);
  switch (t) {
    case 0xc0: // nil
    case 0xc2: // false
    case 0xc3: // true
      return pos;
    case 0xc4: // bin 8
      need(pos, 1, end);
      openBin(pos - 1);
      return skip(pos + 1, buf[pos], end);
    case 0xc5: // bin 16
      need(pos, 2, end);
      openBin(pos - 1);
      return skip(pos + 2, buf.readUInt16BE(pos), end);
    case 0xc6: // bin 32
      need(pos, 4, end);
      openBin(pos - 1);
      return skip(pos + 4, buf.readUInt32BE(pos), end);
    case 0xca: // float 32
    case 0xce: // uint 32
    case 0xd2: // int 32
      return skip(pos, 4, end);
    case 0xcb: // float 64
      return skip(pos, 8, end);
    case 0xcc: // uint 8
    case 0xd0: // int 8
      return skip(pos, 1, end);
    case 0xcd: // uint 16
    case 0xd1: // int 16
      return skip(pos, 2, end);
    case 0xcf: // uint 64
      need(pos, 8, end);
      if (buf.readUInt32BE(pos) > MAX_SAFE_HIGH_WORD) bad('integer beyond 2^53-1 refused', pos - 1);
      return pos + 8;
    case 0xd3: {
      // int 64: safe when -(2^53-1) <= value <= 2^53-1
      need(pos, 8, end);
      const high = buf.readInt32BE(pos);
      const low = buf.readUInt32BE(pos + 4);
      if (
        high > MAX_SAFE_HIGH_WORD ||
        high < -MAX_SAFE_HIGH_WORD - 1 ||
        (high === -MAX_SAFE_HIGH_WORD - 1 && low === 0)
      ) {
        bad('integer beyond +-(2^53-1) refused', pos - 1);
      }
      return pos + 8;
    }
    case 0xd9: // str 8
      need(pos, 1, end);
      return scanString(buf, pos + 1, end, buf[pos]);
    case 0xda: // str 16
      need(pos, 2, end);
      return scanString(buf, pos + 2, end, buf.readUInt16BE(pos));
    case 0xdb: // str 32
      need(pos, 4, end);
      return scanString(buf, pos + 4, end, buf.readUInt32BE(pos));
    case 0xdc: // array 16
      need(pos, 2, end);
      return scanArray(buf, pos + 2, end, buf.readUInt16BE(pos), depth + 1);
    case 0xdd: // array 32
      need(pos, 4, end);
      return scanArray(buf, pos + 4, end, buf.readUInt32BE(pos), depth + 1);
    case 0xde: // map 16
      need(pos, 2, end);
      return scanMap(buf, pos + 2, end, buf.readUInt16BE(pos), depth + 1);
    case 0xdf: // map 32
      need(pos, 4, end);
      return scanMap(buf, pos + 4, end, buf.readUInt32BE(pos), depth + 1);
    case 0xc1:
      return bad('reserved type byte 0xc1 refused', pos - 1);
    default: {
      // 0xc7..0xc9 ext 8/16/32, 0xd4..0xd8 fixext 1/2/4/8/16
      const lengthBytes = t === 0xc7 ? 1 : t === 0xc8 ? 2 : t === 0xc9 ? 4 : 0;
      const typeAt = pos + lengthBytes;
      const extType = typeAt < end ? buf.readInt8(typeAt) : undefined;
      return bad(`msgpack extension type ${extType ?? '(truncated)'} refused`, pos - 1);
    }
  }
}

function skip(pos: number, bytes: number, end: number): number {
  need(pos, bytes, end);
  return pos + bytes;
}

function scanString(buf: Buffer, pos: number, end: number, length: number): number {
  need(pos, length, end);
  const stop = pos + length;
  for (let i = pos; i < stop; i++) {
    if (buf[i] >= 0x80) {
      if (!isUtf8(buf.subarray(pos, stop))) bad('string is not valid UTF-8', pos);
      break;
    }
  }
  return stop;
}

function scanArray(buf: Buffer, pos: number, end: number, count: number, depth: number): number {
  if (depth > MAX_HEADER_DEPTH) bad(`nesting deeper than ${MAX_HEADER_DEPTH} levels refused`, pos);
  if (count > end - pos) bad(`array of ${count} elements cannot fit in the header`, pos);
  openContainer(pos, count);
  for (let i = 0; i < count; i++) pos = scanValue(buf, pos, end, depth);
  return pos;
}

function scanMap(buf: Buffer, pos: number, end: number, count: number, depth: number): number {
  if (depth > MAX_HEADER_DEPTH) bad(`nesting deeper than ${MAX_HEADER_DEPTH} levels refused`, pos);
  if (count > (end - pos) / 2) bad(`map of ${count} entries cannot fit in the header`, pos);
  openContainer(pos, count);
  for (let i = 0; i < count; i++) {
    if (pos >= end) bad('truncated', pos);
    const t = buf[pos];
    let length: number;
    let at: number;
    if (t >= 0xa0 && t <= 0xbf) {
      length = t & 0x1f;
      at = pos + 1;
    } else if (t === 0xd9) {
      need(pos + 1, 1, end);
      length = buf[pos + 1];
      at = pos + 2;
    } else if (t === 0xda) {
      need(pos + 1, 2, end);
      length = buf.readUInt16BE(pos + 1);
      at = pos + 3;
    } else if (t === 0xdb) {
      need(pos + 1, 4, end);
      length = buf.readUInt32BE(pos + 1);
      at = pos + 5;
    } else {
      return bad('map keys must be strings', pos);
    }
    if ((length === 9 || length === 11) && at + length <= end && isForbiddenKey(buf, at, length)) {
      bad(`key "${buf.toString('latin1', at, at + length)}" refused`, pos);
    }
    pos = scanString(buf, at, end, length);
    pos = scanValue(buf, pos, end, depth);
  }
  return pos;
}

const FORBIDDEN_KEY_BYTES = FORBIDDEN_KEYS.map((key) => Buffer.from(key, 'latin1'));

/** Whether the `length` bytes at `at` spell one of FORBIDDEN_KEYS (compared in place, no string made). */
function isForbiddenKey(buf: Buffer, at: number, length: number): boolean {
  const first = buf[at];
  if (first !== 0x5f && first !== 0x63 && first !== 0x70) return false; // '_', 'c', 'p'
  outer: for (const key of FORBIDDEN_KEY_BYTES) {
    if (key.length !== length) continue;
    for (let i = 0; i < length; i++) if (buf[at + i] !== key[i]) continue outer;
    return true;
  }
  return false;
}

/**
 * Makes an arbitrary value safe to put in a header (used for ERROR details, which may hold anything a caller
 * attached): keeps null, booleans, finite numbers, strings (made well-formed), bytes, arrays and plain maps up to
 * `depthLeft` levels; turns safe bigints into numbers and other bigints into strings, Dates into ISO strings,
 * Errors into their messages; drops prototype keys, undefined values, functions and symbols.
 */
export function sanitizeHeaderValue(value: unknown, depthLeft: number): unknown {
  switch (typeof value) {
    case 'string':
      return toWellFormedString(value);
    case 'boolean':
      return value;
    case 'number':
      return Number.isFinite(value) ? value : String(value);
    case 'bigint':
      return value >= -BigInt(Number.MAX_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(value)
        : value.toString();
    case 'object': {
      if (value === null) return null;
      if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
      if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
      if (value instanceof Error) return toWellFormedString(value.message);
      if (depthLeft <= 0) return null;
      if (Array.isArray(value)) {
        return value.map((item) => {
          const clean = sanitizeHeaderValue(item, depthLeft - 1);
          return clean === undefined ? null : clean;
        });
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return null;
      const out: Record<string, unknown> = {};
      for (const key of Object.keys(value)) {
        if (FORBIDDEN_KEYS.includes(key)) continue;
        const clean = sanitizeHeaderValue((value as Record<string, unknown>)[key], depthLeft - 1);
        if (clean !== undefined) out[toWellFormedString(key)] = clean;
      }
      return out;
    }
    default:
      return undefined;
  }
}
