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

export type ErrorCode = (typeof ERROR_CODES)[number];

const ERROR_CODE_SET: ReadonlySet<string> = new Set(ERROR_CODES);

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && ERROR_CODE_SET.has(value);
}

// A brand shared by every copy of this module, so `isSegmemError` works across duplicate installs.
const BRAND = Symbol.for('segmem.error');

export class SegmemError extends Error {
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

  static is(err: unknown, code?: ErrorCode): err is SegmemError {
    return (
      typeof err === 'object' &&
      err !== null &&
      (err as Record<symbol, unknown>)[BRAND] === true &&
      (code === undefined || (err as SegmemError).code === code)
    );
  }
}

export function invalidArgument(message: string, details?: Record<string, unknown>): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', message, details);
}

export function protocolError(message: string, details?: Record<string, unknown>): SegmemError {
  return new SegmemError('PROTOCOL', message, details);
}
