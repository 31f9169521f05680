/**
 * A simulated disk under one node's Raft storage. Writes land in the page cache at once (the running
 * process reads them back, through `live`) and become durable only when synced. A crash keeps a prefix of
 * the un-synced writes, in order (a log-structured disk, as the WAL is), possibly tearing the first write
 * it loses: an entries write may keep only a prefix of its entries. Everything after is lost.
 */
import { MemoryStorage } from '../raft/memory-storage.js';
import type { Entry, HardState, NodeId, Snapshot } from '../raft/types.js';
import type { Prng } from './prng.js';

export type DiskWrite =
  | { kind: 'hardState'; hardState: HardState }
  | { kind: 'entries'; entries: Entry[] }
  | { kind: 'snapshot'; snapshot: Snapshot }
  | { kind: 'compact'; index: number; data: Buffer };

function applyWrite(store: MemoryStorage, w: DiskWrite): void {
  switch (w.kind) {
    case 'hardState':
      store.setHardState(w.hardState);
      return;
    case 'entries':
      store.append(w.entries);
      return;
    case 'snapshot':
      store.applySnapshot(w.snapshot);
      return;
    case 'compact':
      store.compact(w.index, w.data);
      return;
  }
}

export interface CrashReport {
  unsynced: number;
  kept: number;
  /** A torn write: how many of its entries survived. */
  torn: { kept: number; of: number } | null;
}

export class SimDisk {
  /** What the running process sees (durable + un-synced writes). */
  live: MemoryStorage;
  private durable: MemoryStorage;
  private pending: DiskWrite[] = [];

  constructor(members: readonly NodeId[]) {
    this.durable = new MemoryStorage(members);
    this.live = this.durable.clone();
  }

  write(w: DiskWrite): void {
    applyWrite(this.live, w);
    this.pending.push(w);
  }

  get unsynced(): number {
    return this.pending.length;
  }

  sync(): void {
    for (const w of this.pending) applyWrite(this.durable, w);
    this.pending = [];
  }

  /** Power loss: some prefix of the un-synced writes reaches the platter, maybe with the next one torn. */
  crash(prng: Prng): CrashReport {
    const n = this.pending.length;
    const kept = prng.int(0, n);
    for (let i = 0; i < kept; i++) applyWrite(this.durable, this.pending[i]!);
    let torn: CrashReport['torn'] = null;
    const next = this.pending[kept];
    if (next && next.kind === 'entries' && next.entries.length > 1 && prng.chance(0.5)) {
      const keep = prng.int(1, next.entries.length - 1);
      applyWrite(this.durable, { kind: 'entries', entries: next.entries.slice(0, keep) });
      torn = { kept: keep, of: next.entries.length };
    }
    this.pending = [];
    this.live = this.durable.clone();
    return { unsynced: n, kept, torn };
  }
}
