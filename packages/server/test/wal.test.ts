import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { crc32c } from '../src/storage/crc32c.js';
import { nodeFs, type StorageFs } from '../src/storage/fs.js';
import {
  describeRecovery,
  type FsyncPolicy,
  inspectWal,
  segmentFileName,
  WAL_FILE_HEADER_BYTES,
  WAL_RECORD_HEADER_BYTES,
  Wal,
  type WalOptions,
} from '../src/storage/wal.js';

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-wal-test-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

function payloadFor(index: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = (index * 31 + i * 7) & 0xff;
  return b;
}

async function segmentFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).filter((n) => /^\d{20}\.wal$/.test(n)).sort();
}

/** Opens, appends `payloads`, waits until all are durable and closes. */
async function writeLog(opts: WalOptions, payloads: Buffer[]): Promise<void> {
  const { wal } = await Wal.open(opts);
  let last = 0;
  for (const p of payloads) last = wal.append(p);
  await wal.waitDurable(last);
  await wal.close();
}

async function reopen(opts: WalOptions) {
  const r = await Wal.open(opts);
  await r.wal.close();
  return r;
}

/** Waits for `cond` with a bounded deadline (no fixed sleeps). */
async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test('append and reopen round trip across several segment files; indexes continue', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 256 };
  const lens = Array.from({ length: 100 }, (_, i) => (i * 13) % 61);
  const payloads = lens.map((len, i) => payloadFor(i + 1, len));
  {
    const { wal, records, report } = await Wal.open(opts);
    t.deepEqual(records, []);
    t.like(report, { records: 0, firstIndex: 1, lastIndex: 0 });
    t.is(report.truncated, undefined);
    for (let i = 0; i < payloads.length; i++) t.is(wal.append(payloads[i]!), i + 1);
    t.is(wal.lastIndex, 100);
    await wal.waitDurable(100);
    t.is(wal.durableIndex, 100);
    await wal.close();
  }
  const files = await segmentFiles(dir);
  t.true(files.length > 5, `expected several segments, got ${files.length}`);
  t.is(files[0], segmentFileName(1));
  for (const f of files) t.true((await fsp.stat(join(dir, f))).size <= 256 || false);

  const r = await Wal.open(opts);
  t.is(r.records.length, 100);
  r.records.forEach((rec, i) => {
    t.is(rec.index, i + 1);
    t.deepEqual(rec.payload, payloads[i]);
  });
  t.like(r.report, { records: 100, firstIndex: 1, lastIndex: 100, segments: files.length });
  t.is(r.report.truncated, undefined);
  t.is(r.wal.lastIndex, 100);
  t.is(r.wal.durableIndex, 100);
  // Segment names match their first record.
  let expectedFirst = 1;
  for (const f of files) {
    t.is(f, segmentFileName(expectedFirst));
    const buf = await fsp.readFile(join(dir, f));
    let off = WAL_FILE_HEADER_BYTES;
    while (off < buf.length) {
      off += WAL_RECORD_HEADER_BYTES + buf.readUInt32LE(off);
      expectedFirst++;
    }
  }
  t.is(expectedFirst, 101);

  const extra = payloadFor(101, 40);
  t.is(r.wal.append(extra), 101);
  t.is(r.wal.append(payloadFor(102, 0)), 102);
  await r.wal.close();
  const r2 = await reopen(opts);
  t.is(r2.records.length, 102);
  t.deepEqual(r2.records[100]!.payload, extra);
  t.is(r2.records[101]!.payload.length, 0);
});

test('on-disk format: file header and record layout', async (t) => {
  const dir = await tempDir(t);
  await writeLog({ dir, fsync: 'batch' }, [Buffer.from('hello'), Buffer.alloc(0)]);
  const buf = await fsp.readFile(join(dir, '00000000000000000001.wal'));
  t.is(buf.toString('latin1', 0, 8), 'SGMWAL01');
  t.is(buf.readUInt32LE(8), 2);
  t.is(buf.readUInt32LE(12), crc32c(buf.subarray(0, 12)));
  // record 1: length, payload CRC, index, header CRC, payload
  const r1 = 16;
  t.is(buf.readUInt32LE(r1), 5);
  t.is(buf.readUInt32LE(r1 + 4), crc32c(Buffer.from('hello')));
  t.is(buf.readBigUInt64LE(r1 + 8), 1n);
  t.is(buf.readUInt32LE(r1 + 16), crc32c(buf.subarray(r1, r1 + 16)));
  t.is(buf.toString('latin1', r1 + 20, r1 + 25), 'hello');
  // record 2 (empty)
  const r2 = r1 + 25;
  t.is(buf.readUInt32LE(r2), 0);
  t.is(buf.readBigUInt64LE(r2 + 8), 2n);
  t.is(buf.readUInt32LE(r2 + 16), crc32c(buf.subarray(r2, r2 + 16)));
  t.is(buf.length, r2 + 20);
});

test("'always' gives every record its own write and fdatasync", async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'always' });
  const n = 50;
  let last = 0;
  for (let i = 0; i < n; i++) last = wal.append(payloadFor(i, 100));
  const seen: number[] = [];
  wal.onDurable((d) => seen.push(d));
  await wal.waitDurable(last);
  t.is(wal.stats.appends, n);
  t.is(wal.stats.syncs, n);
  t.is(wal.stats.flushes, n);
  t.deepEqual(
    seen,
    Array.from({ length: n }, (_, i) => i + 1),
  );
  await wal.close();
  t.is(wal.stats.syncs, n);
});

test("'batch' syncs only for records somebody waits for; the rest ride along with the next sync", async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'batch' });
  // Records nobody waits for (lock grants, for the log above): written to the OS, not fsynced.
  let last = 0;
  for (let i = 0; i < 10; i++) last = wal.append(payloadFor(i, 50));
  await waitFor(() => wal.stats.flushes > 0, 'the records to be written');
  t.is(wal.stats.syncs, 0, 'no fdatasync for records nobody waits for');
  t.true(wal.durableIndex < last);
  // Waiting for one of them (already written) syncs them all.
  await wal.waitDurable(last);
  t.is(wal.stats.syncs, 1);
  t.is(wal.durableIndex, last);
  // A waited-for record syncs the unsynced ones before it too.
  for (let i = 0; i < 5; i++) wal.append(payloadFor(i, 50));
  const durable = wal.append(payloadFor(99, 50));
  await wal.waitDurable(durable);
  t.is(wal.durableIndex, durable);
  await wal.close();
  t.is((await reopen({ dir, fsync: 'batch' })).records.length, 16);
});

