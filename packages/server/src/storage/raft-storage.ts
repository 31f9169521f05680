/**
 * Durable storage for one Raft member: log entries and hard state as records in the WAL, snapshots as
 * checksummed files, and the term and vote once more in the vote file (`vote-file.ts`). Implements the
 * core's read-only {@link RaftStorage} view from memory, and the write side the driver calls after each
 * Ready.
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
 *
 * ## Healing damaged storage
 *
 * A damaged record in the middle of the WAL (valid records after it), or a damaged snapshot the log
 * depends on, means this member lost records it may have acted on: entries it acknowledged (which may
 * have counted toward a commit) and hard state (a vote). The other members still hold every committed
 * entry, so the member repairs itself instead of refusing to start, under one rule that keeps Raft safe
 * (reasoning in docs/consistency.md, "A member heals damaged storage"):
 *
 * 1. The term it reached before the damage is bounded from what survived: the vote file (a second copy of
 *    term and vote, kept in its own file), or a hard-state record found intact after the damage. Without
 *    such a bound (an older data directory without a vote file, damage with no hard state after it) it
 *    refuses, as a single server does, unless started with `--repair`.
 * 2. It records a term one past that bound, voting for itself, before cutting anything: it can then never
 *    vote again in a term it may have voted in, and a leader of an older term steps down when it hears
 *    the new term, so the next leader starts with no memory of what this member acknowledged before.
 * 3. It cuts the WAL at the damage (or drops the damaged snapshot and the log built on it) and rejoins: it
 *    follows the leader and acknowledges what it really stores, but neither campaigns nor grants a vote
 *    until its log holds an entry of that new term or later (the raft core's `rejoinTerm`). Such an entry
 *    comes from a leader elected without it, whose log holds every committed entry, so once this
 *    member's log matches it there, it holds every committed entry it may have acknowledged.
 *
 * The order makes a crash at any point safe: the vote file with the new term and `rejoinTerm` is durable
 * before the WAL is cut, and `rejoinTerm` is cleared only once an entry of that term is durable here.
 * A member that is the only voter of its group has nobody to heal from and refuses like a single server.
 */
import { basename, join } from 'node:path';
import { type Env, SegmemError, systemEnv } from '@segmem/protocol';
import { Packr } from 'msgpackr';
import type { FrozenSnapshot, StateMachine } from '../core/state-machine.js';
import { MemoryStorage } from '../raft/memory-storage.js';
import {
  type Entry,
  entryParts,
  type HardState,
  type NodeId,
  type RaftStorage,
  type Snapshot,
} from '../raft/types.js';
import { errnoCode } from './files.js';
import { mkdirDurable, nodeFs, type StorageFs } from './fs.js';
import type { SnapshotWrite } from './page-file.js';
import { RestoredSnapshot } from './restored-snapshot.js';
import { removeSnapshotFiles, SNAPSHOT_DIR, snapshotFileName, snapshotNameMeta } from './snapshot-file.js';
import { serialiseSnapshot } from './snapshot-serialise.js';
import { type LoadedSnapshot, SnapshotDir } from './snapshots.js';
import {
  laterVote,
  readVoteFile,
  VOTE_FILE,
  type VoteFileRead,
  type VoteState,
  writeVoteFile,
} from './vote-file.js';
import type { FsyncPolicy, RecoveryReport, Wal, WalInspection, WalIo, WalOptions, WalRecord } from './wal.js';
import { describeRecovery, inspectWal, WAL_STARTED_FILE, Wal as WalClass } from './wal.js';

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
  return [prefix, header, ...entryParts(e).filter((part) => part.length > 0)];
}

function encodeSmall(kind: number, value: unknown): Buffer[] {
  return [Buffer.from([kind]), packr.pack(value)];
}

/**
 * What the WAL's records before its first bad one show, gathered record by record as they are read (no
 * record is kept): the floor of the newest snapshot marker (see `logSnapshot`; markers logged before floors
 * existed: 0), the highest term, and how many there are.
 */
