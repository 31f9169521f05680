/**
 * A client that lost its write lock (its session expired while the process stalled) must never show the bytes
 * the group discarded, to any task of the process or to anyone else, and must never build a later write on them.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { connect, type Segment } from '../src/index.js';
import { fixturesDir, runNode, startServerProcess, tempDir, withCluster } from './helpers.js';

const NAME = 'lost/obj';
const SIZE = 3 * 4096 + 100; // several pages, the last one partial
const BYTE_AT = 5000;
const SESSION_TIMEOUT_MS = 1000;

function committedPattern(): Buffer {
  const b = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i++) b[i] = (i % 199) + 1; // never 0xee, the discarded write's byte
  return b;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function lostWriteScenario(t: ExecutionContext, servers: string[], seg: Segment): Promise<void> {
  const committed = committedPattern();
  await seg.create(NAME, SIZE);
  await seg.update(NAME, (h) => {
    committed.copy(h.bytes);
  });
  const before = await seg.stat(NAME);

  type Report = {
    release: string;
    reads: { label: string; sha?: string; discarded?: number; error?: string }[];
  };
  let report: Report | undefined;
  let otherProcess: Promise<{ bytes: Buffer; version: number }> | undefined;
  const child = runNode(
    join(fixturesDir, 'lost-write.mjs'),
    [servers.join(','), NAME, String(SESSION_TIMEOUT_MS), String(BYTE_AT)],
    {
      timeoutMs: 60_000,
      onLine: (line, proc) => {
        if (!line.startsWith('{')) return;
        report = JSON.parse(line) as Report;
        // Another process reads while the stalled one waits, then lets it write its one byte.
        otherProcess = seg.read(NAME, (h) => ({ bytes: Buffer.from(h.bytes), version: h.version }));
        otherProcess.finally(() => proc.kill('SIGUSR2')).catch(() => {});
      },
    },
  );
  const { code, stdout, stderr } = await child.done;
  t.is(code, 0, stderr);
  t.true(stdout.includes('done'), stdout);
  t.truthy(report, stdout);
  t.is(report!.release, 'LOCK_LOST', 'the stalled writer lost its lock');
  t.true(report!.reads.length > 0);
  for (const r of report!.reads) {
    t.is(r.error, undefined, `read "${r.label}" failed: ${r.error}`);
    t.is(r.discarded, 0, `read "${r.label}" saw ${r.discarded} bytes of the discarded write`);
    t.is(r.sha, sha(committed), `read "${r.label}" saw bytes nobody committed`);
  }
  const other = await otherProcess!;
  t.true(other.bytes.equals(committed), 'another process reads the committed bytes');
  t.is(other.version, before.version, 'the discarded write made no version');
  // The later valid write of one byte commits exactly the committed bytes plus that byte.
  const expected = Buffer.from(committed);
  expected[BYTE_AT] = expected[BYTE_AT]! ^ 0xff;
  const after = await seg.read(NAME, (h) => ({ bytes: Buffer.from(h.bytes), version: h.version }));
  const wrong = [...after.bytes].filter((b, i) => b !== expected[i]).length;
  t.is(wrong, 0, `${wrong} bytes differ from the committed bytes plus the one byte written`);
  t.is(after.version, before.version + 1);
}

test.serial('one server: a lost write lock never shows or ships the discarded bytes', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'batch' });
  try {
    const seg = await connect({ servers: [server.address] });
    try {
      await lostWriteScenario(t, [server.address], seg);
    } finally {
      await seg.close();
    }
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test.serial('three servers: a lost write lock never shows or ships the discarded bytes', async (t) => {
  await withCluster({}, async ({ cluster, seg }) => {
    await lostWriteScenario(t, cluster.addresses, seg);
  });
});

test.serial('a write through a lost write handle crashes loudly when page rights are in force', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'batch' });
  try {
    const seg = await connect({ servers: [server.address] });
    try {
      await seg.create(NAME, SIZE);
      const r = await runNode(
        join(fixturesDir, 'lost-write.mjs'),
        [server.address, NAME, String(SESSION_TIMEOUT_MS), String(BYTE_AT), 'stray'],
        { timeoutMs: 60_000 },
      ).done;
      const report = JSON.parse(r.stdout.split('\n')[0]!) as { release: string; protectedPages: boolean };
      t.is(report.release, 'LOCK_LOST');
      if (!report.protectedPages) {
        t.is(r.code, 5, 'without page rights the stray write goes unnoticed by the process');
        t.log('the native addon is not loaded: no page rights to test');
        return;
      }
      t.is(r.signal, 'SIGABRT', `exit ${r.code}, stdout: ${r.stdout} stderr: ${r.stderr}`);
      t.regex(r.stderr, /segmem: illegal access at address 0x[0-9a-f]+/);
      // The store still has the zeros it had: nothing of the stray write or the discarded one arrived.
      const bytes = await seg.read(NAME, (h) => Buffer.from(h.bytes));
      t.true(bytes.equals(Buffer.alloc(SIZE)));
    } finally {
      await seg.close();
    }
  } finally {
    await server.stop();
    dir.cleanup();
  }
});
