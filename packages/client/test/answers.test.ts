/**
 * Small requests cannot make a server allocate large answers: against a real `segmem-server` process over
 * real sockets, clients that pipeline reads of a 32 MiB object and never read their socket. The server's
 * resident memory (VmRSS) stays within a bound, other clients are served, and a greedy socket that starts
 * reading at last gets every answer, correct.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  decodeError,
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MAX_SESSION_TIMEOUT_MS,
  MessageType,
  PAGE_BYTES,
  PROTOCOL_VERSION,
  type Request,
} from '@segmem/protocol';
import test from 'ava';
import { connect, type Segment } from '../src/index.js';
import { retryOnAddressInUse, startServerProcess, tempDir, untilItWorks, waitFor } from './helpers.js';

const OBJECT_BYTES = 32 * 1024 * 1024;
const PIPELINED = 64;
/** Growth of the server's resident memory allowed while greedy clients hold it (the unbounded server grows by GiBs). */
const RSS_GROWTH_BOUND_BYTES = 200 * 1024 * 1024;
const PAGES = Array.from({ length: OBJECT_BYTES / PAGE_BYTES }, (_, p) => p);

/** The byte at offset `i` of the object after `fill`: every page distinct, so a wrong page shows. */
function expectedByte(i: number, round: number): number {
  return (Math.floor(i / PAGE_BYTES) * 7 + (i & 0xff) + round) & 0xff;
}

function fill(bytes: Buffer, round: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = expectedByte(i, round);
}

function matches(payload: Uint8Array, round: number): boolean {
  if (payload.length !== OBJECT_BYTES) return false;
  // Every 4093rd byte (prime, so every page and offset class is hit): checking 32 MiB 64 times is slow.
  for (let i = 0; i < payload.length; i += 4093) if (payload[i] !== expectedByte(i, round)) return false;
  return payload[payload.length - 1] === expectedByte(payload.length - 1, round);
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for process ${pid}`);
  return Number(m[1]) * 1024;
}

function readAcquire(seq: number): Request {
  return { type: 'ACQUIRE', seq, name: 'big', mode: 'read', cachedId: 0, cachedVersion: 0, timeoutMs: null };
}

/** A raw protocol connection that reads nothing until told to: the greedy client. */
class Greedy {
  private readonly decoder = new FrameDecoder();
  readonly frames: Frame[] = [];
  closed = false;
  private nextId = 1;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const f of this.decoder.push(chunk)) this.frames.push(f);
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {});
  }

  static open(address: string): Promise<Greedy> {
    const at = address.lastIndexOf(':');
    return new Promise((resolve, reject) => {
      const s = netConnect({ host: address.slice(0, at), port: Number(address.slice(at + 1)) }, () =>
        resolve(new Greedy(s)),
      );
      s.once('error', reject);
    });
  }

  send(req: Request): number {
    const id = this.nextId++;
    for (const p of encodeRequest(req, id)) this.socket.write(p);
    return id;
  }

  /** Sends `reqs` in one write, as an attacker would (one chunk: the server decodes them together). */
  sendAll(reqs: Request[]): void {
    const parts: Buffer[] = [];
    for (const req of reqs) parts.push(...encodeRequest(req, this.nextId++));
    this.socket.write(Buffer.concat(parts));
  }

  /**
   * HELLO and its answer; then the socket stops reading. The session gets the longest timeout: it sends
   * nothing while its answers pile up, and with 60 s it expired under load (the server then closed the
   * socket, 53 of 64 answers read).
   */
  async hello(pageReader: boolean, thenRead = false): Promise<void> {
    this.send({
      type: 'HELLO',
      protocol: PROTOCOL_VERSION,
      sessionTimeoutMs: MAX_SESSION_TIMEOUT_MS,
      pageReader,
    });
    await waitFor(() => this.frames.length > 0 || this.closed, 'the HELLO answer', 10_000);
    const f = this.frames.shift();
    if (!f) throw new Error('closed instead of answering HELLO');
    decodeResponse('HELLO', f);
    if (!thenRead) this.socket.pause();
  }

  /** Sends `req` and waits for its answer (on a connection that reads). */
  async ask(req: Request, timeoutMs = 10_000): Promise<Frame> {
    const id = this.send(req);
    const answered = () => this.frames.findIndex((x) => x.requestId === id);
    await waitFor(() => answered() >= 0 || this.closed, `the answer to ${req.type}`, timeoutMs);
    const at = answered();
    if (at < 0) throw new Error(`closed instead of answering ${req.type}`);
    return this.frames.splice(at, 1)[0]!;
  }

  /** Read grants of `name` held now, from STATUS. */
  async holders(name: string): Promise<number> {
    const status = decodeResponse('STATUS', await this.ask({ type: 'STATUS' }));
    return status.locks.find(([n]) => n === name)?.[2] ?? 0;
  }

  /** Reads again and waits for `count` frames. */
  async drain(count: number, timeoutMs: number): Promise<Frame[]> {
    this.socket.resume();
    await waitFor(() => this.frames.length >= count || this.closed, `${count} answers`, timeoutMs);
    if (this.frames.length < count) throw new Error(`closed after ${this.frames.length} of ${count} answers`);
    return this.frames.splice(0, count);
  }
}

/** A client's own session: creates the object and fills it with round `round`. */
async function fillObject(seg: Segment, name: string, round: number): Promise<number> {
  await seg.create(name, OBJECT_BYTES, { ifNotExists: true });
  return seg.update(name, (h) => {
    fill(h.bytes, round);
    return h.version + 1;
  });
}

/**
 * Watches the server's RSS until `settled` holds (checked after each sample), failing as soon as it grows
 * past the bound; returns the largest growth seen.
 */
async function watchRss(pid: number, baseBytes: number, what: string, settled: () => Promise<boolean>) {
  let maxGrowth = 0;
  await waitFor(
    async () => {
      const growth = rssBytes(pid) - baseBytes;
      maxGrowth = Math.max(maxGrowth, growth);
      if (growth > RSS_GROWTH_BOUND_BYTES)
        throw new Error(`${what}: the server's RSS grew by ${(growth / 2 ** 20).toFixed(0)} MiB`);
      return settled();
    },
    what,
    30_000,
  );
  return maxGrowth;
}

