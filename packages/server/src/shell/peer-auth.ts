/**
 * The cluster secret and the proofs members exchange with it (docs/protocol.md, "Peer handshake").
 *
 * Every member of a replicated group holds the same secret (32 random bytes in a file of mode 0600). A peer
 * connection is accepted only after both ends proved they hold it: each sends a fresh random nonce and an
 * HMAC-SHA256, keyed by the secret, over both nonces, both ids and the cluster id, under a label that
 * differs by role so one end's proof can never be replayed as the other's. The secret file itself is read
 * and written by secret-file.ts (entry points only: a member's code does not touch files but through its
 * StorageFs).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Env } from '@segmem/protocol';

/** Bytes `segmem secret new` writes. */
export const CLUSTER_SECRET_BYTES = 32;
/** A shorter secret is refused: guessing it must stay out of reach. */
export const MIN_CLUSTER_SECRET_BYTES = 16;
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

/**
 * A handshake nonce from the member's Env: cryptographic in a server (systemEnv), the seeded generator's in
 * the simulator, so a seed replays its handshakes.
 */
export function newNonce(env: Pick<Env, 'randomBytes'>): Buffer {
  return env.randomBytes(PEER_NONCE_BYTES);
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
