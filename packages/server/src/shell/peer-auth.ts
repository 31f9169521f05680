/**
 * The cluster secret and the proofs members exchange with it (docs/protocol.md, "Peer handshake").
 *
 * Every member of a replicated group holds the same secret (32 random bytes in a file of mode 0600). A peer
 * connection is accepted only after both ends proved they hold it: each sends a fresh random nonce and an
 * HMAC-SHA256, keyed by the secret, over both nonces, both ids and the cluster id, under a label that
 * differs by role so one end's proof can never be replayed as the other's.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { SegmemError } from '@segmem/protocol';

/** Bytes `segmem secret new` writes. */
export const CLUSTER_SECRET_BYTES = 32;
/** A shorter secret is refused: guessing it must stay out of reach. */
export const MIN_CLUSTER_SECRET_BYTES = 16;
/** A secret file larger than this is not one (a wrong path, say). */
const MAX_SECRET_FILE_BYTES = 4096;
/** Bytes of each side's handshake nonce, and of a proof (HMAC-SHA256). */
export const PEER_NONCE_BYTES = 32;
export const PEER_PROOF_BYTES = 32;

export type PeerRole = 'dialer' | 'acceptor';

/** What both ends of one peer connection prove over. */
export interface PeerHandshake {
  clusterId: string;
  dialer: string;
  acceptor: string;
  dialerNonce: Buffer;
  acceptorNonce: Buffer;
}

export function newNonce(): Buffer {
  return randomBytes(PEER_NONCE_BYTES);
}

/** HMAC-SHA256 of the handshake under `role`'s label, keyed by the secret. */
export function peerProof(secret: Buffer, role: PeerRole, h: PeerHandshake): Buffer {
  // JSON of strings and hex: an unambiguous encoding (no two handshakes give the same text).
  const text = JSON.stringify([
    `segmem-peer-${role}-v1`,
    h.clusterId,
    h.dialer,
    h.acceptor,
    h.dialerNonce.toString('hex'),
    h.acceptorNonce.toString('hex'),
  ]);
  return createHmac('sha256', secret).update(text).digest();
}

/** Whether `proof` is `role`'s proof of the handshake; compared in constant time. */
export function checkPeerProof(secret: Buffer, role: PeerRole, h: PeerHandshake, proof: Buffer): boolean {
  const expected = peerProof(secret, role, h);
  return proof.length === expected.length && timingSafeEqual(proof, expected);
}

/** Recorded in the data directory's meta at first start: a later start with another secret is refused. */
export function secretFingerprint(secret: Buffer): string {
  return createHmac('sha256', secret).update('segmem-fingerprint').digest('hex');
}

/** The cluster id a group gets when the operator names none: from the secret, not from addresses. */
export function clusterIdFromSecret(secret: Buffer): string {
  return `segmem-${createHmac('sha256', secret).update('segmem-cluster-id').digest('hex').slice(0, 16)}`;
}

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