test("'batch' shares one fdatasync among records appended together", async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'batch' });
  const promises: Promise<void>[] = [];
  for (let i = 0; i < 1000; i++) promises.push(wal.waitDurable(wal.append(payloadFor(i, 100))));
  await Promise.all(promises);
  t.is(wal.stats.appends, 1000);
  t.true(wal.stats.syncs <= 5, `syncs: ${wal.stats.syncs}`);
  t.is(wal.stats.syncs, wal.stats.flushes);

  // Records appended while a flush is in flight all go into the next flush.
  const before = { ...wal.stats };
  const first = wal.append(payloadFor(0, 10));
  await waitFor(
    () => wal.stats.bytes > before.bytes || wal.durableIndex >= first,
    'the first flush to write',
  );
  const more: number[] = [];
  for (let i = 0; i < 200; i++) more.push(wal.append(payloadFor(i, 10)));
  await wal.waitDurable(more[more.length - 1]!);
  t.true(wal.stats.flushes - before.flushes <= 2, `flushes: ${wal.stats.flushes - before.flushes}`);
  await wal.close();
  const r = await reopen({ dir, fsync: 'batch' });
  t.is(r.records.length, 1201);
});

test("'none' writes in the background and never syncs", async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'none', segmentBytes: 1024 });
  let last = 0;
  for (let i = 0; i < 300; i++) last = wal.append(payloadFor(i, 50));
  t.is(wal.durableIndex, 0);
  await wal.waitDurable(last);
  t.is(wal.durableIndex, 300);
  t.true(wal.stats.flushes >= 1);
  await wal.close();
  t.is(wal.stats.syncs, 0);
  t.is(wal.stats.dirSyncs, 0);
  t.true((await segmentFiles(dir)).length > 1);
  const r = await reopen({ dir, fsync: 'none' });
  t.is(r.records.length, 300);
});

for (const policy of ['always', 'batch', 'none'] as FsyncPolicy[]) {
  test(`waitDurable resolves in index order after durableIndex advances ('${policy}')`, async (t) => {
    const dir = await tempDir(t);
    const { wal } = await Wal.open({ dir, fsync: policy });
    const resolved: number[] = [];
    const durableSeen: number[] = [];
    wal.onDurable((d) => durableSeen.push(d));
    const waits: Promise<void>[] = [];
    const indexes: number[] = [];
    for (let i = 0; i < 20; i++) indexes.push(wal.append(payloadFor(i, 30)));
    // Register out of order.
    for (const i of [...indexes].reverse()) {
      waits.push(
        wal.waitDurable(i).then(() => {
          t.true(wal.durableIndex >= i);
          resolved.push(i);
        }),
      );
    }
    await Promise.all(waits);
    t.deepEqual(resolved, indexes);
    for (let i = 1; i < durableSeen.length; i++) t.true(durableSeen[i]! > durableSeen[i - 1]!);
    t.is(durableSeen[durableSeen.length - 1], 20);
    // Already durable: resolves at once.
    await wal.waitDurable(5);
    // A future index resolves once it is appended and flushed.
    const future = wal.waitDurable(21);
    wal.append(Buffer.from('x'));
    await future;
    await wal.close();
    await t.throwsAsync(wal.waitDurable(22), { instanceOf: SegmemError, message: /closed/ });
    t.throws(() => wal.append(Buffer.from('y')), { instanceOf: SegmemError, message: /closed/ });
  });
}

test('close flushes pending records; waiters beyond the last index reject with CLOSED', async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'batch' });
  for (let i = 0; i < 10; i++) wal.append(payloadFor(i, 10));
  const beyond = wal.waitDurable(11);
  const pending = wal.waitDurable(10);
  await wal.close();
  await pending;
  const err = await t.throwsAsync(beyond);
  t.true(SegmemError.is(err, 'CLOSED'));
  await wal.close(); // idempotent
  t.is((await reopen({ dir, fsync: 'batch' })).records.length, 10);
});

test('records with empty payloads and gathered payloads', async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'batch' });
  wal.append(Buffer.alloc(0));
  wal.append([]);
  wal.append([Buffer.from('ab'), Buffer.alloc(0), Buffer.from('cde')]);
  wal.append(new Uint8Array([1, 2, 3]));
  await wal.close();
  const r = await reopen({ dir, fsync: 'batch' });
  t.deepEqual(
    r.records.map((x) => [x.index, x.payload.toString('hex')]),
    [
      [1, ''],
      [2, ''],
      [3, Buffer.from('abcde').toString('hex')],
      [4, '010203'],
    ],
  );
});

test('append rejects a payload over maxRecordBytes without using an index', async (t) => {
  const dir = await tempDir(t);
  const { wal } = await Wal.open({ dir, fsync: 'batch', maxRecordBytes: 100 });
  t.throws(() => wal.append(Buffer.alloc(101)), { instanceOf: SegmemError, message: /exceeds/ });
  t.is(wal.append(Buffer.alloc(100)), 1);
  await wal.close();
});

test('invalid options are rejected', async (t) => {
  const dir = await tempDir(t);
  await t.throwsAsync(Wal.open({ dir, fsync: 'sometimes' as FsyncPolicy }), { message: /fsync policy/ });
  await t.throwsAsync(Wal.open({ dir, fsync: 'batch', segmentBytes: 10 }), { message: /segmentBytes/ });
});

// ---------------------------------------------------------------------------------------------------------
// Torn tails

interface Damage {
  name: string;
  /** Damages the single segment file of a 20-record log. */
  apply(file: string, recordOffsets: number[]): Promise<void>;
  records: number;
  reason: RegExp;
}

