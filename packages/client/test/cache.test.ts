/**
 * The client cache: pages validated by version on acquire, dropped at once on an invalidation pushed
 * over TCP or hinted over UDP, and revalidated after a gap in the pushes (a dropped connection).
 */
import { createServer, type Server, type Socket, connect as tcp } from 'node:net';
import test from 'ava';
import { connect, type Segment } from '../src/index.js';
import { startServerProcess, tempDir, waitFor } from './helpers.js';

type Diag = Segment & {
  cacheInfo(name: string): { id: number; version: number } | undefined;
  /** What the client does after a gap in the invalidation pushes: ask the server which copies are stale. */
  revalidate(): void;
  stats(): { bytesSent: number; bytesReceived: number; requests: number };
};

/** A TCP proxy the test can stall (server→client direction) or cut. */
class TcpProxy {
  private server!: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  private held = false;
  private readonly backlog: [Socket, Buffer][] = [];
  connections = 0;
  address = '';

  static async start(target: string): Promise<TcpProxy> {
    const p = new TcpProxy();
    const [host, port] = target.split(':');
    p.server = createServer((client) => {
      p.connections++;
      const upstream = tcp({ host: host!, port: Number(port) });
      const pair: [Socket, Socket] = [client, upstream];
      p.pairs.add(pair);
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d: Buffer) => (p.held ? p.backlog.push([client, d]) : client.write(d)));
      const end = () => {
        client.destroy();
        upstream.destroy();
        p.pairs.delete(pair);
      };
      client.on('close', end);
      upstream.on('close', end);
      client.on('error', () => {});
      upstream.on('error', () => {});
    });
    await new Promise<void>((r) => p.server.listen(0, '127.0.0.1', () => r()));
    p.address = `127.0.0.1:${(p.server.address() as { port: number }).port}`;
    return p;
  }

  hold(): void {
    this.held = true;
  }

  /** Whole frames (length-prefixed) held back so far. */
  heldFrames(): number {
    const bytes = Buffer.concat(this.backlog.map(([, d]) => d));
    let n = 0;
    for (let at = 0; at + 4 <= bytes.length; n++) {
      const next = at + 4 + bytes.readUInt32LE(at);
      if (next > bytes.length) break;
      at = next;
    }
    return n;
  }

  release(): void {
    this.held = false;
    for (const [sock, d] of this.backlog.splice(0)) sock.write(d);
  }

  cut(): void {
    this.backlog.length = 0;
    this.held = false;
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

test('a cached, unchanged object is granted without moving its pages', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'none' });
  const a = (await connect({ servers: [server.address] })) as Diag;
  try {
    await a.create('page', 4096);
    await a.update('page', (h) => h.bytes.fill(1));
    await a.read('page', () => {});
    const before = a.stats().bytesReceived;
    for (let i = 0; i < 10; i++) await a.read('page', (h) => t.is(h.bytes[4095], 1));
    const perCycle = (a.stats().bytesReceived - before) / 10;
    t.true(perCycle < 200, `a warm read cycle received ${perCycle} bytes`);
  } finally {
    await a.close();
    await server.stop();
    dir.cleanup();
  }
});

test('invalidations: pushed over TCP, hinted over UDP, and a gap makes the client revalidate', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'none' });
  const proxy = await TcpProxy.start(server.address);
  const a = (await connect({ servers: [server.address] })) as Diag;
  // b keeps no grants (delegations off): this is about copies kept without one. A kept read grant would
  // have to be revoked before a's writes, and with the server-to-b direction held that revoke arrives
  // only if its UDP hint is not dropped; under load one was, and a's update waited for ever.
  const b = (await connect({
    servers: [proxy.address],
    udpHints: true,
    sessionTimeoutMs: 5000,
    delegations: false,
  })) as Diag;
  try {
    await a.create('x', 8192);
    await b.read('x', () => {});
    t.like(b.cacheInfo('x'), { version: 1 });

    // TCP push: b drops its copy without doing anything.
    await a.update('x', (h) => h.bytes.writeUInt32LE(1, 0));
    await waitFor(() => b.cacheInfo('x')?.version === 0, 'b to drop x after the TCP push');
    t.is(await b.read('x', (h) => h.bytes.readUInt32LE(0)), 1);
    t.like(b.cacheInfo('x'), { version: 2 });

    // UDP hint: with the TCP path stalled, the datagram alone makes b drop its copy.
    proxy.hold();
    await a.update('x', (h) => h.bytes.writeUInt32LE(2, 0));
    await waitFor(
      () => b.cacheInfo('x')?.version === 0,
      'b to drop x from the UDP hint while TCP is stalled',
    );
    proxy.release();
    t.is(await b.read('x', (h) => h.bytes.readUInt32LE(0)), 2);

    // A gap: b's connection is cut, a writes while b is away (the push numbered for b is never
    // delivered), b reconnects, resumes its session and revalidates its cache by version.
    proxy.hold();
    proxy.cut();
    await a.update('x', (h) => h.bytes.writeUInt32LE(3, 4096));
    await waitFor(() => proxy.connections >= 2, 'b to reconnect');
    await waitFor(() => b.cacheInfo('x')?.version === 0, 'b to find its copy stale after the reconnect');
    t.is(await b.read('x', (h) => h.bytes.readUInt32LE(4096)), 3);
    t.is(await b.read('x', (h) => h.bytes.readUInt32LE(0)), 2, 'pages that did not change are kept');
  } finally {
    await a.close();
    await b.close();
    await proxy.close();
    await server.stop();
    dir.cleanup();
  }
});

