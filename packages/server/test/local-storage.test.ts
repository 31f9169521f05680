/**
 * A single member's storage: snapshots cut the WAL, recovery starts from the newest good snapshot and
 * rolls the WAL forward, falls back to the previous snapshot when the newest is damaged or missing, and
 * refuses clearly when the WAL no longer reaches back far enough.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import { DataDir } from '../src/storage/datadir.js';
import { LocalStorage, type LocalStorageOptions } from '../src/storage/local-storage.js';
import { snapshotFileName } from '../src/storage/snapshot-file.js';
import { segmentFileName } from '../src/storage/wal.js';
import { stateHolding } from './fixtures/workload.js';

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-local-storage-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

function options(dir: string): LocalStorageOptions {
  // 64-byte records (20 header + 44 payload), 4 to a 272-byte WAL file (16-byte file header).
  return { dir, walDir: join(dir, 'wal'), fsync: 'batch', walFileBytes: 272 };
}

const payload = (i: number) => Buffer.from(`record ${String(i).padStart(37, '0')}`);
/** A frozen state standing for "the state after record i". */
const state = (i: number) => stateHolding(i).freeze();
const digestOf = (i: number) => stateHolding(i).digest();

async function append(storage: LocalStorage, from: number, to: number): Promise<void> {
  for (let i = from; i <= to; i++) {
    const index = storage.wal.append(payload(i));
    if (index !== i) throw new Error(`appended ${i} at ${index}`);
  }
  await storage.wal.waitDurable(to);
}

async function walFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(join(dir, 'wal'))).sort();
}

async function snapFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(join(dir, 'snap'))).sort();
}

const snapName = (index: number) => snapshotFileName({ index, term: 0 });

/** A directory with records 1..100 and snapshots at 40 and 80 (so the WAL is cut behind 40). */
async function twoSnapshots(t: ExecutionContext): Promise<string> {
  const dir = await tempDir(t);
  const { storage } = await LocalStorage.open(options(dir));
  await append(storage, 1, 40);
  await storage.saveSnapshot(40, state(40));
  await append(storage, 41, 80);
  await storage.saveSnapshot(80, state(80));
  await append(storage, 81, 100);
  await storage.close();
  return dir;
}

test('snapshots keep the two newest and cut the WAL behind the older one; recovery replays only what follows', async (t) => {
  const dir = await tempDir(t);
  let { storage, state: restored, records } = await LocalStorage.open(options(dir));
  t.is(restored, null);
  t.deepEqual(records, []);
  await append(storage, 1, 40);
  t.is((await walFiles(dir)).length, 10);
  await storage.saveSnapshot(40, state(40));
  t.deepEqual(await snapFiles(dir), [snapName(40)]);
  t.is(
    (await walFiles(dir)).length,
    10,
    'one snapshot: the WAL stays whole, for a fallback to replaying it all',
  );
  await append(storage, 41, 80);
  await storage.saveSnapshot(80, state(80));
  t.deepEqual(await snapFiles(dir), [snapName(40), snapName(80)]);
  t.is((await walFiles(dir))[0], segmentFileName(41), 'files holding only records up to 40 are gone');
  await append(storage, 81, 120);
  await storage.saveSnapshot(120, state(120));
  t.deepEqual(await snapFiles(dir), [snapName(80), snapName(120)]);
  t.is((await walFiles(dir))[0], segmentFileName(81));
  t.is(storage.wal.firstIndex, 81);
  await append(storage, 121, 130);
  await storage.close();

  const reopened = await LocalStorage.open(options(dir));
  ({ storage, state: restored, records } = reopened);
  t.is(restored?.digest(), digestOf(120));
  t.deepEqual(
    records.map((r) => r.index),
    Array.from({ length: 10 }, (_, i) => 121 + i),
  );
  t.deepEqual(records[0]!.payload, payload(121));
  t.like(reopened.report, { snapshot: { index: 120 }, damagedSnapshots: [] });
  t.is(storage.wal.append(payload(131)), 131);
  await storage.close();
});

/** Flips a bit of the byte at `at` (negative: from the end). */
async function flip(file: string, at: number): Promise<void> {
  const b = await fsp.readFile(file);
  b[at < 0 ? b.length + at : at]! ^= 0x20;
  await fsp.writeFile(file, b);
}

// A page file of stateHolding(): header at 0, page image at 4096 (object "o" at segment page 0, its
// page 1 present), metadata at the end.
for (const [what, damage, why] of [
  ['damaged (a flipped byte in the header)', (file: string) => flip(file, 14), /header checksum mismatch/],
  [
    'damaged (a flipped byte in a page)',
    (file: string) => flip(file, 4096 + 4096 + 3),
    /checksum mismatch in page 1 of object 1 \(segment page 1\)/,
  ],
  ['damaged (a flipped byte in the metadata)', (file: string) => flip(file, -10), /metadata checksum/],
  ['partial (cut short)', async (file: string) => fsp.truncate(file, 20), /cut short/],
  ['partial (cut in the metadata)', async (file: string) => fsp.truncate(file, 64 * 4096), /bytes long/],
  ['missing', async (file: string) => fsp.rm(file), null],
] as const) {
  test(`a ${what} newest snapshot: recovery falls back to the previous one and rolls the WAL forward from it`, async (t) => {
    const dir = await twoSnapshots(t);
    await damage(join(dir, 'snap', snapName(80)));
    const { storage, state: restored, records, report } = await LocalStorage.open(options(dir));
    t.is(restored?.digest(), digestOf(40));
    t.is(records[0]!.index, 41);
    t.is(records[records.length - 1]!.index, 100);
    if (what === 'missing') t.deepEqual(report.damagedSnapshots, []);
    else {
      t.is(report.damagedSnapshots.length, 1);
      t.regex(report.damagedSnapshots[0]!.problem, /snapshot file .*80\.snap is damaged/);
      t.regex(report.damagedSnapshots[0]!.problem, why!);
    }
    // The next snapshot replaces the damaged file; the good one it fell back to stays.
    await storage.saveSnapshot(100, state(100));
    t.deepEqual(await snapFiles(dir), [snapName(40), snapName(100)]);
    await storage.close();
  });
}

