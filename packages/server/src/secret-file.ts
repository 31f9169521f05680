/**
 * The cluster secret file (shell/peer-auth.ts says what the secret is for): created by `segmem secret new`
 * and `segmem up`, read by startServer before a member starts. Entry points only: a member's own code
 * reaches files through its StorageFs.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { SegmemError } from '@segmem/protocol';
import { CLUSTER_SECRET_BYTES, MIN_CLUSTER_SECRET_BYTES } from './shell/peer-auth.js';

/** A secret file larger than this is not one (a wrong path, say). */
export const MAX_SECRET_FILE_BYTES = 4096;

function badSecret(path: string, problem: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `cluster secret file ${path}: ${problem}`, { file: path });
}

/**
 * Reads a cluster secret file: hex (what `segmem secret new` writes), else the file's bytes as they are,
 * surrounding white space removed. Refuses a file others may read or write, and a secret under 16 bytes.
 */
export function readClusterSecretFile(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw badSecret(path, `cannot read it: ${(err as Error).message}`);
  }
  let raw: Buffer;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw badSecret(path, 'not a regular file');
    const open = st.mode & 0o077;
    if (open !== 0) {
      const who = [open & 0o070 ? 'its group' : '', open & 0o007 ? 'other users' : ''].filter(Boolean);
      throw badSecret(
        path,
        `mode ${(st.mode & 0o777).toString(8).padStart(4, '0')} lets ${who.join(' and ')} at it; chmod 600 it`,
      );
    }
    if (st.size > MAX_SECRET_FILE_BYTES)
      throw badSecret(path, `${st.size} bytes is too large for a secret (at most ${MAX_SECRET_FILE_BYTES})`);
    raw = Buffer.alloc(st.size);
    let at = 0;
    while (at < raw.length) {
      const n = readSync(fd, raw, at, raw.length - at, at);
      if (n === 0) break;
      at += n;
    }
    raw = raw.subarray(0, at);
  } catch (err) {
    if (SegmemError.is(err)) throw err;
    throw badSecret(path, `cannot read it: ${(err as Error).message}`);
  } finally {
    closeSync(fd);
  }
  const text = raw.toString('latin1').trim();
  const secret =
    text.length % 2 === 0 && /^[0-9a-fA-F]+$/.test(text)
      ? Buffer.from(text, 'hex')
      : Buffer.from(text, 'latin1');
  if (secret.length < MIN_CLUSTER_SECRET_BYTES)
    throw badSecret(path, `${secret.length} bytes is too short (at least ${MIN_CLUSTER_SECRET_BYTES})`);
  return secret;
}

/**
 * Creates a new secret file (32 random bytes as hex, mode 0600). Refuses to overwrite an existing file: a
 * replaced secret locks the members that still hold the old one out of the group.
 */
export function createClusterSecretFile(path: string, bytes = CLUSTER_SECRET_BYTES): void {
  if (!Number.isSafeInteger(bytes) || bytes < MIN_CLUSTER_SECRET_BYTES)
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `a cluster secret needs at least ${MIN_CLUSTER_SECRET_BYTES} bytes`,
    );
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new SegmemError(
      code === 'EEXIST' ? 'ALREADY_EXISTS' : 'INVALID_ARGUMENT',
      code === 'EEXIST'
        ? `${path} already exists; a secret is never overwritten (remove it first to replace it)`
        : `cannot create ${path}: ${(err as Error).message}`,
      { file: path },
    );
  }
  try {
    writeSync(fd, `${randomBytes(bytes).toString('hex')}\n`);
  } finally {
    closeSync(fd);
  }
}
