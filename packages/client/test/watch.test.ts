/**
 * Segment.watch and `segmem watch`, against real servers: a watcher that never caches the object hears every
 * committed change another session makes; a watch carries on across a leader kill without repeating or
 * going back; abort, break and close end it (on the server too: the per-session limit frees up); deletion
 * ends it with NOT_FOUND; the embedded store watches too; and the CLI prints a line per change.
 */
import test, { type ExecutionContext } from 'ava';
import { connect, openEmbedded, SegmemError, type Segment } from '../src/index.js';
import {
  bump,
  freePort,
  runNode,
  segmemBin,
  startServerProcess,
  tempDir,
  untilItWorks,
  waitFor,
  withCluster,
} from './helpers.js';

/**
 * Reads versions from `seg.watch(name, { fromVersion: 0 })` into `seen` until one reaches `until`. The first
 * item (the current version, newer than 0) says the watch is in place on the server.
 */
async function collect(seg: Segment, name: string, until: number, seen: number[]): Promise<void> {
  const signal = AbortSignal.timeout(60_000);
  for await (const { version } of seg.watch(name, { fromVersion: 0, signal })) {
    seen.push(version);
    if (version >= until) return;
  }
}

function strictlyIncreasing(t: ExecutionContext, versions: number[]): void {
  for (let i = 1; i < versions.length; i++)
    t.true(versions[i]! > versions[i - 1]!, `versions go up without repeats: ${versions.join(', ')}`);
}

test.serial(
  'a watcher that never touched the object sees the 5 writes of another session, in order',
  async (t) => {
    const dir = tempDir();
    const server = await startServerProcess({ dataDir: dir.path });
    const watcher = await connect({ servers: [server.address] });
    const writer = await connect({ servers: [server.address] });
    try {
      await writer.create('counter', 4);
      const versions: number[] = [];
      const done = collect(watcher, 'counter', 6, versions);
      await waitFor(() => versions.length > 0, 'the watch in place');
      await bump(writer, 'counter', 5);
      await done;
      t.log(`watcher saw versions ${versions.join(', ')}`);
      t.is(versions[0], 1);
      strictlyIncreasing(t, versions);
      t.is(versions.at(-1), 6, 'the last item is the version of the last write');
      // The watcher never acquired the object: nothing of it is cached, the pushes came from the watch alone.
      t.is((watcher as unknown as { cacheInfo(n: string): unknown }).cacheInfo('counter'), undefined);
    } finally {
      await watcher.close();
      await writer.close();
      await server.stop();
      dir.cleanup();
    }
  },
);

test.serial(
  'a watch carries on across a leader kill: the writes after it are seen, nothing repeats',
  async (t) => {
    await withCluster({ sessionTimeoutMs: 5000 }, async ({ cluster, seg: writer }) => {
      const watcher = await connect({ servers: cluster.addresses, sessionTimeoutMs: 5000 });
      try {
        await writer.create('config', 4);
        const versions: number[] = [];
        const done = collect(watcher, 'config', 7, versions);
        await waitFor(() => versions.length > 0, 'the watch in place');
        await bump(writer, 'config', 3); // versions 2..4
        await waitFor(() => versions.includes(4), 'the watcher sees version 4 before the kill');
        const leader = await waitFor(() => cluster.leader(), 'a leader');
        await cluster.kill(leader.id);
        await untilItWorks(() => bump(writer, 'config'), 'a write on the new leader', 30_000); // 5
        await bump(writer, 'config', 2); // 6, 7
        await done;
        t.log(`watcher saw ${versions.join(', ')}`);
        strictlyIncreasing(t, versions);
        t.is(versions.at(-1), 7, 'the write made after the failover is seen');
        await cluster.startMember(leader.id);
      } finally {
        await watcher.close();
      }
    });
  },
);

