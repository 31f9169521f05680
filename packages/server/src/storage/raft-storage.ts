/**
 * Durable storage for one Raft member: log entries and hard state as records in the WAL, snapshots as
 * checksummed files. Implements the core's read-only {@link RaftStorage} view from memory, and the
 * write side the driver calls after each Ready.
 *
 * WAL record kinds (first byte):
 *   1 entry:      u8 1 | u32 header length | msgpack [term, index, type] | data
 *   2 hard state: u8 2 | msgpack [term, vote, commit]
 *   3 installed:  u8 3 | msgpack [index, term, floor]   (a leader's snapshot was installed: it replaced the whole log)
 *   4 compacted:  u8 4 | msgpack [index, term, floor]   (a local snapshot: entries up to index were dropped)
 * (`floor`: the WAL index before which every record is superseded; older markers have none.)
 * Later records win: an entry at an index already logged replaces it and everything after it, which is
 * how a follower's conflicting suffix is overwritten in an append-only file.
 *
 * After a snapshot (compaction or install) the WAL files holding only records the snapshot made useless
 * are deleted: the hard state is logged again after the snapshot's marker, so every record still needed
 * (that hard state, the marker, the entries after the snapshot) sits at or after the WAL record of the
 * first entry the log keeps, or the marker when it keeps none.
 */
import { join } from 'node:path';
import { type Env, SegmemError } from '@segmem/protocol';
import { Packr } from 'msgpackr';
import type { FrozenSnapshot, StateMachine } from '../core/state-machine.js';
import { MemoryStorage } from '../raft/memory-storage.js';
import type { Entry, HardState, NodeId, RaftStorage, Snapshot } from '../raft/types.js';
import { mkdirDurable } from './files.js';
import type { SnapshotWrite } from './page-file.js';
import { SNAPSHOT_DIR, snapshotFileName } from './snapshot-file.js';
import { serialiseSnapshot } from './snapshot-serialise.js';
import { SnapshotDir } from './snapshots.js';
import type { FsyncPolicy, RecoveryReport, Wal, WalIo, WalOptions } from './wal.js';
import { Wal as WalClass } from './wal.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

const KIND_ENTRY = 1;
const KIND_HARD_STATE = 2;
const KIND_SNAPSHOT_INSTALLED = 3;
const KIND_SNAPSHOT_COMPACTED = 4;

function encodeEntry(e: Entry): Buffer[] {
  const header = packr.pack([e.term, e.index, e.type === 'conf' ? 1 : 0]);
  const prefix = Buffer.allocUnsafe(5);
  prefix[0] = KIND_ENTRY;
  prefix.writeUInt32LE(header.length, 1);
  return e.data.length > 0 ? [prefix, header, e.data] : [prefix, header];
}

function encodeSmall(kind: number, value: unknown): Buffer[] {
  return [Buffer.from([kind]), packr.pack(value)];
}

/** The floor of the newest snapshot marker (see `logSnapshot`); markers logged before floors existed: 0. */
function walFloor(records: readonly { index: number; payload: Buffer }[]): number {
  for (let i = records.length - 1; i >= 0; i--) {
    const payload = records[i]!.payload;
    if (payload[0] !== KIND_SNAPSHOT_INSTALLED && payload[0] !== KIND_SNAPSHOT_COMPACTED) continue;
    const floor = (packr.unpack(payload.subarray(1)) as number[])[2];
    return typeof floor === 'number' && Number.isSafeInteger(floor) ? floor : 0;
  }
  return 0;
}

export interface DiskRaftStorageOptions {
  dir: string; // the data directory (wal/ and snap/ live under it)
  walDir: string;
  fsync: FsyncPolicy;
  /** Members to start with when the directory is fresh (no snapshot, no conf entries yet). */
  initialMembers: NodeId[];
  repair?: boolean;
  /** @internal WAL segment file size (default 64 MiB); small values let tests see files deleted. */
  walFileBytes?: number;
  /** See {@link WalOptions.env}. */
  env?: Env;
  /** @internal Replaces the WAL's file operations (the simulator's in-memory disk). */
  walIo?: Partial<WalIo>;
}

export class DiskRaftStorage implements RaftStorage {
  /** What the core reads: the same in-memory view tests use, kept equal to what the WAL and snap/ hold. */
  private mem: MemoryStorage;
  private readonly snaps: SnapshotDir;
  /** The state the snapshot loaded at open holds, until {@link takeRestoredState} hands it over. */
  private restored: StateMachine | null = null;
  /** Raft index -> WAL index of the record holding that entry, for every entry of the in-memory log. */
  private readonly walAt = new Map<number, number>();

  private constructor(
    readonly wal: Wal,
    opts: DiskRaftStorageOptions,
    readonly report: RecoveryReport,
  ) {
    this.snaps = new SnapshotDir(join(opts.dir, SNAPSHOT_DIR));
    this.mem = new MemoryStorage(opts.initialMembers);
  }

