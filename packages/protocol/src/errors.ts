/**
 * Every error segmem reports, on the wire and in the API, is a {@link SegmemError} with one of these codes.
 * The list is part of the public contract: add codes, never rename them.
 */
export const ERROR_CODES = [
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'NO_SPACE',
  'TIMEOUT',
  'ABORTED',
  'DEADLOCK',
  'LOCK_LOST',
  'UNAVAILABLE',
  'INVALID_ARGUMENT',
  'PROTOCOL',
  'UNAUTHORIZED',
  'CLOSED',
] as const;

/**
 * What went wrong, as one of {@link ERROR_CODES}:
 *
 * - `NOT_FOUND`: no object or log of that name (or a log record already dropped);
 * - `ALREADY_EXISTS`: `create` of a name that exists (without `ifNotExists`);
 * - `NO_SPACE`: no room left in the segment's address space (or in the local mapping);
 * - `TIMEOUT`: an acquire's `timeoutMs` passed;
 * - `ABORTED`: an acquire's or a log read's `signal` aborted;
 * - `DEADLOCK`: reserved; not produced by this version;
 * - `LOCK_LOST`: the session no longer holds what it releases (it expired, was replaced, or the object was
 *   deleted), or a release carried a stale fencing token;
 * - `UNAVAILABLE`: no server (in a cluster, no leader) reachable in time, a data directory in use, or a
 *   write-ahead log that cannot be written; the operation may be retried;
 * - `INVALID_ARGUMENT`: a bad name, size, option or range; nothing was changed;
 * - `PROTOCOL`: a peer broke the wire protocol (another version, a malformed frame);
 * - `UNAUTHORIZED`: a missing or wrong `token`, a wrong user or password, a server of another cluster, or
 *   (`details.reason` 'FORBIDDEN') a request the logged-in user has no right for; nothing was changed;
 * - `CLOSED`: the segment (or the server) was closed.
 */
export type ErrorCode = (typeof ERROR_CODES)[number];

const ERROR_CODE_SET: ReadonlySet<string> = new Set(ERROR_CODES);

/**
 * Whether `value` is one of the {@link ERROR_CODES}.
 *
 * @example
 * ```ts
 * isErrorCode('TIMEOUT'); // true
 * isErrorCode('EPERM'); // false
 * ```
 */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && ERROR_CODE_SET.has(value);
}

// A brand shared by every copy of this module, so `isSegmemError` works across duplicate installs.
const BRAND = Symbol.for('segmem.error');

/**
 * The error every segmem call rejects with: `code` says what went wrong (see {@link ErrorCode}), `message`
 * says it in words, naming the object, option or file concerned.
 *
 * @example
 * ```ts
 * import { SegmemError } from '@segmem/client';
 *
 * try {
 *   const h = await seg.acquireWrite('jobs/queue', { timeoutMs: 500 });
 *   await h.release();
 * } catch (err) {
 *   if (SegmemError.is(err, 'TIMEOUT')) console.log('busy, try later');
 *   else throw err;
 * }
 * ```
 */
export class SegmemError extends Error {
  /** What went wrong; one of {@link ERROR_CODES}, stable across versions. */
  readonly code: ErrorCode;
  /** Extra machine-readable facts (e.g. the file and offset of a corrupt WAL record). */
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SegmemError';
    this.code = code;
    this.details = details;
    Object.defineProperty(this, BRAND, { value: true });
  }

  /**
   * Whether `err` is a SegmemError (with `code`, if given). Works across duplicate copies of the package,
   * where `instanceof` would not.
   *
   * @example
   * ```ts
   * if (SegmemError.is(err, 'NOT_FOUND')) await seg.create(name, size);
   * ```
   */
  static is(err: unknown, code?: ErrorCode): err is SegmemError {
    return (
      typeof err === 'object' &&
      err !== null &&
      (err as Record<symbol, unknown>)[BRAND] === true &&
      (code === undefined || (err as SegmemError).code === code)
    );
  }
}

/**
 * A SegmemError with code `INVALID_ARGUMENT`.
 *
 * @example
 * ```ts
 * throw invalidArgument('size must be 1..33554432', { field: 'size' });
 * ```
 */
export function invalidArgument(message: string, details?: Record<string, unknown>): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', message, details);
}

/**
 * A SegmemError with code `PROTOCOL`.
 *
 * @example
 * ```ts
 * throw protocolError('unexpected frame type 0x7f');
 * ```
 */
export function protocolError(message: string, details?: Record<string, unknown>): SegmemError {
  return new SegmemError('PROTOCOL', message, details);
}
