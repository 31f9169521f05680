/**
 * The C-style API of `@segmem/client/compat` (`p_create`, `p_access_read`, ...): the classic persistent
 * shared-memory interface, with its names, argument order and blocking semantics, made async. One
 * process-wide segment, opened by {@link init_persistant}.
 *
 * @example
 * ```ts
 * import { init_persistant, p_create, p_access_readwrite, p_release_readwrite } from '@segmem/client/compat';
 *
 * await init_persistant();
 * await p_create(4, 'compteur');
 * const cpt = await p_access_readwrite('compteur');
 * cpt.writeInt32LE(23 * 45);
 * await p_release_readwrite(cpt);
 * ```
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { SegmemError } from '@segmem/protocol';
import { connect, openEmbedded, type TlsOptions } from './index.js';
import type { Handle, Segment } from './segment.js';

/**
 * Where {@link init_persistant} attaches: to servers, or to an embedded store.
 *
 * @example
 * ```ts
 * await init_persistant({ servers: ['127.0.0.1:7401'], sessionTimeoutMs: 5000 });
 * ```
 */
export interface InitOptions {
  /** Cluster addresses; default: the SEGMEM_SERVERS environment variable (comma-separated host:port). */
  servers?: string[];
  /** Embedded store directory when no servers are given; default ./segmem-data. */
  dir?: string;
  /** As in `connect()`: locks are released this long after the process goes silent; default 10000. */
  sessionTimeoutMs?: number;
  /**
   * As in `connect()`: connect to the servers over TLS. Default: with the SEGMEM_TLS_CA environment variable
   * set, TLS trusting the CA certificate in the PEM file it names; else plain TCP.
   */
  tls?: TlsOptions;
}

let segment: Segment | null = null;
let opening: Promise<Segment> | null = null;
/** Handles by the Buffer returned to the caller; several handles may share one object's Buffer. */
const handles = new Map<Buffer, Handle[]>();

function current(): Segment {
  if (!segment) throw new SegmemError('CLOSED', 'call init_persistant() first');
  return segment;
}

/**
 * Attaches this process to the persistent segment (idempotent): to the servers in `opts.servers` or in
 * SEGMEM_SERVERS, else to an embedded store in `opts.dir` (default ./segmem-data). Every other function
 * rejects with `CLOSED` until it has resolved.
 *
 * @example
 * ```ts
 * await init_persistant(); // SEGMEM_SERVERS=127.0.0.1:7401 node app.mjs, or embedded in ./segmem-data
 * ```
 */
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
    if (!servers || servers.length === 0)
      return openEmbedded({ dir: opts.dir ?? './segmem-data', ...timeout });
    const tls = opts.tls ?? tlsFromEnvironment();
    return connect({ servers, ...timeout, ...(tls ? { tls } : {}) });
  })();
  try {
    segment = await opening;
  } finally {
    opening = null;
  }
}

/** TLS trusting the CA in the file SEGMEM_TLS_CA names; none when it is unset. */
function tlsFromEnvironment(): TlsOptions | undefined {
  const caFile = process.env.SEGMEM_TLS_CA;
  if (!caFile) return undefined;
  try {
    return { ca: readFileSync(caFile) };
  } catch (err) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `cannot read SEGMEM_TLS_CA ${caFile}: ${(err as Error).message}`,
    );
  }
}

/**
 * {@link init_persistant} under its English spelling: the same function.
 *
 * @example
 * ```ts
 * await init_persistent({ dir: './data' });
 * ```
 */
export const init_persistent = init_persistant;

/**
 * Creates a zero-filled datum of `size` bytes named `name`; rejects with `ALREADY_EXISTS` if the name is
 * taken.
 *
 * @example
 * ```ts
 * await p_create(4, 'compteur');
 * ```
 */
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

/**
 * Read access: waits while a writer holds the datum, then resolves with its bytes (read-only with the
 * native addon) until {@link p_release_read}.
 *
 * @example
 * ```ts
 * const cpt = await p_access_read('compteur');
 * console.log(cpt.readInt32LE(0));
 * await p_release_read(cpt);
 * ```
 */
export async function p_access_read(name: string): Promise<Buffer> {
  return remember(await current().acquireRead(name));
}

/**
 * Read-write access: waits while anyone holds the datum, then resolves with its bytes until
 * {@link p_release_readwrite}.
 *
 * @example
 * ```ts
 * const cpt = await p_access_readwrite('compteur');
 * cpt.writeInt32LE(cpt.readInt32LE(0) + 1);
 * await p_release_readwrite(cpt);
 * ```
 */
export async function p_access_readwrite(name: string): Promise<Buffer> {
  return remember(await current().acquireWrite(name));
}

/**
 * Gives back read access taken by {@link p_access_read}; rejects with `INVALID_ARGUMENT` for a Buffer not
 * held for reading.
 *
 * @example
 * ```ts
 * await p_release_read(cpt);
 * ```
 */
export async function p_release_read(data: Buffer): Promise<void> {
  await take(data, 'read').release();
}

/**
 * Releases read-write access and publishes the update: it resolves once the change is committed (durable
 * on a majority of the servers). Rejects with `INVALID_ARGUMENT` for a Buffer not held for writing.
 *
 * @example
 * ```ts
 * await p_release_readwrite(cpt);
 * ```
 */
export async function p_release_readwrite(data: Buffer): Promise<void> {
  await take(data, 'write').release();
}

/**
 * Detaches this process: releases everything it holds and closes the segment, so the process can exit
 * at once. An addition to the classic interface.
 *
 * @example
 * ```ts
 * await close_persistant();
 * ```
 */
export async function close_persistant(): Promise<void> {
  const s = segment;
  segment = null;
  handles.clear();
  await s?.close();
}

/**
 * {@link close_persistant} under its English spelling: the same function.
 *
 * @example
 * ```ts
 * await close_persistent();
 * ```
 */
export const close_persistent = close_persistant;
