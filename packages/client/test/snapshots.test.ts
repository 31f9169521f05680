/**
 * A single segmem-server snapshots its state every --snapshot-every-entries log entries; after a kill -9
 * it restores the newest snapshot and replays only the WAL records after it. On the default file system
 * (ext4 here) every snapshot is written whole (the copy path); with the data directory on XFS, each one
 * after the first is a reflink clone of the one before into which only the changed pages are written.
 * Sessions keep no grants here (delegations: false), so that every cycle reaches the log.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { connect, type Segment } from '../src/index.js';
import { startServerProcess, tempDir, waitFor, withXfs } from './helpers.js';

test('a single server snapshots every N entries and restarts from its newest snapshot after kill -9', async (t) => {
  const dir = tempDir();
  const extra = ['--snapshot-every-entries', '40'];
  let server = await startServerProcess({ dataDir: dir.path, fsync: 'always', extra });
  let seg = await connect({ servers: [server.address], delegations: false });
  try {
    await seg.create('n', 4);
    for (let i = 1; i <= 60; i++) await seg.update('n', (h) => h.bytes.writeUInt32LE(i, 0));
    await waitFor(() => /snapshot at index \d+/.test(server.stderr()), 'a snapshot line on stderr');
    // /tmp is ext4 here: no reflinks, every snapshot is a copy (the second says why the clone failed).
    t.regex(server.stderr(), /snapshot at index \d+: copy(?: \(clone failed: E[A-Z]+\))?, \d+ pages written/);
    await seg.close();
    await server.kill();
    const snaps = readdirSync(join(dir.path, 'snap')).filter((f) => f.endsWith('.snap'));
    // Two are kept; a kill between writing a new one and deleting the oldest leaves three.
    t.true(snaps.length >= 1 && snaps.length <= 3, `snapshot files: ${snaps.join(', ')}`);

    server = await startServerProcess({ dataDir: dir.path, fsync: 'always', extra });
    t.regex(
      server.stderr(),
      /recovery: restored the snapshot at index \d+ \(\d+ bytes\), then \d+ WAL record/,
    );
    seg = await connect({ servers: [server.address], delegations: false });
    t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 60, 'every acknowledged write is there');
    await seg.update('n', (h) => h.bytes.writeUInt32LE(61, 0));
    t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 61);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

/** The snapshot lines of a server's stderr: index, path and pages written. */
function snapshotLines(stderr: string): { index: number; path: string; pages: number }[] {
  return [...stderr.matchAll(/snapshot at index (\d+): (clone|copy)[^,]*, (\d+) pages written/g)].map(
    (m) => ({
      index: Number(m[1]),
      path: m[2]!,
      pages: Number(m[3]),
    }),
  );
}

/** Reads (each a read lock taken and released: two log entries) until `cond` holds, for at most 30 s. */
async function readUntil(seg: Segment, cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await seg.read('o0', (h) => h.bytes[0]);
  }
}