test.serial(
  'abort, break and close end a watch, on the server too; deletion ends it with NOT_FOUND (embedded)',
  async (t) => {
    const dir = tempDir();
    const seg = await openEmbedded({ dir: dir.path, fsync: 'none' });
    try {
      // The server holds at most MAX_WATCHES_PER_SESSION watches per session: fill them up.
      const limit = 1024;
      for (let i = 0; i < limit + 1; i++) await seg.create(`o/${i}`, 8);
      const iterators: AsyncIterator<{ version: number }>[] = [];
      for (let i = 0; i < limit; i++) {
        const it = seg.watch(`o/${i}`, { fromVersion: 0 })[Symbol.asyncIterator]();
        t.deepEqual((await it.next()).value, { version: 1 }); // the current version, newer than fromVersion
        iterators.push(it);
      }
      const over = seg.watch(`o/${limit}`, { fromVersion: 0 })[Symbol.asyncIterator]();
      const refused = await t.throwsAsync(over.next());
      t.true(SegmemError.is(refused, 'INVALID_ARGUMENT'), String(refused));
      t.regex(refused!.message, /1024/);

      // return() (what `break` calls) sends UNWATCH: the slot is free again.
      await iterators[0]!.return!();
      const again = seg.watch(`o/${limit}`, { fromVersion: 0 })[Symbol.asyncIterator]();
      t.deepEqual((await untilItWorks(() => again.next(), 'a watch once a slot is free')).value, {
        version: 1,
      });

      // An abort ends a waiting next() with ABORTED, and frees a slot too.
      const stop = new AbortController();
      const waiting = seg.watch('o/1', { signal: stop.signal })[Symbol.asyncIterator]();
      const pending = waiting.next();
      stop.abort();
      t.true(SegmemError.is(await t.throwsAsync(pending), 'ABORTED'));
      t.deepEqual(await waiting.next(), { done: true, value: undefined });

      // A change, then the deletion: the last version is delivered, then NOT_FOUND.
      const it2 = iterators[2]!;
      await bump(seg, 'o/2', 2);
      await seg.delete('o/2');
      t.deepEqual((await it2.next()).value, { version: 3 });
      t.true(SegmemError.is(await t.throwsAsync(it2.next()), 'NOT_FOUND'));

      // A watch of a name that does not exist fails at once.
      t.true(
        SegmemError.is(await t.throwsAsync(seg.watch('nothing')[Symbol.asyncIterator]().next()), 'NOT_FOUND'),
      );
      t.throws(() => seg.watch('o/3', { fromVersion: -1 }), { code: 'INVALID_ARGUMENT' } as never);

      // Closing the segment ends every iterator still waiting, with CLOSED.
      const it3 = iterators[3]!.next();
      await seg.close();
      t.true(SegmemError.is(await t.throwsAsync(it3), 'CLOSED'));
    } finally {
      await seg.close();
      dir.cleanup();
    }
  },
);

test.serial(
  'segmem watch prints a line per change; --help works; unknown options and no server fail in one line',
  async (t) => {
    const help = await runNode(segmemBin, ['watch', '--help']).done;
    t.is(help.code, 0, help.stderr);
    t.regex(help.stdout, /^usage: segmem watch NAME/);
    const bad = await runNode(segmemBin, ['watch', 'x', '--bogus', '--servers', '127.0.0.1:1']).done;
    t.is(bad.code, 1);
    t.regex(bad.stderr, /^segmem: .*--bogus.*\nusage: segmem watch/);
    const nobody = await runNode(segmemBin, [
      'watch',
      'x',
      '--servers',
      `127.0.0.1:${await freePort()}`,
      '--timeout',
      '500',
    ]).done;
    t.is(nobody.code, 1);
    t.regex(nobody.stderr, /^segmem: .*\(UNAVAILABLE\)\n$/);

    const dir = tempDir();
    const server = await startServerProcess({ dataDir: dir.path });
    const seg = await connect({ servers: [server.address] });
    try {
      await seg.create('cfg', 4);
      const lines: string[] = [];
      // --from 0 prints the current version at once: that line says the watch is in place.
      const cli = runNode(segmemBin, ['watch', 'cfg', '--from', '0', '--servers', server.address], {
        onLine: (line) => lines.push(line),
      });
      await waitFor(() => lines.includes('cfg version 1'), 'the first line', 15_000);
      await bump(seg, 'cfg');
      await waitFor(() => lines.includes('cfg version 2'), 'a line for the change', 15_000);
      cli.proc.kill('SIGINT');
      const r = await cli.done;
      t.is(r.code, 0, r.stderr);
      t.deepEqual(lines, ['cfg version 1', 'cfg version 2']);
    } finally {
      await seg.close();
      await server.stop();
      dir.cleanup();
    }
  },
);
