/**
 * The Raft member's disk storage: what is saved comes back after a reopen, later records win (a
 * follower's overwritten suffix), and snapshots (local compaction or installed from a leader) survive.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type { Entry } from '../src/raft/types.js';
import { DiskRaftStorage } from '../src/storage/raft-storage.js';
import { stateHolding } from './fixtures/workload.js';

function entry(index: number, term: number, text = `e${index}`): Entry {
  return { index, term, type: 'normal', data: Buffer.from(text) };
}

async function open(dir: string) {
  return DiskRaftStorage.open({
    dir,
    walDir: join(dir, 'wal'),
    fsync: 'always',
    initialMembers: ['s1', 's2', 's3'],
  });
}

function dump(s: DiskRaftStorage) {
  return {
    first: s.firstIndex(),
    last: s.lastIndex(),
    entries: s.entries(s.firstIndex(), s.lastIndex() + 1).map((e) => [e.index, e.term, e.data.toString()]),
    hard: s.hardState(),
    snap: s.snapshot().meta,
  };
}

test('entries and hard state survive a reopen, and a rewritten suffix replaces the old one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    let s = await open(dir);
    await s.waitDurable(s.save({ term: 1, vote: 's1', commit: 0 }, [entry(1, 1), entry(2, 1), entry(3, 1)]));
    // A new leader overwrites entries 2.. with its own.
    await s.waitDurable(
      s.save({ term: 2, vote: 's2', commit: 1 }, [entry(2, 2, 'x2'), entry(3, 2, 'x3'), entry(4, 2, 'x4')]),
    );
    const before = dump(s);
    t.deepEqual(before.entries, [
      [1, 1, 'e1'],
      [2, 2, 'x2'],
      [3, 2, 'x3'],
      [4, 2, 'x4'],
    ]);
    await s.close();
    s = await open(dir);
    t.deepEqual(dump(s), before);
    t.deepEqual(s.initialState().members, ['s1', 's2', 's3']);
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a local compaction keeps the entries after it; an installed snapshot replaces the whole log', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    let s = await open(dir);
    const entries = Array.from({ length: 10 }, (_, i) => entry(i + 1, 1));
    await s.waitDurable(s.save({ term: 1, vote: 's1', commit: 10 }, entries));
    await s.compact(6, stateHolding(6).freeze());
    await s.waitDurable(s.wal.lastIndex);
    t.is(s.firstIndex(), 7);
    await s.close();
    s = await open(dir);
    t.is(s.snapshot().meta.index, 6);
    t.true(s.snapshot().data.equals(stateHolding(6).snapshot()));
    t.is(s.takeRestoredState()?.digest(), stateHolding(6).digest(), 'the state is handed over restored');
    t.is(s.takeRestoredState(), null, 'once');
    t.deepEqual(
      dump(s).entries.map((e) => e[0]),
      [7, 8, 9, 10],
    );
    // A leader's snapshot at 20 (term 3) replaces everything, including entries past it that were logged before.
    await s.waitDurable(
      s.save(
        undefined,
        Array.from({ length: 15 }, (_, i) => entry(11 + i, 1)),
      ),
    );
    const leader = stateHolding(20);
    await s.installSnapshot(
      { meta: { index: 20, term: 3, members: ['s1', 's2', 's3'] }, data: leader.snapshot() },
      leader.freeze(),
    );
    t.is(s.lastIndex(), 20);
    await s.close();
    s = await open(dir);
    t.is(s.lastIndex(), 20, 'entries 21..25 logged before the install stay discarded after a reopen');
    await s.waitDurable(s.save({ term: 3, vote: null, commit: 21 }, [entry(21, 3)]));
    const before = dump(s);
    await s.close();
    s = await open(dir);
    t.deepEqual(dump(s), before);
    t.deepEqual(
      before.entries.map((e) => e[0]),
      [21],
    );
    t.true(s.snapshot().data.equals(stateHolding(20).snapshot()));
    t.throws(() => s.entries(5, 6), { name: 'CompactedError' });
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