test('a single server on XFS: snapshots after the first are clones writing only the changed pages; kill -9 and restart restore everything', async (t) => {
  await withXfs(t, async (mount) => {
    const dir = tempDir('segmem-xfs-server-', mount);
    const PAGE = 4096;
    const PAGES = 16;
    const extra = ['--snapshot-every-entries', '100'];
    let server = await startServerProcess({ dataDir: dir.path, fsync: 'batch', extra });
    let seg = await connect({ servers: [server.address], delegations: false });
    try {
      const expected = new Map<string, Buffer>();
      for (let i = 0; i < 4; i++) {
        const bytes = randomBytes(PAGES * PAGE);
        await seg.create(`o${i}`, bytes.length);
        await seg.update(`o${i}`, (h) => bytes.copy(h.bytes));
        expected.set(`o${i}`, bytes);
      }
      // The first snapshot (100 entries in) holds the whole fill, written by the copy path.
      await readUntil(seg, () => snapshotLines(server.stderr()).length >= 1, 'the first snapshot');
      t.like(snapshotLines(server.stderr())[0], { path: 'copy', pages: 4 * PAGES });
      // Five pages change after it, each once.
      const changes: [string, number][] = [
        ['o1', 3],
        ['o1', 9],
        ['o2', 0],
        ['o3', 15],
        ['o0', 7],
      ];
      for (const [name, page] of changes) {
        const bytes = randomBytes(64);
        await seg.update(name, (h) => bytes.copy(h.bytes, page * PAGE + 100));
        bytes.copy(expected.get(name)!, page * PAGE + 100);
      }
      // A snapshot that started after the last change: two more lines than when the changes ended.
      const after = snapshotLines(server.stderr()).length;
      await readUntil(seg, () => snapshotLines(server.stderr()).length >= after + 2, 'two more snapshots');
      const later = snapshotLines(server.stderr()).slice(1);
      t.log(
        server
          .stderr()
          .split('\n')
          .filter((l) => l.includes('snapshot at'))
          .join('\n'),
      );
      t.true(
        later.every((l) => l.path === 'clone'),
        'every snapshot after the first is a clone',
      );
      t.is(
        later.reduce((n, l) => n + l.pages, 0),
        changes.length,
        'the clones wrote exactly the changed pages, each once',
      );
      await seg.close();
      await server.kill();

      server = await startServerProcess({ dataDir: dir.path, fsync: 'batch', extra });
      t.regex(server.stderr(), /recovery: restored the snapshot at index \d+ \(\d+ bytes\)/);
      seg = await connect({ servers: [server.address], delegations: false });
      for (const [name, bytes] of expected) {
        t.true(await seg.read(name, (h) => h.bytes.equals(bytes)), `${name} after kill -9 and restart`);
      }
    } finally {
      await seg.close();
      await server.stop();
      dir.cleanup();
    }
  });
});

test('a full disk (injected ENOSPC): the server refuses changes naming the data dir, keeps answering stat, and resumes by itself', async (t) => {
  const dir = tempDir();
  // Writes 12 to 18 of the WAL fail with ENOSPC: the server retries (50 ms doubling), the 8th attempt
  // gets through about 3 s later.
  const env = { SEGMEM_FAIL_AT: 'wal.write:12:7:ENOSPC' };
  let server = await startServerProcess({ dataDir: dir.path, fsync: 'always', env });
  let seg = await connect({ servers: [server.address], delegations: false });
  try {
    await seg.create('x', 4);
    let acked = 0;
    const writes = (async () => {
      for (let i = 1; i <= 10; i++) {
        await seg.update('x', (h) => h.bytes.writeUInt32LE(i, 0));
        acked = i;
      }
    })();
    const stalled = /WAL: cannot write the write-ahead log in (\S+): ENOSPC/;
    const m = await waitFor(() => stalled.exec(server.stderr()), 'the stall on stderr');
    t.is(m[1], join(dir.path, 'wal'), 'the message names the WAL directory');
    // A new change is refused at once, with the reason; what needs no log record is still answered.
    const refused = await t.throwsAsync(seg.create('y', 4));
    t.regex(refused!.message, /cannot write the write-ahead log in .*: ENOSPC/);
    t.is((await seg.stat('x')).size, 4);
    // The write that was in flight waits for the retry and is acknowledged; the rest follow.
    await writes;
    t.is(acked, 10);
    t.regex(server.stderr(), /WAL: writes succeed again/);
    await seg.create('y', 4);
    t.is(await seg.read('x', (h) => h.bytes.readUInt32LE(0)), 10);
    await seg.close();
    await server.stop();
    server = await startServerProcess({ dataDir: dir.path, fsync: 'always' });
    seg = await connect({ servers: [server.address], delegations: false });
    t.is(await seg.read('x', (h) => h.bytes.readUInt32LE(0)), 10, 'nothing acknowledged was lost');
    t.is((await seg.stat('y')).size, 4);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});