const tornTails: Damage[] = [
  {
    name: 'truncated last record',
    apply: async (file) => {
      const size = (await fsp.stat(file)).size;
      await fsp.truncate(file, size - 5);
    },
    records: 19,
    reason: /torn record \(incomplete record/,
  },
  {
    name: 'garbage bytes appended',
    apply: (file) => fsp.appendFile(file, Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz!', 'latin1')),
    records: 20,
    reason: /torn record/,
  },
  {
    name: 'zero-filled tail',
    apply: (file) => fsp.appendFile(file, Buffer.alloc(4096)),
    records: 20,
    reason: /^zero-filled tail$/,
  },
  {
    name: 'zeros over the last record',
    apply: async (file, offsets) => {
      const size = (await fsp.stat(file)).size;
      const at = offsets[19]!;
      const h = await fsp.open(file, 'r+');
      await h.write(Buffer.alloc(size - at), 0, size - at, at);
      await h.close();
    },
    records: 19,
    reason: /^zero-filled tail$/,
  },
  {
    // A disk that wrote the later blocks of the last write first: its second half is there, its first is not.
    name: 'last record written out of order (second half on disk, first half zeros)',
    apply: async (file, offsets) => {
      const size = (await fsp.stat(file)).size;
      const at = offsets[19]!;
      const half = Math.floor((size - at) / 2);
      const h = await fsp.open(file, 'r+');
      await h.write(Buffer.alloc(half), 0, half, at);
      await h.close();
    },
    records: 19,
    reason: /torn record \(bad record header checksum\)/,
  },
  {
    name: 'half-written record header',
    apply: async (file) => {
      const h = Buffer.alloc(8);
      h.writeUInt32LE(10, 0);
      h.writeUInt32LE(0xdeadbeef, 4);
      await fsp.appendFile(file, h);
    },
    records: 20,
    reason: /incomplete record header/,
  },
];

for (const damage of tornTails) {
  test(`torn tail: ${damage.name} is truncated and appends continue`, async (t) => {
    const dir = await tempDir(t);
    const opts: WalOptions = { dir, fsync: 'batch' };
    const payloads = Array.from({ length: 20 }, (_, i) => payloadFor(i + 1, 20 + i));
    await writeLog(opts, payloads);
    const file = join(dir, segmentFileName(1));
    const offsets: number[] = [];
    let off = WAL_FILE_HEADER_BYTES;
    for (const p of payloads) {
      offsets.push(off);
      off += WAL_RECORD_HEADER_BYTES + p.length;
    }
    const intactSize = off;
    await damage.apply(file, offsets);
    const damagedSize = (await fsp.stat(file)).size;

    const { wal, records, report } = await Wal.open(opts);
    t.is(records.length, damage.records);
    for (const [i, r] of records.entries()) t.deepEqual(r.payload, payloads[i]);
    t.truthy(report.truncated, 'report.truncated');
    t.regex(report.truncated!.reason, damage.reason);
    t.is(report.truncated!.file, file);
    const cut = damage.records === 20 ? intactSize : offsets[damage.records]!;
    t.is(report.truncated!.offset, cut);
    t.is(report.truncated!.droppedBytes, damagedSize - cut);
    t.is((await fsp.stat(file)).size, cut);
    t.is(wal.lastIndex, damage.records);

    const next = wal.append(Buffer.from('after'));
    t.is(next, damage.records + 1);
    await wal.close();
    const r = await reopen(opts);
    t.is(r.records.length, damage.records + 1);
    t.is(r.records[damage.records]!.payload.toString(), 'after');
    t.is(r.report.truncated, undefined);
  });
}

// A bit flip in the last record, all of whose bytes are on disk, is damage to a record that may have been
// acknowledged, not a torn write: refused like damage in the middle, and cut only with repair.
const lastRecordFlips: {
  name: string;
  byte: (recordOffset: number, fileSize: number) => number;
  reason: RegExp;
}[] = [
  { name: 'in its payload', byte: (_, size) => size - 1, reason: /^bad checksum$/ },
  { name: 'in its length (it seems to run past the end)', byte: (at) => at + 2, reason: /header checksum/ },
  { name: 'in its index', byte: (at) => at + 8, reason: /header checksum/ },
  { name: 'in its payload checksum', byte: (at) => at + 5, reason: /header checksum/ },
  { name: 'in its header checksum', byte: (at) => at + 17, reason: /header checksum/ },
];

for (const flip of lastRecordFlips) {
  test(`damaged last record: a bit flipped ${flip.name} refuses to open, changes nothing; repair cuts it`, async (t) => {
    const dir = await tempDir(t);
    const opts: WalOptions = { dir, fsync: 'batch' };
    const payloads = Array.from({ length: 20 }, (_, i) => payloadFor(i + 1, 20 + i));
    await writeLog(opts, payloads);
    const file = join(dir, segmentFileName(1));
    let last = WAL_FILE_HEADER_BYTES;
    for (const p of payloads.slice(0, 19)) last += WAL_RECORD_HEADER_BYTES + p.length;
    const buf = await fsp.readFile(file);
    buf[flip.byte(last, buf.length)]! ^= 0x40;
    await fsp.writeFile(file, buf);

    const err = await t.throwsAsync(Wal.open(opts), { instanceOf: SegmemError });
    t.is(err.code, 'UNAVAILABLE');
    t.is(err.details?.reason, 'WAL_CORRUPT');
    t.is(err.details?.file, file);
    t.is(err.details?.offset, last);
    t.is(err.details?.firstBadIndex, 20);
    t.is(err.details?.lastRecord, true);
    t.regex(String(err.details?.problem), flip.reason);
    t.regex(err.message, /last record.*damaged.*not a write cut short by a crash/);
    t.deepEqual(await fsp.readFile(file), buf, 'a refused start changes nothing');

    const { wal, records, report } = await Wal.open({ ...opts, repair: true });
    t.is(records.length, 19);
    t.is(report.repaired?.firstDroppedIndex, 20);
    t.is(report.repaired?.droppedRecords, 0);
    t.is(report.truncated, undefined);
    t.is(wal.append(Buffer.from('after')), 20);
    await wal.close();
    const r = await reopen(opts);
    t.is(r.records[19]!.payload.toString(), 'after');
  });
}

test('damaged last record: a torn write of the same record (cut at a sector boundary, or zeroed from one) is still a torn tail', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch' };
  // A last record of 3000 bytes spans several 512-byte sectors.
  const payloads = [payloadFor(1, 100), payloadFor(2, 3000)];
  await writeLog(opts, payloads);
  const file = join(dir, segmentFileName(1));
  const intact = await fsp.readFile(file);
  const at = WAL_FILE_HEADER_BYTES + WAL_RECORD_HEADER_BYTES + 100;
  for (const torn of [
    intact.subarray(0, 1024),
    Buffer.concat([intact.subarray(0, 1536), Buffer.alloc(intact.length - 1536)]),
  ]) {
    await fsp.writeFile(file, torn);
    const { wal, records, report } = await Wal.open(opts);
    t.is(records.length, 1);
    t.is(report.truncated?.offset, at);
    await wal.close();
    await fsp.writeFile(file, intact);
  }
});

/** A log of 10 records of 50 bytes in 200-byte segment files (two records each). */
async function tenRecordsInSmallSegments(t: ExecutionContext) {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 200 };
  await writeLog(
    opts,
    Array.from({ length: 10 }, (_, i) => payloadFor(i + 1, 50)),
  );
  return { dir, opts, files: await segmentFiles(dir) };
}