test('regression: an invalidation that arrives while an acquire is pending does not wipe the pages the grant omits', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'none' });
  const a = (await connect({ servers: [server.address] })) as Diag;
  const b = (await connect({ servers: [server.address] })) as Diag;
  try {
    await a.create('x', 3 * 4096);
    await a.update('x', (h) => {
      h.bytes.fill(1, 0, 4096);
      h.bytes.fill(2, 4096, 8192);
      h.bytes.fill(3, 8192);
    });
    await b.read('x', () => {}); // b caches all three pages
    const held = await a.acquireWrite('x');
    const pending = b.acquireRead('x'); // waits; its grant will be a delta against b's copy
    await b.list(''); // the acquire reached the server
    held.bytes.fill(9, 4096, 8192); // only page 1 changes
    await held.release(); // b gets the INVALIDATE push, then the grant with page 1 only
    const h = await pending;
    t.is(h.bytes[0], 1, 'page 0 kept');
    t.is(h.bytes[5000], 9, 'page 1 updated');
    t.is(h.bytes[9000], 3, 'page 2 kept');
    await h.release();
  } finally {
    await a.close();
    await b.close();
    await server.stop();
    dir.cleanup();
  }
});

test('regression: a revalidation answer about an older version does not drop a copy refreshed since', async (t) => {
  // Found by the repeated-faults cluster test: a VALIDATE sent before this client's own release was
  // answered after it ("stale: the object is at version N"), and the client dropped its copy, already at
  // N, while an acquire's grant (a delta against that copy, omitting every page) was being installed.
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'none' });
  const proxy = await TcpProxy.start(server.address);
  const a = (await connect({ servers: [proxy.address] })) as Diag;
  try {
    await a.create('x', 4);
    await a.update('x', (h) => h.bytes.writeUInt32LE(1));
    const h = await a.acquireWrite('x');
    h.bytes.writeUInt32LE(2);
    proxy.hold();
    const released = h.release(); // the object goes to version 3
    a.revalidate(); // asks about version 2, the copy's version until the release is answered
    await waitFor(() => proxy.heldFrames() >= 2, 'the release and validate answers, held back together');
    proxy.release();
    await released;
    t.is(a.cacheInfo('x')?.version, 3, 'the copy at version 3 is kept');
    t.is(await a.read('x', (r) => r.bytes.readUInt32LE(0)), 2);
  } finally {
    await a.close();
    await proxy.close();
    await server.stop();
    dir.cleanup();
  }
});

test('regression: releasing a handle of a deleted object leaves the pages of the object now living there alone', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: dir.path, fsync: 'none' });
  const a = (await connect({ servers: [server.address], sessionTimeoutMs: 1000 })) as Diag;
  const b = (await connect({ servers: [server.address] })) as Diag;
  try {
    await a.create('old', 4096);
    const oldHandle = await a.acquireRead('old');
    // The delete waits for a's read; a's whole process (this one) stalls past a's session timeout, so the
    // servers end a's session, and the delete goes through while a still has its handle.
    const deleting = b.delete('old');
    await b.stat('old'); // the DELETE is at the server
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2500);
    await deleting;
    const info = await b.create('new', 4096);
    t.is(info.address, (await b.list(''))[0]!.address, 'the new object reuses the pages');
    const fresh = await a.acquireWrite('new');
    await t.throwsAsync(oldHandle.release(), { code: 'LOCK_LOST' });
    fresh.bytes[10] = 42; // must not fault: the stale release did not take the new object's rights
    await fresh.release();
    t.is(await b.read('new', (h) => h.bytes[10]), 42);
  } finally {
    await a.close();
    await b.close();
    await server.stop();
    dir.cleanup();
  }
});