class WalSummary {
  floor = 0;
  term = 0;
  records = 0;

  readonly add = (record: WalRecord): void => {
    const payload = record.payload;
    this.records++;
    this.term = Math.max(this.term, recordTerm(payload)?.term ?? 0);
    if (payload[0] !== KIND_SNAPSHOT_INSTALLED && payload[0] !== KIND_SNAPSHOT_COMPACTED) return;
    const floor = (packr.unpack(payload.subarray(1)) as number[])[2];
    this.floor = typeof floor === 'number' && Number.isSafeInteger(floor) ? floor : 0;
  };
}

/**
 * The term a WAL record shows (an entry's, a hard state's, a snapshot marker's), and whether it is a hard
 * state; undefined for a record that does not decode (never for one this code wrote).
 */
function recordTerm(payload: Buffer): { term: number; hardState: boolean } | undefined {
  try {
    const kind = payload[0];
    if (kind === KIND_ENTRY) {
      const headerBytes = payload.readUInt32LE(1);
      const term = (packr.unpack(payload.subarray(5, 5 + headerBytes)) as unknown[])[0];
      return typeof term === 'number' ? { term, hardState: false } : undefined;
    }
    if (kind === KIND_HARD_STATE || kind === KIND_SNAPSHOT_INSTALLED || kind === KIND_SNAPSHOT_COMPACTED) {
      const v = packr.unpack(payload.subarray(1)) as unknown[];
      const term = kind === KIND_HARD_STATE ? v[0] : v[1];
      return typeof term === 'number' ? { term, hardState: kind === KIND_HARD_STATE } : undefined;
    }
  } catch {
    // not a record of this format: it shows no term
  }
  return undefined;
}

/** A WAL record found after damage, reduced to what healing reads: its index and the term it shows. */
export interface RecordTerm {
  index: number;
  shows: { term: number; hardState: boolean } | undefined;
}

/**
 * An upper bound on every term this member reached before its storage was damaged, from what survived:
 * `termBefore` (the highest term the records before the damage show), the records found after it, and the
 * vote file. `proof` says where it comes from, or is null when nothing proves it (the damage may hide a
 * later term).
 */
export function termBound(
  termBefore: number,
  after: readonly RecordTerm[],
  walIntact: boolean,
  vote: VoteFileRead,
): { term: number; proof: string | null } {
  let term = Math.max('state' in vote ? vote.state.term : 0, termBefore);
  // A hard state logged after the damage is the last one, if every record after it is here too: terms
  // never go back, so nothing the damage took can have been later.
  let lastHardState = -1;
  for (let i = 0; i < after.length; i++) {
    const t = after[i]!.shows;
    if (!t) continue;
    term = Math.max(term, t.term);
    if (t.hardState) lastHardState = i;
  }
  let unbroken = lastHardState >= 0;
  for (let i = lastHardState + 1; unbroken && i < after.length; i++)
    unbroken = after[i]!.index === after[i - 1]!.index + 1;
  let proof: string | null = null;
  if ('state' in vote) proof = `the ${VOTE_FILE} file`;
  else if (walIntact) proof = 'the intact WAL';
  else if (unbroken) proof = 'a hard-state record intact after the damage';
  return { term, proof };
}

export interface DiskRaftStorageOptions {
  dir: string; // the data directory (wal/ and snap/ live under it)
  walDir: string;
  fsync: FsyncPolicy;
  /** This member's id: healing records a vote for itself (see the module comment). */
  id: NodeId;
  /** Members to start with when the directory is fresh (no snapshot, no conf entries yet). */
  initialMembers: NodeId[];
  /**
   * Heal damage even where it cannot be done safely (no bound on the term reached, or no other member to
   * catch up from), and take part in elections at once instead of after catching up.
   */
  repair?: boolean;
  /** @internal WAL segment file size (default 64 MiB); small values let tests see files deleted. */
  walFileBytes?: number;
  /** See {@link WalOptions.env}. */
  env?: Env;
  /** @internal The file system the data directory lives on (default: the real one; the simulator's disk). */
  fs?: StorageFs;
  /** @internal Replaces some of the WAL's file operations on top of `fs` (timed ones, for metrics). */
  walIo?: Partial<WalIo>;
  /** Hears what happens later that an operator should know (a repaired member caught up). */
  log?: (line: string) => void;
  /** See {@link WalOptions.onStarted}. */
  onWalStarted?: () => void;
}

