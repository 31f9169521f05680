/**
 * The Segment API and the compat API, against an embedded store and a real server process.
 */
import test, { type ExecutionContext } from 'ava';
import { connect, openEmbedded, SegmemError, type Segment } from '../src/index.js';
import { type ServerProcess, startServerProcess, tempDir } from './helpers.js';

type Mode = 'embedded' | 'tcp';

interface Fixture {
  open(): Promise<Segment>;
  cleanup(): Promise<void>;
}

async function fixture(mode: Mode): Promise<Fixture> {
  const dir = tempDir();
  const opened: Segment[] = [];
  if (mode === 'embedded') {
    let shared: Segment | undefined;
    return {
      // One embedded store per directory; every open shares it through one process-wide segment.
      async open() {
        shared ??= await openEmbedded({ dir: dir.path, fsync: 'none' });
        return shared;
      },
      async cleanup() {
        await shared?.close();
        dir.cleanup();
      },
    };
  }
  const server: ServerProcess = await startServerProcess({ dataDir: dir.path, fsync: 'batch' });
  return {
    async open() {
      const s = await connect({ servers: [server.address], sessionTimeoutMs: 2000 });
      opened.push(s);
      return s;
    },
    async cleanup() {
      for (const s of opened) await s.close();
      await server.stop();
      dir.cleanup();
    },
  };
}

async function rejectsCode(
  t: ExecutionContext,
  p: Promise<unknown> | (() => unknown),
  code: string,
  what: string,
) {
  const err = await t.throwsAsync(async () => (typeof p === 'function' ? p() : p), undefined, what);
  t.true(SegmemError.is(err), `${what}: a SegmemError`);
  t.is((err as SegmemError).code, code as never, `${what}: ${(err as Error).message}`);
}

for (const mode of ['embedded', 'tcp'] as const) {
  test(`${mode}: the counter example through Segment`, async (t) => {
    const f = await fixture(mode);
    try {
      const seg = await f.open();
      const info = await seg.create('compteur', 4);
      t.like(info, { name: 'compteur', size: 4, version: 1 });
      t.is(info.address % 4096, 0, 'objects are page aligned');
      const h = await seg.acquireWrite('compteur');
      t.is(h.bytes.length, 4);
      t.is(h.mode, 'write');
      t.is(h.bytes.readInt32LE(0), 0, 'created zero-filled');
      h.view.setInt32(0, 23 * 45, true);
      t.is(h.bytes.readInt32LE(0), 1035, 'view and bytes share memory');
      await h.release();
      const value = await seg.read('compteur', (r) => {
        t.is(r.version, 2, 'version increases with each write release');
        return r.bytes.readInt32LE(0);
      });
      t.is(value, 1035);
      const stat = await seg.stat('compteur');
      t.like(stat, { name: 'compteur', size: 4, version: 2 });
    } finally {
      await f.cleanup();
    }
  });

  test(`${mode}: create, stat, list by prefix, delete, and space reuse`, async (t) => {
    const f = await fixture(mode);
    try {
      const seg = await f.open();
      await seg.create('m/a', 10_000);
      await seg.create('m/b', 1);
      await seg.create('other', 1);
      t.deepEqual(
        (await seg.list('m/')).map((o) => o.name),
        ['m/a', 'm/b'],
      );
      t.is((await seg.list()).length, 3);
      const again = await seg.create('m/b', 1, { ifNotExists: true });
      t.is(again.name, 'm/b');
      await rejectsCode(t, seg.create('m/b', 1), 'ALREADY_EXISTS', 'duplicate create');
      await rejectsCode(
        t,
        seg.create('m/b', 2, { ifNotExists: true }),
        'ALREADY_EXISTS',
        'ifNotExists with another size',
      );
      const a = await seg.stat('m/a');
      await seg.delete('m/a');
      await rejectsCode(t, seg.stat('m/a'), 'NOT_FOUND', 'stat after delete');
      await rejectsCode(t, seg.delete('m/a'), 'NOT_FOUND', 'delete twice');
      const c = await seg.create('m/c', 8000);
      t.is(c.address, a.address, 'freed pages are reused');
      const h = await seg.acquireRead('m/c');
      t.true(
        h.bytes.every((b) => b === 0),
        'a new object on reused pages reads as zeros',
      );
      await h.release();
    } finally {
      await f.cleanup();
    }
  });

  test(`${mode}: bad input gets a typed error and changes nothing`, async (t) => {
    const f = await fixture(mode);
    try {
      const seg = await f.open();
      await seg.create('ok', 8);
      for (const size of [0, -1, 1.5, Number.NaN, '8' as unknown as number, 2 ** 40]) {
        await rejectsCode(t, seg.create('s', size), 'INVALID_ARGUMENT', `size ${String(size)}`);
      }
      for (const name of [
        '',
        'x'.repeat(256),
        'é'.repeat(128),
        'a\0b',
        42 as unknown as string,
        null as unknown as string,
      ]) {
        await rejectsCode(
          t,
          seg.create(name, 4),
          'INVALID_ARGUMENT',
          `name ${JSON.stringify(name)?.slice(0, 20)}`,
        );
        await rejectsCode(t, seg.acquireRead(name), 'INVALID_ARGUMENT', 'acquire with a bad name');
      }
      await seg.create('é'.repeat(127), 4); // 254 bytes of UTF-8: fine
      await rejectsCode(t, seg.acquireWrite('missing'), 'NOT_FOUND', 'unknown name');
      await rejectsCode(t, seg.stat('missing'), 'NOT_FOUND', 'stat unknown');
      await rejectsCode(t, seg.acquireRead('ok', { timeoutMs: -5 }), 'INVALID_ARGUMENT', 'negative timeout');
      const h = await seg.acquireWrite('ok');
      h.bytes[0] = 9;
      await h.release();
      await rejectsCode(t, h.release(), 'INVALID_ARGUMENT', 'releasing twice');
      t.is(h.bytes.length, 8);
      t.is((await seg.stat('ok')).version, 2, 'nothing changed by the second release');
      t.is((await seg.list()).length, 2, 'no object was created by bad input');
      t.throws(() => seg.log(''), { code: 'INVALID_ARGUMENT' } as never);
      await rejectsCode(t, seg.log('ok').append('x'), 'INVALID_ARGUMENT', 'an object is not a log');
    } finally {
      await f.cleanup();
    }
  });

  test(`${mode}: NO_SPACE when the segment is full, and space comes back on delete`, async (t) => {
    const dir = tempDir();
    const seg =
      mode === 'embedded'
        ? await openEmbedded({ dir: dir.path, fsync: 'none', segmentBytes: 64 * 4096 })
        : await (async () => {
            const server = await startServerProcess({
              dataDir: dir.path,
              fsync: 'none',
              extra: ['--segment-bytes', String(64 * 4096)],
            });
            const s = await connect({ servers: [server.address] });
            t.teardown(() => server.stop());
            return s;
          })();
    try {
      await seg.create('a', 40 * 4096);
      await rejectsCode(t, seg.create('b', 30 * 4096), 'NO_SPACE', 'larger than the free space');
      await seg.create('c', 24 * 4096);
      await seg.delete('a');
      await seg.create('b', 30 * 4096);
      t.pass();
    } finally {
      await seg.close();
      dir.cleanup();
    }
  });

  test(`${mode}: update() commits on success and undoes the change when fn throws`, async (t) => {
    const f = await fixture(mode);
    try {
      const seg = await f.open();
      await seg.create('u', 16);
      await seg.update('u', (h) => h.bytes.write('hello'));
      await t.throwsAsync(
        seg.update('u', (h) => {
          h.bytes.write('WRECK');
          throw new Error('boom');
        }),
        { message: 'boom' },
      );
      t.is(await seg.read('u', (h) => h.bytes.toString('utf8', 0, 5)), 'hello');
      t.is((await seg.stat('u')).version, 2, 'the failed update shipped nothing');
    } finally {
      await f.cleanup();
    }
  });
}

