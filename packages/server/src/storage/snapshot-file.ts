/**
 * Snapshot files: the state machine's bytes at one log index, checksummed and written atomically, in the
 * data directory's `snap/`. Shared by a single server's log and a Raft member's storage.
 *
 * File format (integers little-endian):
 *
 * | bytes  | field                                                   |
 * |--------|---------------------------------------------------------|
 * | 0-7    | magic `SGMSNAP1`                                        |
 * | 8-11   | u32 length M of the meta block                          |
 * | 12-    | meta: msgpack `[index, term, members]`                  |
 * | 12+M-  | the state machine's snapshot bytes                      |
 * | last 4 | u32 CRC-32C of every byte before it                     |
 *
 * The name is `<term>-<index>.snap`, both numbers 20 digits wide (a single server's snapshots have
 * term 0), so names sort in snapshot order.
 *
 * @module
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import { Packr } from 'msgpackr';
import { crc32c } from './crc32c.js';
import { errorMessage, unlinkFile, writeFileAtomic } from './files.js';
import { nextTurn } from './snapshot-serialise.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

export const SNAPSHOT_DIR = 'snap';
const SNAPSHOT_MAGIC = 'SGMSNAP1';
const SNAPSHOT_NAME = /^\d{20}-\d{20}\.snap$/;
/** The checksum is computed in slices of this size, yielding to the event loop between them. */
const CRC_SLICE_BYTES = 4 * 1024 * 1024;

export interface SnapshotMeta {
  index: number;
  term: number;
  /** The group's members at `index` (empty for a single server). */
  members: string[];
}

export interface SnapshotFile {
  meta: SnapshotMeta;
  data: Buffer;
}

export function snapshotFileName(meta: { index: number; term: number }): string {
  return `${String(meta.term).padStart(20, '0')}-${String(meta.index).padStart(20, '0')}.snap`;
}

export function isSnapshotName(name: string): boolean {
  return SNAPSHOT_NAME.test(name);
}

/**
 * The file's bytes as parts to write one after the other (the data is not copied). The checksum over a
 * large state is computed in 4 MiB slices with a turn of the event loop between them, so it does not
 * hold up other work.
 */
async function encodeSnapshotParts(snap: SnapshotFile): Promise<Buffer[]> {
  const meta = packr.pack([snap.meta.index, snap.meta.term, snap.meta.members]);
  const head = Buffer.alloc(12);
  head.write(SNAPSHOT_MAGIC, 0, 'latin1');
  head.writeUInt32LE(meta.length, 8);
  let crc = crc32c(meta, crc32c(head));
  const data = snap.data;
  for (let at = 0; at < data.length; at += CRC_SLICE_BYTES) {
    crc = crc32c(data, crc, at, Math.min(data.length, at + CRC_SLICE_BYTES));
    if (at + CRC_SLICE_BYTES < data.length) await nextTurn();
  }
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(crc, 0);
  return [head, meta, data, tail];
}

function damaged(file: string, why: string): SegmemError {
  return new SegmemError('UNAVAILABLE', `snapshot file ${file} is damaged: ${why}`, {
    reason: 'SNAPSHOT_CORRUPT',
    file,
  });
}

/** Verifies and decodes a snapshot file's bytes; throws `UNAVAILABLE` (`SNAPSHOT_CORRUPT`) naming `file`. */
export function decodeSnapshotFile(bytes: Buffer, file: string): SnapshotFile {
  if (bytes.length < 16 || bytes.toString('latin1', 0, 8) !== SNAPSHOT_MAGIC)
    throw damaged(file, 'bad magic');
  const body = bytes.subarray(0, bytes.length - 4);
  if (crc32c(body) !== bytes.readUInt32LE(bytes.length - 4)) throw damaged(file, 'checksum mismatch');
  const metaBytes = bytes.readUInt32LE(8);
  if (12 + metaBytes > body.length) throw damaged(file, 'meta runs past the end');
  const [index, term, members] = packr.unpack(body.subarray(12, 12 + metaBytes)) as [
    number,
    number,
    string[],
  ];
  return { meta: { index, term, members }, data: Buffer.from(body.subarray(12 + metaBytes)) };
}

/** Writes `snap` into `dir` atomically (temp file, fsync, rename, directory fsync); resolves with its path. */
export async function writeSnapshotFile(dir: string, snap: SnapshotFile): Promise<string> {
  const path = join(dir, snapshotFileName(snap.meta));
  await writeFileAtomic(path, await encodeSnapshotParts(snap), 'snapshot');
  return path;
}

/** Names of the snapshot files in `dir`, oldest first. */
export async function listSnapshotFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).filter(isSnapshotName).sort();
}

/** Deletes the named snapshot files of `dir`. */
export async function removeSnapshotFiles(dir: string, names: readonly string[]): Promise<void> {
  for (const name of names) await unlinkFile(join(dir, name), 'snapshot.unlink');
}

export interface LoadedSnapshots {
  /** The newest snapshot that verified, if any. */
  newest?: SnapshotFile & { file: string };
  /** Newer snapshot files that did not verify, newest first, with the reason. */
  damaged: { file: string; problem: string; error: SegmemError }[];
}

/** Reads the snapshots of `dir` newest first and returns the first that verifies, and the damaged ones before it. */
export async function loadNewestSnapshot(dir: string): Promise<LoadedSnapshots> {
  const names = await listSnapshotFiles(dir);
  const out: LoadedSnapshots = { damaged: [] };
  for (let i = names.length - 1; i >= 0; i--) {
    const file = join(dir, names[i]!);
    try {
      out.newest = { ...decodeSnapshotFile(await fsp.readFile(file), file), file };
      return out;
    } catch (err) {
      const error = SegmemError.is(err) ? err : damaged(file, errorMessage(err));
      out.damaged.push({ file, problem: error.message, error });
    }
  }
  return out;
}