/** What healing found and did at open (see the module comment). */
export interface StorageRepair {
  /** What was damaged and what was dropped, in one sentence. */
  damage: string;
  /** The term this member restarted in. */
  term: number;
  /** The term its log must reach before it votes again (0: `--repair`, votes at once). */
  rejoinTerm: number;
}

/** Damage the WAL's recovery found and refused (or a lost WAL), as healing needs it. */
interface WalDamage {
  damage: NonNullable<WalInspection['damage']>;
  /** The records that verify after the damage (their payloads dropped at once: see {@link RecordTerm}). */
  after: RecordTerm[];
}

/** The log depends on snapshot files that did not verify: they, and the good one to start from instead. */
interface LostSnapshot {
  damaged: { file: string; problem: string }[];
  fallback: LoadedSnapshot | undefined;
}

function isLogLoss(err: unknown): boolean {
  return (
    SegmemError.is(err) &&
    (err.details?.reason === 'SNAPSHOT_MISSING' || err.details?.reason === 'RAFT_LOG_GAP')
  );
}

/** What healing needs of an inspection that found damage (undefined: none found). */
function reduceDamage(inspection: WalInspection): WalDamage | undefined {
  if (!inspection.damage) return undefined;
  return {
    damage: inspection.damage,
    after: inspection.after.map((r) => ({ index: r.index, shows: recordTerm(r.payload) })),
  };
}

export class DiskRaftStorage implements RaftStorage {
  /** What the core reads: the same in-memory view tests use, kept equal to what the WAL and snap/ hold. */
  private mem: MemoryStorage;
  private readonly snaps: SnapshotDir;
  /** The state the snapshot loaded at open holds, until {@link takeRestoredState} hands it over. */
  private restored: StateMachine | null = null;
  /** The snapshot loaded at open, while the log starts from it (its bytes made when first needed). */
  private restoredSnap: RestoredSnapshot | null = null;
  /**
   * Called once the bytes of the snapshot loaded at open are made (a follower asked for them first: the
   * message was dropped meanwhile), for the leader to offer them again at once.
   */
  onSnapshotReady: (() => void) | null = null;
  /** Raft index -> WAL index of the record holding that entry, for every entry of the in-memory log. */
  private readonly walAt = new Map<number, number>();
  /** The log, set by open(). */
  wal!: Wal;
  /** What the WAL's recovery found, set by open(). */
  report!: RecoveryReport;
  /** Set when open() healed damaged storage. */
  repair: StorageRepair | null = null;
  /** Lines for the server's log about what open() found (see {@link recoveryLines}). */
  private readonly notes: string[] = [];
  /** What the vote file holds (or is being replaced with). */
  private voteSaved: VoteState = { term: 0, vote: null, rejoinTerm: 0 };
  /** The vote file writes in flight, in order; waitDurable waits for them. */
  private voteWrites: Promise<void> | null = null;
  /** Out of elections until the log holds an entry of this term (0: not rejoining). See the module comment. */
  private rejoin = 0;

  private constructor(private readonly opts: DiskRaftStorageOptions) {
    const env = opts.env;
    this.snaps = new SnapshotDir(join(opts.dir, SNAPSHOT_DIR), opts.fs ?? nodeFs, env && (() => env.now()));
    this.mem = new MemoryStorage(opts.initialMembers);
  }

