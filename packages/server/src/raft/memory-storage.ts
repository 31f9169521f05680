/**
 * An in-memory {@link RaftStorage} with the write side a driver calls after each Ready. Used by tests and,
 * twice per node (what the process sees, and what is durable), by the simulator's disk.
 */
import { applyConfChange } from './confchange.js';
import {
  CompactedError,
  type Entry,
  entryBytes,
  type HardState,
  type NodeId,
  type RaftStorage,
  type Snapshot,
} from './types.js';

export class MemoryStorage implements RaftStorage {
  private hard: HardState = { term: 0, vote: null, commit: 0 };
  private snap: Snapshot;
  /** Entries after the snapshot: log[0].index === snap.meta.index + 1. */
  private log: Entry[] = [];
  /** The encoded bytes of the entries in `log` (a running sum). */
  private logBytes = 0;

  /** A fresh member: no entries, and `members` as the configuration at index 0. */
  constructor(members: readonly NodeId[] = []) {
    this.snap = { meta: { index: 0, term: 0, members: [...members] }, data: Buffer.alloc(0) };
  }

  /** An independent copy (entries are shared: they are never mutated). */
  clone(): MemoryStorage {
    const c = new MemoryStorage();
    c.hard = { ...this.hard };
    c.snap = this.snap;
    c.log = this.log.slice();
    c.logBytes = this.logBytes;
    return c;
  }

  // --- RaftStorage ---

  /** The hard state, and the membership after every conf entry stored. */
  initialState(): { hardState: HardState; members: NodeId[] } {
    return { hardState: { ...this.hard }, members: this.membersAt(this.lastIndex()) };
  }

  entries(lo: number, hi: number): Entry[] {
    if (lo <= this.snap.meta.index) throw new CompactedError(lo);
    if (hi > this.lastIndex() + 1)
      throw new RangeError(`entries up to ${hi - 1} asked, last is ${this.lastIndex()}`);
    const base = this.snap.meta.index + 1;
    return this.log.slice(lo - base, hi - base);
  }

  term(i: number): number {
    if (i === this.snap.meta.index) return this.snap.meta.term;
    if (i < this.snap.meta.index) throw new CompactedError(i);
    const e = this.log[i - this.snap.meta.index - 1];
    if (!e) throw new RangeError(`no entry ${i} (last ${this.lastIndex()})`);
    return e.term;
  }

  firstIndex(): number {
    return this.snap.meta.index + 1;
  }

  lastIndex(): number {
    return this.snap.meta.index + this.log.length;
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  /** Bytes held in memory: the snapshot's data and every entry after it (the server's memory budget counts them). */
  heldBytes(): number {
    return (this.snap.dataBytes ?? this.snap.data.length) + this.logBytes;
  }

  // --- write side ---

  hardState(): HardState {
    return { ...this.hard };
  }

  setHardState(hs: HardState): void {
    this.hard = { ...hs };
  }

  /** Appends entries; an entry at an index already stored replaces it and everything after it. */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    if (first > this.lastIndex() + 1) {
      throw new RangeError(`append at ${first} leaves a gap after ${this.lastIndex()}`);
    }
    const base = this.snap.meta.index + 1;
    // Entries at or below the snapshot are covered by it already.
    const skip = Math.max(0, base - first);
    const keep = Math.max(0, first + skip - base);
    for (let i = keep; i < this.log.length; i++) this.logBytes -= entryBytes(this.log[i]!);
    this.log.length = keep;
    for (let i = skip; i < entries.length; i++) {
      this.log.push(entries[i]!);
      this.logBytes += entryBytes(entries[i]!);
    }
  }

  /** Installs a snapshot received from the leader: it replaces the whole log. Older ones are ignored. */
  applySnapshot(snap: Snapshot): boolean {
    if (snap.meta.index <= this.snap.meta.index) return false;
    this.snap = snap;
    this.log = [];
    this.logBytes = 0;
    return true;
  }

  /** Takes a snapshot of the applied state at `index` (state machine bytes `data`) and drops the entries it covers. */
  compact(index: number, data: Buffer): void {
    if (index <= this.snap.meta.index) return;
    if (index > this.lastIndex())
      throw new RangeError(`cannot compact to ${index}: last index is ${this.lastIndex()}`);
    const meta = { index, term: this.term(index), members: this.membersAt(index) };
    const dropped = index - this.snap.meta.index;
    for (let i = 0; i < dropped; i++) this.logBytes -= entryBytes(this.log[i]!);
    this.log = this.log.slice(dropped);
    this.snap = { meta, data };
  }

  /** The membership after the conf entries up to `index`. */
  membersAt(index: number): NodeId[] {
    let members: NodeId[] = [...this.snap.meta.members];
    for (const e of this.log) {
      if (e.index > index) break;
      if (e.type === 'conf') members = applyConfChange(members, e.data);
    }
    return members;
  }
}
