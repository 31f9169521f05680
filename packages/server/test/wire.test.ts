/**
 * The server's port under bad input: garbage, oversize frames, wrong handshakes, bad fields, other
 * sessions' tokens. Each gets a clear error; the server keeps serving everyone else.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  decodeError,
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MessageType,
  PROTOCOL_VERSION,
  type Request,
  type SegmemError,
  systemEnv,
} from '@segmem/protocol';
import test from 'ava';
import { startServer } from '../src/index.js';
import { createClusterSecretFile } from '../src/secret-file.js';
import { newNonce } from '../src/shell/peer-auth.js';
import { encodePeerHello, encodePeerProof, PeerMessageType } from '../src/shell/peer-codec.js';

function writeRelease(
  seq: number,
  name: string,
  token: number,
  bytes: Buffer,
  offset: number,
): Extract<Request, { type: 'RELEASE' }> {
  const ranges: [number, number][] = bytes.length > 0 ? [[offset, bytes.length]] : [];
  return { type: 'RELEASE', seq, name, mode: 'write', token, ranges, payload: bytes };
}

/** A raw protocol client over a real socket, for sending exactly the bytes a test wants. */
class RawClient {
  private readonly decoder = new FrameDecoder();
  private readonly frames: Frame[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  private nextId = 1;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const f of this.decoder.push(chunk)) this.frames.push(f);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  static open(address: string): Promise<RawClient> {
    const [host, port] = address.split(':');
    return new Promise((resolve, reject) => {
      const s = netConnect({ host: host!, port: Number(port) }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The next frame, or null once the server closed the connection. */
  async next(timeoutMs = 5000): Promise<Frame | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0 && !this.closed) {
      if (Date.now() > deadline) throw new Error('no frame from the server in time');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    return this.frames.shift() ?? null;
  }

  async untilClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('the server did not close the connection');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  send(req: Request): number {
    const id = this.nextId++;
    for (const p of encodeRequest(req, id)) this.socket.write(p);
    return id;
  }

  async call<T extends Request['type']>(req: Extract<Request, { type: T }>) {
    const id = this.send(req);
    const f = await this.next();
    if (!f) throw new Error('connection closed');
    if (f.requestId !== id) throw new Error(`answer to ${f.requestId}, expected ${id}`);
    return decodeResponse(req.type, f);
  }

  /** Write access to `name`, nothing cached, waiting for the grant. */
  acquireWrite(seq: number, name: string) {
    return this.call({
      type: 'ACQUIRE',
      seq,
      name,
      mode: 'write',
      cachedId: 0,
      cachedVersion: 0,
      timeoutMs: null,
    });
  }

  /** A write release that changed `bytes` at `offset` (none: changed nothing). */
  releaseWrite(seq: number, name: string, token: number, bytes = Buffer.alloc(0), offset = 0) {
    return this.call(writeRelease(seq, name, token, bytes, offset));
  }

  /** Logs in, with a session that outlasts the test's pauses: this client sends no keepalives. */
  async hello(extra: Partial<Extract<Request, { type: 'HELLO' }>> = {}) {
    return this.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 60_000, ...extra });
  }

  close(): void {
    this.socket.destroy();
  }
}

async function server(t: { teardown(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-wire-'));
  const s = await startServer({ id: 's1', listen: '127.0.0.1:0', dataDir: dir, fsync: 'none' });
  t.teardown(async () => {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return s;
}

test('garbage bytes get an ERROR frame and a closed connection; other clients are served throughout', async (t) => {
  const s = await server(t);
  const good = await RawClient.open(s.address);
  await good.hello();
  await good.call({ type: 'CREATE', seq: 1, name: 'x', size: 4, ifNotExists: false });
  const bad = await RawClient.open(s.address);
  bad.socket.write(Buffer.from('GET / HTTP/1.1\r\nHost: example\r\n\r\n'));
  const f = await bad.next();
  t.truthy(f);
  t.is(f!.type, MessageType.ERROR);
  t.is(f!.requestId, 0);
  t.is(decodeError(f!).code, 'PROTOCOL');
  await bad.untilClosed();
  t.like(await good.call({ type: 'STAT', name: 'x' }), { object: { name: 'x', size: 4 } });
});

test('an oversize frame is refused from its length prefix, before its body is sent', async (t) => {
  const s = await server(t);
  const c = await RawClient.open(s.address);
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(0xfffffff0, 0);
  c.socket.write(prefix); // only 4 bytes: the server must not wait for 4 GiB
  const f = await c.next();
  const err = decodeError(f!);
  t.is(err.code, 'PROTOCOL');
  t.regex(err.message, /exceeds|limit|too large/i);
  await c.untilClosed();
});

test('the handshake: HELLO first, one protocol version, the right cluster and token', async (t) => {
  const s = await server(t);
  const early = await RawClient.open(s.address);
  early.send({ type: 'STAT', name: 'x' });
  t.is(decodeError((await early.next())!).code, 'PROTOCOL');
  await early.untilClosed();

  const version = await RawClient.open(s.address);
  version.send({ type: 'HELLO', protocol: PROTOCOL_VERSION + 1, sessionTimeoutMs: 5000 });
  const verr = decodeError((await version.next())!);
  t.is(verr.code, 'PROTOCOL');
  t.true(
    verr.message.includes(String(PROTOCOL_VERSION)) && verr.message.includes(String(PROTOCOL_VERSION + 1)),
    verr.message,
  );
  await version.untilClosed();

  const cluster = await RawClient.open(s.address);
  const cerr = await t.throwsAsync(cluster.hello({ clusterId: 'not-this-one' }));
  t.is((cerr as SegmemError).code, 'UNAUTHORIZED');

  const ok = await RawClient.open(s.address);
  const hello = await ok.hello();
  t.true(hello.sessionId >= 1);
  t.is(hello.pageBytes, 4096);
  const twice = await t.throwsAsync(ok.hello());
  t.is((twice as SegmemError).code, 'PROTOCOL');
});

test('a well-framed request with a bad field gets INVALID_ARGUMENT and the connection stays usable', async (t) => {
  const s = await server(t);
  const c = await RawClient.open(s.address);
  await c.hello();
  for (const bad of [
    { type: 'CREATE', seq: 1, name: '', size: 4, ifNotExists: false },
    { type: 'CREATE', seq: 2, name: 'x', size: 0, ifNotExists: false },
    { type: 'CREATE', seq: 3, name: 'x', size: -1, ifNotExists: false },
    { type: 'CREATE', seq: 4, name: 'x'.repeat(300), size: 4, ifNotExists: false },
    { type: 'ACQUIRE', seq: 5, name: 'x', mode: 'exclusive', cachedId: 0, cachedVersion: 0, timeoutMs: null },
  ] as unknown as Request[]) {
    const err = await t.throwsAsync(c.call(bad as never));
    t.is((err as SegmemError).code, 'INVALID_ARGUMENT', (err as Error).message);
  }
  t.like(await c.call({ type: 'CREATE', seq: 6, name: 'x', size: 4, ifNotExists: false }), { created: true });
  t.deepEqual(
    (await c.call({ type: 'LIST', prefix: '' })).objects.map((o) => o.name),
    ['x'],
    'nothing but the valid create changed anything',
  );
  // A write range outside the object: refused by the server, the lock stays held, nothing changes.
  const g = await c.acquireWrite(7, 'x');
  const err = await t.throwsAsync(c.releaseWrite(8, 'x', g.token, Buffer.alloc(4), 2));
  t.is((err as SegmemError).code, 'INVALID_ARGUMENT');
  t.like(await c.releaseWrite(9, 'x', g.token, Buffer.from([1])), {
    version: 2,
  });
});

test("a release under another session's token is LOCK_LOST and leaves the holder's lock alone", async (t) => {
  const s = await server(t);
  const a = await RawClient.open(s.address);
  const b = await RawClient.open(s.address);
  await a.hello();
  await b.hello();
  await a.call({ type: 'CREATE', seq: 1, name: 'x', size: 4, ifNotExists: false });
  const g = await a.acquireWrite(2, 'x');
  const err = await t.throwsAsync(b.releaseWrite(1, 'x', g.token, Buffer.from([9])));
  t.is((err as SegmemError).code, 'LOCK_LOST');
  t.like(await a.releaseWrite(3, 'x', g.token), {
    version: 1,
  });
});

test('a session is resumed only with its secret: another client knowing its id gets a session of its own', async (t) => {
  const s = await server(t);
  const owner = await RawClient.open(s.address);
  const opened = await owner.hello();
  t.regex(opened.sessionSecret, /^[0-9a-f]{32}$/);
  await owner.call({ type: 'CREATE', seq: 1, name: 'x', size: 4, ifNotExists: false });
  const g = await owner.acquireWrite(2, 'x');
  // Without the secret, or with a wrong one, the id buys nothing: a new session, and the lock stays put.
  for (const resumeSecret of [undefined, null, '', 'f'.repeat(32), `${opened.sessionSecret}0`]) {
    const thief = await RawClient.open(s.address);
    const got = await thief.hello({ resumeSessionId: opened.sessionId, resumeSecret });
    t.false(got.resumed);
    t.not(got.sessionId, opened.sessionId);
    t.not(got.sessionSecret, opened.sessionSecret);
    const err = await t.throwsAsync(thief.releaseWrite(1, 'x', g.token, Buffer.from([9])));
    t.is((err as SegmemError).code, 'LOCK_LOST');
    thief.close();
  }
  // With it (a reconnect of the owner), the session and its lock carry on.
  owner.close();
  const back = await RawClient.open(s.address);
  const resumed = await back.hello({ resumeSessionId: opened.sessionId, resumeSecret: opened.sessionSecret });
  t.true(resumed.resumed);
  t.is(resumed.sessionId, opened.sessionId);
  t.is(resumed.sessionSecret, opened.sessionSecret);
  const released = await back.releaseWrite(3, 'x', g.token, Buffer.from([7]));
  t.is(released.version, 2);
});

test('a retried request with the same seq is answered from the dedup table, not applied again', async (t) => {
  const s = await server(t);
  const c = await RawClient.open(s.address);
  await c.hello();
  await c.call({ type: 'CREATE', seq: 1, name: 'n', size: 4, ifNotExists: false });
  const g = await c.acquireWrite(2, 'n');
  const release = writeRelease(3, 'n', g.token, Buffer.from([5]), 0);
  t.like(await c.call(release), { version: 2 });
  t.like(await c.call(release), { version: 2 });
  t.like(await c.call({ type: 'CREATE', seq: 1, name: 'n', size: 4, ifNotExists: false }), { created: true });
  t.is((await c.call({ type: 'STAT', name: 'n' })).object.version, 2);
});

test('random bytes never crash the server (bounded fuzz)', async (t) => {
  const s = await server(t);
  const keeper = await RawClient.open(s.address);
  await keeper.hello();
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  const valid = Buffer.concat(
    encodeRequest({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 5000 }, 1),
  );
  for (let i = 0; i < 60; i++) {
    const c = await RawClient.open(s.address);
    let bytes: Buffer;
    if (i % 2 === 0) {
      bytes = Buffer.alloc(1 + (rand() % 300));
      for (let j = 0; j < bytes.length; j++) bytes[j] = rand() & 0xff;
    } else {
      bytes = Buffer.from(valid);
      for (let k = 0; k < 3; k++) bytes[rand() % bytes.length] = rand() & 0xff; // a mutated handshake
    }
    c.socket.write(bytes);
    c.socket.end();
    await c.untilClosed();
  }
  t.like(await keeper.call({ type: 'LIST', prefix: '' }), { objects: [] });
});

test('members of a token-protected cluster prove the cluster secret to each other; a peer without it is refused, token or not', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-wire-'));
  const ports: number[] = [];
  for (let i = 0; i < 3; i++) {
    ports.push(
      await new Promise<number>((resolve) => {
        const probe = createServer();
        probe.listen(0, '127.0.0.1', () => {
          const port = (probe.address() as { port: number }).port;
          probe.close(() => resolve(port));
        });
      }),
    );
  }
  const servers = Object.fromEntries(ports.map((p, i) => [`s${i + 1}`, `127.0.0.1:${p}`]));
  const config = join(dir, 'segmem.json');
  createClusterSecretFile(join(dir, 'cluster-secret'));
  writeFileSync(
    config,
    JSON.stringify({ clusterId: 'guarded', token: 's3cret', clusterSecretFile: 'cluster-secret', servers }),
  );
  const members = await Promise.all(
    Object.entries(servers).map(([id, listen]) =>
      startServer({ id, listen, dataDir: join(dir, id), config, fsync: 'none' }),
    ),
  );
  try {
    // The members elect a leader and commit: they accepted each other's PEER_HELLO with the token.
    let created = false;
    for (let attempt = 0; attempt < 200 && !created; attempt++) {
      for (const address of Object.values(servers)) {
        const c = await RawClient.open(address);
        try {
          await c.hello({ token: 's3cret' });
          await c.call({ type: 'CREATE', seq: 1, name: 'x', size: 4, ifNotExists: false });
          created = true;
          break;
        } catch {
          // not the leader (yet)
        } finally {
          c.close();
        }
      }
      if (!created) await new Promise((r) => setTimeout(r, 50));
    }
    t.true(created, 'a write committed on the token-protected cluster');
    // Posing as member s2: without a nonce (the token does not stand in for the secret), and with one but
    // a made-up proof. Each gets UNAUTHORIZED and a closed connection.
    const noNonce = await RawClient.open(servers.s1!);
    for (const p of encodePeerHello({ clusterId: 'guarded', from: 's2', to: 's1', token: 's3cret' }))
      noNonce.socket.write(p);
    const f = await noNonce.next();
    t.is(f?.type, MessageType.ERROR);
    t.is(decodeError(f!).code, 'UNAUTHORIZED');
    t.regex(decodeError(f!).message, /peer s2: no nonce/);
    await noNonce.untilClosed();
    const guesser = await RawClient.open(servers.s1!);
    for (const p of encodePeerHello({
      clusterId: 'guarded',
      from: 's2',
      to: 's1',
      token: null,
      nonce: newNonce(systemEnv),
    }))
      guesser.socket.write(p);
    t.is((await guesser.next())?.type, PeerMessageType.PEER_CHALLENGE);
    for (const p of encodePeerProof(newNonce(systemEnv))) guesser.socket.write(p);
    const refused = await guesser.next();
    t.is(refused?.type, MessageType.ERROR);
    t.is(decodeError(refused!).code, 'UNAUTHORIZED');
    t.regex(decodeError(refused!).message, /peer s2: its proof of the cluster secret does not match/);
    await guesser.untilClosed();
  } finally {
    for (const m of members) await m.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