  /**
   * Opens the member's storage: loads the newest snapshot that verifies, and replays the WAL records after
   * it as they are read, in windows (see {@link WalOptions.onRecord}): recovery holds the restored state,
   * the log it rebuilds and a window of the WAL, never whole segment files. A first pass over the WAL,
   * changing nothing and keeping no record, learns what the replay needs before it starts: the floor of
   * the newest snapshot marker.
   */
  static async open(opts: DiskRaftStorageOptions): Promise<DiskRaftStorage> {
    const fs = opts.fs ?? nodeFs;
    await mkdirDurable(fs, join(opts.dir, SNAPSHOT_DIR));
    await mkdirDurable(fs, opts.walDir, opts.fsync !== 'none');
    const vote = await readVoteFile(opts.dir, fs);
    const summary = new WalSummary();
    let found: WalDamage | undefined = reduceDamage(
      await inspectWal(opts.walDir, undefined, fs, summary.add),
    );
    const storage = new DiskRaftStorage(opts);
    // Newest first; a damaged newest snapshot falls back to the one before (files are renamed into place
    // complete, so damage means the disk, not a crash mid-write).
    const { newest, damaged } = await storage.snaps.loadNewest();
    storage.startFrom(newest);
    let replayFailed: { err: unknown } | null = null;
    const replay = (rec: WalRecord): void => {
      if (replayFailed || rec.index < summary.floor) return;
      try {
        storage.replay(rec.payload, rec.index);
      } catch (err) {
        replayFailed = { err };
      }
    };
    let opened: Awaited<ReturnType<typeof WalClass.open>> | undefined;
    let inspection: WalDamage | undefined;
    try {
      opened = await WalClass.open({ ...walOptions(opts), onRecord: replay });
    } catch (err) {
      const reason = SegmemError.is(err) ? err.details?.reason : undefined;
      if (reason === 'WAL_MISSING') {
        // A lost log heals like damage at its very start: the majority holds its records.
        const damage = { file: opts.walDir, offset: 0, reason: 'no record left', index: 1, missing: true };
        inspection = { damage, after: [] };
      } else {
        if (reason !== 'WAL_CORRUPT') {
          storage.restoredSnap?.release();
          throw err;
        }
        // Nothing is cut yet: the first pass learnt what the damage may hide.
        if (!found) {
          storage.restoredSnap?.release();
          throw err;
        }
        inspection = found;
      }
    }
    found = undefined;
    try {
      const lost = storage.afterReplay(replayFailed, damaged, newest);
      if (inspection || lost) {
        await storage.heal(vote, summary, inspection, lost, opened);
      } else {
        storage.wal = opened!.wal;
        storage.report = opened!.report;
        await storage.settleHardState(vote);
      }
    } catch (err) {
      storage.restoredSnap?.release();
      await (storage.wal ?? opened?.wal)?.close().catch(() => {});
      throw err;
    }
    return storage;
  }

  /**
   * After the WAL was replayed over the newest snapshot: resolves with the damaged snapshots when the log
   * cannot be replayed without them (it was cut behind them), else null; throws what stopped the replay
   * otherwise.
   */
  private afterReplay(
    failed: { err: unknown } | null,
    damaged: { file: string; problem: string }[],
    newest: LoadedSnapshot | undefined,
  ): LostSnapshot | null {
    if (failed) {
      if (damaged.length === 0 || !isLogLoss(failed.err)) throw failed.err;
      return { damaged: damaged.map(({ file, problem }) => ({ file, problem })), fallback: newest };
    }
    // A damaged snapshot is not needed only where the log still holds its last entry (the state it held
    // can be rebuilt from the entries); a log that merely replays without error may just end before it.
    const needed = damaged.filter((d) => {
      const at = snapshotNameMeta(basename(d.file));
      if (!at || at.index > this.mem.lastIndex()) return true;
      try {
        return this.mem.term(at.index) !== at.term;
      } catch {
        return true;
      }
    });
    if (needed.length > 0) {
      return { damaged: needed.map(({ file, problem }) => ({ file, problem })), fallback: newest };
    }
    for (const d of damaged) {
      this.notes.push(`recovery: skipped a damaged snapshot the log does not need (${d.problem})`);
    }
    return null;
  }