test("tcp: two sessions see each other's writes, and a write of one byte in 1 MiB ships a few bytes", async (t) => {
  const f = await fixture('tcp');
  try {
    const a = await f.open();
    const b = await f.open();
    await a.create('big', 1024 * 1024);
    // Warm both caches.
    await a.read('big', () => {});
    await b.read('big', () => {});
    const before = (a as unknown as { stats(): { bytesSent: number } }).stats().bytesSent;
    await a.update('big', (h) => {
      h.bytes[700_000] = 42;
    });
    const sent = (a as unknown as { stats(): { bytesSent: number } }).stats().bytesSent - before;
    t.true(sent < 300, `a one-byte change sent ${sent} bytes (acquire + release frames)`);
    const bBefore = (b as unknown as { stats(): { bytesReceived: number } }).stats().bytesReceived;
    t.is(await b.read('big', (h) => h.bytes[700_000]), 42);
    const received = (b as unknown as { stats(): { bytesReceived: number } }).stats().bytesReceived - bBefore;
    t.true(received < 4096 + 400, `the other client fetched one page, not 1 MiB (${received} bytes)`);
  } finally {
    await f.cleanup();
  }
});

test('compat: the counter program, then concurrent increments from the compat API are exact', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path });
  const compat = await import('../src/compat.js');
  try {
    await compat.init_persistant({ servers: [server.address] });
    await compat.p_create(4, 'compteur');
    const cpt = await compat.p_access_readwrite('compteur');
    cpt.writeInt32LE(23 * 45);
    await compat.p_release_readwrite(cpt);
    const r = await compat.p_access_read('compteur');
    t.is(r.readInt32LE(0), 1035);
    await compat.p_release_read(r);
    await t.throwsAsync(compat.p_release_read(r), { code: 'INVALID_ARGUMENT' } as never);
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const c = await compat.p_access_readwrite('compteur');
        c.writeInt32LE(c.readInt32LE(0) + 1);
        await compat.p_release_readwrite(c);
      }),
    );
    const end = await compat.p_access_read('compteur');
    t.is(end.readInt32LE(0), 1035 + 20);
    await compat.p_release_read(end);
    t.is(compat.init_persistent, compat.init_persistant);
  } finally {
    await compat.close_persistant();
    await server.stop();
    dir.cleanup();
  }
});

test('connect refuses a malformed server list as INVALID_ARGUMENT, before dialling', async (t) => {
  for (const servers of [[], ['localhost'], ['127.0.0.1:7401', '127.0.0.1'], ['host:99999'], [7401]]) {
    await rejectsCode(
      t,
      connect({ servers: servers as string[] }),
      'INVALID_ARGUMENT',
      `servers ${JSON.stringify(servers)}`,
    );
  }
});
