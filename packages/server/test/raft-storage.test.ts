/**
 * The Raft member's disk storage: what is saved comes back after a reopen, later records win (a
 * follower's overwritten suffix), and snapshots (local compaction or installed from a leader) survive.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
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

test('a snapshot deletes the WAL files it made useless; a reopen gets the same log, hard state and snapshot', async (t) => {
  // Several file sizes, so file boundaries fall at different records: in some, the first file kept begins
  // with old versions of rewritten entries whose predecessors went with a deleted file.
  for (const walFileBytes of [300, 420, 560, 900]) {
    const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
    const walDir = join(dir, 'wal');
    const opts = { dir, walDir, fsync: 'always' as const, initialMembers: ['s1', 's2', 's3'], walFileBytes };
    const files = () => readdirSync(walDir).filter((n) => n.endsWith('.wal')).length;
    try {
      let s = await DiskRaftStorage.open(opts);
      for (let i = 1; i <= 60; i += 5) {
        const batch = Array.from({ length: 5 }, (_, k) => entry(i + k, 1, `e${i + k}-${'x'.repeat(40)}`));
        await s.waitDurable(s.save({ term: 1, vote: 's1', commit: i + 4 }, batch));
      }
      // A new leader rewrites from 41 on.
      const rewritten = Array.from({ length: 30 }, (_, k) => entry(41 + k, 2, `r${41 + k}`));
      await s.waitDurable(s.save({ term: 2, vote: 's2', commit: 45 }, rewritten));
      const before = files();
      await s.compact(40, stateHolding(40).freeze());
      t.true(files() < before, `files deleted (${before} -> ${files()}, ${walFileBytes} B files)`);
      const expected = dump(s);
      t.is(expected.first, 41);
      await s.close();
      s = await DiskRaftStorage.open(opts);
      t.deepEqual(dump(s), expected, `reopened with ${walFileBytes} B files`);
      // Again, with entries after the snapshot in files of their own, then an installed snapshot.
      await s.waitDurable(s.save({ term: 3, vote: 's3', commit: 70 }, [entry(71, 3), entry(72, 3)]));
      await s.compact(70, stateHolding(70).freeze());
      const leader = stateHolding(90);
      await s.installSnapshot(
        { meta: { index: 90, term: 4, members: ['s1', 's2', 's3'] }, data: leader.snapshot() },
        leader.freeze(),
      );
      await s.waitDurable(s.save({ term: 4, vote: null, commit: 91 }, [entry(91, 4)]));
      const later = dump(s);
      await s.close();
      s = await DiskRaftStorage.open(opts);
      t.deepEqual(dump(s), later);
      t.true(s.snapshot().data.equals(stateHolding(90).snapshot()));
      t.true(files() <= 2, `${files()} files left`);
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
