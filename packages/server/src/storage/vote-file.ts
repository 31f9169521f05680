/**
 * A cluster member's term and vote, kept in a small file of their own (`vote` in the data directory) as
 * well as in the WAL's hard-state records: two copies in two places, so that damage to one of them cannot
 * hide a vote the member gave. Raft's safety rests on a member never voting twice in a term; a WAL cut at
 * a damaged record could otherwise take the record of that vote with it.
 *
 * The file also holds `rejoinTerm`: set when the member repaired damaged storage (see raft-storage.ts),
 * it keeps the member out of elections until its log reaches that term again; 0 otherwise.
 *
 * ## Format (integers little-endian)
 *
 * | bytes    | field                                              |
 * |----------|----------------------------------------------------|
 * | 0-7      | magic `SGMVOTE1`                                   |
 * | 8-15     | u64 term                                           |
 * | 16-23    | u64 rejoinTerm                                     |
 * | 24       | u8 length of the vote's server id (0: no vote)     |
 * | 25-      | the server id voted for (ASCII)                    |
 * | last 4   | u32 CRC-32C of every byte before it                |
 *
 * The file is replaced atomically (temporary file, fsync, rename, directory fsync) at every change of
 * term or vote, before the messages that depend on it are sent; elections are rare, so this costs nothing
 * on the write path.
 *
 * @module
 */
import { join } from 'node:path';
import { crc32c } from './crc32c.js';
import { errnoCode, errorMessage } from './files.js';
import { cannotWrite, nodeFs, type StorageFs, writeFileAtomic } from './fs.js';

export const VOTE_FILE = 'vote';
const MAGIC = 'SGMVOTE1';
const FIXED_BYTES = 25;
const TWO_32 = 0x1_0000_0000;
const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

export interface VoteState {
  term: number;
  vote: string | null;
  /** Out of elections until the log holds an entry of this term or later (0: not rejoining). */
  rejoinTerm: number;
}

/** What reading the file found: its state, no file (a fresh or older data directory), or damage. */
export type VoteFileRead = { state: VoteState } | { missing: true } | { damaged: string };

function putU64(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % TWO_32, off);
  b.writeUInt32LE(Math.floor(v / TWO_32), off + 4);
}

function readU64(b: Buffer, off: number): number {
  return b.readUInt32LE(off + 4) * TWO_32 + b.readUInt32LE(off);
}

export function encodeVoteFile(s: VoteState): Buffer {
  const id = Buffer.from(s.vote ?? '', 'latin1');
  const b = Buffer.alloc(FIXED_BYTES + id.length + 4);
  b.write(MAGIC, 0, 'latin1');
  putU64(b, 8, s.term);
  putU64(b, 16, s.rejoinTerm);
  b[24] = id.length;
  id.copy(b, FIXED_BYTES);
  b.writeUInt32LE(crc32c(b, 0, 0, b.length - 4), b.length - 4);
  return b;
}

/** Decodes the file's bytes: its state, or why they are not a valid vote file. */
export function decodeVoteFile(b: Buffer): VoteState | string {
  if (b.length < FIXED_BYTES + 4) return `too short (${b.length} bytes)`;
  if (b.toString('latin1', 0, 8) !== MAGIC) return 'wrong magic';
  const idLength = b[24]!;
  if (b.length !== FIXED_BYTES + idLength + 4) return `length ${b.length} does not match its vote's`;
  if (b.readUInt32LE(b.length - 4) !== crc32c(b, 0, 0, b.length - 4)) return 'checksum mismatch';
  const term = readU64(b, 8);
  const rejoinTerm = readU64(b, 16);
  if (!Number.isSafeInteger(term) || !Number.isSafeInteger(rejoinTerm)) return 'term out of range';
  const vote = idLength > 0 ? b.toString('latin1', FIXED_BYTES, FIXED_BYTES + idLength) : null;
  if (vote !== null && !SERVER_ID.test(vote)) return 'the vote is not a server id';
  return { term, vote, rejoinTerm };
}

export async function readVoteFile(dir: string, fs: StorageFs = nodeFs): Promise<VoteFileRead> {
  const path = join(dir, VOTE_FILE);
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return { missing: true };
    return { damaged: `cannot read ${path}: ${errorMessage(err)}` };
  }
  const decoded = decodeVoteFile(bytes);
  return typeof decoded === 'string' ? { damaged: `${path} is damaged: ${decoded}` } : { state: decoded };
}

/**
 * Replaces the file with `state`, atomically and durably. A failed write is `UNAVAILABLE` naming the file,
 * with `details.errno`.
 */
export async function writeVoteFile(dir: string, state: VoteState, fs: StorageFs = nodeFs): Promise<void> {
  const path = join(dir, VOTE_FILE);
  try {
    await writeFileAtomic(fs, path, encodeVoteFile(state), 'vote');
  } catch (err) {
    throw cannotWrite(path, err);
  }
}

interface TermAndVote {
  term: number;
  vote: string | null;
}

/**
 * Which of two records of term and vote is the later one: the higher term; in one term, the one with a
 * vote (a member's vote in a term goes from none to one server, never from one server to another).
 * Returns undefined when they name two different votes in one term, which no correct history produces.
 */
export function laterVote<A extends TermAndVote, B extends TermAndVote>(a: A, b: B): A | B | undefined {
  if (a.term !== b.term) return a.term > b.term ? a : b;
  if (a.vote !== null && b.vote !== null && a.vote !== b.vote) return undefined;
  return a.vote !== null ? a : b;
}
