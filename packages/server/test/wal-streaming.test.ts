/**
 * Recovery that hands each WAL record over as it is read (`onRecord`): a restart holds one segment file
 * at a time beside the state, not the whole log.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { nodeFs, type StorageFs } from '../src/storage/fs.js';
import { Wal, type WalOptions, type WalRecord } from '../src/storage/wal.js';

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-wal-stream-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

function payloadFor(index: number): Buffer {
  return Buffer.alloc(1200, index & 0xff);
}

/** 30 records of 1200 bytes in files of at most 4 KiB: 10 segment files of 3 records. */
async function writeTen(dir: string): Promise<WalOptions> {
  const opts: WalOptions = { dir, fsync: 'none', segmentBytes: 4096 };
  const { wal } = await Wal.open(opts);
  let last = 0;
  for (let i = 1; i <= 30; i++) last = wal.append(payloadFor(i));
  await wal.waitDurable(last);
  await wal.close();
  return opts;
}

/** The real file system, counting the segment files opened for reading so far and whole-file reads. */
function countingReads(): { fs: StorageFs; filesRead: () => number; wholeFiles: () => number } {
  let n = 0;
  let whole = 0;
  const fs: StorageFs = {
    ...nodeFs,
    open: (path, flags, step) => {
      if (path.endsWith('.wal') && flags === 'r') n++;
      return nodeFs.open(path, flags, step);
    },
    readFile: (path) => {
      if (path.endsWith('.wal')) whole++;
      return nodeFs.readFile(path);
    },
  };
  return { fs, filesRead: () => n, wholeFiles: () => whole };
}

test('onRecord gets every record in order, each before the next segment file is read, and open returns none', async (t) => {
  const opts = await writeTen(await tempDir(t));
  const { fs, filesRead, wholeFiles } = countingReads();
  const seen: { index: number; ok: boolean; filesRead: number }[] = [];
  const opened = await Wal.open({
    ...opts,
    fs,
    onRecord: (r: WalRecord) =>
      seen.push({ index: r.index, ok: r.payload.equals(payloadFor(r.index)), filesRead: filesRead() }),
  });
  await opened.wal.close();
  t.deepEqual(
    seen.map((s) => s.index),
    Array.from({ length: 30 }, (_, i) => i + 1),
  );
  t.true(seen.every((s) => s.ok));
  t.is(filesRead(), 10);
  t.is(wholeFiles(), 0, 'read in windows, never a whole file at once');
  // Records of file k (3 a file) arrive while only files 1..k were read.
  t.deepEqual(
    seen.map((s) => s.filesRead),
    Array.from({ length: 30 }, (_, i) => Math.floor(i / 3) + 1),
  );
  t.deepEqual(opened.records, []);
  t.like(opened.report, { records: 30, firstIndex: 1, lastIndex: 30 });
  t.is(opened.wal.lastIndex, 30);
});

test('onRecord with a snapshot covering the start gets only the later records; appends continue after them', async (t) => {
  const opts = await writeTen(await tempDir(t));
  const seen: number[] = [];
  const opened = await Wal.open({ ...opts, coveredIndex: 20, onRecord: (r) => seen.push(r.index) });
  t.deepEqual(seen, [21, 22, 23, 24, 25, 26, 27, 28, 29, 30]);
  t.like(opened.report, { records: 10, firstIndex: 21, lastIndex: 30 });
  const next = opened.wal.append(payloadFor(31));
  t.is(next, 31);
  await opened.wal.waitDurable(next);
  await opened.wal.close();
  const again = await Wal.open(opts);
  await again.wal.close();
  t.is(again.records.length, 31);
});

test('onRecord and a torn tail: the records before it are handed over, the tail is cut and reported', async (t) => {
  const dir = await tempDir(t);
  const opts = await writeTen(dir);
  const last = (await fsp.readdir(dir)).filter((n) => n.endsWith('.wal')).sort()[9]!;
  const size = (await fsp.stat(join(dir, last))).size;
  await fsp.truncate(join(dir, last), size - 100);
  const seen: number[] = [];
  const opened = await Wal.open({ ...opts, onRecord: (r) => seen.push(r.index) });
  await opened.wal.close();
  t.is(seen.length, 29);
  t.is(seen.at(-1), 29);
  t.like(opened.report, { records: 29, lastIndex: 29 });
  t.truthy(opened.report.truncated);
});

test('onRecord and records larger than a read window: each is read whole, in order', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'none' };
  const sizes = [10, 5 * 1024 * 1024, 20, 9 * 1024 * 1024 + 3, 30];
  const { wal } = await Wal.open(opts);
  let last = 0;
  for (const [i, n] of sizes.entries()) last = wal.append(Buffer.alloc(n, i + 1));
  await wal.waitDurable(last);
  await wal.close();
  const seen: number[] = [];
  const opened = await Wal.open({
    ...opts,
    onRecord: (r) => {
      t.true(r.payload.equals(Buffer.alloc(sizes[r.index - 1]!, r.index)), `record ${r.index}`);
      seen.push(r.index);
    },
  });
  await opened.wal.close();
  t.deepEqual(seen, [1, 2, 3, 4, 5]);
});