test('torn tail: an empty or half-written new segment file is removed', async (t) => {
  const { dir, opts, files } = await tenRecordsInSmallSegments(t);
  t.true(files.length >= 3);
  // A roll that crashed right after creating the file / in the middle of its header.
  const empty = join(dir, segmentFileName(11));
  await fsp.writeFile(empty, Buffer.alloc(0));
  let r = await Wal.open(opts);
  t.is(r.records.length, 10);
  t.like(r.report.truncated, { file: empty, offset: 0, droppedBytes: 0 });
  await r.wal.close();
  t.false(fs.existsSync(empty));

  await fsp.writeFile(empty, Buffer.from('SGMWA', 'latin1'));
  r = await Wal.open(opts);
  t.is(r.records.length, 10);
  t.like(r.report.truncated, { file: empty, offset: 0, droppedBytes: 5 });
  t.regex(r.report.truncated!.reason, /incomplete segment header/);
  t.is(r.wal.append(Buffer.from('x')), 11);
  await r.wal.close();
  const again = await reopen(opts);
  t.is(again.records.length, 11);
});

test('torn tail: a preallocated, zero-filled next segment file is removed and reported', async (t) => {
  const { dir, opts, files } = await tenRecordsInSmallSegments(t);
  const zeros = join(dir, segmentFileName(11));
  await fsp.writeFile(zeros, Buffer.alloc(64 * 1024));
  const r = await Wal.open(opts);
  t.is(r.records.length, 10);
  t.like(r.report.truncated, { file: zeros, offset: 0, droppedBytes: 64 * 1024, reason: 'zero-filled tail' });
  t.deepEqual(await segmentFiles(dir), files);
  t.is(r.wal.append(Buffer.from('next')), 11);
  await r.wal.close();
  t.is((await reopen(opts)).records.length, 11);
});

test('torn tail: a torn record in the last segment with an empty next segment', async (t) => {
  const { dir, opts, files } = await tenRecordsInSmallSegments(t);
  const last = join(dir, files[files.length - 1]!);
  const size = (await fsp.stat(last)).size;
  await fsp.truncate(last, size - 3);
  await fsp.writeFile(join(dir, segmentFileName(11)), Buffer.alloc(16));
  const r = await reopen(opts);
  t.is(r.records.length, 9);
  t.truthy(r.report.truncated);
  t.deepEqual(await segmentFiles(dir), files);
});

// ---------------------------------------------------------------------------------------------------------
// Corruption

async function corruptMiddle(t: ExecutionContext, segmentBytes: number) {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes };
  const payloads = Array.from({ length: 30 }, (_, i) => payloadFor(i + 1, 40));
  await writeLog(opts, payloads);
  // Flip a byte in the payload of record 12.
  const files = await segmentFiles(dir);
  let index = 1;
  for (const f of files) {
    const path = join(dir, f);
    const buf = await fsp.readFile(path);
    let off = WAL_FILE_HEADER_BYTES;
    while (off < buf.length) {
      if (index === 12) {
        buf[off + WAL_RECORD_HEADER_BYTES + 3]! ^= 0x01;
        await fsp.writeFile(path, buf);
        return { dir, opts, payloads, file: path, offset: off, fileSize: buf.length };
      }
      off += WAL_RECORD_HEADER_BYTES + buf.readUInt32LE(off);
      index++;
    }
  }
  throw new Error('record 12 not found');
}

for (const segmentBytes of [1 << 20, 300]) {
  const where = segmentBytes === 300 ? 'across segments' : 'in one segment';
  test(`corruption ${where}: a bad record followed by valid ones refuses to open`, async (t) => {
    const c = await corruptMiddle(t, segmentBytes);
    const err = await t.throwsAsync(Wal.open(c.opts));
    t.true(SegmemError.is(err, 'UNAVAILABLE'));
    const e = err as SegmemError;
    t.is(e.details?.reason, 'WAL_CORRUPT');
    t.is(e.details?.file, c.file);
    t.is(e.details?.offset, c.offset);
    t.regex(
      e.message,
      /write-ahead log is corrupt: bad record at .* offset \d+ is followed by valid records/,
    );
    t.regex(e.message, /repair/);
    // Nothing was changed on disk.
    t.is((await fsp.stat(c.file)).size, c.fileSize);
  });

  test(`corruption ${where}: repair truncates at the bad record and reports what was dropped`, async (t) => {
    const c = await corruptMiddle(t, segmentBytes);
    const before = await segmentFiles(c.dir);
    const { wal, records, report } = await Wal.open({ ...c.opts, repair: true });
    t.is(records.length, 11);
    for (const [i, r] of records.entries()) t.deepEqual(r.payload, c.payloads[i]);
    t.truthy(report.repaired);
    t.is(report.repaired!.file, c.file);
    t.is(report.repaired!.offset, c.offset);
    t.is(report.repaired!.droppedRecords, 18); // records 13..30
    t.true(report.repaired!.droppedBytes >= 19 * 56);
    t.is(report.repaired!.firstDroppedIndex, 12);
    t.is(report.repaired!.lastDroppedIndex, 30);
    t.deepEqual(
      report.repaired!.dropped.map((r) => r.index),
      Array.from({ length: 18 }, (_, i) => 13 + i),
    );
    t.regex(
      describeRecovery(report)[0]!,
      /^recovery: repaired WAL: cut .* at offset \d+ \(bad checksum\), dropping WAL records 12\.\.30: the damaged one and 18 intact after it/,
    );
    t.is(report.truncated, undefined);
    const after = await segmentFiles(c.dir);
    t.true(after.length <= before.length);
    t.is(wal.append(Buffer.from('new')), 12);
    await wal.close();
    const r = await reopen(c.opts); // no repair needed any more
    t.is(r.records.length, 12);
    t.is(r.report.repaired, undefined);
  });

  test(`corruption ${where}: inspectWal finds the records before and after the damage, in order, and changes nothing`, async (t) => {
    const c = await corruptMiddle(t, segmentBytes);
    const files = await segmentFiles(c.dir);
    const before = await Promise.all(files.map((f) => fsp.readFile(join(c.dir, f))));
    const seen = await inspectWal(c.dir);
    t.deepEqual(seen.damage, { file: c.file, offset: c.offset, reason: 'bad checksum', index: 12 });
    t.deepEqual(
      seen.records.map((r) => [r.index, r.payload]),
      c.payloads.slice(0, 11).map((p, i) => [i + 1, p]),
    );
    t.deepEqual(
      seen.after.map((r) => [r.index, r.payload]),
      c.payloads.slice(12).map((p, i) => [13 + i, p]),
      'every intact record after the damage, by index, with its payload',
    );
    t.deepEqual(await segmentFiles(c.dir), files);
    for (const [i, f] of files.entries()) t.deepEqual(await fsp.readFile(join(c.dir, f)), before[i]!);
  });
}

