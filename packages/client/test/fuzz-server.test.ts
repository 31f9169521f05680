/**
 * The structured fuzzer against real `segmem-server` processes over raw sockets: logged-in connections send
 * batches of valid-but-hostile requests of every type (protocol/test/hostile.ts), and strangers send hostile
 * peer frames after a PEER_HELLO. After each batch the server is the same process, answers a well-behaved
 * client within a deadline, keeps its memory (VmRSS) under a bound, and a control object the fuzzer never
 * names still holds exactly its bytes and version. Where members refuse a non-member's PEER_HELLO, no
 * member's term may move by more than a few elections.
 *
 * The seed is fixed, so CI sends the same frames each run; SEGMEM_FUZZ_SEED=<n> sends others. A failure
 * prints the seed and the batch's type; each frame sent is logged on failure (its mutations and hex).
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  decodeError,
  decodeResponse,
  encodeFrame,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MessageType,
  PROTOCOL_VERSION,
  REQUEST_TYPES,
  type Request,
  type RequestType,
} from '@segmem/protocol';
import { PeerMessageType, RAFT_MESSAGE_TYPES } from '@segmem/server/internal/shell/peer-codec';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { connect, type Segment } from '../src/index.js';
import {
  retryOnAddressInUse,
  startServerProcess,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

type Hostile = typeof import('../../protocol/test/hostile.js');
const here = fileURLToPath(new URL('.', import.meta.url));
const hostileModule = resolve(here, '../../../protocol/dist/test/hostile.js');
const loadHostile = () => import(pathToFileURL(hostileModule).href) as Promise<Hostile>;

const SEED = Number(process.env.SEGMEM_FUZZ_SEED ?? 20261207);
/** Hostile requests sent per request type (each type is one batch). */
const FRAMES_PER_TYPE = 200;
/** Frames sent on a connection before waiting for their answers. */
const PIPELINE = 25;
/** How long a pipelined group may wait for answers (some requests legitimately wait: a held lock). */
const GROUP_WAIT_MS = 1500;
/** A healthy server answers the control client within this, after any batch. */
const CONTROL_DEADLINE_MS = 10_000;
/** The server's resident memory must stay below this after every batch (it idles near 80 MiB). */
const MAX_RSS_BYTES = 512 * 1024 * 1024;
/** Every name the fuzzer generates starts with this; the control objects live elsewhere. */
const FUZZ_PREFIX = 'fz/';
const CONTROL = 'ctl/object';
const CONTROL_BYTES = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff));

/** The ERROR codes a batch was answered with, and the answers that reveal an internal error. */
class Answers {
  readonly codes = new Map<string, number>();
  readonly internal: string[] = [];
  summary(): string {
    return [...this.codes].map(([code, n]) => `${code} ${n}`).join(', ');
  }
}

/** A raw protocol connection: writes exactly the bytes given, collects frames and the close. */
class Raw {
  private readonly decoder = new FrameDecoder();
  readonly answered = new Set<number>();
  closed = false;

  private constructor(
    readonly socket: Socket,
    private readonly answers: Answers,
  ) {
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const f of this.decoder.push(chunk)) this.onFrame(f);
      } catch {
        socket.destroy(); // a server that breaks framing fails the test through the control checks
      }
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {}); // a server closing mid-write resets the socket: expected here
  }

  private readonly frames: Frame[] = [];
  /** The request id of the last frame received (0: an answer to a frame the server could not decode). */
  lastRequestId = -1;
  private onFrame(f: Frame): void {
    this.lastRequestId = f.requestId;
    if (f.type === MessageType.ERROR) {
      try {
        const err = decodeError(f);
        this.answers.codes.set(err.code, (this.answers.codes.get(err.code) ?? 0) + 1);
        // What a handler's unexpected exception becomes (shell/connection.ts asSegmemError).
        if (err.message.startsWith('internal error')) this.answers.internal.push(err.message);
      } catch (err) {
        this.answers.internal.push(`an ERROR frame that does not decode: ${String(err)}`);
      }
    }
    if (f.requestId !== 0) this.answered.add(f.requestId);
    this.frames.push(f);
  }

  static open(address: string, answers = new Answers()): Promise<Raw> {
    const at = address.lastIndexOf(':');
    return new Promise((res, rej) => {
      const s = netConnect({ host: address.slice(0, at), port: Number(address.slice(at + 1)) }, () =>
        res(new Raw(s, answers)),
      );
      s.once('error', rej);
    });
  }

  write(bytes: Buffer): void {
    if (!this.closed) this.socket.write(bytes);
  }

  /** Sends a well-formed request and resolves with its decoded answer. */
  async request<T extends RequestType>(req: Extract<Request, { type: T }>, requestId: number) {
    for (const p of encodeRequest(req, requestId)) this.write(p);
    const f = await waitFor(
      () => this.frames.find((x) => x.requestId === requestId) ?? (this.closed ? ('closed' as const) : null),
      `the answer to ${req.type}`,
      CONTROL_DEADLINE_MS,
    );
    if (f === 'closed') throw new Error(`the server closed the connection instead of answering ${req.type}`);
    return decodeResponse(req.type as T, f);
  }

  close(): void {
    this.socket.destroy();
  }
}

function vmRssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** The control client's checks after a batch: it is served, and the control object is as it was. */
async function checkControl(seg: Segment, version: number, what: string): Promise<void> {
  const started = Date.now();
  const got = await untilItWorks(
    () => seg.read(CONTROL, (h) => ({ bytes: Buffer.from(h.bytes), version: h.version })),
    `the control object after ${what}`,
    CONTROL_DEADLINE_MS,
  );
  if (!got.bytes.equals(CONTROL_BYTES) || got.version !== version) {
    throw new Error(
      `after ${what}: the control object changed (version ${got.version}, expected ${version})`,
    );
  }
  // A write of its own: acquire, write, release, read back.
  const counter = `ctl/counter`;
  const before = await seg.read(counter, (h) => h.bytes.readUInt32LE(0));
  await seg.update(counter, (h) => h.bytes.writeUInt32LE(before + 1, 0));
  const after = await seg.read(counter, (h) => h.bytes.readUInt32LE(0));
  if (after !== before + 1)
    throw new Error(`after ${what}: the counter read ${after}, expected ${before + 1}`);
  if (Date.now() - started > CONTROL_DEADLINE_MS)
    throw new Error(`after ${what}: the control client took ${Date.now() - started} ms`);
}

async function loggedIn(address: string, answers: Answers): Promise<Raw> {
  const raw = await Raw.open(address, answers);
  await raw.request({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000 }, 1);
  return raw;
}

/**
 * Sends `frames` (already encoded with request ids 2..) over logged-in connections, PIPELINE at a time; when
 * the server closes a connection (a frame-level error is answered and closes it), the frames it had not
 * answered yet go again on a new one. Resolves with how many connections that took.
 */
async function sendBatch(address: string, frames: Buffer[], answers: Answers): Promise<number> {
  let connections = 1;
  let raw = await loggedIn(address, answers);
  try {
    let next = 0;
    while (next < frames.length) {
      const group = frames.slice(next, next + PIPELINE);
      const ids = group.map((_, i) => next + i + 2);
      for (const f of group) raw.write(f);
      await waitFor(
        () => raw.closed || ids.every((id) => raw.answered.has(id)),
        'answers',
        GROUP_WAIT_MS,
      ).catch(
        () => {}, // requests that wait (a lock, a log) stay pending: the connection's close ends them
      );
      if (raw.closed) {
        // The frame that closed the connection was answered with its id (a bad request) or with id 0 (a
        // frame the decoder refused, the one after the last answered): resend only what came after it.
        let last = -1;
        for (let i = 0; i < ids.length; i++) if (raw.answered.has(ids[i]!)) last = i;
        next += raw.lastRequestId === 0 ? last + 2 : Math.max(last + 1, 1);
        raw = await loggedIn(address, answers);
        connections++;
      } else next += group.length;
    }
  } finally {
    raw.close();
  }
  return connections;
}

