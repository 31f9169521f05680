/**
 * Durability across server crashes, and the WAL recovery rule: a torn tail is a crash (truncate and
 * say so), a bad record followed by good ones is corruption (refuse to start, unless told to repair).
 */
import { appendFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { connect, SegmemError, type Segment } from '../src/index.js';
import {
  fixturesDir,
  freePort,
  runNode,
  type ServerProcess,
  serverBin,
  startServerProcess,
  tempDir,
  waitFor,
} from './helpers.js';

/** A stopped server's data directory holding object "x" written five times (x = 5), under fsync "always". */
async function writeFiveVersions(dataDir: string): Promise<void> {
  const server = await startServerProcess({ dataDir, fsync: 'always' });
  const seg = await connect({ servers: [server.address] });
  await seg.create('x', 4);
  for (let i = 1; i <= 5; i++) await seg.update('x', (h) => h.bytes.writeUInt32LE(i, 0));
  await seg.close();
  await server.stop();
}

function walFiles(dataDir: string): string[] {
  return readdirSync(join(dataDir, 'wal'))
    .filter((f) => f.endsWith('.wal'))
    .sort()
    .map((f) => join(dataDir, 'wal', f));
}

test('every acknowledged write survives kill -9 of the server under load, and clients carry on', async (t) => {
  const dir = tempDir();
  const listen = `127.0.0.1:${await freePort()}`;
  let server = await startServerProcess({ dataDir: dir.path, listen, fsync: 'batch' });
  const seg = await connect({ servers: [server.address], sessionTimeoutMs: 2000 });
  try {
    for (const name of ['c0', 'c1', 'c2']) await seg.create(name, 4);
    // Three client processes increment their own counter as fast as they can.
    const acked = new Map<string, number>();
    const children = ['c0', 'c1', 'c2'].map((name) =>
      runNode(join(fixturesDir, 'increment.mjs'), [server.address, name, '100000'], {
        timeoutMs: 180_000,
        onLine: (line) => {
          const m = /^ack (\d+)$/.exec(line);
          if (m) acked.set(name, Number(m[1]));
        },
      }),
    );
    // Three node processes start and connect first: many seconds on a loaded machine.
    await waitFor(
      () => [...acked.values()].every((v) => v >= 30) && acked.size === 3,
      'some acknowledged increments',
      90_000,
    );
    await server.kill(); // SIGKILL: no clean shutdown
    server = await startServerProcess({ dataDir: dir.path, listen, fsync: 'batch' });
    // The restart ended every session: each child's increment in flight fails with LOCK_LOST and it exits.
    for (const c of children) {
      const exit = await c.done;
      t.not(exit.code, 0, 'a child whose session ended stops with an error');
    }
    const lastAcked = new Map(acked);
    // The first client reconnects by itself: its old session ended with the restart, so it gets a new one.
    const values = await waitFor(
      async () => {
        try {
          const out = new Map<string, number>();
          for (const name of lastAcked.keys())
            out.set(name, await seg.read(name, (h) => h.bytes.readUInt32LE(0)));
          return out;
        } catch (err) {
          if (SegmemError.is(err) && (err.code === 'LOCK_LOST' || err.code === 'UNAVAILABLE'))
            return undefined;
          throw err;
        }
      },
      'reads after restart',
      20_000,
    );
    for (const [name, ack] of lastAcked) {
      const v = values.get(name)!;
      // Each client had at most one increment in flight when the server died: it may or may not have committed.
      t.true(v === ack || v === ack + 1, `${name}: acknowledged ${ack}, recovered ${v}`);
    }
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('a clean restart recovers every write, versions and free space', async (t) => {
  const dir = tempDir();
  let server = await startServerProcess({ dataDir: dir.path, fsync: 'always' });
  let seg = await connect({ servers: [server.address] });
  await seg.create('a', 10_000);
  await seg.create('gone', 4096);
  await seg.update('a', (h) => h.bytes.fill(7, 5000, 6000));
  await seg.delete('gone');
  await seg.close();
  t.is(await server.stop(), 0, 'SIGTERM exits 0');
  server = await startServerProcess({ dataDir: dir.path, fsync: 'always' });
  seg = await connect({ servers: [server.address] });
  try {
    const info = await seg.stat('a');
    t.is(info.version, 2);
    t.deepEqual(
      (await seg.list()).map((o) => o.name),
      ['a'],
    );
    const bytes = await seg.read('a', (h) => Buffer.from(h.bytes));
    t.is(bytes[4999], 0);
    t.is(bytes[5000], 7);
    t.is(bytes[5999], 7);
    t.is(bytes[6000], 0);
    const c = await seg.create('c', 4096);
    t.is(c.address, 3 * 4096, "the deleted object's pages are free again after recovery");
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('a torn WAL tail is truncated at restart, reported, and nothing before it is lost', async (t) => {
  const dir = tempDir();
  await writeFiveVersions(dir.path);
  let server: ServerProcess;
  let seg: Segment;
  const files = walFiles(dir.path);
  const last = files[files.length - 1]!;
  // A crash in the middle of a write: the start of a record header and a few payload bytes.
  appendFileSync(last, Buffer.from([40, 0, 0, 0, 1, 2, 3, 4, 9, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb]));
  server = await startServerProcess({ dataDir: dir.path, fsync: 'always' });
  seg = await connect({ servers: [server.address] });
  try {
    t.is(await seg.read('x', (h) => h.bytes.readUInt32LE(0)), 5);
    await waitFor(() => /truncated torn WAL tail/.test(server.stderr()), 'the recovery report on stderr');
    t.regex(server.stderr(), new RegExp(`${last.split('/').pop()}|offset`));
    await seg.update('x', (h) => h.bytes.writeUInt32LE(6, 0));
    t.is(await seg.read('x', (h) => h.bytes.readUInt32LE(0)), 6, 'the WAL keeps working after truncation');
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('a corrupt WAL record followed by valid ones stops the server with the file and offset; --repair truncates there', async (t) => {
  const dir = tempDir();
  await writeFiveVersions(dir.path);
  let server: ServerProcess;
  let seg: Segment;
  const [first] = walFiles(dir.path);
  const bytes = readFileSync(first!);
  // Flip one payload byte of the first record (file header 16 bytes, record header 20 bytes).
  bytes[16 + 20 + 2]! ^= 0xff;
  writeFileSync(first!, bytes);
  const refused = runNode(serverBin, ['--id', 's1', '--listen', '127.0.0.1:0', '--data', dir.path]);
  const exit = await refused.done;
  t.is(exit.code, 1, 'the server refuses to start');
  t.regex(exit.stderr, /corrupt/);
  t.true(exit.stderr.includes(first!.split('/').pop()!), `names the file: ${exit.stderr}`);
  t.regex(exit.stderr, /offset 16\b/, 'and the offset of the bad record');
  t.false(exit.stdout.includes('ready'));
  t.deepEqual(readFileSync(first!), bytes, 'refusing to start changes nothing on disk');
  server = await startServerProcess({ dataDir: dir.path, fsync: 'always', extra: ['--repair'] });
  try {
    t.regex(
      server.stderr(),
      /repaired WAL: cut .* at offset 16 \(bad checksum\), dropping WAL records 1\.\./,
    );
    t.regex(
      server.stderr(),
      /the changes the repair dropped wrote to object "x", besides whatever the damaged record held/,
      'it names what the dropped changes wrote, for the operator to check',
    );
    seg = await connect({ servers: [server.address] });
    t.deepEqual(await seg.list(), [], 'everything from the corrupt record on was dropped, as asked');
    await seg.close();
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test('a deleted WAL stops the server with one line naming what is missing, not an empty start', async (t) => {
  const dir = tempDir();
  try {
    await writeFiveVersions(dir.path);
    rmSync(join(dir.path, 'wal'), { recursive: true });
    const exit = await runNode(serverBin, ['--id', 's1', '--listen', '127.0.0.1:0', '--data', dir.path]).done;
    t.is(exit.code, 1, 'the server refuses to start');
    t.false(exit.stdout.includes('ready'));
    const lines = exit.stderr.trim().split('\n');
    t.is(lines.length, 1, exit.stderr);
    t.regex(
      lines[0]!,
      /^segmem-server: write-ahead log is missing: .*wal holds no segment file, but .*wal-started says/,
    );
    t.false(existsSync(join(dir.path, 'wal', '00000000000000000001.wal')), 'nothing was created');
  } finally {
    dir.cleanup();
  }
});

test('a bit flipped in the last WAL record (an acknowledged write) stops the server; it is not cut as a torn tail', async (t) => {
  const dir = tempDir();
  try {
    await writeFiveVersions(dir.path);
    const files = walFiles(dir.path);
    const last = files[files.length - 1]!;
    const bytes = readFileSync(last);
    bytes[bytes.length - 1]! ^= 0x01;
    writeFileSync(last, bytes);
    const exit = await runNode(serverBin, ['--id', 's1', '--listen', '127.0.0.1:0', '--data', dir.path]).done;
    t.is(exit.code, 1, 'the server refuses to start');
    t.regex(
      exit.stderr,
      /write-ahead log is corrupt: the last record, at .* offset \d+, is damaged \(bad checksum\)/,
    );
    t.deepEqual(readFileSync(last), bytes, 'refusing to start changes nothing on disk');
  } finally {
    dir.cleanup();
  }
});

test('a data directory that is not writable, or belongs to another cluster, is refused clearly', async (t) => {
  const dir = tempDir();
  try {
    writeFileSync(join(dir.path, 'plain-file'), 'x');
    const notDir = await runNode(serverBin, [
      '--id',
      's1',
      '--listen',
      '127.0.0.1:0',
      '--data',
      join(dir.path, 'plain-file', 'sub'),
    ]).done;
    t.is(notDir.code, 1);
    t.regex(notDir.stderr, /data directory .*plain-file/);
    const data = join(dir.path, 'data');
    const server = await startServerProcess({ dataDir: data });
    await server.stop();
    const config = join(dir.path, 'segmem.json');
    writeFileSync(config, JSON.stringify({ clusterId: 'another-cluster', servers: { s1: '127.0.0.1:0' } }));
    const other = await runNode(serverBin, ['--config', config, '--id', 's1', '--data', data]).done;
    t.is(other.code, 1);
    t.regex(other.stderr, /belongs to cluster .* not another-cluster|another-cluster/);
    const badFsync = await runNode(serverBin, [
      '--id',
      's1',
      '--listen',
      '127.0.0.1:0',
      '--data',
      data,
      '--fsync',
      'sometimes',
    ]).done;
    t.is(badFsync.code, 1);
    t.regex(badFsync.stderr, /fsync must be one of always, batch, none/);
  } finally {
    dir.cleanup();
  }
});
