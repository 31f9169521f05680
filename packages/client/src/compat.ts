/**
 * The seed's API (p_create, p_access_read, ...), with the same names, argument order and blocking
 * semantics, made async. One process-wide segment, opened by init_persistant().
 *
 *   await init_persistant();
 *   await p_create(4, 'compteur');
 *   const cpt = await p_access_readwrite('compteur');
 *   cpt.writeInt32LE(23 * 45);
 *   await p_release_readwrite(cpt);
 */
import { SegmemError } from '@segmem/protocol';
import { connect, openEmbedded } from './index.js';
import type { Handle, Segment } from './segment.js';

export interface InitOptions {
  /** Cluster addresses; default: the SEGMEM_SERVERS environment variable (comma-separated host:port). */
  servers?: string[];
  /** Embedded store directory when no servers are given; default ./segmem-data. */
  dir?: string;
  sessionTimeoutMs?: number;
}

let segment: Segment | null = null;
let opening: Promise<Segment> | null = null;
/** Handles by the Buffer returned to the caller; several handles may share one object's Buffer. */
const handles = new Map<Buffer, Handle[]>();

function current(): Segment {
  if (!segment) throw new SegmemError('CLOSED', 'call init_persistant() first');
  return segment;
}

/** Attaches this process to the persistent segment (idempotent). */
export async function init_persistant(opts: InitOptions = {}): Promise<void> {
  if (segment) return;
  opening ??= (async () => {
    const servers =
      opts.servers ??
      (process.env.SEGMEM_SERVERS
        ? process.env.SEGMEM_SERVERS.split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : undefined);
    const timeout = opts.sessionTimeoutMs !== undefined ? { sessionTimeoutMs: opts.sessionTimeoutMs } : {};
    return servers && servers.length > 0
      ? connect({ servers, ...timeout })
      : openEmbedded({ dir: opts.dir ?? './segmem-data', ...timeout });
  })();
  try {
    segment = await opening;
  } finally {
    opening = null;
  }
}

/** The correct English spelling, same function. */
export const init_persistent = init_persistant;

/** Creates a zero-filled datum of `size` bytes named `name`. */
export async function p_create(size: number, name: string): Promise<void> {
  await current().create(name, size);
}

function remember(h: Handle): Buffer {
  const list = handles.get(h.bytes);
  if (list) list.push(h);
  else handles.set(h.bytes, [h]);
  return h.bytes;
}

function take(data: Buffer, mode: 'read' | 'write'): Handle {
  const list = handles.get(data);
  const i = list ? list.findIndex((h) => h.mode === mode) : -1;
  if (!list || i < 0) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `this buffer is not held for ${mode === 'read' ? 'reading' : 'writing'} (released twice, or never acquired)`,
    );
  }
  const [h] = list.splice(i, 1);
  if (list.length === 0) handles.delete(data);
  return h!;
}

/** Read access: blocks while a writer holds the datum. The Buffer is read-only until released. */
export async function p_access_read(name: string): Promise<Buffer> {
  return remember(await current().acquireRead(name));
}

/** Read-write access: blocks while anyone holds the datum. */
export async function p_access_readwrite(name: string): Promise<Buffer> {
  return remember(await current().acquireWrite(name));
}

export async function p_release_read(data: Buffer): Promise<void> {
  await take(data, 'read').release();
}

/** Releases and publishes the update (committed before this resolves). */
export async function p_release_readwrite(data: Buffer): Promise<void> {
  await take(data, 'write').release();
}

/** Detaches this process (releases everything it holds). Not in the seed; useful to exit cleanly. */
export async function close_persistant(): Promise<void> {
  const s = segment;
  segment = null;
  handles.clear();
  await s?.close();
}

export const close_persistent = close_persistant;
