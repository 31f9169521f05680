/**
 * Users and access rules: the shapes and validation shared by the wire (HELLO, USERS), the replicated state
 * and the command line. A user has a password, stored only as a salted scrypt hash, and a list of rules
 * `(prefix, right)`: the user's right on a name is the strongest right of the rules whose prefix starts it.
 */
import { invalidArgument } from './errors.js';
import { MAX_PASSWORD_BYTES, MAX_USER_NAME_BYTES } from './limits.js';
import { describeValue, stringField, uintField, validatePrefix } from './validate.js';

/** Rights from weakest to strongest: each includes the ones before it. */
export const ACCESS_RIGHTS = ['read', 'write', 'admin'] as const;
export type AccessRight = (typeof ACCESS_RIGHTS)[number];

/** `[prefix, right]`: the right on every name that starts with prefix ('' : every name). */
export type AclRule = [prefix: string, right: AccessRight];

/** A user as USERS lists it: its name and rules, never its password hash. */
export interface UserInfo {
  name: string;
  rules: AclRule[];
}

/** Bytes of the random salt of a password hash. */
export const PASSWORD_SALT_BYTES = 16;
/** Bytes of a password hash (scrypt's output). */
export const PASSWORD_HASH_BYTES = 32;
/** scrypt cost bounds: N a power of two 2^10..2^20, r 1..32, p 1..4, and 128*N*r (its memory) <= 32 MiB. */
export const SCRYPT_LIMITS = {
  minLogN: 10,
  maxLogN: 20,
  maxR: 32,
  maxP: 4,
  maxMemoryBytes: 32 * 1024 * 1024,
};
/** The parameters new hashes use: N=2^14, r=8, p=1 (16 MiB, some 50 ms of one core). */
export const DEFAULT_SCRYPT = { n: 2 ** 14, r: 8, p: 1 } as const;

/** A password as stored: scrypt(password, salt, N=n, r, p) -> hash, salt and hash in lower-case hex. */
export interface PasswordHash {
  salt: string;
  n: number;
  r: number;
  p: number;
  hash: string;
}

const USER_NAME = /^[A-Za-z0-9._@-]+$/;
const HEX = /^[0-9a-f]*$/;

/** A user name: 1..MAX_USER_NAME_BYTES characters of [A-Za-z0-9._@-]. */
export function validateUserName(value: unknown, field = 'user'): string {
  const name = stringField(value, field, 1, MAX_USER_NAME_BYTES);
  if (!USER_NAME.test(name)) {
    throw invalidArgument(
      `${field} must be 1..${MAX_USER_NAME_BYTES} characters of [A-Za-z0-9._@-]; got ${describeValue(name)}`,
      { field },
    );
  }
  return name;
}

/** A password: 1..MAX_PASSWORD_BYTES bytes of UTF-8. */
export function validatePassword(value: unknown, field = 'password'): string {
  return stringField(value, field, 1, MAX_PASSWORD_BYTES);
}

export function validateRight(value: unknown, field = 'right'): AccessRight {
  if (value === 'read' || value === 'write' || value === 'admin') return value;
  throw invalidArgument(`${field} must be 'read', 'write' or 'admin'; got ${describeValue(value)}`, {
    field,
  });
}

/** An ACL prefix: like a LIST prefix, 0..255 bytes ('' names everything). */
export function validateAclPrefix(value: unknown, field = 'prefix'): string {
  return validatePrefix(value, field);
}

function hexField(value: unknown, field: string, bytes: number): string {
  if (typeof value !== 'string' || value.length !== bytes * 2 || !HEX.test(value)) {
    throw invalidArgument(`${field} must be ${bytes} bytes as ${bytes * 2} lower-case hex digits`, { field });
  }
  return value;
}

/** A stored password hash, its cost inside {@link SCRYPT_LIMITS}; returns a copy with only its fields. */
export function validatePasswordHash(value: unknown, field = 'password'): PasswordHash {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalidArgument(`${field} must be a map {salt, n, r, p, hash}; got ${describeValue(value)}`, {
      field,
    });
  }
  const v = value as Record<string, unknown>;
  const salt = hexField(v.salt, `${field}.salt`, PASSWORD_SALT_BYTES);
  const hash = hexField(v.hash, `${field}.hash`, PASSWORD_HASH_BYTES);
  const n = uintField(v.n, `${field}.n`, 2 ** SCRYPT_LIMITS.minLogN, 2 ** SCRYPT_LIMITS.maxLogN);
  if ((n & (n - 1)) !== 0) throw invalidArgument(`${field}.n must be a power of two; got ${n}`, { field });
  const r = uintField(v.r, `${field}.r`, 1, SCRYPT_LIMITS.maxR);
  const p = uintField(v.p, `${field}.p`, 1, SCRYPT_LIMITS.maxP);
  if (128 * n * r > SCRYPT_LIMITS.maxMemoryBytes) {
    throw invalidArgument(
      `${field}: scrypt with n=${n}, r=${r} needs ${128 * n * r} bytes; at most ${SCRYPT_LIMITS.maxMemoryBytes}`,
      { field },
    );
  }
  return { salt, n, r, p, hash };
}

/** True when `have` includes `want` (admin > write > read). */
export function rightCovers(have: AccessRight | null, want: AccessRight): boolean {
  return have !== null && ACCESS_RIGHTS.indexOf(have) >= ACCESS_RIGHTS.indexOf(want);
}

/** The strongest right of the rules whose prefix starts `name`, or null for none. */
export function rightOn(rules: Iterable<AclRule>, name: string): AccessRight | null {
  let best: AccessRight | null = null;
  for (const [prefix, right] of rules) {
    if (name.startsWith(prefix) && !rightCovers(best, right)) best = right;
  }
  return best;
}
