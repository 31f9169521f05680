/** Reading a leader's in-memory consolidated snapshot (SNAPSHOT) in pieces (SNAPSHOT_READ), in order. */
import { SegmemError } from '@segmem/protocol';
import type { AdminSession } from './admin-client.js';

/** A chunk size well under the frame limit. */
export const SNAPSHOT_CHUNK = 8 * 1024 * 1024;
/** SNAPSHOT_READs kept in flight, so the leader serves the next piece while this one is handled. */
const SNAPSHOT_READS_IN_FLIGHT = 4;
/** How long the leader may take to build the snapshot in memory (a gigabyte took about 10 s). */
export const SNAPSHOT_BUILD_MS = 600_000;

/**
 * Reads bytes `from`..`to` of export `id` and hands each piece to `take`, in order (awaited before the
 * next is handed). The pieces are views of the answers' frames.
 */
export async function readExport(
  session: AdminSession,
  id: number,
  to: number,
  take: (chunk: Buffer, offset: number) => Promise<void> | void,
  from = 0,
): Promise<void> {
  const read = (offset: number) =>
    session.call({ type: 'SNAPSHOT_READ', id, offset, length: Math.min(SNAPSHOT_CHUNK, to - offset) });
  const ahead: Promise<Awaited<ReturnType<typeof read>>>[] = [];
  let asked = from;
  const askMore = () => {
    while (ahead.length < SNAPSHOT_READS_IN_FLIGHT && asked < to) {
      const piece = read(asked);
      piece.catch(() => {}); // awaited in order below; an early failure must not go unhandled meanwhile
      ahead.push(piece);
      asked = Math.min(to, asked + SNAPSHOT_CHUNK);
    }
  };
  for (let offset = from; offset < to; ) {
    askMore();
    const r = await ahead.shift()!;
    if (r.payload.byteLength !== Math.min(SNAPSHOT_CHUNK, to - offset))
      throw new SegmemError('PROTOCOL', `a piece of ${r.payload.byteLength} bytes at ${offset} of ${to}`);
    const chunk = Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
    await take(chunk, offset);
    offset += chunk.length;
  }
}
