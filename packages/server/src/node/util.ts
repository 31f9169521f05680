/** Small helpers the node's parts share. */
import { timingSafeEqual } from 'node:crypto';
import { type OkBodyInput, SegmemError } from '@segmem/protocol';
import type { Result } from '../core/commands.js';
import type { SegmentObject, StateMachine } from '../core/state-machine.js';
import type { Port } from './port.js';

/**
 * Page bytes of an answer up to this size are copied into it (as cheap as keeping a reference, and a later
 * write to the object needs no copy); larger answers carry views of the object's buffer if they cover at
 * least half of it.
 */
const COPIED_PAGES_MAX_BYTES = 64 * 1024;

/** All zero, never written: what a never-written object's pages are sent from (grown to the largest asked). */
let zeroPages = Buffer.alloc(0);

function zeros(bytes: number): Buffer {
  if (zeroPages.length < bytes) zeroPages = Buffer.alloc(bytes);
  return zeroPages.subarray(0, bytes);
}

/**
 * Answers `requestId` with `body` and the bytes of the listed pages (ascending) beside it. Large answers carry
 * the bytes by reference: views of the object's buffer, which the state keeps unchanged (a write copies it
 * first) until the answer has been sent, so a client that does not read costs no copy per answer. Only an
 * answer covering half the object or more keeps the whole buffer alive that way: the connection's budget
 * counts the answer's bytes, so what a client that does not read holds stays within twice that budget even
 * when every answer pins a different version of the object.
 */
export function answerWithPages<T extends 'ACQUIRE' | 'READ_PAGES'>(
  port: Port,
  type: T,
  requestId: number,
  body: OkBodyInput<T>,
  sm: StateMachine,
  obj: SegmentObject,
  pages: number[],
): void {
  if (pages.length === 0) {
    port.ok(type, requestId, body);
    return;
  }
  const pageBytes = sm.pageBytes;
  const data = obj.data;
  let total = 0;
  for (const p of pages) total += Math.min(pageBytes, obj.size - p * pageBytes);
  if (!data) {
    port.ok(type, requestId, body, zeros(total));
    return;
  }
  if (total <= COPIED_PAGES_MAX_BYTES || total * 2 < data.length) {
    const out = Buffer.allocUnsafe(total);
    let at = 0;
    for (const p of pages) {
      const start = p * pageBytes;
      at += data.copy(out, at, start, Math.min(obj.size, start + pageBytes));
    }
    port.ok(type, requestId, body, out);
    return;
  }
  // One view per run of consecutive pages (a whole object: one view).
  const views: Buffer[] = [];
  for (let i = 0; i < pages.length; ) {
    const first = pages[i]!;
    let end = first + 1;
    while (++i < pages.length && pages[i] === end) end++;
    views.push(data.subarray(first * pageBytes, Math.min(obj.size, end * pageBytes)));
  }
  port.ok(type, requestId, body, views, sm.pinData(data));
}

/** The object fields a grant or a READ_PAGES answer carries. */
export function objectRecord(obj: SegmentObject) {
  return { id: obj.id, name: obj.name, size: obj.size, address: obj.address, version: obj.version };
}

/** Compares a presented credential with the expected one in time independent of where they differ. */
export function sameSecret(given: string | null | undefined, expected: string): boolean {
  if (typeof given !== 'string') return false;
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function unwrap(result: Result): unknown {
  if (!result.ok) throw new SegmemError(result.code, result.message, result.details);
  return result.value;
}

export function pick<T extends object, K extends keyof T>(obj: T, ...keys: K[]): Pick<T, K> {
  const out = {} as Pick<T, K>;
  for (const k of keys) out[k] = obj[k];
  return out;
}

export function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