  /** Empties the in-memory log and restarts it from `snap` (none: the fresh member's membership). */
  private startFrom(snap: LoadedSnapshot | undefined): void {
    this.walAt.clear();
    this.mem = new MemoryStorage(this.opts.initialMembers);
    this.restored = null;
    this.restoredSnap?.release();
    this.restoredSnap = null;
    if (snap) {
      // The core sends snapshot()'s bytes to followers that need a snapshot (InstallSnapshot): made from a
      // frozen view of the restored state once one does, not now beside the state.
      this.restoredSnap = new RestoredSnapshot(
        snap.meta,
        snap.state.freeze(),
        () => this.onSnapshotReady?.(),
        this.opts.log,
      );
      this.mem.applySnapshot(this.restoredSnap);
      this.restored = snap.state;
    }
  }

  /** The snapshot the log starts from was replaced by a newer one: the restored one's view can go. */
  private replacedRestoredSnapshot(): void {
    if (this.restoredSnap && this.mem.snapshot() !== this.restoredSnap) {
      this.restoredSnap.release();
      this.restoredSnap = null;
    }
  }

  /**
   * Repairs damage found at open (see the module comment): bounds the term, records the next one with a
   * vote for itself and `rejoinTerm` in the vote file, then cuts the WAL at the damage or restarts the log
   * from the snapshot before a damaged one, and logs the new hard state.
   */
  private async heal(
    vote: VoteFileRead,
    before: WalSummary,
    inspection: WalDamage | undefined,
    lost: LostSnapshot | null,
    opened: Awaited<ReturnType<typeof WalClass.open>> | undefined,
  ): Promise<void> {
    const opts = this.opts;
    const damage = inspection?.damage;
    let what: string;
    if (damage?.missing) {
      what = `WAL missing in ${damage.file} (${damage.reason}): started it again`;
    } else if (damage) {
      const last = inspection!.after[inspection!.after.length - 1]?.index ?? damage.index;
      what =
        `WAL damaged at ${damage.file} offset ${damage.offset} (${damage.reason}): cut there, dropping WAL ` +
        `records ${damage.index}..${last}`;
    } else {
      what = `${lost!.damaged.map((d) => d.problem).join('; ')}: dropped it and the log that continues it`;
    }
    const bound = termBound(before.term, inspection?.after ?? [], !inspection, vote);
    const members = new Set([...opts.initialMembers, ...this.mem.membersAt(this.mem.lastIndex())]);
    members.delete(opts.id);
    let unsafe: string | null = null;
    if (bound.proof === null) {
      unsafe =
        `nothing that survived bounds the term this member reached (no ${VOTE_FILE} file, and no hard state ` +
        'intact after the damage), so healing could let it vote twice in a term';
    } else if (members.size === 0) {
      unsafe = 'this member is the only voting member of its group: nobody holds the records it would drop';
    }
    if (unsafe && !opts.repair) {
      const where = damage
        ? { file: damage.file, offset: damage.offset }
        : { files: lost!.damaged.map((d) => d.file) };
      throw new SegmemError(
        'UNAVAILABLE',
        `cannot heal: ${what.replace(/: cut there.*|: dropped it.*|: started it again/, '')}; ${unsafe}. Refusing to start so ` +
          'acknowledged data is not dropped silently (start with --repair to cut there anyway)',
        { reason: damage ? (damage.missing ? 'WAL_MISSING' : 'WAL_CORRUPT') : 'SNAPSHOT_CORRUPT', ...where },
      );
    }
    const term = bound.term + 1;
    const rejoinTerm = opts.repair ? 0 : term;
    // Durable before anything is cut: a crash from here on finds the damage again, or the vote file saying
    // this member is rejoining; never a shorter log with nothing saying so.
    await this.persistVote({ term, vote: opts.id, rejoinTerm });
    if (inspection) {
      // The records were replayed already: this pass only cuts the log and counts what it keeps.
      const reopened = await WalClass.open({ ...walOptions(opts), repair: true, onRecord: () => {} });
      if (reopened.report.records !== before.records) {
        await reopened.wal.close().catch(() => {});
        throw new SegmemError(
          'UNAVAILABLE',
          `the WAL in ${opts.walDir} changed while it was being repaired`,
          {
            reason: 'WAL_CORRUPT',
          },
        );
      }
      this.wal = reopened.wal;
      this.report = reopened.report;
    } else {
      this.wal = opened!.wal;
      this.report = opened!.report;
    }
    if (lost) {
      this.startFrom(lost.fallback);
      const snap = this.mem.snapshot().meta;
      this.mem.setHardState({ term, vote: opts.id, commit: snap.index });
      // The marker makes every earlier record superseded: the log they hold continued the lost snapshot.
      const floor = await this.logSnapshot(KIND_SNAPSHOT_INSTALLED, snap.index, snap.term);
      await removeSnapshotFiles(
        this.snaps.dir,
        lost.damaged.map((d) => basename(d.file)),
        this.opts.fs ?? nodeFs,
      );
      await this.wal.truncatePrefix(floor);
      what += lost.fallback
        ? ` (restarting from the snapshot at index ${snap.index})`
        : ' (restarting from an empty log)';
    } else {
      const commit = Math.max(
        this.mem.snapshot().meta.index,
        Math.min(this.mem.hardState().commit, this.mem.lastIndex()),
      );
      this.mem.setHardState({ term, vote: opts.id, commit });
      await this.wal.waitDurable(this.wal.append(encodeSmall(KIND_HARD_STATE, [term, opts.id, commit])));
    }
    this.rejoin = rejoinTerm;
    this.repair = { damage: what, term, rejoinTerm };
    this.notes.push(
      `recovery: healed: ${what}; the leader sends them again. ` +
        (rejoinTerm > 0
          ? `Rejoining in term ${term}: no vote until caught up from the leader`
          : `Restarting in term ${term} and voting at once (--repair)`) +
        (unsafe ? ` although ${unsafe}` : ''),
    );
  }

