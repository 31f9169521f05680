/**
 * Shared logs: many real processes append to one log; every record arrives exactly once, in one order
 * all readers see, with each writer's order kept; batches are atomic under SIGKILL; a follower reads
 * across a leader failover without gaps or duplicates; truncation, retention and bad input.
 */
import { join } from 'node:path';
import test from 'ava';
import { connect, openEmbedded, SegmemError } from '../src/index.js';
import {
  converged,
  fixturesDir,
  runNode,
  segmemBin,
  startServerProcess,
  TestCluster,
  tempDir,
  waitFor,
} from './helpers.js';

const writerScript = join(fixturesDir, 'log-writer.mjs');

/** Every record of `name` from the start, as text. */
async function readAll(servers: string[], name: string): Promise<{ seq: number; text: string }[]> {
  const seg = await connect({ servers });
  try {
    const out: { seq: number; text: string }[] = [];
    for await (const r of seg.log(name).read({ from: 0 })) out.push({ seq: r.seq, text: r.data.toString() });
    return out;
  } finally {
    await seg.close();
  }
}

/** "acked <n> <seq>" lines of a writer's output. */
function acks(stdout: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of stdout.matchAll(/^acked (\S+) (\d+)$/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

test('records appended concurrently by 4 processes arrive exactly once, in one order, each writer in its order', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  try {
    const perWriter = 300;
    const writers = ['w0', 'w1', 'w2', 'w3'].map((w) =>
      runNode(writerScript, [server.address, 'events', w, String(perWriter), 'single', '16'], {
        timeoutMs: 60_000,
      }),
    );
    const results = await Promise.all(writers.map((w) => w.done));
    for (const r of results) t.is(r.code, 0, r.stderr);

    const records = await readAll([server.address], 'events');
    t.is(records.length, 4 * perWriter);
    t.deepEqual(
      records.map((r) => r.seq),
      [...records.keys()],
      'sequence numbers start at 0 and are contiguous',
    );
    const seen = new Set<string>();
    for (const r of records) {
      t.false(seen.has(r.text), `record "${r.text}" appears twice`);
      seen.add(r.text);
    }
    // Each acknowledgement names the seq where its record is: the order every reader sees.
    for (const [i, r] of results.entries()) {
      const acked = acks(r.stdout);
      t.is(acked.size, perWriter);
      for (const [n, seq] of acked)
        t.is(records[seq]!.text, `w${i} ${n}`, 'the acknowledged seq holds the record');
    }
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test('one process appending in turn keeps its order; a reader sees the same order as the acknowledgements', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  try {
    const writers = ['a', 'b'].map((w) =>
      runNode(writerScript, [server.address, 'ordered', w, '200', 'single', '1'], { timeoutMs: 60_000 }),
    );
    const results = await Promise.all(writers.map((w) => w.done));
    for (const r of results) t.is(r.code, 0, r.stderr);
    const records = await readAll([server.address], 'ordered');
    for (const w of ['a', 'b']) {
      const mine = records.filter((r) => r.text.startsWith(`${w} `)).map((r) => Number(r.text.split(' ')[1]));
      t.deepEqual(
        mine,
        Array.from({ length: 200 }, (_, i) => i),
      );
    }
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test('a writer killed with SIGKILL mid-batch leaves each batch whole or absent', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  try {
    const batchSize = 2000;
    const killed: Map<string, number>[] = [];
    // Kill three writers at different points: after 1, 2 and 4 acknowledged batches, while the next
    // ~1 MiB batch is on its way.
    for (const [w, killAfter] of [
      ['k1', 1],
      ['k2', 2],
      ['k3', 4],
    ] as const) {
      let acked = 0;
      const run = runNode(writerScript, [server.address, 'batches', w, '50', `batch:${batchSize}:512`], {
        timeoutMs: 60_000,
        onLine: (line, proc) => {
          if (line.startsWith('acked ') && ++acked === killAfter) proc.kill('SIGKILL');
        },
      });
      const r = await run.done;
      t.is(r.signal, 'SIGKILL', `writer ${w} was killed mid-run (exit ${r.code}: ${r.stderr})`);
      killed.push(acks(r.stdout));
    }
    const records = await readAll([server.address], 'batches');
    t.deepEqual(
      records.map((r) => r.seq),
      [...records.keys()],
    );
    // Group by batch tag "<writer> b<k>": each group must be contiguous, complete and in order.
    const groups = new Map<string, { start: number; items: number[] }>();
    records.forEach((r, i) => {
      const [writer, batch, item] = r.text.split(' ');
      const key = `${writer} ${batch}`;
      let g = groups.get(key);
      if (!g) {
        g = { start: i, items: [] };
        groups.set(key, g);
      }
      t.is(i, g.start + g.items.length, `batch ${key} is contiguous`);
      g.items.push(Number(item));
    });
    for (const [key, g] of groups) {
      t.is(g.items.length, batchSize, `batch ${key} is whole`);
      t.true(
        g.items.every((v, i) => v === i),
        `batch ${key} is in order`,
      );
    }
    for (const [i, acked] of killed.entries()) {
      for (const [batch, seq] of acked) {
        t.true(groups.has(`k${i + 1} ${batch}`), `acknowledged batch k${i + 1} ${batch} is there`);
        t.is(groups.get(`k${i + 1} ${batch}`)!.start, seq);
      }
    }
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test('a follower reads across a leader failover without gaps or duplicates; appends stay exactly-once', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path);
  const reader = await connect({ servers: cluster.addresses, sessionTimeoutMs: 5000 });
  const ac = new AbortController();
  try {
    const total = 1500;
    const got: { seq: number; text: string }[] = [];
    await reader.log('stream').append('start');
    const following = (async () => {
      try {
        for await (const r of reader.log('stream').read({ from: 0, follow: true, signal: ac.signal }))
          got.push({ seq: r.seq, text: r.data.toString() });
      } catch (err) {
        if (!SegmemError.is(err, 'ABORTED')) throw err;
      }
    })();
    const writer = runNode(
      writerScript,
      [cluster.addresses.join(','), 'stream', 'w', String(total), 'single', '8'],
      {
        timeoutMs: 90_000,
      },
    );
    await waitFor(() => got.length >= 300, 'the follower to read 300 records', 30_000);
    const leader = await waitFor(() => cluster.leader(), 'a leader');
    await cluster.kill(leader.id);
    const w = await writer.done;
    t.is(w.code, 0, w.stderr);
    const acked = acks(w.stdout);
    t.is(acked.size, total);
    await waitFor(() => got.length >= total + 1, `the follower to reach ${total + 1} records`, 30_000);
    ac.abort();
    await following;

    t.deepEqual(
      got.map((r) => r.seq),
      [...got.keys()],
      'no gap, no duplicate in what the follower read',
    );
    t.is(got[0]!.text, 'start');
    const texts = new Set(got.map((r) => r.text));
    t.is(texts.size, got.length, 'no record appended twice after the failover');
    for (const [n, seq] of acked) t.is(got[seq]?.text, `w ${n}`);
    await cluster.startMember(leader.id);
    await converged(cluster);
  } finally {
    ac.abort();
    await reader.close().catch(() => {});
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('truncation and retention: old records go, readers asking for them get NOT_FOUND with the first kept', async (t) => {
  const dir = tempDir();
  let seg = await openEmbedded({ dir: dir.path });
  try {
    const log = seg.log('trunc');
    await log.appendBatch(Array.from({ length: 10 }, (_, i) => `r${i}`));
    t.deepEqual(await log.info(), { first: 0, next: 10, bytes: 20 });
    t.is(await log.truncateBefore(4), 4);
    t.is(await log.truncateBefore(2), 4, 'truncating below the first kept record changes nothing');
    const err = await t.throwsAsync(async () => {
      for await (const _ of log.read({ from: 3 })) t.fail('no record before 4 may be read');
    });
    t.true(SegmemError.is(err, 'NOT_FOUND'), String(err));
    t.is((err as SegmemError).details?.first, 4);
    const rest: string[] = [];
    for await (const r of log.read()) rest.push(`${r.seq}:${r.data}`);
    t.deepEqual(rest, ['4:r4', '5:r5', '6:r6', '7:r7', '8:r8', '9:r9']);
    const past = await t.throwsAsync(log.truncateBefore(11));
    t.true(SegmemError.is(past, 'INVALID_ARGUMENT'), String(past));

    // Retention: a log created with maxBytes keeps at most that many bytes of records (oldest dropped).
    const capped = seg.log('capped', { maxBytes: 1000 });
    for (let i = 0; i < 30; i++) await capped.append(Buffer.alloc(100, i));
    t.deepEqual(await capped.info(), { first: 20, next: 30, bytes: 1000 });

    // Both survive a reopen (they are in the replicated state, rebuilt from the WAL).
    await seg.close();
    seg = await openEmbedded({ dir: dir.path });
    t.deepEqual(await seg.log('trunc').info(), { first: 4, next: 10, bytes: 12 });
    t.deepEqual(await seg.log('capped').info(), { first: 20, next: 30, bytes: 1000 });
    const first: number[] = [];
    for await (const r of seg.log('capped').read()) first.push(r.data[0]!);
    t.deepEqual(
      first,
      Array.from({ length: 10 }, (_, i) => 20 + i),
    );
  } finally {
    await seg.close();
    dir.cleanup();
  }
});

test('bad input gets a typed error and changes nothing', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  const seg = await connect({ servers: [server.address] });
  try {
    const log = seg.log('checked');
    await log.append('one');
    const code = async (p: Promise<unknown> | (() => unknown), expected: string) => {
      const err = typeof p === 'function' ? t.throws(p) : await t.throwsAsync(p);
      t.true(SegmemError.is(err, expected as SegmemError['code']), `${expected}: ${err}`);
    };
    await code(log.append(Buffer.alloc(1024 * 1024 + 1)), 'INVALID_ARGUMENT');
    await code(log.appendBatch([]), 'INVALID_ARGUMENT');
    await code(
      log.appendBatch(Array.from({ length: 9 }, () => Buffer.alloc(1024 * 1024))),
      'INVALID_ARGUMENT',
    );
    await code(log.appendBatch(['ok', 42 as unknown as string]), 'INVALID_ARGUMENT');
    await code(() => seg.log(''), 'INVALID_ARGUMENT');
    await code(() => seg.log('a\0b'), 'INVALID_ARGUMENT');
    await code(() => seg.log('x'.repeat(256)), 'INVALID_ARGUMENT');
    await code(() => seg.log('ok', { maxBytes: 0 }), 'INVALID_ARGUMENT');
    await code(() => log.read({ from: -1 }), 'INVALID_ARGUMENT');
    await code(
      (async () => {
        for await (const _ of seg.log('never-appended').read()) t.fail();
      })(),
      'NOT_FOUND',
    );
    await code(
      (async () => {
        for await (const _ of log.read({ from: 5 })) t.fail();
      })(),
      'INVALID_ARGUMENT',
    );
    await seg.create('plain', 16);
    await code(seg.log('plain').append('x'), 'INVALID_ARGUMENT');
    await code(seg.create('checked', 16), 'ALREADY_EXISTS');
    // Nothing of the refused calls reached the log.
    t.deepEqual(await log.info(), { first: 0, next: 1, bytes: 3 });
    // A log can be deleted like an object; its name is then free.
    await seg.delete('checked');
    await code(log.info(), 'NOT_FOUND');
    t.is(await seg.log('checked').append('again'), 0);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('segmem log tail prints the records, and --follow prints new ones as they come', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  const seg = await connect({ servers: [server.address] });
  try {
    await seg.log('cli').appendBatch(['first', 'two\nlines', '']);
    const all = await runNode(segmemBin, ['log', 'tail', 'cli', '--servers', server.address]).done;
    t.is(all.code, 0, all.stderr);
    t.is(all.stdout, '0 first\n1 two\\nlines\n2 \n');
    const json = await runNode(segmemBin, [
      'log',
      'tail',
      'cli',
      '--json',
      '--from',
      '1',
      '--servers',
      server.address,
    ]).done;
    t.deepEqual(
      json.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l)),
      [
        { seq: 1, data: Buffer.from('two\nlines').toString('base64') },
        { seq: 2, data: '' },
      ],
    );
    const missing = await runNode(segmemBin, ['log', 'tail', 'nope', '--servers', server.address]).done;
    t.is(missing.code, 1);
    t.regex(missing.stderr, /no shared log named "nope"/);

    const lines: string[] = [];
    const follow = runNode(
      segmemBin,
      ['log', 'tail', 'cli', '--follow', '--from', '3', '--servers', server.address],
      {
        onLine: (line) => lines.push(line),
      },
    );
    // Appended while the tail waits on the server: pushed to it, printed at once.
    await waitFor(
      async () => (await seg.log('cli').append(`late ${lines.length}`)) >= 0 && lines.length > 0,
      'a line',
    );
    follow.proc.kill('SIGINT');
    const r = await follow.done;
    t.is(r.code, 0, r.stderr);
    t.regex(lines[0]!, /^3 late 0$/);
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('follow on a log that does not exist yet waits for its first record, and ends cleanly when aborted', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  const reader = await connect({ servers: [server.address] });
  const writer = await connect({ servers: [server.address] });
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    const ac = new AbortController();
    const got: string[] = [];
    const following = (async () => {
      for await (const r of reader.log('later').read({ follow: true, signal: ac.signal })) {
        got.push(r.data.toString());
        if (got.length === 2) return;
      }
    })();
    // Still waiting, not failed, after a while with no log.
    const early = await Promise.race([
      following.then(
        () => 'ended',
        (e: Error) => e,
      ),
      Promise.resolve('waiting'),
    ]);
    t.is(early, 'waiting');
    await reader.stat('later').catch(() => {}); // a round trip: the read is at the server by now
    await writer.log('later').append('first');
    await writer.log('later').append('second');
    await following;
    t.deepEqual(got, ['first', 'second']);

    // Aborting a follow on a missing log ends it with ABORTED, handled by the caller.
    const abortable = (async () => {
      for await (const _ of reader.log('never').read({ follow: true, signal: ac.signal })) t.fail();
    })();
    ac.abort();
    await t.throwsAsync(abortable, { instanceOf: SegmemError, code: 'ABORTED' });
    // Without follow a missing log is still NOT_FOUND.
    await t.throwsAsync(
      (async () => {
        for await (const _ of reader.log('never').read()) t.fail();
      })(),
      { code: 'NOT_FOUND' },
    );
    t.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
    await reader.close();
    await writer.close();
    await server.stop();
    dir.cleanup();
  }
});
