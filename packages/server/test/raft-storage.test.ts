/**
 * The Raft member's disk storage: what is saved comes back after a reopen, later records win (a
 * follower's overwritten suffix), and snapshots (local compaction or installed from a leader) survive.
 * Damaged storage is healed when that is safe, and refused when it is not.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test from 'ava';
import type { Entry } from '../src/raft/types.js';
import { setFaults } from '../src/storage/faults.js';
import { DiskRaftStorage } from '../src/storage/raft-storage.js';
import { decodeVoteFile, encodeVoteFile, VOTE_FILE, type VoteState } from '../src/storage/vote-file.js';
import { WAL_FILE_HEADER_BYTES, WAL_RECORD_HEADER_BYTES } from '../src/storage/wal.js';
import { snapshotBytes } from './fixtures/snapshot-bytes.js';
import { stateHolding } from './fixtures/workload.js';

function entry(index: number, term: number, text = `e${index}`): Entry {
  return { index, term, type: 'normal', data: Buffer.from(text) };
}

async function open(dir: string) {
  return DiskRaftStorage.open({
    dir,
    walDir: join(dir, 'wal'),
    fsync: 'always',
    id: 's1',
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
    t.true((await snapshotBytes(s)).equals(stateHolding(6).snapshot()));
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
    t.true((await snapshotBytes(s)).equals(stateHolding(20).snapshot()));
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
    const opts = {
      dir,
      walDir,
      fsync: 'always' as const,
      id: 's1',
      initialMembers: ['s1', 's2', 's3'],
      walFileBytes,
    };
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
      t.true((await snapshotBytes(s)).equals(stateHolding(90).snapshot()));
      t.true(files() <= 2, `${files()} files left`);
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

// ---------------------------------------------------------------------------------------------------------
// Healing damaged storage (see the module comment of raft-storage.ts)

/** Where each WAL record of `walDir` lies, in index order. */
function walRecords(walDir: string): { file: string; offset: number; index: number; length: number }[] {
  const out: { file: string; offset: number; index: number; length: number }[] = [];
  let index = 0;
  for (const name of readdirSync(walDir)
    .filter((n) => n.endsWith('.wal'))
    .sort()) {
    const file = join(walDir, name);
    const buf = readFileSync(file);
    index = Number(name.slice(0, 20));
    for (let off = WAL_FILE_HEADER_BYTES; off < buf.length; index++) {
      const length = buf.readUInt32LE(off);
      out.push({ file, offset: off, index, length });
      off += WAL_RECORD_HEADER_BYTES + length;
    }
  }
  return out;
}

/** Flips one payload byte of WAL record `index`; returns where the record is. */
function damageWalRecord(walDir: string, index: number): { file: string; offset: number } {
  const rec = walRecords(walDir).find((r) => r.index === index)!;
  const buf = readFileSync(rec.file);
  buf[rec.offset + WAL_RECORD_HEADER_BYTES + Math.floor(rec.length / 2)]! ^= 0x40;
  writeFileSync(rec.file, buf);
  return { file: rec.file, offset: rec.offset };
}

function voteFile(dir: string): VoteState {
  const v = decodeVoteFile(readFileSync(join(dir, VOTE_FILE)));
  if (typeof v === 'string') throw new Error(`vote file: ${v}`);
  return v;
}

/**
 * A log a follower might have written: three terms, votes in each, entries acknowledged after each hard
 * state. WAL records: hs(1) e1 e2 hs(1,c2) | hs(2) e3 e4 hs(2,c4) | hs(3) e5 e6 hs(3,c6).
 */
async function followerLog(dir: string): Promise<void> {
  const s = await open(dir);
  let index = 1;
  for (const term of [1, 2, 3]) {
    await s.waitDurable(s.save({ term, vote: `s${term}`, commit: index - 1 }, []));
    await s.waitDurable(
      s.save({ term, vote: `s${term}`, commit: index + 1 }, [entry(index, term), entry(index + 1, term)]),
    );
    index += 2;
  }
  await s.close();
}