  /**
   * With intact storage: the term and vote are the later of the WAL's and the vote file's, and both copies
   * are brought level (the vote file is created here for a data directory written before it existed).
   */
  private async settleHardState(vote: VoteFileRead): Promise<void> {
    const hs = this.mem.hardState();
    let state: VoteState = { term: hs.term, vote: hs.vote, rejoinTerm: 0 };
    if ('state' in vote) {
      const later = laterVote(hs, vote.state);
      if (!later) {
        throw new SegmemError(
          'UNAVAILABLE',
          `the WAL and the ${VOTE_FILE} file name different votes in term ${hs.term} (${hs.vote}, ` +
            `${vote.state.vote}): refusing to start`,
          { reason: 'VOTE_CONFLICT' },
        );
      }
      state = {
        term: later.term,
        vote: later.vote,
        rejoinTerm: this.opts.repair ? 0 : vote.state.rejoinTerm,
      };
      if (later === vote.state && (hs.term !== later.term || hs.vote !== later.vote)) {
        // The vote file got there first (a crash between the two writes): the WAL follows.
        this.mem.setHardState({ term: later.term, vote: later.vote, commit: hs.commit });
        await this.wal.waitDurable(
          this.wal.append(encodeSmall(KIND_HARD_STATE, [later.term, later.vote, hs.commit])),
        );
      }
      if (state.rejoinTerm > 0 && this.lastTerm() >= state.rejoinTerm) state.rejoinTerm = 0;
      this.voteSaved = vote.state;
    } else if ('damaged' in vote) {
      this.notes.push(`recovery: ${vote.damaged}; rewritten from the WAL`);
    }
    if (
      !('state' in vote) ||
      state.term !== vote.state.term ||
      state.vote !== vote.state.vote ||
      state.rejoinTerm !== vote.state.rejoinTerm
    ) {
      await this.persistVote(state);
    }
    this.voteSaved = state;
    this.rejoin = state.rejoinTerm;
  }