test('hostile requests of every type on logged-in connections: the server stays up, serves others, keeps its memory bounded and the control object intact', async (t) => {
  const { hostileFrameArb, describeFrame } = await loadHostile();
  const dir = tempDir('segmem-fuzz-');
  const server = await retryOnAddressInUse(() =>
    startServerProcess({ dataDir: join(dir.path, 'data'), fsync: 'none' }),
  );
  const pid = server.proc.pid!;
  let seg: Segment | undefined;
  let current = '';
  try {
    seg = await connect({ servers: [server.address] });
    await seg.create(CONTROL, CONTROL_BYTES.length);
    await seg.create('ctl/counter', 8);
    await seg.update(CONTROL, (h) => CONTROL_BYTES.copy(h.bytes));
    const version = (await seg.stat(CONTROL)).version;
    let peakRss = vmRssBytes(pid);
    let sent = 0;
    for (const type of REQUEST_TYPES) {
      current = type;
      const samples = fc.sample(hostileFrameArb(type, FUZZ_PREFIX), { seed: SEED, numRuns: FRAMES_PER_TYPE });
      const frames = samples.map((f, i) =>
        Buffer.concat(encodeFrame(MessageType[f.type], i + 2, 0, f.header, f.payload)),
      );
      const started = Date.now();
      const answers = new Answers();
      const connections = await sendBatch(server.address, frames, answers);
      sent += frames.length;
      t.is(server.proc.exitCode, null, `the server exited during the ${type} batch: ${server.stderr()}`);
      t.is(server.proc.pid, pid);
      t.deepEqual(answers.internal, [], `internal errors in the ${type} batch (seed ${SEED})`);
      await checkControl(seg, version, `the ${type} batch`).catch((err: Error) => {
        throw new Error(
          `${err.message}\nseed ${SEED} (SEGMEM_FUZZ_SEED replays it); the batch's first frames:\n` +
            samples.slice(0, 5).map(describeFrame).join('\n'),
        );
      });
      const rss = vmRssBytes(pid);
      peakRss = Math.max(peakRss, rss);
      t.true(rss < MAX_RSS_BYTES, `VmRSS ${rss} bytes after the ${type} batch`);
      t.log(
        `${type}: ${frames.length} frames on ${connections} connection(s) in ${Date.now() - started} ms; errors: ${answers.summary()}`,
      );
    }
    t.log(`${sent} hostile frames; peak VmRSS ${Math.round(peakRss / 1024 / 1024)} MiB; seed ${SEED}`);
  } catch (err) {
    t.log(`seed ${SEED} (SEGMEM_FUZZ_SEED replays it), batch ${current}; server stderr:\n${server.stderr()}`);
    throw err;
  } finally {
    await seg?.close().catch(() => {});
    const code = await server.stop();
    dir.cleanup();
    t.is(code, 0, `clean exit: ${server.stderr()}`);
  }
});

// ----- peer frames -----

const { PEER_HELLO, RAFT, RAFT_PIECE } = PeerMessageType;
/** A stranger's id: not a member, so whatever it says cannot count as a member's word. */
const STRANGER = 'fz-peer';
/** The highest term the stranger's well-formed messages carry (hostile mutations carry any). */
const MAX_STRANGER_TERM = 50;
/** How long a peer frame the member took silently is given before the next one follows. */
const PEER_FRAME_WAIT_MS = 20;

interface PeerFrame {
  type: number;
  header: Record<string, unknown>;
  payload: Buffer;
}

