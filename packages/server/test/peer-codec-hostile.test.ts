/**
 * Valid-but-hostile peer frames (PEER_HELLO, RAFT, RAFT_PIECE): the peer decoders refuse each with
 * SegmemError INVALID_ARGUMENT or PROTOCOL, or return a message within the bounds the codec documents
 * (server ids of [A-Za-z0-9._-], safe non-negative terms and indexes, entry and snapshot bytes exactly the
 * payload). The hostile values are the request fuzzer's (protocol/test/hostile.ts). Fixed seed;
 * SEGMEM_FUZZ_SEED=<n> runs others, and a failure prints the seed, the replay path and the frame.
 */
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { decodeFrame, encodeFrameToBuffer, SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import type { Message } from '../src/raft/types.js';
import {
  decodePeerHello,
  decodeRaftMessage,
  PeerMessageType,
  RAFT_MESSAGE_TYPES,
  SnapshotPieces,
} from '../src/shell/peer-codec.js';

type Hostile = typeof import('../../protocol/test/hostile.js');
const here = fileURLToPath(new URL('.', import.meta.url));
const loadHostile = () =>
  import(pathToFileURL(resolve(here, '../../../protocol/dist/test/hostile.js')).href) as Promise<Hostile>;

const SEED = Number(process.env.SEGMEM_FUZZ_SEED ?? 20261207);
const FRAMES = 500;
const NODE_ID = /^[A-Za-z0-9._-]{1,64}$/;

interface PeerFrame {
  type: number;
  header: Record<string, unknown>;
  payload: Buffer;
  notes: string[];
}

function refusedAsItShould(err: unknown): boolean {
  return SegmemError.is(err, 'INVALID_ARGUMENT') || SegmemError.is(err, 'PROTOCOL');
}

/** The first bound a decoded RAFT message breaks, or null. */
function brokenBound(m: Message, payloadBytes: number): string | null {
  if (!RAFT_MESSAGE_TYPES.includes(m.type)) return 'type';
  if (!NODE_ID.test(m.from) || !NODE_ID.test(m.to)) return 'from/to';
  for (const k of ['term', 'logIndex', 'logTerm', 'commit', 'hintIndex', 'hintTerm', 'context'] as const) {
    const v = m[k];
    if (v !== undefined && !(typeof v === 'number' && Number.isSafeInteger(v) && v >= 0)) return k;
  }
  let bytes = 0;
  for (const e of m.entries ?? []) {
    if (!Number.isSafeInteger(e.term) || e.term < 0 || !Number.isSafeInteger(e.index) || e.index < 1)
      return 'entry';
    bytes += e.data.length;
  }
  if (m.snapshot) {
    if (!m.snapshot.meta.members.every((id) => NODE_ID.test(id))) return 'snapshot.members';
    bytes += m.snapshot.data.length;
  }
  return bytes === payloadBytes ? null : `carries ${bytes} bytes of a ${payloadBytes}-byte payload`;
}

function peerFrameArb(hostileValue: fc.Arbitrary<unknown>): fc.Arbitrary<PeerFrame> {
  const mutations = (fields: string[]) =>
    fc.array(fc.tuple(fc.constantFrom(...fields), fc.oneof(hostileValue, fc.constant(undefined))), {
      minLength: 1,
      maxLength: 3,
    });
  const hello = fc
    .record({
      m: mutations(['clusterId', 'from', 'to', 'token', 'nonce']),
      extra: fc.boolean(),
    })
    .map(({ m, extra }) => {
      const header: Record<string, unknown> = Object.create(null);
      Object.assign(header, { clusterId: 'c', from: 's2', to: 's1', token: null });
      if (extra) header.extra = [1, 2];
      return build(PeerMessageType.PEER_HELLO, header, m, Buffer.alloc(0));
    });
  const raft = fc
    .record({
      type: fc.constantFrom(...RAFT_MESSAGE_TYPES),
      entries: fc.array(fc.tuple(fc.nat(9), fc.integer({ min: 1, max: 99 }), fc.nat(1), fc.nat(16)), {
        maxLength: 3,
      }),
      snapshot: fc.boolean(),
      m: mutations([
        'type',
        'from',
        'to',
        'term',
        'logIndex',
        'logTerm',
        'commit',
        'reject',
        'hintIndex',
        'context',
        'entries',
        'snapshot',
        'pieces',
      ]),
      payloadChange: fc.oneof(fc.constant(0), fc.integer({ min: -8, max: 8 })),
    })
    .map(({ type, entries, snapshot, m, payloadChange }) => {
      const header: Record<string, unknown> = Object.create(null);
      Object.assign(header, {
        type,
        from: 's2',
        to: 's1',
        term: 3,
        logIndex: 5,
        logTerm: 2,
        commit: 4,
        entries,
      });
      let bytes = entries.reduce((a, e) => a + e[3], 0);
      if (snapshot) {
        header.snapshot = [5, 2, ['s1', 's2', 's3'], 32];
        bytes += 32;
      }
      const payload = Buffer.alloc(Math.max(0, bytes + payloadChange), 0x5a);
      const f = build(PeerMessageType.RAFT, header, m, payload);
      if (payloadChange !== 0) f.notes.push(`payload ${bytes} -> ${payload.length} bytes`);
      return f;
    });
  const piece = fc
    .record({ m: mutations(['index', 'term', 'offset', 'total']), bytes: fc.nat(64) })
    .map(({ m, bytes }) => {
      const header: Record<string, unknown> = Object.create(null);
      Object.assign(header, { index: 5, term: 2, offset: 0, total: 64 });
      return build(PeerMessageType.RAFT_PIECE, header, m, Buffer.alloc(bytes, 0xa5));
    });
  return fc.oneof(hello, raft, piece);
}

function build(
  type: number,
  header: Record<string, unknown>,
  m: [string, unknown][],
  payload: Buffer,
): PeerFrame {
  const notes: string[] = [];
  for (const [k, v] of m) {
    if (v === undefined) {
      delete header[k];
      notes.push(`-${k}`);
    } else {
      header[k] = v;
      notes.push(`${k}=${typeof v === 'bigint' ? `${v}n` : (JSON.stringify(v) ?? String(v)).slice(0, 40)}`);
    }
  }
  return { type, header, payload, notes };
}

function check(t: ExecutionContext, hostileValue: fc.Arbitrary<unknown>): void {
  let accepted = 0;
  const result = fc.check(
    fc.property(peerFrameArb(hostileValue), (f) => {
      let frame: ReturnType<typeof decodeFrame>;
      try {
        frame = decodeFrame(encodeFrameToBuffer(f.type, 1, 0, f.header, f.payload));
      } catch (err) {
        if (refusedAsItShould(err)) return; // the header rules refuse it before any peer decoder
        throw err;
      }
      try {
        if (f.type === PeerMessageType.PEER_HELLO) {
          const hello = decodePeerHello(frame);
          if (!NODE_ID.test(hello.from) || !NODE_ID.test(hello.to)) throw new Error('a bad id got through');
        } else if (f.type === PeerMessageType.RAFT_PIECE) {
          new SnapshotPieces().add(frame);
        } else {
          const m = decodeRaftMessage(frame, new SnapshotPieces());
          const broken = brokenBound(m, f.payload.length);
          if (broken !== null) throw new Error(`accepted a message out of bounds (${broken})`);
        }
        accepted++;
      } catch (err) {
        if (!refusedAsItShould(err)) throw err;
      }
    }),
    { seed: SEED, numRuns: FRAMES },
  );
  if (result.failed) {
    const f = result.counterexample?.[0];
    t.fail(
      `${String(result.errorInstance)}\nreplay: SEGMEM_FUZZ_SEED=${result.seed}, path "${result.counterexamplePath}"\n` +
        (f
          ? `type 0x${f.type.toString(16)} [${f.notes.join(', ')}] frame ${encodeFrameToBuffer(f.type, 1, 0, f.header, f.payload).toString('hex').slice(0, 1024)}`
          : ''),
    );
  } else t.log(`${accepted} of ${FRAMES} hostile peer frames decoded (the rest refused)`);
  t.pass();
}

test('hostile peer frames: refused with INVALID_ARGUMENT or PROTOCOL, or decoded within bounds', async (t) => {
  const { hostileValue } = await loadHostile();
  check(t, hostileValue);
});