test('bytes of the page image no present page covers are never read: damage there changes nothing', async (t) => {
  const dir = await twoSnapshots(t);
  // Page 0 of "o" was never written: a hole in the file, not read back.
  await flip(join(dir, 'snap', snapName(80)), 4096 + 10);
  const { storage, state: restored, report } = await LocalStorage.open(options(dir));
  t.is(restored?.digest(), digestOf(80));
  t.deepEqual(report.damagedSnapshots, []);
  await storage.close();
});

test('both snapshots unusable and the WAL cut: recovery refuses, naming the damage and the gap', async (t) => {
  const dir = await twoSnapshots(t);
  await fsp.truncate(join(dir, 'snap', snapName(80)), 30);
  await fsp.rm(join(dir, 'snap', snapName(40)));
  const err = await t.throwsAsync(LocalStorage.open(options(dir)));
  t.true(SegmemError.is(err, 'UNAVAILABLE'));
  t.is((err as SegmemError).details?.reason, 'SNAPSHOT_CORRUPT');
  t.regex(err!.message, /80\.snap is damaged/);
  t.regex(err!.message, /write-ahead log starts at index 41/);
  t.deepEqual(await snapFiles(dir), [snapName(80)], 'refusing changes nothing');
});

test('no snapshot at all but a WAL cut behind one: recovery refuses with SNAPSHOT_MISSING', async (t) => {
  const dir = await twoSnapshots(t);
  for (const f of await snapFiles(dir)) await fsp.rm(join(dir, 'snap', f));
  const err = await t.throwsAsync(LocalStorage.open(options(dir)));
  t.is((err as SegmemError).details?.reason, 'SNAPSHOT_MISSING');
  t.regex(err!.message, /starts at index 41, but .*snap holds no snapshot/);
});

test('a WAL that ends before the snapshot (its tail lost) is replaced by a new one after the snapshot', async (t) => {
  const dir = await twoSnapshots(t);
  // Lose every WAL file after the one holding record 80, as an OS crash under fsync "none" could.
  const files = await walFiles(dir);
  for (const f of files.filter((f) => Number(f.slice(0, 20)) > 77)) await fsp.rm(join(dir, 'wal', f));
  await fsp.truncate(join(dir, 'wal', segmentFileName(77)), 16 + 64); // only record 77 left
  const { storage, state: restored, records, report } = await LocalStorage.open(options(dir));
  t.is(restored?.digest(), digestOf(80));
  t.deepEqual(records, []);
  t.like(report.wal.discarded, { lastIndex: 77, coveredIndex: 80 });
  t.is(storage.wal.lastIndex, 80);
  await append(storage, 81, 85);
  await storage.close();
  const again = await LocalStorage.open(options(dir));
  t.deepEqual(
    again.records.map((r) => r.index),
    [81, 82, 83, 84, 85],
  );
  await again.storage.close();
});

test('WAL files a snapshot covers are skipped whatever state a crash left them in', async (t) => {
  const dir = await twoSnapshots(t);
  // A truncation behind the snapshot at 40 that a crash interrupted, deleting a later file before an earlier one.
  const { storage } = await LocalStorage.open(options(dir));
  await storage.close();
  const files = await walFiles(dir);
  t.is(files[0], segmentFileName(41));
  // Put back a stale file before it with garbage, and remove nothing else: it is covered, never read.
  await fsp.writeFile(join(dir, 'wal', segmentFileName(1)), Buffer.from('not a segment'));
  const { storage: s2, records } = await LocalStorage.open(options(dir));
  t.is(records[0]!.index, 81);
  await s2.saveSnapshot(100, state(100));
  t.false((await walFiles(dir)).includes(segmentFileName(1)), 'the next cut deletes it');
  await s2.close();
});

test('the data directory removes temporary files of interrupted writes and reports unexpected files', async (t) => {
  const dir = await tempDir(t);
  const opts = { dir, serverId: 's1', pageBytes: 4096, segmentBytes: 1 << 20 };
  await (await DataDir.open(opts)).close();
  await fsp.mkdir(join(dir, 'snap'));
  await fsp.writeFile(join(dir, 'snap', `.${snapName(5)}.tmp-123-0badc0de`), 'half a snapshot');
  await fsp.writeFile(join(dir, '.meta.json.tmp-9-00112233'), '{');
  await fsp.writeFile(join(dir, 'notes.txt'), 'mine');
  await fsp.writeFile(join(dir, 'wal', 'backup.wal.bak'), 'x');
  const d = await DataDir.open(opts);
  t.deepEqual(d.warnings, [
    `data directory: removed ${join(dir, '.meta.json.tmp-9-00112233')}, left by a write that a crash interrupted`,
    `data directory: ignoring unexpected file ${join(dir, 'notes.txt')}`,
    `data directory: ignoring unexpected file ${join(dir, 'wal', 'backup.wal.bak')}`,
    `data directory: removed ${join(dir, 'snap', `.${snapName(5)}.tmp-123-0badc0de`)}, left by a write that a crash interrupted`,
  ]);
  await d.close();
  t.deepEqual(await snapFiles(dir), []);
  t.true((await fsp.readdir(dir)).includes('notes.txt'), "the operator's file is left alone");
});