test('inspectWal: an intact log has no damage; a torn tail shows as damage with nothing after it', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch' };
  const payloads = Array.from({ length: 5 }, (_, i) => payloadFor(i + 1, 20));
  await writeLog(opts, payloads);
  const intact = await inspectWal(dir);
  t.is(intact.damage, null);
  t.is(intact.records.length, 5);
  t.deepEqual(intact.after, []);
  const file = join(dir, segmentFileName(1));
  const size = (await fsp.stat(file)).size;
  await fsp.truncate(file, size - 3);
  const torn = await inspectWal(dir);
  t.like(torn.damage, { file, index: 5 });
  t.is(torn.records.length, 4);
  t.deepEqual(torn.after, []);
  t.is((await fsp.stat(file)).size, size - 3, 'inspecting cuts nothing');
});

test('corruption: a bad header in a middle segment refuses to open', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 200 };
  await writeLog(
    opts,
    Array.from({ length: 12 }, (_, i) => payloadFor(i + 1, 50)),
  );
  const files = await segmentFiles(dir);
  t.true(files.length >= 3);
  const middle = join(dir, files[1]!);
  const buf = await fsp.readFile(middle);
  buf[2] = 0x58;
  await fsp.writeFile(middle, buf);
  const err = await t.throwsAsync(Wal.open(opts));
  t.true(SegmemError.is(err, 'UNAVAILABLE'));
  t.like((err as SegmemError).details, { reason: 'WAL_CORRUPT', file: middle, offset: 0 });
});

test('corruption: a missing middle segment refuses to open', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 200 };
  await writeLog(
    opts,
    Array.from({ length: 12 }, (_, i) => payloadFor(i + 1, 50)),
  );
  const files = await segmentFiles(dir);
  await fsp.rm(join(dir, files[1]!));
  const err = await t.throwsAsync(Wal.open(opts));
  t.like((err as SegmemError).details, { reason: 'WAL_CORRUPT', file: join(dir, files[2]!), offset: 0 });
});

test('corruption: a duplicated record (valid checksum, wrong index) refuses to open', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch' };
  await writeLog(
    opts,
    Array.from({ length: 10 }, (_, i) => payloadFor(i + 1, 30)),
  );
  const file = join(dir, segmentFileName(1));
  const buf = await fsp.readFile(file);
  const size = WAL_RECORD_HEADER_BYTES + 30;
  const r5 = WAL_FILE_HEADER_BYTES + 4 * size;
  // Record 5 written twice, as a replayed write would.
  await fsp.writeFile(file, Buffer.concat([buf.subarray(0, r5 + size), buf.subarray(r5)]));
  const err = await t.throwsAsync(Wal.open(opts));
  t.like((err as SegmemError).details, { reason: 'WAL_CORRUPT', file, offset: r5 + size });
  t.regex(String((err as SegmemError).details?.problem), /unexpected index 5, expected 6/);
});

test('corruption: a gap of many missing segments before a valid one refuses to open', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch' };
  await writeLog(
    opts,
    Array.from({ length: 5 }, (_, i) => payloadFor(i + 1, 30)),
  );
  // A lone segment far ahead, as if everything in between had been deleted.
  const other = await tempDir(t);
  const { wal } = await Wal.open({ dir: other, fsync: 'batch' });
  for (let i = 1; i <= 2000; i++) wal.append(Buffer.alloc(0));
  await wal.close();
  const buf = await fsp.readFile(join(other, segmentFileName(1)));
  // Keep the file header and the records 1000 and 1001.
  const at = WAL_FILE_HEADER_BYTES + 999 * WAL_RECORD_HEADER_BYTES;
  const far = join(dir, segmentFileName(1000));
  await fsp.writeFile(
    far,
    Buffer.concat([
      buf.subarray(0, WAL_FILE_HEADER_BYTES),
      buf.subarray(at, at + 2 * WAL_RECORD_HEADER_BYTES),
    ]),
  );
  const err = await t.throwsAsync(Wal.open(opts));
  t.like((err as SegmemError).details, { reason: 'WAL_CORRUPT', file: far, offset: 0 });
});

for (const policy of ['batch', 'always'] as FsyncPolicy[]) {
  test(`'${policy}': every written segment is fdatasynced before it is closed or reported durable`, async (t) => {
    const dir = await tempDir(t);
    const dirty = new Set<number>();
    const closedDirty: number[] = [];
    let syncs = 0;
    const { wal } = await Wal.open({
      dir,
      fsync: policy,
      segmentBytes: 300,
      io: {
        writev: (fd, buffers, position) =>
          new Promise((resolve, reject) =>
            fs.writev(fd, buffers, position, (err, n) => {
              if (err) return reject(err);
              dirty.add(fd);
              resolve(n);
            }),
          ),
        fdatasync: (fd) =>
          new Promise((resolve, reject) =>
            fs.fdatasync(fd, (err) => {
              if (err) return reject(err);
              dirty.delete(fd);
              syncs++;
              resolve();
            }),
          ),
        close: (fd) =>
          new Promise((resolve, reject) => {
            if (dirty.has(fd)) closedDirty.push(fd);
            dirty.delete(fd);
            fs.close(fd, (err) => (err ? reject(err) : resolve()));
          }),
      },
    });
    let dirtyAtDurable = 0;
    wal.onDurable(() => {
      if (dirty.size > 0) dirtyAtDurable++;
    });
    const waits: Promise<void>[] = [];
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 20; i++) waits.push(wal.waitDurable(wal.append(payloadFor(i, 25))));
      await waits[waits.length - 1];
    }
    await Promise.all(waits);
    await wal.close();
    t.true((await segmentFiles(dir)).length > 5);
    t.deepEqual(closedDirty, []);
    t.is(dirtyAtDurable, 0);
    t.is(wal.stats.syncs, syncs);
    if (policy === 'always') t.is(syncs, 100);
    else t.true(syncs < 100);
  });
}

// ---------------------------------------------------------------------------------------------------------
// I/O errors

function enospc(): Error {
  return Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
}