  static async open(opts: DiskRaftStorageOptions): Promise<DiskRaftStorage> {
    await mkdirDurable(join(opts.dir, SNAPSHOT_DIR));
    const { wal, records, report } = await WalClass.open({
      dir: opts.walDir,
      fsync: opts.fsync,
      ...(opts.repair ? { repair: true } : {}),
      ...(opts.walFileBytes !== undefined ? { segmentBytes: opts.walFileBytes } : {}),
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.walIo ? { io: opts.walIo } : {}),
    });
    const storage = new DiskRaftStorage(wal, opts, report);
    try {
      await storage.loadLatestSnapshot();
      const floor = walFloor(records);
      for (const rec of records) if (rec.index >= floor) storage.replay(rec.payload, rec.index);
    } catch (err) {
      await wal.close().catch(() => {});
      throw err;
    }
    return storage;
  }

  private async loadLatestSnapshot(): Promise<void> {
    // Newest first; a damaged newest snapshot falls back to the one before (files are renamed into place
    // complete, so damage means the disk, not a crash mid-write). With none left, the member refuses.
    const { newest, damaged } = await this.snaps.loadNewest();
    if (newest) {
      // The core sends snapshot()'s bytes to followers that need a snapshot (InstallSnapshot).
      this.mem.applySnapshot({ meta: newest.meta, data: newest.state.snapshot() });
      this.restored = newest.state;
    } else if (damaged.length > 0) throw damaged[damaged.length - 1]!.error;
  }

  /** The state machine the snapshot loaded at open holds (null: none, or handed over already). */
  takeRestoredState(): StateMachine | null {
    const state = this.restored;
    this.restored = null;
    return state;
  }

  private replay(payload: Buffer, walIndex: number): void {
    const kind = payload[0];
    const snapIndex = this.mem.snapshot().meta.index;
    if (kind === KIND_ENTRY) {
      const headerBytes = payload.readUInt32LE(1);
      const [term, index, type] = packr.unpack(payload.subarray(5, 5 + headerBytes)) as [
        number,
        number,
        number,
      ];
      if (index <= snapIndex) return; // covered by the snapshot
      const entry: Entry = {
        term,
        index,
        type: type === 1 ? 'conf' : 'normal',
        data: payload.subarray(5 + headerBytes),
      };
      this.appendInMemory([entry], `WAL index ${walIndex}`, [walIndex]);
    } else if (kind === KIND_HARD_STATE) {
      const [term, vote, commit] = packr.unpack(payload.subarray(1)) as [number, NodeId | null, number];
      this.mem.setHardState({ term, vote, commit });
    } else if (kind === KIND_SNAPSHOT_INSTALLED || kind === KIND_SNAPSHOT_COMPACTED) {
      const [index, term] = packr.unpack(payload.subarray(1)) as [number, number, number?];
      if (index > snapIndex) {
        throw new SegmemError(
          'UNAVAILABLE',
          `WAL names a snapshot at index ${index} (term ${term}) missing from ${this.snaps.dir}`,
          { reason: 'SNAPSHOT_MISSING' },
        );
      }
      // An installed snapshot replaced the whole log (entries logged before it, even past its index, were
      // discarded). A compaction only dropped entries at or below its index, which replay skips anyway.
      if (kind === KIND_SNAPSHOT_INSTALLED) this.resetLogTo(this.mem.snapshot());
    } else {
      throw new SegmemError('UNAVAILABLE', `unknown WAL record kind ${kind} at WAL index ${walIndex}`, {
        reason: 'WAL_CORRUPT',
      });
    }
  }

  private appendInMemory(entries: Entry[], where: string, walIndexes: number[]): void {
    try {
      this.mem.append(entries);
    } catch (err) {
      throw new SegmemError('UNAVAILABLE', `raft log gap at ${where}: ${(err as Error).message}`, {
        reason: 'RAFT_LOG_GAP',
      });
    }
    entries.forEach((e, i) => {
      this.walAt.set(e.index, walIndexes[i]!);
    });
    // A rewritten suffix may be shorter than the one it replaced.
    for (let i = entries[entries.length - 1]!.index + 1; this.walAt.delete(i); i++);
  }

  /** Empties the log after `snap`, keeping the hard state. */
  private resetLogTo(snap: Snapshot): void {
    this.walAt.clear();
    const hard = this.mem.hardState();
    this.mem = new MemoryStorage();
    this.mem.applySnapshot(snap);
    this.mem.setHardState(hard);
  }

  // --- RaftStorage (read side) ---

  initialState(): { hardState: HardState; members: NodeId[] } {
    return this.mem.initialState();
  }

  entries(lo: number, hi: number): Entry[] {
    return this.mem.entries(lo, hi);
  }

  term(i: number): number {
    return this.mem.term(i);
  }

  firstIndex(): number {
    return this.mem.firstIndex();
  }

  lastIndex(): number {
    return this.mem.lastIndex();
  }

  snapshot(): Snapshot {
    return this.mem.snapshot();
  }

  hardState(): HardState {
    return this.mem.hardState();
  }

  // --- write side: called with each Ready, in order ---

  /**
   * Appends the Ready's entries and hard state to the WAL (no I/O in the call; entries first, so a crash
   * that keeps a prefix never keeps a commit index beyond them) and updates the in-memory view. Returns the
   * WAL index to wait on for durability.
   */
  save(hardState: HardState | undefined, entries: Entry[]): number {
    let walIndex = this.wal.lastIndex;
    if (entries.length > 0) {
      const at = entries.map((e) => this.wal.append(encodeEntry(e)));
      walIndex = at[at.length - 1]!;
      this.appendInMemory(entries, 'ready', at);
    }
    if (hardState) {
      this.mem.setHardState(hardState);
      walIndex = this.wal.append(
        encodeSmall(KIND_HARD_STATE, [hardState.term, hardState.vote, hardState.commit]),
      );
    }
    return walIndex;
  }

  waitDurable(walIndex: number): Promise<void> {
    return this.wal.waitDurable(walIndex);
  }

  /**
   * Installs a snapshot received from the leader, `view` being the state it holds, frozen (released here):
   * file first (durably), then the marker record. Resolves with what writing the file did (null: not newer
   * than the log, nothing done).
   */
  async installSnapshot(snap: Snapshot, view: FrozenSnapshot): Promise<SnapshotWrite | null> {
    let written: SnapshotWrite;
    try {
      // The core hands over only snapshots newer than its log; an older one changes nothing.
      if (snap.meta.index <= this.mem.snapshot().meta.index) return null;
      written = await this.snaps.write(snap.meta, view);
    } finally {
      view.release();
    }
    // The leader's snapshot replaces the whole log; it re-sends whatever follows the snapshot.
    this.mem.applySnapshot(snap);
    this.walAt.clear();
    const floor = await this.logSnapshot(KIND_SNAPSHOT_INSTALLED, snap.meta.index, snap.meta.term);
    await this.removeOldSnapshots();
    await this.wal.truncatePrefix(floor);
    return written;
  }

  /**
   * Takes a snapshot at `index` of the applied state frozen in `view` (released here) and drops the log
   * entries it covers. Resolves with what writing the file did (null: not newer, nothing done).
   */
  async compact(index: number, view: FrozenSnapshot): Promise<SnapshotWrite | null> {
    let written: SnapshotWrite;
    let data: Buffer;
    let meta: Snapshot['meta'];
    try {
      if (index <= this.mem.snapshot().meta.index) return null;
      if (index > this.mem.lastIndex()) {
        throw new RangeError(`cannot compact to ${index}: last index is ${this.mem.lastIndex()}`);
      }
      meta = { index, term: this.mem.term(index), members: this.mem.membersAt(index) };
      written = await this.snaps.write(meta, view);
      // The core keeps snapshot()'s bytes for followers that need a snapshot: serialised in slices.
      data = await serialiseSnapshot(view);
    } finally {
      view.release();
    }
    this.mem.compact(index, data);
    for (const i of [...this.walAt.keys()]) if (i <= index) this.walAt.delete(i);
    const floor = await this.logSnapshot(KIND_SNAPSHOT_COMPACTED, index, meta.term);
    await this.removeOldSnapshots();
    await this.wal.truncatePrefix(floor);
    return written;
  }

  /**
   * Logs a snapshot's marker and the hard state again after it, durably, and returns the WAL floor: the
   * WAL index of the first entry the log keeps, or the marker's when it keeps none. Every record before
   * the floor is superseded (an entry the snapshot covers, an older hard state or marker, an old version
   * of a rewritten entry), so the files holding only such records may go. The marker carries the floor,
   * and recovery skips the records before it: the first file kept may still begin with some of them.
   */
  private async logSnapshot(kind: number, index: number, term: number): Promise<number> {
    const next = this.wal.lastIndex + 1;
    const first = this.walAt.get(this.mem.firstIndex());
    const floor = first === undefined ? next : Math.min(first, next);
    this.wal.append(encodeSmall(kind, [index, term, floor]));
    const h = this.mem.hardState();
    await this.wal.waitDurable(this.wal.append(encodeSmall(KIND_HARD_STATE, [h.term, h.vote, h.commit])));
    return floor;
  }

  private async removeOldSnapshots(): Promise<void> {
    const keep = snapshotFileName(this.mem.snapshot().meta);
    await this.snaps.removeAllBut((f) => f >= keep).catch(() => {});
  }

  close(): Promise<void> {
    return this.wal.close();
  }
}
