/**
 * Field validators shared by the message catalogue, the client SDK and the server.
 *
 * Every validator takes an `unknown` (a value that came off the wire or from a caller), returns it narrowed,
 * and otherwise throws `SegmemError('INVALID_ARGUMENT')` whose message names the field, the rule and what it got,
 * e.g. `name must be 1..255 bytes of UTF-8; got 300 bytes`.
 */
import { invalidArgument } from './errors.js';
import {
  MAX_NAME_BYTES,
  MAX_OBJECT_BYTES,
  MAX_SESSION_TIMEOUT_MS,
  MAX_TIMEOUT_MS,
  MIN_SESSION_TIMEOUT_MS,
  PAGE_BYTES,
} from './limits.js';

/** `[offset, length]` of a byte range within an object. */
export type ByteRange = [offset: number, length: number];
/** `[objectId, version]`; version 0 means "deleted" where a message says so. */
export type VersionPair = [id: number, version: number];
export type AccessMode = 'read' | 'write';

// ES2024 string methods, present in Node 20 but not in the ES2023 lib this project compiles against.
interface WellFormedString {
  isWellFormed(): boolean;
  toWellFormed(): string;
}

/** True for a string without lone surrogates (so it has an exact UTF-8 encoding). */
export function isWellFormedString(s: string): boolean {
  return (s as unknown as WellFormedString).isWellFormed();
}

/** Replaces lone surrogates by U+FFFD, so the string has an exact UTF-8 encoding. */
export function toWellFormedString(s: string): string {
  return (s as unknown as WellFormedString).toWellFormed();
}

/** True for a number that is an integer in 0..Number.MAX_SAFE_INTEGER. */
export function isSafeUint(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** True for a plain map as the header decoder produces it: an object that is neither an array nor bytes. */
export function isPlainMap(value: unknown): value is Record<string, unknown> {
  return (
    typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)
  );
}

/** A short, safe description of a value for error messages (never echoes more than a few dozen characters). */
export function describeValue(value: unknown): string {
  switch (typeof value) {
    case 'undefined':
      return 'nothing';
    case 'string': {
      const json = JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
      return `the string ${json}`;
    }
    case 'number':
    case 'boolean':
    case 'bigint':
      return `${typeof value} ${String(value)}`;
    case 'object':
      if (value === null) return 'null';
      if (Array.isArray(value)) return `an array of ${value.length}`;
      if (value instanceof Uint8Array) return `${value.length} bytes`;
      return 'a map';
    default:
      return `a ${typeof value}`;
  }
}

function fail(field: string, rule: string, value: unknown): never {
  throw invalidArgument(`${field} must be ${rule}; got ${describeValue(value)}`, { field });
}

