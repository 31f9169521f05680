/**
 * A single segmem-server snapshots its state every --snapshot-every-entries log entries; after a kill -9
 * it restores the newest snapshot and replays only the WAL records after it.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { connect } from '../src/index.js';
import { startServerProcess, tempDir, waitFor } from './helpers.js';

test('a single server snapshots every N entries and restarts from its newest snapshot after kill -9', async (t) => {
  const dir = tempDir();
  const extra = ['--snapshot-every-entries', '40'];
  let server = await startServerProcess({ dataDir: dir.path, fsync: 'always', extra });
  let seg = await connect({ servers: [server.address] });
  try {
    await seg.create('n', 4);
    for (let i = 1; i <= 60; i++) await seg.update('n', (h) => h.bytes.writeUInt32LE(i, 0));
    await waitFor(() => /snapshot at index \d+/.test(server.stderr()), 'a snapshot line on stderr');
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
    seg = await connect({ servers: [server.address] });
    t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 60, 'every acknowledged write is there');
    await seg.update('n', (h) => h.bytes.writeUInt32LE(61, 0));
    t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 61);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('a full disk (injected ENOSPC): the server refuses changes naming the data dir, keeps answering stat, and resumes by itself', async (t) => {
  const dir = tempDir();
  // Writes 12 to 18 of the WAL fail with ENOSPC: the server retries (50 ms doubling), the 8th attempt
  // gets through about 3 s later.
  const env = { SEGMEM_FAIL_AT: 'wal.write:12:7:ENOSPC' };
  let server = await startServerProcess({ dataDir: dir.path, fsync: 'always', env });
  let seg = await connect({ servers: [server.address] });
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
    seg = await connect({ servers: [server.address] });
    t.is(await seg.read('x', (h) => h.bytes.readUInt32LE(0)), 10, 'nothing acknowledged was lost');
    t.is((await seg.stat('y')).size, 4);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});
