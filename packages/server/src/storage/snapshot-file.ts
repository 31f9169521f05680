/**
 * Snapshot files in the data directory's `snap/`: their names, listing and removal, and the first format,
 * `SGMSNAP1`, which is still read (directories written before page files start as before). New snapshots
 * are page files (`page-file.ts`); `snapshots.ts` loads and writes either.
 *
 * `SGMSNAP1` layout (integers little-endian):
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
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import { Packr } from 'msgpackr';
import { crc32c } from './crc32c.js';
import { nodeFs, type StorageFs } from './fs.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

export const SNAPSHOT_DIR = 'snap';
export const LEGACY_SNAPSHOT_MAGIC = 'SGMSNAP1';
const SNAPSHOT_NAME = /^\d{20}-\d{20}\.snap$/;

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

/** The term and index a snapshot file's name gives (its content may be damaged; its name is not read from it). */
export function snapshotNameMeta(name: string): { term: number; index: number } | undefined {
  const m = /^(\d{20})-(\d{20})\.snap$/.exec(name);
  return m ? { term: Number(m[1]), index: Number(m[2]) } : undefined;
}

/** The error for a snapshot file that does not verify: `UNAVAILABLE`, reason `SNAPSHOT_CORRUPT`. */
export function snapshotDamaged(file: string, why: string): SegmemError {
  return new SegmemError('UNAVAILABLE', `snapshot file ${file} is damaged: ${why}`, {
    reason: 'SNAPSHOT_CORRUPT',
    file,
  });
}

/**
 * Verifies and decodes an `SGMSNAP1` file's bytes (the state is a view into them); throws `UNAVAILABLE`
 * (`SNAPSHOT_CORRUPT`) naming `file`.
 */
export function decodeLegacySnapshot(bytes: Buffer, file: string): SnapshotFile {
  if (bytes.length < 16 || bytes.toString('latin1', 0, 8) !== LEGACY_SNAPSHOT_MAGIC)
    throw snapshotDamaged(file, 'bad magic');
  const body = bytes.subarray(0, bytes.length - 4);
  if (crc32c(body) !== bytes.readUInt32LE(bytes.length - 4)) throw snapshotDamaged(file, 'checksum mismatch');
  const metaBytes = bytes.readUInt32LE(8);
  if (12 + metaBytes > body.length) throw snapshotDamaged(file, 'meta runs past the end');
  const [index, term, members] = packr.unpack(body.subarray(12, 12 + metaBytes)) as [
    number,
    number,
    string[],
  ];
  return { meta: { index, term, members }, data: body.subarray(12 + metaBytes) };
}

/** Names of the snapshot files in `dir`, oldest first. */
export async function listSnapshotFiles(dir: string, fs: StorageFs = nodeFs): Promise<string[]> {
  return (await fs.readdir(dir)).filter(isSnapshotName).sort();
}

/** Deletes the named snapshot files of `dir`. */
export async function removeSnapshotFiles(
  dir: string,
  names: readonly string[],
  fs: StorageFs = nodeFs,
): Promise<void> {
  for (const name of names) await fs.rm(join(dir, name), 'snapshot.unlink');
}