/** Hostile RAFT and RAFT_PIECE frames of plausible shape, from the stranger. */
function peerFrameArb(hostileValue: fc.Arbitrary<unknown>, to: string): fc.Arbitrary<PeerFrame> {
  const raft = fc
    .record({
      type: fc.constantFrom(...RAFT_MESSAGE_TYPES),
      term: fc.nat({ max: MAX_STRANGER_TERM }),
      logIndex: fc.nat({ max: 100 }),
      logTerm: fc.nat({ max: 50 }),
      commit: fc.nat({ max: 100 }),
      entries: fc.array(
        fc.tuple(
          fc.nat({ max: 50 }),
          fc.integer({ min: 1, max: 100 }),
          fc.nat({ max: 1 }),
          fc.nat({ max: 16 }),
        ),
        { maxLength: 3 },
      ),
      withSnapshot: fc.boolean(),
      mutations: fc.array(
        fc.tuple(
          fc.constantFrom(
            'type',
            'from',
            'to',
            'term',
            'logIndex',
            'commit',
            'reject',
            'entries',
            'snapshot',
            'pieces',
            'context',
          ),
          hostileValue,
        ),
        { maxLength: 2 },
      ),
      payloadChange: fc.oneof(
        { weight: 4, arbitrary: fc.constant(0) },
        { weight: 1, arbitrary: fc.integer({ min: -8, max: 8 }) },
      ),
    })
    .map(({ type, term, logIndex, logTerm, commit, entries, withSnapshot, mutations, payloadChange }) => {
      const header: Record<string, unknown> = Object.create(null);
      Object.assign(header, { type, from: STRANGER, to, term, logIndex, logTerm, commit, entries });
      let bytes = entries.reduce((a, e) => a + e[3], 0);
      if (withSnapshot) {
        header.snapshot = [logIndex, logTerm, [STRANGER], 32];
        bytes += 32;
      }
      for (const [k, v] of mutations) header[k] = v;
      return { type: RAFT, header, payload: Buffer.alloc(Math.max(0, bytes + payloadChange), 0x5a) };
    });
  const piece = fc
    .record({
      index: fc.oneof(fc.nat({ max: 100 }), hostileValue),
      term: fc.oneof(fc.nat({ max: 50 }), hostileValue),
      offset: fc.oneof(fc.constant(0), fc.nat({ max: 64 }), hostileValue),
      // Totals up to far past memory: a piece must not make a member allocate what it announces.
      total: fc.oneof(
        fc.integer({ min: 1, max: 64 }),
        fc.constantFrom(2 ** 31, 2 ** 32, 2 ** 40),
        hostileValue,
      ),
      bytes: fc.nat({ max: 64 }),
    })
    .map(({ bytes, ...h }) => {
      const header: Record<string, unknown> = Object.create(null);
      Object.assign(header, h);
      return { type: RAFT_PIECE, header, payload: Buffer.alloc(bytes, 0xa5) };
    });
  return fc.oneof({ weight: 4, arbitrary: raft }, { weight: 1, arbitrary: piece });
}

/** The Raft term a member reports (STATUS on a page-reader connection, which any member answers). */
async function termOf(address: string): Promise<number> {
  const raw = await Raw.open(address);
  try {
    await raw.request(
      { type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000, pageReader: true },
      1,
    );
    return (await raw.request({ type: 'STATUS' }, 2)).term;
  } finally {
    raw.close();
  }
}

async function clusterIdOf(address: string): Promise<string> {
  const raw = await Raw.open(address);
  try {
    const hello = await raw.request(
      { type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 2000, pageReader: true },
      1,
    );
    return hello.clusterId;
  } finally {
    raw.close();
  }
}

/**
 * Frames a stranger sends after its PEER_HELLO, one at a time: a frame the member refuses closes the link
 * (then a new one carries on with the next frame); one it takes is followed by the next after a short pause.
 * Resolves with how many links that took.
 */
async function sendPeerBatch(
  address: string,
  hello: Buffer,
  frames: Buffer[],
  answers: Answers,
): Promise<number> {
  let connections = 0;
  let raw: Raw | null = null;
  try {
    for (const f of frames) {
      if (!raw || raw.closed) {
        raw?.close();
        raw = await Raw.open(address, answers);
        connections++;
        raw.write(hello);
      }
      raw.write(f);
      await waitFor(() => raw!.closed, 'a close', PEER_FRAME_WAIT_MS).catch(() => {});
    }
  } finally {
    raw?.close();
  }
  return connections;
}

/**
 * Whether a member closes the link of a non-member right after its PEER_HELLO. Given 5 s, not 1 s: a
 * refusal that came later on a loaded machine would quietly leave out the checks that depend on it.
 */
async function refusesStranger(address: string, clusterId: string, to: string): Promise<boolean> {
  const raw = await Raw.open(address);
  try {
    raw.write(Buffer.concat(encodeFrame(PEER_HELLO, 1, 0, { clusterId, from: STRANGER, to, token: null })));
    return await waitFor(() => raw.closed, 'a refusal', 5000).then(
      () => true,
      () => false,
    );
  } finally {
    raw.close();
  }
}

