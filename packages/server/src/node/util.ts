/** Small helpers the node's parts share. */
import { timingSafeEqual } from 'node:crypto';
import { SegmemError } from '@segmem/protocol';
import type { Result } from '../core/commands.js';
import type { SegmentObject } from '../core/state-machine.js';

/** The bytes of the listed pages, copied once into the outgoing payload (the object may change before the socket drains). */
export function pagesPayload(obj: SegmentObject, pages: number[], pageBytes: number): Buffer | undefined {
  if (pages.length === 0) return undefined;
  let total = 0;
  for (const p of pages) total += Math.min(pageBytes, obj.size - p * pageBytes);
  if (!obj.data) return Buffer.alloc(total); // never written: zeros
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const p of pages) {
    const start = p * pageBytes;
    at += obj.data.copy(out, at, start, Math.min(obj.size, start + pageBytes));
  }
  return out;
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
  if (!result.ok) throw new SegmemError(result.code, result.message);
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