async function withServer(
  t: import('ava').ExecutionContext,
  body: (address: string, pid: number) => Promise<void>,
): Promise<void> {
  const dir = tempDir('segmem-answers-');
  const server = await retryOnAddressInUse(() =>
    startServerProcess({ dataDir: join(dir.path, 'data'), fsync: 'none' }),
  );
  try {
    await body(server.address, server.proc.pid!);
    t.is(server.proc.exitCode, null, `the server is still running: ${server.stderr()}`);
  } finally {
    const code = await server.kill().then(() => 0);
    dir.cleanup();
    t.is(code, 0);
  }
}

/** A well-behaved client reads and writes within a deadline while the greedy ones hold on. */
async function servedWithin(seg: Segment, name: string, deadlineMs: number): Promise<number> {
  const started = performance.now();
  await seg.read(name, (h) => {
    if (h.bytes.length !== OBJECT_BYTES) throw new Error('short read');
  });
  await seg.create('side', 8, { ifNotExists: true });
  await seg.update('side', (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
  const ms = performance.now() - started;
  if (ms > deadlineMs) throw new Error(`served in ${ms.toFixed(0)} ms, over ${deadlineMs} ms`);
  return ms;
}

test('64 pipelined read acquires of a 32 MiB object on a socket that never reads: bounded server memory, answered once read', async (t) => {
  await withServer(t, async (address, pid) => {
    const seg = await connect({ servers: [address] });
    try {
      await fillObject(seg, 'big', 1);
      const base = rssBytes(pid);
      const greedy = await Greedy.open(address);
      await greedy.hello(false);
      greedy.sendAll(Array.from({ length: PIPELINED }, (_, i) => readAcquire(i + 1)));
      const observer = await Greedy.open(address);
      await observer.hello(false, true);
      // Settled once every acquire is granted (the lock state says so) and a well-behaved client is served.
      const growth = await watchRss(pid, base, 'the greedy acquires', async () => {
        await servedWithin(seg, 'big', 10_000);
        return (await observer.holders('big')) >= PIPELINED;
      });
      const ms = await servedWithin(seg, 'big', 10_000);
      t.log(
        `RSS growth while held: ${(growth / 2 ** 20).toFixed(0)} MiB; another client served in ${ms.toFixed(0)} ms`,
      );

      const drainStarted = performance.now();
      const frames = await greedy.drain(PIPELINED, 120_000);
      t.log(
        `64 grants (2 GiB) read in ${(performance.now() - drainStarted).toFixed(0)} ms once the socket reads`,
      );
      const tokens: number[] = [];
      for (const f of frames) {
        const g = decodeResponse('ACQUIRE', f);
        t.true(matches(g.payload, 1), `grant ${f.requestId} carries the object's bytes`);
        tokens.push(g.token);
      }
      t.is(new Set(frames.map((f) => f.requestId)).size, PIPELINED, 'every acquire answered once');
      for (let i = 0; i < tokens.length; i++)
        greedy.send({
          type: 'RELEASE',
          seq: PIPELINED + 1 + i,
          name: 'big',
          mode: 'read',
          token: tokens[i]!,
          ranges: [],
          payload: new Uint8Array(0),
        });
      for (const f of await greedy.drain(PIPELINED, 30_000)) decodeResponse('RELEASE', f);
      // Writes go through once the greedy reader let go.
      await fillObject(seg, 'big', 2);
      await seg.read('big', (h) => t.true(matches(h.bytes, 2)));
      greedy.socket.destroy();
      observer.socket.destroy();
    } finally {
      await seg.close();
    }
  });
});

test('pipelined READ_PAGES of 32 MiB on page-reader sockets that never read, a write meanwhile, and 40 greedy sockets: the server stays up and bounded', async (t) => {
  await withServer(t, async (address, pid) => {
    const seg = await connect({ servers: [address] });
    try {
      await fillObject(seg, 'big', 1);
      const info = await seg.stat('big');
      // The object id as a grant names it; the grant is given back so that writes can go on.
      const probe = await Greedy.open(address);
      await probe.hello(false);
      probe.send(readAcquire(1));
      const [granted] = await probe.drain(1, 30_000);
      const grant = decodeResponse('ACQUIRE', granted!);
      probe.send({
        type: 'RELEASE',
        seq: 2,
        name: 'big',
        mode: 'read',
        token: grant.token,
        ranges: [],
        payload: new Uint8Array(0),
      });
      decodeResponse('RELEASE', (await probe.drain(1, 30_000))[0]!);
      probe.socket.destroy();
      const objectId = grant.object.id;
      const readPages = (version: number): Request => ({
        type: 'READ_PAGES',
        objectId,
        version,
        pages: PAGES,
        waitMs: 0,
      });
      const base = rssBytes(pid);

      const one = await Greedy.open(address);
      await one.hello(true);
      one.sendAll(Array.from({ length: PIPELINED }, () => readPages(info.version)));
      const growth = await watchRss(pid, base, 'one page reader', async () => {
        await servedWithin(seg, 'big', 10_000);
        return one.socket.writableLength === 0;
      });
      t.log(`one greedy page reader: RSS growth ${(growth / 2 ** 20).toFixed(0)} MiB`);
      // Reading at last, it gets every page right.
      for (const f of await one.drain(PIPELINED, 120_000)) {
        if (f.type === MessageType.ERROR) t.fail(`READ_PAGES failed: ${decodeError(f).message}`);
        const r = decodeResponse('READ_PAGES', f);
        t.true(matches(r.payload, 1), `READ_PAGES ${f.requestId} carries the object's bytes`);
      }
      one.socket.destroy();

      // A write while answers wait unsent: the answers already built keep the bytes of the version they name
      // (the write copies the object instead of changing it under them); those built after it are LOCK_LOST.
      const cow = await Greedy.open(address);
      await cow.hello(true);
      cow.sendAll(Array.from({ length: PIPELINED }, () => readPages(info.version)));
      await waitFor(() => cow.socket.writableLength === 0, 'the READ_PAGES sent', 10_000);
      await fillObject(seg, 'big', 2);
      const version2 = (await seg.stat('big')).version;
      await seg.read('big', (h) => t.true(matches(h.bytes, 2), 'the write is read back'));
      let served = 0;
      for (const f of await cow.drain(PIPELINED, 120_000)) {
        if (f.type === MessageType.ERROR) {
          t.is(decodeError(f).code, 'LOCK_LOST');
          continue;
        }
        const r = decodeResponse('READ_PAGES', f);
        t.is(r.object.version, info.version);
        t.true(matches(r.payload, 1), `READ_PAGES ${f.requestId} carries the version it names`);
        served++;
      }
      t.true(served >= 1, 'answers built before the write were sent');
      t.log(
        `a write while 64 READ_PAGES waited: ${served} answered with the old version, the rest LOCK_LOST`,
      );
      cow.socket.destroy();

      const many: Greedy[] = [];
      for (let c = 0; c < 40; c++) {
        const g = await Greedy.open(address);
        await g.hello(c % 2 === 0);
        g.sendAll(
          Array.from({ length: PIPELINED }, (_, i) =>
            c % 2 === 0 ? readPages(version2) : readAcquire(i + 1),
          ),
        );
        many.push(g);
      }
      const observer = await Greedy.open(address);
      await observer.hello(false, true);
      // Settled once every acquire is granted (the well-behaved client may hold a cached grant too).
      const manyGrowth = await watchRss(pid, base, '40 greedy sockets', async () => {
        await servedWithin(seg, 'big', 20_000);
        return (await observer.holders('big')) >= (many.length / 2) * PIPELINED;
      });
      t.log(`40 greedy sockets: RSS growth ${(manyGrowth / 2 ** 20).toFixed(0)} MiB`);
      await untilItWorks(() => servedWithin(seg, 'big', 20_000), 'a well-behaved client', 30_000);
      for (const g of many) g.socket.destroy();
      observer.socket.destroy();
    } finally {
      await seg.close();
    }
  });
});