async function withPeerCluster(
  t: ExecutionContext,
  body: (cluster: TestCluster, seg: Segment) => Promise<void>,
) {
  const dir = tempDir('segmem-fuzz-peers-');
  const cluster = await TestCluster.start(3, dir.path, 'none');
  let seg: Segment | undefined;
  try {
    seg = await connect({ servers: cluster.addresses });
    await body(cluster, seg);
  } catch (err) {
    t.log(cluster.history());
    throw err;
  } finally {
    await seg?.close().catch(() => {});
    await cluster.stopAll();
    dir.cleanup();
  }
}

test('hostile peer frames from a stranger after a PEER_HELLO: every member stays up, the cluster keeps serving, terms hold where non-members are refused', async (t) => {
  const { hostileValue } = await loadHostile();
  await withPeerCluster(t, async (cluster, seg) => {
    await seg.create(CONTROL, CONTROL_BYTES.length);
    await seg.create('ctl/counter', 8);
    await seg.update(CONTROL, (h) => CONTROL_BYTES.copy(h.bytes));
    const version = (await seg.stat(CONTROL)).version;
    const clusterId = await clusterIdOf(cluster.addresses[0]!);
    const pids = cluster.members.map((m) => m.server!.proc.pid);
    const termsBefore = await Promise.all(cluster.addresses.map(termOf));
    const strangerRefused = await refusesStranger(cluster.addresses[0]!, clusterId, cluster.members[0]!.id);
    for (const [i, m] of cluster.members.entries()) {
      // The stranger knows the cluster's id (any client learns it) and names the member it dials.
      const hello = Buffer.concat(
        encodeFrame(PEER_HELLO, 1, 0, { clusterId, from: STRANGER, to: m.id, token: null }),
      );
      const frames = fc
        .sample(peerFrameArb(hostileValue, m.id), { seed: SEED + i, numRuns: FRAMES_PER_TYPE })
        .map((f) => Buffer.concat(encodeFrame(f.type, 1, 0, f.header, f.payload)));
      const started = Date.now();
      const answers = new Answers();
      const connections = await sendPeerBatch(m.address, hello, frames, answers);
      if (strangerRefused) {
        t.deepEqual(answers.internal, [], `internal errors answering peer frames to ${m.id} (seed ${SEED})`);
      } else {
        // Taken for a member, the stranger can send a heartbeat whose commit index is beyond the member's
        // log: the consensus core's invariant refuses it (the link is closed, the member goes on). Only
        // that; any other internal error fails.
        const other = answers.internal.filter((e) => !e.startsWith('internal error: raft invariant: '));
        t.deepEqual(other, [], `internal errors answering peer frames to ${m.id} (seed ${SEED})`);
        if (answers.internal.length > 0) t.log(`${m.id}: ${answers.internal.join('; ')}`);
      }
      t.log(
        `${m.id}: ${frames.length} peer frames on ${connections} connection(s) in ${Date.now() - started} ms; errors: ${answers.summary()}`,
      );
      await checkControl(seg, version, `the peer frames to ${m.id}`);
      t.true(vmRssBytes(m.server!.proc.pid!) < MAX_RSS_BYTES, `${m.id} VmRSS`);
    }
    t.deepEqual(
      cluster.members.map((m) => m.server?.proc.exitCode ?? null),
      [null, null, null],
      'every member still runs',
    );
    t.deepEqual(
      cluster.members.map((m) => m.server!.proc.pid),
      pids,
    );
    const termsAfter = await Promise.all(cluster.addresses.map(termOf));
    const moved = termsAfter
      .map((term, i) => `${cluster.members[i]!.id} ${termsBefore[i]} -> ${term}`)
      .join(', ');
    if (strangerRefused) {
      // Members refuse a PEER_HELLO from a non-member: nothing the stranger sent reached consensus, so
      // terms moved by a few elections at most (a loaded machine).
      for (const [i, term] of termsAfter.entries())
        t.true(term - termsBefore[i]! <= 5, `terms ${moved} (seed ${SEED})`);
    } else {
      // Members still take a non-member's PEER_HELLO (no peer authentication): its well-formed messages can
      // move terms as far as the values they carry. Liveness and intact data are what hold then.
      t.log(`members accept a non-member peer: terms ${moved}`);
    }
  });
});