/** A writev that, while `failing()` says so, writes half of what it is given and then fails with ENOSPC. */
function fullDisk(failing: () => boolean) {
  return (fd: number, buffers: Uint8Array[], position: number) => {
    if (failing()) {
      const all = Buffer.concat(buffers);
      fs.writeSync(fd, all, 0, all.length >> 1, position);
      return Promise.reject(enospc());
    }
    return new Promise<number>((resolve, reject) =>
      fs.writev(fd, buffers, position, (err, n) => (err ? reject(err) : resolve(n))),
    );
  };
}

test('a full disk stalls the log: appends refused naming the directory and errno, queued records wait, a retry that succeeds resumes', async (t) => {
  const dir = await tempDir(t);
  let failures = 0;
  let opensToFail = 0;
  const stalls: (SegmemError | null)[] = [];
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 200 };
  const { wal } = await Wal.open({
    ...opts,
    onStall: (s) => stalls.push(s),
    io: {
      writev: fullDisk(() => failures-- > 0),
      open: (path, flags) =>
        opensToFail-- > 0
          ? Promise.reject(enospc())
          : new Promise((resolve, reject) =>
              fs.open(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))),
            ),
    },
  });
  for (let i = 1; i <= 5; i++) wal.append(payloadFor(i, 50));
  await wal.waitDurable(5);
  failures = 3;
  opensToFail = 1;
  // Records 6..9 cross a segment boundary: the retry has to redo a half-written record and a file creation.
  const waits = [6, 7, 8, 9].map((i) => wal.waitDurable(wal.append(payloadFor(i, 50))));
  await waitFor(() => wal.stalled !== null, 'the stall');
  const stall = wal.stalled!;
  t.true(SegmemError.is(stall, 'UNAVAILABLE'));
  t.like(stall.details, { reason: 'NO_SPACE', dir, errno: 'ENOSPC' });
  t.regex(stall.message, /^cannot write the write-ahead log in .*: ENOSPC: no space left on device/);
  t.throws(() => wal.append(Buffer.from('refused')), { is: stall });
  t.is(wal.durableIndex, 5);
  await Promise.all(waits);
  t.is(wal.stalled, null);
  t.deepEqual(stalls, [stall, null]);
  t.is(wal.append(payloadFor(10, 50)), 10);
  await wal.close();
  const r = await reopen(opts);
  t.is(r.records.length, 10);
  for (const rec of r.records) t.deepEqual(rec.payload, payloadFor(rec.index, 50));
  t.is(r.report.truncated, undefined, 'the half-written bytes were rewritten in place');
});

test('a log still stalled at close fails: its waiters reject and what was durable stays', async (t) => {
  const dir = await tempDir(t);
  let failWrites = false;
  const { wal } = await Wal.open({ dir, fsync: 'batch', io: { writev: fullDisk(() => failWrites) } });
  for (let i = 0; i < 5; i++) wal.append(payloadFor(i + 1, 10));
  await wal.waitDurable(5);
  failWrites = true;
  const w6 = wal.waitDurable(wal.append(payloadFor(6, 10)));
  await waitFor(() => wal.stalled !== null, 'the stall');
  await t.throwsAsync(wal.close(), { message: /^write-ahead log failed: ENOSPC/ });
  const e6 = await t.throwsAsync(w6);
  t.true(SegmemError.is(e6, 'UNAVAILABLE'));
  t.is((e6 as SegmemError).details?.errno, 'ENOSPC');
  t.is(wal.durableIndex, 5);
  const r = await reopen({ dir, fsync: 'batch' });
  t.is(r.records.length, 5);
});

test('a failing fdatasync fails the log', async (t) => {
  const dir = await tempDir(t);
  const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
  const { wal } = await Wal.open({ dir, fsync: 'always', io: { fdatasync: () => Promise.reject(eio) } });
  const i = wal.append(Buffer.from('x'));
  const err = await t.throwsAsync(wal.waitDurable(i));
  t.true(SegmemError.is(err, 'UNAVAILABLE'));
  t.is(err?.message, 'write-ahead log failed: EIO: i/o error, fdatasync');
  t.is(wal.durableIndex, 0);
  await t.throwsAsync(wal.close());
});

test('a real ENOSPC from the kernel (segment redirected to /dev/full) stalls the log', async (t) => {
  if (!fs.existsSync('/dev/full')) {
    t.pass('no /dev/full on this system');
    return;
  }
  const dir = await tempDir(t);
  const { wal } = await Wal.open({
    dir,
    fsync: 'batch',
    io: {
      open: (_path, _flags) =>
        new Promise((resolve, reject) =>
          fs.open('/dev/full', 'w', (err, fd) => (err ? reject(err) : resolve(fd))),
        ),
    },
  });
  const lost = wal.waitDurable(wal.append(Buffer.from('lost')));
  await waitFor(() => wal.stalled !== null, 'the stall');
  t.regex(wal.stalled!.message, /ENOSPC/);
  t.is(wal.stalled!.details?.reason, 'NO_SPACE');
  await t.throwsAsync(wal.close());
  await t.throwsAsync(lost, { message: /^write-ahead log failed: ENOSPC/ });
});

// ---------------------------------------------------------------------------------------------------------
// Prefix truncation

test('truncatePrefix deletes whole segments below an index, never the active one', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 200 };
  const { wal } = await Wal.open(opts);
  for (let i = 1; i <= 30; i++) wal.append(payloadFor(i, 50)); // 66 bytes each: 2 per segment
  await wal.waitDurable(30);
  const files = await segmentFiles(dir);
  t.is(files.length, 15);
  t.is(wal.segmentCount, 15);
  t.is(wal.firstIndex, 1);

  t.is(await wal.truncatePrefix(1), 0);
  t.is(await wal.truncatePrefix(2), 0); // segment 1-2 still holds 2
  t.is(await wal.truncatePrefix(3), 1); // segment 1-2 is entirely below 3
  t.is(wal.firstIndex, 3);
  t.is(await wal.truncatePrefix(10), 3); // 3-4, 5-6, 7-8; 9-10 holds 9
  t.is(wal.firstIndex, 9);
  t.deepEqual(await segmentFiles(dir), files.slice(4));
  t.is(await wal.truncatePrefix(1_000_000), 10); // all but the active segment (29-30)
  t.deepEqual(await segmentFiles(dir), [segmentFileName(29)]);
  t.is(wal.firstIndex, 29);
  t.is(wal.append(payloadFor(31, 50)), 31);
  await wal.close();

  const r = await reopen(opts);
  t.deepEqual(
    r.records.map((x) => x.index),
    [29, 30, 31],
  );
  t.like(r.report, { records: 3, firstIndex: 29, lastIndex: 31 });
  t.deepEqual(r.records[0]!.payload, payloadFor(29, 50));
});

