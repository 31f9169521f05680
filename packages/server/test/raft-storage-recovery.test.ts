/**
 * What a Raft member holds while it recovers: the WAL is read in windows (never a segment file whole, when
 * it is intact), and the snapshot it restarts from is serialised only once its bytes are first asked
 * for, from a frozen view that keeps the bytes of the snapshot's index while the restored state moves on.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test from 'ava';
import type { Entry } from '../src/raft/types.js';
import { nodeFs, type StorageFs } from '../src/storage/fs.js';
import { DiskRaftStorage } from '../src/storage/raft-storage.js';
import { snapshotBytes } from './fixtures/snapshot-bytes.js';
import { PAGE, stateHolding } from './fixtures/workload.js';

const ENTRY_BYTES = 64 * 1024;

function entry(index: number, term: number): Entry {
  return { index, term, type: 'normal', data: Buffer.alloc(ENTRY_BYTES, index % 251) };
}

/** The real file system, noting every file read whole. */
function watchedFs(): { fs: StorageFs; wholeReads: string[] } {
  const wholeReads: string[] = [];
  const fs: StorageFs = {
    ...nodeFs,
    readFile: (path, step) => {
      wholeReads.push(path);
      return nodeFs.readFile(path, step);
    },
  };
  return { fs, wholeReads };
}

function open(dir: string, fs: StorageFs = nodeFs) {
  return DiskRaftStorage.open({
    dir,
    walDir: join(dir, 'wal'),
    fsync: 'always',
    id: 's1',
    initialMembers: ['s1', 's2', 's3'],
    // Several segment files: each entry is 64 KiB.
    walFileBytes: 256 * 1024,
    fs,
  });
}

/** A log of 40 entries over a dozen WAL files, compacted at 6 (the snapshot holds stateHolding(6)). */
async function writeLog(dir: string): Promise<void> {
  const s = await open(dir);
  const entries = Array.from({ length: 30 }, (_, i) => entry(i + 1, 1));
  await s.waitDurable(s.save({ term: 1, vote: 's1', commit: 30 }, entries));
  await s.compact(6, stateHolding(6).freeze());
  await s.waitDurable(
    s.save(
      { term: 1, vote: 's1', commit: 40 },
      Array.from({ length: 10 }, (_, i) => entry(31 + i, 1)),
    ),
  );
  await s.close();
}

test('a reopen reads the intact WAL in windows, never a segment file whole, and gets every entry back', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftrecovery-'));
  try {
    await writeLog(dir);
    const { fs, wholeReads } = watchedFs();
    const s = await open(dir, fs);
    t.deepEqual(
      wholeReads.filter((p) => p.endsWith('.wal')),
      [],
      'no WAL file read whole',
    );
    t.true(s.wal.segmentCount > 3, `${s.wal.segmentCount} WAL files`);
    t.is(s.snapshot().meta.index, 6);
    t.is(s.firstIndex(), 7);
    t.is(s.lastIndex(), 40);
    for (const e of s.entries(7, 41)) t.true(e.data.equals(entry(e.index, 1).data), `entry ${e.index}`);
    t.deepEqual(s.hardState(), { term: 1, vote: 's1', commit: 40 });
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the restored snapshot is serialised in the background once its bytes are first asked for, as they were at its index, and counted the same before', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftrecovery-'));
  try {
    await writeLog(dir);
    const s = await open(dir);
    const expected = stateHolding(6).snapshot();
    const snap = s.snapshot() as { serialised?: boolean; dataBytes?: number };
    t.is(snap.serialised, false, 'not serialised at open');
    const held = s.heldBytes();
    t.is(held, expected.length + 34 * ENTRY_BYTES, 'the budget counts the snapshot at its serialised size');

    // The restored state moves on (a write to the object's middle page): the snapshot's bytes do not.
    const sm = s.takeRestoredState()!;
    sm.apply(5, { op: 'acquire', sessionId: 1, seq: 4, name: 'o', mode: 'write' });
    const data = Buffer.alloc(8);
    data.writeUInt32LE(99, 0);
    const released = sm.apply(6, {
      op: 'release',
      sessionId: 1,
      seq: 5,
      name: 'o',
      mode: 'write',
      token: 2,
      ranges: [[PAGE, 8]],
      data,
    });
    t.true(released.result.ok, 'the write applied');
    t.not(sm.digest(), stateHolding(6).digest());
    const ready = new Promise<void>((resolve) => {
      s.onSnapshotReady = resolve;
    });
    const first = t.throws(() => s.snapshot().data);
    t.true(SegmemError.is(first, 'UNAVAILABLE'), String(first));
    t.regex(String(first?.message), /being serialised for the first follower/);
    await ready;
    t.true(s.snapshot().data.equals(expected), 'the bytes of the snapshot index');
    t.is(snap.serialised, true);
    t.is(s.heldBytes(), held, 'counted the same once serialised');
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a restored snapshot replaced by a compaction before its bytes were read refuses to serialise', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-raftrecovery-'));
  try {
    await writeLog(dir);
    const s = await open(dir);
    const old = s.snapshot();
    await s.compact(20, stateHolding(20).freeze());
    t.is(s.snapshot().meta.index, 20);
    const err = t.throws(() => old.data);
    t.true(SegmemError.is(err, 'UNAVAILABLE'), String(err));
    t.regex(String(err?.message), /snapshot at index 6 was replaced/);
    t.true((await snapshotBytes(s)).equals(stateHolding(20).snapshot()));
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
