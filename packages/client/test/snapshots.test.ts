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
    t.true(snaps.length >= 1 && snaps.length <= 2, `snapshot files: ${snaps.join(', ')}`);

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
