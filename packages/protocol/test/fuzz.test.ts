/**
 * Hostile input at the frame decoder and the message layer: whatever arrives, the only failures are
 * SegmemError PROTOCOL (frame level) or INVALID_ARGUMENT (a bad field of one request), and nothing hangs.
 */
import test from 'ava';
import fc from 'fast-check';
import {
  decodeError,
  decodeInvalidate,
  decodeOk,
  decodeRequest,
  encodeError,
  encodeInvalidate,
  encodeOk,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MessageType,
  PAGE_BYTES,
  PROTOCOL_VERSION,
  REQUEST_TYPES,
  SegmemError,
} from '../src/index.js';

function allowed(err: unknown): boolean {
  return SegmemError.is(err, 'PROTOCOL') || SegmemError.is(err, 'INVALID_ARGUMENT');
}

/** Runs every decoder that could see this frame; returns how many accepted it. */
function decodeEverything(frame: Frame): number {
  let accepted = 0;
  const attempts: (() => unknown)[] = [
    () => decodeRequest(frame),
    () => decodeError(frame),
    () => decodeInvalidate(frame),
    ...REQUEST_TYPES.map((type) => () => decodeOk(type, frame)),
  ];
  for (const attempt of attempts) {
    try {
      attempt();
      accepted++;
    } catch (err) {
      if (!allowed(err)) throw err;
    }
  }
  return accepted;
}

/** Feeds `stream` in chunks; returns frames decoded before the decoder stopped (if it did). */
function feed(
  stream: Buffer,
  cuts: number[],
  maxFrameBytes: number,
): { frames: Frame[]; error?: SegmemError } {
  const decoder = new FrameDecoder({ maxFrameBytes });
  const frames: Frame[] = [];
  const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
  let from = 0;
  for (const p of [...points, stream.length]) {
    try {
      frames.push(...decoder.push(stream.subarray(from, p)));
    } catch (err) {
      if (!SegmemError.is(err, 'PROTOCOL')) throw err;
      // Once failed, the decoder keeps refusing.
      try {
        decoder.push(Buffer.from([0]));
      } catch (again) {
        if (!SegmemError.is(again, 'PROTOCOL')) throw again;
        return { frames, error: err };
      }
      throw new Error('decoder accepted input after an error');
    }
    from = p;
  }
  return { frames };
}

test('random byte streams only ever fail with PROTOCOL', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 600 }), fc.array(fc.nat(), { maxLength: 6 }), (bytes, cuts) => {
      const { frames } = feed(Buffer.from(bytes), cuts, 4096);
      for (const f of frames) decodeEverything(f);
      t.pass();
    }),
    { numRuns: 3000 },
  );
});

test('streams of plausible frames with random bodies only fail with PROTOCOL or INVALID_ARGUMENT', (t) => {
  // A valid prefix (length, version, type, ids, headerBytes) around random header and payload bytes, so the
  // fuzzing reaches the msgpack scanner and the message validators rather than stopping at the length check.
  const frameArb = fc
    .record({
      type: fc.oneof(fc.constantFrom(...Object.values(MessageType)), fc.integer({ min: 0, max: 255 })),
      requestId: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 0xffffffff })),
      header: fc.uint8Array({ maxLength: 60 }),
      payload: fc.uint8Array({ maxLength: 40 }),
      asMap: fc.boolean(),
    })
    .map(({ type, requestId, header, payload, asMap }) => {
      const h = Buffer.from(header);
      if (asMap && h.length > 0) h[0] = 0x80 | (h[0] & 0x0f);
      const prefix = Buffer.alloc(16);
      prefix.writeUInt32LE(12 + h.length + payload.length, 0);
      prefix[4] = PROTOCOL_VERSION;
      prefix[5] = type;
      prefix.writeUInt32LE(requestId, 6);
      prefix.writeUInt32LE(h.length, 12);
      return Buffer.concat([prefix, h, Buffer.from(payload)]);
    });
  fc.assert(
    fc.property(
      fc.array(frameArb, { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      (frames, cuts) => {
        const result = feed(Buffer.concat(frames), cuts, 4096);
        for (const f of result.frames) decodeEverything(f);
        t.pass();
      },
    ),
    { numRuns: 3000 },
  );
});

const validStream = Buffer.concat([
  ...encodeRequest(
    { type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 10_000, clusterId: 'c', udpPort: 9 },
    1,
  ),
  ...encodeRequest({ type: 'CREATE', seq: 1, name: 'counter', size: 8, ifNotExists: false }, 2),
  ...encodeRequest(
    {
      type: 'ACQUIRE',
      seq: 2,
      name: 'counter',
      mode: 'write',
      cachedId: 0,
      cachedVersion: 0,
      timeoutMs: 100,
    },
    3,
  ),
  ...encodeRequest(
    {
      type: 'RELEASE',
      seq: 3,
      name: 'counter',
      mode: 'write',
      token: 4,
      ranges: [[0, 8]],
      payload: Buffer.alloc(8, 1),
    },
    4,
  ),
  ...encodeRequest({ type: 'VALIDATE', objects: [[1, 2]] }, 5),
  ...encodeOk(
    'ACQUIRE',
    3,
    { object: { id: 1, name: 'counter', size: 8, address: PAGE_BYTES, version: 1 }, token: 4, pages: [0] },
    Buffer.alloc(8, 2),
  ),
  ...encodeError(6, new SegmemError('NOT_FOUND', 'no object "x"', { name: 'x' })),
  ...encodeInvalidate({ seq: 1, objects: [[1, 2]] }),
]);

test('the unmutated valid stream decodes completely', (t) => {
  const { frames, error } = feed(validStream, [], 4096);
  t.is(error, undefined);
  t.is(frames.length, 8);
  t.true(frames.every((f) => decodeEverything(f) >= 1));
});

test('mutated and truncated valid streams only fail with PROTOCOL or INVALID_ARGUMENT', (t) => {
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), byte: fc.constant(0) }),
  );
  fc.assert(
    fc.property(
      fc.array(mutation, { minLength: 1, maxLength: 4 }),
      fc.nat(),
      fc.array(fc.nat(), { maxLength: 5 }),
      (mutations, truncate, cuts) => {
        let bytes = [...validStream];
        for (const m of mutations) {
          const at = m.at % (bytes.length + 1);
          if (m.kind === 'set' && at < bytes.length) bytes[at] = m.byte;
          else if (m.kind === 'insert') bytes.splice(at, 0, m.byte);
          else if (m.kind === 'delete') bytes.splice(at, 1);
        }
        bytes = bytes.slice(0, bytes.length - (truncate % 32));
        const { frames } = feed(Buffer.from(bytes), cuts, 4096);
        for (const f of frames) decodeEverything(f);
        t.pass();
      },
    ),
    { numRuns: 3000 },
  );
});

test('a flood of small junk finishes quickly (no quadratic work, no hang)', (t) => {
  const decoder = new FrameDecoder();
  // A valid 1 MiB frame announced, then delivered one byte at a time for the first 64 KiB.
  const prefix = Buffer.alloc(16);
  prefix.writeUInt32LE(1024 * 1024, 0);
  prefix[4] = PROTOCOL_VERSION;
  prefix.writeUInt32LE(1, 12);
  decoder.push(prefix);
  const started = Date.now();
  const one = Buffer.alloc(1, 0x80);
  for (let i = 0; i < 65_536; i++) decoder.push(one);
  t.is(decoder.bufferedBytes, 16 + 65_536);
  t.true(Date.now() - started < 2000, `${Date.now() - started} ms`);
});