// ---------------------------------------------------------------------------------------------------------
// Crash-point property

test('property: damage limited to the tail always recovers exactly a prefix', async (t) => {
  const root = await tempDir(t);
  let run = 0;
  const crash = fc.oneof(
    // `at` picks the damage offset as `at % (total + 1)` (fast-check biases doubles towards 0 and 1).
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(), later: fc.boolean() }),
    fc.record({ kind: fc.constant('zero' as const), at: fc.nat(), extra: fc.nat(64) }),
  );
  await fc.assert(
    fc.asyncProperty(
      // Records up to 700 bytes, so sector boundaries fall inside them.
      fc.array(fc.uint8Array({ maxLength: 700 }), { maxLength: 30 }),
      fc.integer({ min: 64, max: 3000 }),
      crash,
      async (payloads, segmentBytes, damage) => {
        const dir = join(root, String(run++));
        const opts: WalOptions = { dir, fsync: 'none', segmentBytes };
        await writeLog(
          opts,
          payloads.map((p) => Buffer.from(p)),
        );
        // Lay the files end to end and find where each record ends.
        const files = await segmentFiles(dir);
        const sizes: number[] = [];
        for (const f of files) sizes.push((await fsp.stat(join(dir, f))).size);
        const ends: number[] = [];
        let base = 0;
        let index = 1;
        for (let k = 0; k < files.length; k++) {
          const nextFirst = k + 1 < files.length ? Number(files[k + 1]!.slice(0, 20)) : payloads.length + 1;
          let off = WAL_FILE_HEADER_BYTES;
          for (; index < nextFirst; index++) {
            off += WAL_RECORD_HEADER_BYTES + payloads[index - 1]!.length;
            ends.push(base + off);
          }
          base += sizes[k]!;
        }
        const total = base;
        let at = damage.at % (total + 1);
        if (damage.kind === 'zero') {
          // A torn write zeroes whole sectors: the zeros start at a 512-byte boundary of their file.
          let fileStart = 0;
          for (const size of sizes) {
            if (at < fileStart + size) {
              at = Math.min(fileStart + size, fileStart + Math.ceil((at - fileStart) / 512) * 512);
              break;
            }
            fileStart += size;
          }
        }
        // Apply the damage from global offset `at` to the end.
        let start = 0;
        for (let k = 0; k < files.length; k++) {
          const path = join(dir, files[k]!);
          const size = sizes[k]!;
          const local = Math.max(0, at - start);
          if (local < size) {
            if (damage.kind === 'truncate') {
              if (local === 0 && damage.later && start > 0) await fsp.rm(path);
              else await fsp.truncate(path, local);
            } else {
              const h = await fsp.open(path, 'r+');
              await h.write(
                Buffer.alloc(size - local + (k === files.length - 1 ? damage.extra : 0)),
                0,
                undefined,
                local,
              );
              await h.close();
            }
          }
          start += size;
        }

        const intact = ends.filter((e) => e <= at).length;
        const { wal, records, report } = await Wal.open(opts);
        if (damage.kind === 'truncate') {
          if (records.length !== intact)
            throw new Error(`recovered ${records.length} records, expected ${intact}`);
        } else if (records.length < intact || records.length > payloads.length) {
          throw new Error(`recovered ${records.length} records, expected ${intact}..${payloads.length}`);
        }
        records.forEach((r, i) => {
          if (r.index !== i + 1 || !r.payload.equals(payloads[i]!))
            throw new Error(`record ${i + 1} differs`);
        });
        if (report.repaired) throw new Error('tail damage must not need repair');
        // The damaged bytes are gone from the disk: what is left is exactly the recovered records.
        const remaining = await segmentFiles(dir);
        if (remaining.length > 0 && remaining[0] !== segmentFileName(1))
          throw new Error(`first segment ${remaining[0]}`);
        for (let k = 0; k < remaining.length; k++) {
          const first = Number(remaining[k]!.slice(0, 20));
          const end = k + 1 < remaining.length ? Number(remaining[k + 1]!.slice(0, 20)) : records.length + 1;
          let expectedBytes = WAL_FILE_HEADER_BYTES;
          for (let i = first; i < end; i++)
            expectedBytes += WAL_RECORD_HEADER_BYTES + payloads[i - 1]!.length;
          const size = (await fsp.stat(join(dir, remaining[k]!))).size;
          if (size !== expectedBytes) {
            throw new Error(`${remaining[k]} has ${size} bytes after recovery, expected ${expectedBytes}`);
          }
        }
        // Appends continue right after the recovered prefix, and survive another reopen.
        const next = wal.append(Buffer.from('next'));
        if (next !== records.length + 1) throw new Error(`next index ${next}`);
        await wal.close();
        const again = await reopen(opts);
        if (again.records.length !== records.length + 1 || again.report.truncated) {
          throw new Error('reopen after recovery differs');
        }
        await fsp.rm(dir, { recursive: true, force: true });
      },
    ),
    { numRuns: 200 },
  );
  t.pass();
});

test('appends survive random payloads (sanity for gathered writes and rolls)', async (t) => {
  const dir = await tempDir(t);
  const opts: WalOptions = { dir, fsync: 'batch', segmentBytes: 4096 };
  const { wal } = await Wal.open(opts);
  const payloads: Buffer[] = [];
  for (let i = 0; i < 500; i++) {
    const p = randomBytes(i % 300);
    payloads.push(p);
    wal.append(i % 3 === 0 ? [p.subarray(0, 7), p.subarray(7)] : p);
  }
  await wal.close();
  const r = await reopen(opts);
  t.is(r.records.length, 500);
  for (const [i, rec] of r.records.entries()) t.true(rec.payload.equals(payloads[i]!));
});

// ---------------------------------------------------------------------------------------------------------
// A lost or unreadable log

/** Options for a log in `<root>/wal` with its started marker beside it, as a data directory has them. */
function markedLog(root: string): WalOptions {
  return { dir: join(root, 'wal'), fsync: 'batch', startedMarker: join(root, 'wal-started') };
}

