/**
 * The snapshots of one data directory (`snap/`): loads the newest that verifies, in either format
 * (`SGMSNAP1` files of earlier versions, page files), and writes new ones as page files, each a reflink
 * clone of the newest page file where the file system can clone (see `page-file.ts`). Shared by a single
 * server's storage and a Raft member's.
 *
 * @module
 */
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import type { FrozenSnapshot } from '../core/state-machine.js';
import { StateMachine } from '../core/state-machine.js';
import { errorMessage } from './files.js';
import { nodeFs, type StorageFs } from './fs.js';
import {
  PAGE_FILE_MAGIC,
  type PageFileState,
  readPageFile,
  type SnapshotWrite,
  writePageFile,
} from './page-file.js';
import {
  decodeLegacySnapshot,
  listSnapshotFiles,
  removeSnapshotFiles,
  type SnapshotMeta,
  snapshotDamaged,
  snapshotFileName,
} from './snapshot-file.js';

/** A snapshot file loaded and verified. */
export interface LoadedSnapshot {
  file: string;
  meta: SnapshotMeta;
  /** The state machine it holds, restored. */
  state: StateMachine;
  /** Bytes of it read (a page file: header, metadata and present pages). */
  bytes: number;
  /** Set for a page file: what the next snapshot may clone. */
  pages: PageFileState | null;
}

export interface LoadedSnapshots {
  /** The newest snapshot that verified, if any. */
  newest?: LoadedSnapshot;
  /** Newer snapshot files that did not verify, newest first, with the reason. */
  damaged: { file: string; problem: string; error: SegmemError }[];
}

/** Reads, verifies and restores one snapshot file of either format. */
export async function loadSnapshotFile(file: string, fs: StorageFs = nodeFs): Promise<LoadedSnapshot> {
  const fd = await fs.open(file, 'r');
  let magic: string;
  try {
    const b = Buffer.alloc(8);
    const bytesRead = await fs.read(fd, b, 0, 8, 0);
    magic = b.toString('latin1', 0, bytesRead);
  } finally {
    await fs.close(fd);
  }
  if (magic === PAGE_FILE_MAGIC) {
    const loaded = await readPageFile(file, fs);
    return { file, meta: loaded.meta, state: loaded.state, bytes: loaded.bytes, pages: loaded.pages };
  }
  const bytes = await fs.readFile(file);
  const { meta, data } = decodeLegacySnapshot(bytes, file);
  try {
    return { file, meta, state: StateMachine.restore(data), bytes: bytes.length, pages: null };
  } catch (err) {
    throw snapshotDamaged(file, `the state does not restore: ${errorMessage(err)}`);
  }
}

export class SnapshotDir {
  /** The newest page file loaded or written here: the next snapshot is a clone of it where possible. */
  private base: PageFileState | null = null;

  /** `nowMs` times the writes for their log line (a member passes its Env's clock: simulated under simulation). */
  constructor(
    readonly dir: string,
    private readonly fs: StorageFs = nodeFs,
    private readonly nowMs?: () => number,
  ) {}

  /** Reads the snapshots newest first and returns the first that verifies, and the damaged ones before it. */
  async loadNewest(): Promise<LoadedSnapshots> {
    const names = await listSnapshotFiles(this.dir, this.fs);
    const out: LoadedSnapshots = { damaged: [] };
    for (let i = names.length - 1; i >= 0; i--) {
      const file = join(this.dir, names[i]!);
      try {
        out.newest = await loadSnapshotFile(file, this.fs);
        this.base = out.newest.pages;
        return out;
      } catch (err) {
        const error = SegmemError.is(err) ? err : snapshotDamaged(file, errorMessage(err));
        out.damaged.push({ file, problem: error.message, error });
      }
    }
    return out;
  }

  /**
   * Writes `view` as the snapshot `meta` names (a clone of the newest page file where the file system can
   * clone, a full copy otherwise); resolves with what it did. Does not release the view.
   */
  async write(meta: SnapshotMeta, view: FrozenSnapshot): Promise<SnapshotWrite> {
    const written = await writePageFile(
      join(this.dir, snapshotFileName(meta)),
      meta,
      view,
      this.base,
      this.fs,
      this.nowMs,
    );
    this.base = written.state;
    return written;
  }

  /** Names of the snapshot files, oldest first. */
  list(): Promise<string[]> {
    return listSnapshotFiles(this.dir, this.fs);
  }

  /** Deletes every snapshot file whose name `keep` rejects. */
  async removeAllBut(keep: (name: string) => boolean): Promise<void> {
    await removeSnapshotFiles(
      this.dir,
      (await this.list()).filter((n) => !keep(n)),
      this.fs,
    );
  }
}