  /** The term of the last entry, or of the snapshot when the log holds none. */
  private lastTerm(): number {
    return this.mem.term(this.mem.lastIndex());
  }

  /**
   * The term this member's log must reach before it takes part in elections again (0: it takes part): the
   * raft core's `rejoinTerm`. See the module comment.
   */
  get rejoinTerm(): number {
    return this.rejoin;
  }

  /** What open() found and did, as lines for the server's log. */
  recoveryLines(): string[] {
    const wal = describeRecovery(this.report).filter((l) => !l.startsWith('recovery: repaired WAL'));
    const lines = [...wal, ...this.notes];
    if (this.repair === null && this.rejoin > 0) {
      lines.push(
        `recovery: still rejoining after a repair: no vote until the log reaches term ${this.rejoin}`,
      );
    }
    return lines;
  }

  /** Replaces the vote file with `state`, after the writes before it. */
  private persistVote(state: VoteState): Promise<void> {
    this.voteSaved = state;
    const fs = this.opts.fs ?? nodeFs;
    const write = (this.voteWrites ?? Promise.resolve()).then(() =>
      this.retryWhileNoSpace('writing the vote file', () => writeVoteFile(this.opts.dir, state, fs)),
    );
    const tracked = write.then(() => {
      if (this.voteWrites === tracked) this.voteWrites = null;
    });
    this.voteWrites = tracked;
    return tracked;
  }

  /** The rejoin is over once an entry (or snapshot) of `term` is durable here: say so, and forget it. */
  private rejoinedAt(term: number, walIndex: number): void {
    if (this.rejoin === 0 || term < this.rejoin) return;
    const rejoinTerm = this.rejoin;
    this.rejoin = 0;
    this.wal
      .waitDurable(walIndex)
      .then(() => this.persistVote({ ...this.voteSaved, rejoinTerm: 0 }))
      .then(
        () =>
          this.opts.log?.(
            `recovery: caught up from the leader after the repair (log at term ${term}, past ${rejoinTerm}): ` +
              'taking part in elections again',
          ),
        (err: unknown) => this.opts.log?.(`cannot record the end of the rejoin: ${(err as Error).message}`),
      );
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
    // The members first: a snapshot at index 0 (the log restarted empty by healing) is not "applied".
    this.mem = new MemoryStorage(snap.meta.members);
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

  /** Bytes the log holds in memory: the serialised snapshot kept for followers and the entries after it. */
  heldBytes(): number {
    return this.mem.heldBytes();
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
      if (this.rejoin > 0) this.rejoinedAt(this.lastTerm(), walIndex);
    }
    if (hardState) {
      this.mem.setHardState(hardState);
      const w = this.walHard;
      // A new commit index alone waits for the next entries (or close): nothing waits for it to be
      // durable, and a record of its own would cost every member a write per commit, in the way of the
      // next entry's. Recovery then starts from an older commit index, which the leader brings forward.
      if (entries.length > 0 || w === null || w.term !== hardState.term || w.vote !== hardState.vote)
        walIndex = this.appendHardState(hardState);
      else this.hardStatePending = true;
      // The second copy, in its own file (see vote-file.ts): waitDurable waits for it too.
      if (hardState.term !== this.voteSaved.term || hardState.vote !== this.voteSaved.vote) {
        this.persistVote({
          term: hardState.term,
          vote: hardState.vote,
          rejoinTerm: this.voteSaved.rejoinTerm,
        });
      }
    } else if (entries.length > 0 && this.hardStatePending)
      walIndex = this.appendHardState(this.mem.hardState());
    return walIndex;
  }

  /** The hard state last appended to the WAL by `save` (null: not known, write the next one). */
  private walHard: HardState | null = null;
  /** The hard state's commit index moved past the one in the WAL; written with the next entries. */
  private hardStatePending = false;

  private appendHardState(h: HardState): number {
    const at = this.wal.append(encodeSmall(KIND_HARD_STATE, [h.term, h.vote, h.commit]));
    this.walHard = h;
    this.hardStatePending = false;
    return at;
  }