test('a log that held records and was deleted or cut to nothing is refused as missing, changing nothing; repair starts it empty', async (t) => {
  for (const loss of [
    'deleted directory',
    'deleted file',
    'file cut to 0 bytes',
    'file cut inside its header',
  ]) {
    const root = await tempDir(t);
    const opts = markedLog(root);
    await writeLog(opts, [Buffer.from('one'), Buffer.from('two')]);
    t.true(fs.existsSync(opts.startedMarker!), 'the marker exists once a record is durable');
    const file = join(opts.dir, segmentFileName(1));
    if (loss === 'deleted directory') await fsp.rm(opts.dir, { recursive: true });
    else if (loss === 'deleted file') await fsp.rm(file);
    else await fsp.truncate(file, loss === 'file cut to 0 bytes' ? 0 : 9);
    const before = fs.existsSync(file) ? await fsp.readFile(file) : null;

    const err = await t.throwsAsync(Wal.open(opts), { instanceOf: SegmemError }, loss);
    t.is(err.code, 'UNAVAILABLE');
    t.is(err.details?.reason, 'WAL_MISSING');
    t.regex(err.message, /write-ahead log is missing: .*wal-started says it held acknowledged records/);
    t.false(err.message.includes('\n'));
    t.deepEqual(fs.existsSync(file) ? await fsp.readFile(file) : null, before, `${loss}: nothing changed`);

    const { wal, records } = await Wal.open({ ...opts, repair: true });
    t.is(records.length, 0);
    await wal.close();
    // The log started empty is a new one: it opens without repair until it holds a record again.
    t.is((await reopen(opts)).records.length, 0, `${loss}: a start after the repair`);
    await writeLog(opts, [Buffer.from('three')]);
    t.true(fs.existsSync(opts.startedMarker!));
  }
});

test('a new log, or one opened and closed without a record, starts empty; a marker is added to a log that predates it', async (t) => {
  const root = await tempDir(t);
  const opts = markedLog(root);
  await (await Wal.open(opts)).wal.close();
  t.false(fs.existsSync(opts.startedMarker!), 'no marker without a durable record');
  const { wal, records } = await Wal.open(opts);
  t.is(records.length, 0);
  await wal.close();

  // A log written without the marker (an older data directory) gets one when opened with it.
  const old = await tempDir(t);
  await writeLog({ dir: join(old, 'wal'), fsync: 'batch' }, [Buffer.from('one')]);
  const withMarker = markedLog(old);
  t.false(fs.existsSync(withMarker.startedMarker!));
  await reopen(withMarker);
  t.true(fs.existsSync(withMarker.startedMarker!));
  await fsp.rm(withMarker.dir, { recursive: true });
  await t.throwsAsync(Wal.open(withMarker), { message: /write-ahead log is missing/ });

  // A snapshot that covers the records makes an empty log fine (the caller restores from it).
  const covered = await reopen({ ...withMarker, coveredIndex: 5 });
  t.is(covered.wal.lastIndex, 5);
});

test('an unreadable WAL file gives a typed one-line error naming the file and errno', async (t) => {
  const dir = await tempDir(t);
  await writeLog({ dir, fsync: 'batch' }, [Buffer.from('one')]);
  const file = join(dir, segmentFileName(1));
  const denied = (path: string) =>
    Object.assign(new Error(`EACCES: permission denied, open '${path}'`), { code: 'EACCES', errno: -13 });
  // Tests may run as root, which chmod cannot deny: the file system seam refuses instead.
  const deniedFs: StorageFs = {
    ...nodeFs,
    readFile: async (path) => {
      if (path === file) throw denied(path);
      return nodeFs.readFile(path);
    },
  };
  const err = await t.throwsAsync(Wal.open({ dir, fsync: 'batch', fs: deniedFs }), {
    instanceOf: SegmemError,
  });
  t.is(err.code, 'UNAVAILABLE');
  t.like(err.details, { reason: 'WAL_UNREADABLE', file, errno: 'EACCES' });
  t.is(
    err.message,
    `cannot read write-ahead log file ${file}: EACCES (permission denied: check its owner and mode)`,
  );

  // A real one: a directory where a segment file should be.
  const other = await tempDir(t);
  await fsp.mkdir(join(other, segmentFileName(1)));
  const eisdir = await t.throwsAsync(Wal.open({ dir: other, fsync: 'batch' }), { instanceOf: SegmemError });
  t.like(eisdir.details, { reason: 'WAL_UNREADABLE', errno: 'EISDIR' });
});

// ---------------------------------------------------------------------------------------------------------
// Format version 1

/** A version 1 segment file, as the version 1 writer laid it out: 16-byte record headers, one CRC. */
function v1Segment(records: { index: number; payload: Buffer }[]): Buffer {
  const header = Buffer.alloc(16);
  header.write('SGMWAL01', 0, 'latin1');
  header.writeUInt32LE(1, 8);
  header.writeUInt32LE(crc32c(header.subarray(0, 12)), 12);
  const parts: Buffer[] = [header];
  for (const r of records) {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(r.payload.length, 0);
    h.writeBigUInt64LE(BigInt(r.index), 8);
    h.writeUInt32LE(crc32c(Buffer.concat([h.subarray(0, 4), h.subarray(8, 16), r.payload])), 4);
    parts.push(h, r.payload);
  }
  return Buffer.concat(parts);
}

test('format version 1 segments are still read; appends go to a new version 2 segment', async (t) => {
  const dir = await tempDir(t);
  const old = [1, 2, 3].map((index) => ({ index, payload: payloadFor(index, 30 + index) }));
  await fsp.writeFile(join(dir, segmentFileName(1)), v1Segment(old));
  const { wal, records, report } = await Wal.open({ dir, fsync: 'batch' });
  t.deepEqual(
    records.map((r) => [r.index, r.payload]),
    old.map((r) => [r.index, r.payload]),
  );
  t.is(report.truncated, undefined);
  await wal.waitDurable(wal.append(Buffer.from('four')));
  await wal.close();
  t.deepEqual(await segmentFiles(dir), [segmentFileName(1), segmentFileName(4)]);
  t.is((await fsp.readFile(join(dir, segmentFileName(4)))).readUInt32LE(8), 2);
  const again = await reopen({ dir, fsync: 'batch' });
  t.deepEqual(
    again.records.map((r) => r.index),
    [1, 2, 3, 4],
  );
  t.is(again.records[3]!.payload.toString(), 'four');

  // A bad last record in a version 1 segment has no header checksum to judge by: still a torn tail.
  const torn = await tempDir(t);
  const bytes = v1Segment(old);
  bytes[bytes.length - 1]! ^= 0x40;
  await fsp.writeFile(join(torn, segmentFileName(1)), bytes);
  const r = await reopen({ dir: torn, fsync: 'batch' });
  t.is(r.records.length, 2);
  t.regex(r.report.truncated!.reason, /torn record \(bad checksum\)/);
});