/** An integer in min..max (both safe integers). */
export function uintField(value: unknown, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value <= max) return value;
  return fail(
    field,
    max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer ${min}..${max}`,
    value,
  );
}

export function boolField(value: unknown, field: string): boolean {
  if (typeof value === 'boolean') return value;
  return fail(field, 'a boolean', value);
}

/** A string of minBytes..maxBytes UTF-8 bytes. */
export function stringField(value: unknown, field: string, minBytes: number, maxBytes: number): string {
  if (typeof value !== 'string') return fail(field, 'a string', value);
  // A UTF-16 code unit is 1..3 UTF-8 bytes, so the length brackets the byte count without encoding.
  if (value.length >= minBytes && value.length * 3 <= maxBytes) return value;
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes < minBytes || bytes > maxBytes) {
    throw invalidArgument(`${field} must be ${minBytes}..${maxBytes} bytes of UTF-8; got ${bytes} bytes`, {
      field,
    });
  }
  return value;
}

/** `undefined` and `null` become `null`; anything else goes through `check`. */
export function optionalField<T>(
  value: unknown,
  field: string,
  check: (v: unknown, f: string) => T,
): T | null {
  return value === undefined || value === null ? null : check(value, field);
}

/**
 * The first C0 or C1 control character (U+0000..U+001F, U+007F..U+009F) in `value`, as its index, or -1.
 * Such characters in a name would let it rewrite a terminal or a log line when printed.
 */
export function controlCharIndex(value: string): number {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c <= 0x1f || (c >= 0x7f && c <= 0x9f)) return i;
  }
  return -1;
}

function checkNameChars(value: string, field: string, allowControl = false): void {
  if (value.includes('\0')) {
    throw invalidArgument(`${field} must not contain NUL (U+0000) or other control characters`, { field });
  }
  if (!allowControl) {
    const at = controlCharIndex(value);
    if (at >= 0) {
      const code = value.charCodeAt(at).toString(16).toUpperCase().padStart(4, '0');
      throw invalidArgument(
        `${field} must not contain control characters (U+0000..U+001F, U+007F..U+009F); found U+${code} at character ${at}`,
        { field },
      );
    }
  }
  if (!isWellFormedString(value)) {
    throw invalidArgument(`${field} must be well-formed Unicode; it contains a lone surrogate`, { field });
  }
}

function checkNameBytes(value: unknown, field: string): string {
  if (typeof value !== 'string') return fail(field, 'a string', value);
  const bytes = value.length === 0 || value.length > MAX_NAME_BYTES ? -1 : Buffer.byteLength(value, 'utf8');
  if (bytes < 1 || bytes > MAX_NAME_BYTES) {
    const got = value.length === 0 ? 0 : Buffer.byteLength(value, 'utf8');
    throw invalidArgument(`${field} must be 1..${MAX_NAME_BYTES} bytes of UTF-8; got ${got} bytes`, {
      field,
    });
  }
  return value;
}

/**
 * An object or log name: a string of 1..255 bytes of UTF-8 without control characters (C0 U+0000..U+001F,
 * DEL and C1 U+007F..U+009F) and without lone surrogates. `/` is an ordinary character (used for prefixes);
 * other Unicode (bidi controls, confusables) is accepted.
 */
export function validateName(value: unknown, field = 'name'): string {
  const name = checkNameBytes(value, field);
  checkNameChars(name, field);
  return name;
}

/**
 * A name a server reports (in an answer): the rule of {@link validateName} except that control characters
 * other than NUL pass, so an answer that lists an object named before that rule existed is not refused whole.
 */
export function validateStoredName(value: unknown, field = 'name'): string {
  const name = checkNameBytes(value, field);
  checkNameChars(name, field, true);
  return name;
}

/** A name prefix for LIST: like a name, but may be empty. */
export function validatePrefix(value: unknown, field = 'prefix'): string {
  if (typeof value !== 'string') return fail(field, 'a string', value);
  if (value.length === 0) return value;
  const bytes = value.length > MAX_NAME_BYTES ? value.length : Buffer.byteLength(value, 'utf8');
  if (bytes > MAX_NAME_BYTES) {
    const got = Buffer.byteLength(value, 'utf8');
    throw invalidArgument(`${field} must be 0..${MAX_NAME_BYTES} bytes of UTF-8; got ${got} bytes`, {
      field,
    });
  }
  checkNameChars(value, field);
  return value;
}

/** An object size: an integer 1..MAX_OBJECT_BYTES. */
export function validateSize(value: unknown, field = 'size'): number {
  return uintField(value, field, 1, MAX_OBJECT_BYTES);
}

/** A wait limit: `null`/`undefined` (wait as long as it takes) or an integer 0..MAX_TIMEOUT_MS. */
export function validateTimeoutMs(value: unknown, field = 'timeoutMs'): number | null {
  if (value === undefined || value === null) return null;
  return uintField(value, field, 0, MAX_TIMEOUT_MS);
}

/** A session timeout: an integer MIN_SESSION_TIMEOUT_MS..MAX_SESSION_TIMEOUT_MS. */
export function validateSessionTimeoutMs(value: unknown, field = 'sessionTimeoutMs'): number {
  return uintField(value, field, MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS);
}

export function validateMode(value: unknown, field = 'mode'): AccessMode {
  if (value === 'read' || value === 'write') return value;
  return fail(field, "'read' or 'write'", value);
}

export function arrayField(value: unknown, field: string): unknown[] {
  if (Array.isArray(value)) return value;
  return fail(field, 'an array', value);
}

export function mapField(value: unknown, field: string): Record<string, unknown> {
  if (isPlainMap(value)) return value;
  return fail(field, 'a map', value);
}

/** `[id, version][]` with id >= 1 and version >= minVersion. */
export function versionPairsField(value: unknown, field: string, minVersion = 0): VersionPair[] {
  const list = arrayField(value, field);
  const out: VersionPair[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    const pair = list[i];
    if (!Array.isArray(pair) || pair.length !== 2) fail(`${field}[${i}]`, 'an [id, version] pair', pair);
    out[i] = [
      uintField(pair[0], `${field}[${i}][0] (id)`, 1),
      uintField(pair[1], `${field}[${i}][1] (version)`, minVersion),
    ];
  }
  return out;
}

/** Number of pages an object of `size` bytes spans. */
export function pageCount(size: number): number {
  return Math.ceil(size / PAGE_BYTES);
}

/** Bytes of page `page` of an object of `size` bytes: PAGE_BYTES, except the last page, which ends at `size`. */
export function pageBytesOf(size: number, page: number): number {
  return Math.min(PAGE_BYTES, size - page * PAGE_BYTES);
}

/**
 * Payload bytes of an ACQUIRE grant that carries `pages` of an object of `size` bytes: PAGE_BYTES per page,
 * except the object's last page, truncated to `size - page * PAGE_BYTES`. `pages` must be valid
 * (strictly ascending, each < pageCount(size)); {@link validatePages} checks that.
 */
export function grantPayloadBytes(size: number, pages: readonly number[]): number {
  const n = pages.length;
  if (n === 0) return 0;
  let bytes = n * PAGE_BYTES;
  const lastPage = pageCount(size) - 1;
  if (pages[n - 1] === lastPage) bytes -= PAGE_BYTES - (size - lastPage * PAGE_BYTES);
  return bytes;
}

/** Page numbers of an object of `size` bytes: integers, strictly ascending, each < pageCount(size). */
export function validatePages(value: unknown, size: number, field = 'pages'): number[] {
  const list = arrayField(value, field);
  const limit = pageCount(size);
  let previous = -1;
  for (let i = 0; i < list.length; i++) {
    const page = list[i];
    if (typeof page !== 'number' || !Number.isSafeInteger(page) || page <= previous || page >= limit) {
      fail(
        `${field}[${i}]`,
        `a page number ${previous + 1}..${limit - 1} (strictly ascending, within the object)`,
        page,
      );
    }
    previous = page;
  }
  return list as number[];
}

/**
 * Byte ranges of a write release: `[offset, length]` pairs, sorted, non-overlapping, each length >= 1,
 * each within MAX_OBJECT_BYTES. Returns the ranges and their total length.
 * Bounds against the object's actual size are the server's check (it knows the size).
 */
export function validateRanges(
  value: unknown,
  field = 'ranges',
): { ranges: ByteRange[]; totalBytes: number } {
  const list = arrayField(value, field);
  let end = 0;
  let totalBytes = 0;
  for (let i = 0; i < list.length; i++) {
    const range = list[i];
    if (!Array.isArray(range) || range.length !== 2)
      fail(`${field}[${i}]`, 'an [offset, length] pair', range);
    const offset = range[0];
    if (!isSafeUint(offset) || offset < end || offset >= MAX_OBJECT_BYTES) {
      const rule = i === 0 ? '' : ' (ranges sorted and non-overlapping)';
      fail(`${field}[${i}][0] (offset)`, `an integer ${end}..${MAX_OBJECT_BYTES - 1}${rule}`, offset);
    }
    const length = uintField(range[1], `${field}[${i}][1] (length)`, 1, MAX_OBJECT_BYTES - offset);
    end = offset + length;
    totalBytes += length;
  }
  return { ranges: list as ByteRange[], totalBytes };
}

/** Total bytes of `ranges` (the payload length a write RELEASE carries). */
export function rangesPayloadBytes(ranges: readonly ByteRange[]): number {
  let total = 0;
  for (const range of ranges) total += range[1];
  return total;
}

/** Parses `host:port` (IPv6 hosts in brackets); INVALID_ARGUMENT naming `what` otherwise. */
export function parseHostPort(value: string, what = 'address'): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : Number.NaN;
  if (!m || port > 65535) {
    throw invalidArgument(`${what} must be host:port; got ${JSON.stringify(value)}`);
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}