test('the term and vote are kept in the vote file as well; a directory without one gets one from the WAL', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    let s = await open(dir);
    await s.waitDurable(s.save({ term: 3, vote: 's2', commit: 0 }, [entry(1, 3)]));
    t.deepEqual(voteFile(dir), { term: 3, vote: 's2', rejoinTerm: 0 }, 'written before waitDurable resolves');
    await s.waitDurable(s.save({ term: 3, vote: 's2', commit: 1 }, []));
    await s.close();
    rmSync(join(dir, VOTE_FILE));
    s = await open(dir);
    await s.close();
    t.deepEqual(voteFile(dir), { term: 3, vote: 's2', rejoinTerm: 0 }, 'an older data directory gets one');
    // A crash after the vote file was replaced and before the WAL's record of the same change was durable:
    // the later of the two wins, and the WAL is brought level.
    writeFileSync(join(dir, VOTE_FILE), encodeVoteFile({ term: 4, vote: 's3', rejoinTerm: 0 }));
    s = await open(dir);
    t.deepEqual(s.hardState(), { term: 4, vote: 's3', commit: 1 });
    await s.close();
    rmSync(join(dir, VOTE_FILE));
    s = await open(dir);
    t.deepEqual(s.hardState(), { term: 4, vote: 's3', commit: 1 }, 'the WAL holds it too now');
    await s.close();
    // Two different votes in one term: no correct history does that.
    writeFileSync(join(dir, VOTE_FILE), encodeVoteFile({ term: 4, vote: 's1', rejoinTerm: 0 }));
    const err = await t.throwsAsync(open(dir));
    t.like((err as SegmemError).details, { reason: 'VOTE_CONFLICT' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a damaged WAL record with intact ones after it: the member cuts there and rejoins one term past the highest it reached, voting for itself', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    await followerLog(dir);
    // WAL record 6 is entry 3 (term 2): entries 3.. are lost, and so are the hard states of terms 2 and 3.
    const at = damageWalRecord(join(dir, 'wal'), 6);
    let s = await open(dir);
    t.deepEqual(dump(s).entries, [
      [1, 1, 'e1'],
      [2, 1, 'e2'],
    ]);
    t.deepEqual(s.hardState(), { term: 4, vote: 's1', commit: 2 }, 'the term after 3, from the vote file');
    t.is(s.rejoinTerm, 4);
    t.like(s.repair, { term: 4, rejoinTerm: 4 });
    const lines = s.recoveryLines();
    t.is(lines.length, 1, lines.join('\n'));
    t.true(lines[0]!.includes(`WAL damaged at ${at.file} offset ${at.offset} (bad checksum)`), lines[0]);
    t.regex(lines[0]!, /dropping WAL records 6\.\.12.*Rejoining in term 4: no vote until caught up/);
    t.deepEqual(voteFile(dir), { term: 4, vote: 's1', rejoinTerm: 4 });
    await s.close();
    // The cut is done: the next start finds an intact WAL, and still knows the member is rejoining.
    s = await open(dir);
    t.is(s.repair, null);
    t.is(s.rejoinTerm, 4);
    t.deepEqual(s.hardState(), { term: 4, vote: 's1', commit: 2 });
    t.regex(s.recoveryLines().join('\n'), /still rejoining/);
    // A leader of term 5 resends what was lost: with an entry of term 5 durable, the rejoin is over.
    await s.waitDurable(s.save({ term: 5, vote: null, commit: 2 }, [entry(3, 2), entry(4, 2)]));
    t.is(voteFile(dir).rejoinTerm, 4, 'entries of older terms do not end it');
    const caughtUp = new Promise<string>((resolve) => {
      (s as unknown as { opts: { log: (l: string) => void } }).opts.log = resolve;
    });
    await s.waitDurable(s.save({ term: 5, vote: null, commit: 4 }, [entry(5, 5)]));
    t.regex(await caughtUp, /caught up from the leader after the repair/);
    t.deepEqual(voteFile(dir), { term: 5, vote: null, rejoinTerm: 0 });
    await s.close();
    s = await open(dir);
    t.is(s.rejoinTerm, 0);
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a damaged last WAL record (all its bytes there) is not taken for a torn write: the member cuts it and rejoins', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    await followerLog(dir);
    // WAL record 12, the last, is the hard state (3, commit 6): acknowledged, and the majority has it.
    const at = damageWalRecord(join(dir, 'wal'), 12);
    const s = await open(dir);
    t.is(dump(s).entries.length, 6, 'the entries before it stay');
    t.deepEqual(s.hardState(), { term: 4, vote: 's1', commit: 4 });
    t.is(s.rejoinTerm, 4, 'no vote until caught up');
    const lines = s.recoveryLines().join('\n');
    t.true(lines.includes(`WAL damaged at ${at.file} offset ${at.offset} (bad checksum)`), lines);
    t.regex(lines, /dropping WAL records 12\.\.12.*Rejoining in term 4/);
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a lost WAL directory: the member starts its log again and rejoins; without a vote file to bound its term it refuses', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    await followerLog(dir);
    rmSync(join(dir, 'wal'), { recursive: true });
    let s = await open(dir);
    t.deepEqual(dump(s).entries, []);
    t.deepEqual(s.hardState(), { term: 4, vote: 's1', commit: 0 }, 'the term after 3, from the vote file');
    t.is(s.rejoinTerm, 4);
    t.regex(
      s.recoveryLines().join('\n'),
      /WAL missing in .*wal \(no record left\): started it again.*Rejoining in term 4/,
    );
    await s.close();
    s = await open(dir);
    t.is(s.rejoinTerm, 4, 'still rejoining after a restart');
    await s.close();

    rmSync(join(dir, 'wal'), { recursive: true });
    rmSync(join(dir, VOTE_FILE));
    const err = await t.throwsAsync(open(dir));
    t.like((err as SegmemError).details, { reason: 'WAL_MISSING' });
    t.regex((err as Error).message, /cannot heal: WAL missing .*nothing that survived bounds the term/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('without a vote file, a hard state intact after the damage bounds the term; with none, the member refuses unless --repair', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    // The hard state of term 3 (record 12) comes after the damage: it proves the term reached.
    await followerLog(dir);
    rmSync(join(dir, VOTE_FILE));
    damageWalRecord(join(dir, 'wal'), 6);
    let s = await open(dir);
    t.deepEqual(s.hardState(), { term: 4, vote: 's1', commit: 2 });
    await s.close();
    rmSync(dir, { recursive: true, force: true });

    // Damage in the last entry before the final hard state, and that hard state damaged too: nothing
    // after the damage shows the term, and there is no vote file.
    await followerLog(dir);
    rmSync(join(dir, VOTE_FILE));
    const at = damageWalRecord(join(dir, 'wal'), 10);
    damageWalRecord(join(dir, 'wal'), 12);
    const bytes = readFileSync(at.file);
    const err = await t.throwsAsync(open(dir));
    t.true(SegmemError.is(err, 'UNAVAILABLE'));
    t.like((err as SegmemError).details, { reason: 'WAL_CORRUPT', file: at.file, offset: at.offset });
    t.regex(
      (err as SegmemError).message,
      /cannot heal: WAL damaged at .* offset \d+.*could let it vote twice/,
    );
    t.deepEqual(readFileSync(at.file), bytes, 'refusing changes nothing on disk');
    s = await DiskRaftStorage.open({
      dir,
      walDir: join(dir, 'wal'),
      fsync: 'always',
      id: 's1',
      initialMembers: ['s1', 's2', 's3'],
      repair: true,
    });
    t.is(s.hardState().term, 4, 'one past the highest term that survived');
    t.is(s.rejoinTerm, 0, '--repair: votes at once');
    t.regex(
      s.recoveryLines().join('\n'),
      /voting at once \(--repair\) although nothing that survived bounds the term/,
    );
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the only voting member of its group does not heal: nobody holds what it would drop', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    const alone = {
      dir,
      walDir: join(dir, 'wal'),
      fsync: 'always' as const,
      id: 's1',
      initialMembers: ['s1'],
    };
    const s = await DiskRaftStorage.open(alone);
    for (let i = 1; i <= 4; i++)
      await s.waitDurable(s.save({ term: 1, vote: 's1', commit: i }, [entry(i, 1)]));
    await s.close();
    damageWalRecord(join(dir, 'wal'), 3);
    const err = await t.throwsAsync(DiskRaftStorage.open(alone));
    t.regex((err as SegmemError).message, /only voting member/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a damaged snapshot the log depends on: the member drops it and the log after it, and rejoins', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    let s = await open(dir);
    await s.waitDurable(
      s.save(
        { term: 2, vote: 's2', commit: 10 },
        Array.from({ length: 10 }, (_, i) => entry(i + 1, 2)),
      ),
    );
    await s.compact(6, stateHolding(6).freeze());
    await s.waitDurable(s.save({ term: 2, vote: 's2', commit: 12 }, [entry(11, 2), entry(12, 2)]));
    await s.close();
    const snapDir = join(dir, 'snap');
    const [snapName] = readdirSync(snapDir);
    const snapFile = join(snapDir, snapName!);
    const bytes = readFileSync(snapFile);
    bytes[bytes.length - 10]! ^= 0x01;
    writeFileSync(snapFile, bytes);
    s = await open(dir);
    t.is(s.snapshot().meta.index, 0);
    t.is(s.lastIndex(), 0, 'the log continued the lost snapshot: it goes too');
    t.deepEqual(s.initialState().members, ['s1', 's2', 's3']);
    t.deepEqual(s.hardState(), { term: 3, vote: 's1', commit: 0 });
    t.is(s.rejoinTerm, 3);
    t.is(s.takeRestoredState(), null);
    t.regex(
      s.recoveryLines().join('\n'),
      /healed: .*snapshot.*restarting from an empty log.*Rejoining in term 3/,
    );
    t.deepEqual(readdirSync(snapDir), [], 'the damaged file is removed');
    await s.close();
    s = await open(dir);
    t.is(s.repair, null, 'healed once');
    t.deepEqual(
      { last: s.lastIndex(), hard: s.hardState(), rejoin: s.rejoinTerm },
      { last: 0, hard: { term: 3, vote: 's1', commit: 0 }, rejoin: 3 },
    );
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a damaged snapshot with no log after it (a restored directory, say) is lost state too: the member heals', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
  try {
    let s = await open(dir);
    await s.waitDurable(
      s.save(
        { term: 1, vote: 's1', commit: 4 },
        Array.from({ length: 4 }, (_, i) => entry(i + 1, 1)),
      ),
    );
    await s.compact(4, stateHolding(4).freeze());
    await s.close();
    // Only the snapshot and the vote file left, as `segmem restore` leaves a directory (plus the vote file).
    for (const f of readdirSync(join(dir, 'wal'))) rmSync(join(dir, 'wal', f));
    const snapDir = join(dir, 'snap');
    const snapFile = join(snapDir, readdirSync(snapDir)[0]!);
    const bytes = readFileSync(snapFile);
    bytes[bytes.length - 10]! ^= 0x01;
    writeFileSync(snapFile, bytes);
    s = await open(dir);
    t.truthy(s.repair, 'the log does not reach the snapshot: its state is lost here');
    t.deepEqual(s.hardState(), { term: 2, vote: 's1', commit: 0 });
    t.is(s.rejoinTerm, 2);
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial(
  'a crash after the vote file was written and before the WAL was cut: the next start heals again, a term later',
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'segmem-raftstore-'));
    try {
      await followerLog(dir);
      damageWalRecord(join(dir, 'wal'), 6);
      setFaults([{ step: 'recovery.truncate', at: 1, action: 'fail', count: 1, errno: 'EIO' }]);
      try {
        await t.throwsAsync(open(dir));
      } finally {
        setFaults(null);
      }
      t.deepEqual(voteFile(dir), { term: 4, vote: 's1', rejoinTerm: 4 }, 'the vote file went first');
      const s = await open(dir);
      t.deepEqual(s.hardState(), { term: 5, vote: 's1', commit: 2 });
      t.is(s.rejoinTerm, 5);
      t.is(s.lastIndex(), 2);
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