  /** See Wal.onceWritable: `save` threw because the disk refuses writes for now (full); `retry` says when to try again. */
  onceWritable(retry: () => void): boolean {
    return this.wal.onceWritable(retry);
  }

  /** Resolves once the WAL holds `walIndex` durably, and the vote file the last term and vote saved. */
  waitDurable(walIndex: number): Promise<void> {
    const wal = this.wal.waitDurable(walIndex);
    const votes = this.voteWrites;
    return votes === null ? wal : Promise.all([wal, votes]).then(() => {});
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
      written = await this.retryWhileNoSpace('writing the snapshot from the leader', () =>
        this.snaps.write(snap.meta, view),
      );
    } finally {
      view.release();
    }
    // The leader's snapshot replaces the whole log; it re-sends whatever follows the snapshot.
    this.mem.applySnapshot(snap);
    this.replacedRestoredSnapshot();
    this.walAt.clear();
    const floor = await this.logSnapshot(KIND_SNAPSHOT_INSTALLED, snap.meta.index, snap.meta.term);
    if (this.rejoin > 0) this.rejoinedAt(snap.meta.term, this.wal.lastIndex);
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
    this.replacedRestoredSnapshot();
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
    // Both records or neither: the stall is checked before the first, and cannot start between the two.
    await this.walWritable();
    const next = this.wal.lastIndex + 1;
    const first = this.walAt.get(this.mem.firstIndex());
    const floor = first === undefined ? next : Math.min(first, next);
    this.wal.append(encodeSmall(kind, [index, term, floor]));
    await this.wal.waitDurable(this.appendHardState(this.mem.hardState()));
    return floor;
  }

  /** Resolves once the WAL takes appends (at once unless a full disk stalls it). */
  private walWritable(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.wal.onceWritable(resolve)) resolve();
    });
  }

  /**
   * Runs `write` until it does not fail for lack of space: a full disk that gets space back (as the WAL
   * does) must not stop the member for good. Waits 50 ms, doubling to 2 s, between tries; says so once.
   */
  private async retryWhileNoSpace<T>(what: string, write: () => Promise<T>): Promise<T> {
    for (let delayMs = 50, said = false; ; delayMs = Math.min(2000, delayMs * 2)) {
      try {
        return await write();
      } catch (err) {
        const code = errnoCode(err) ?? errnoCode((err as { cause?: unknown })?.cause);
        if (this.closing || (code !== 'ENOSPC' && code !== 'EDQUOT')) throw err;
        if (!said)
          this.opts.log?.(
            `cannot finish ${what}: ${(err as Error).message}; trying again until there is space`,
          );
        said = true;
        const env = this.opts.env ?? systemEnv;
        await new Promise<void>((resolve) => env.setTimeout(resolve, delayMs));
      }
    }
  }

  private async removeOldSnapshots(): Promise<void> {
    const keep = snapshotFileName(this.mem.snapshot().meta);
    await this.snaps.removeAllBut((f) => f >= keep).catch(() => {});
  }

  private closing = false;

  async close(): Promise<void> {
    this.closing = true;
    this.restoredSnap?.release();
    if (this.hardStatePending && !this.wal.failed && !this.wal.stalled) {
      try {
        this.appendHardState(this.mem.hardState());
      } catch {
        // closing anyway: recovery starts from the commit index written before
      }
    }
    await this.voteWrites?.catch(() => {});
    await this.wal.close();
  }
}

function walOptions(opts: DiskRaftStorageOptions) {
  return {
    dir: opts.walDir,
    fsync: opts.fsync,
    startedMarker: join(opts.dir, WAL_STARTED_FILE),
    ...(opts.walFileBytes !== undefined ? { segmentBytes: opts.walFileBytes } : {}),
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.fs ? { fs: opts.fs } : {}),
    ...(opts.walIo ? { io: opts.walIo } : {}),
    ...(opts.onWalStarted ? { onStarted: opts.onWalStarted } : {}),
  };
}
