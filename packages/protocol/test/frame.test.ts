import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import {
  decodeFrame,
  encodeFrame,
  encodeFrameToBuffer,
  FRAME_PREFIX_BYTES,
  type Frame,
  FrameDecoder,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  SegmemError,
} from '../src/index.js';

interface Spec {
  type: number;
  requestId: number;
  groupId: number;
  header: Record<string, unknown>;
  payload: Buffer;
}

const specArb: fc.Arbitrary<Spec> = fc.record({
  type: fc.integer({ min: 0, max: 255 }),
  requestId: fc.integer({ min: 0, max: 0xffffffff }),
  groupId: fc.integer({ min: 0, max: 0xffff }),
  header: fc.dictionary(
    fc.string({ maxLength: 8 }).filter((k) => !['__proto__', 'constructor', 'prototype'].includes(k)),
    fc.oneof(
      fc.maxSafeInteger(),
      fc.string(),
      fc.boolean(),
      fc.constant(null),
      fc.array(fc.nat(), { maxLength: 4 }),
    ),
    { maxKeys: 6, noNullPrototype: true },
  ),
  payload: fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)),
});

function encode(s: Spec): Buffer {
  return encodeFrameToBuffer(s.type, s.requestId, s.groupId, s.header, s.payload);
}

function same(t: ExecutionContext, frame: Frame, s: Spec): void {
  t.is(frame.version, PROTOCOL_VERSION);
  t.is(frame.type, s.type);
  t.is(frame.requestId, s.requestId);
  t.is(frame.groupId, s.groupId);
  t.deepEqual(frame.header, s.header);
  t.true(frame.payload.equals(s.payload));
}

function protocolThrow(t: ExecutionContext, fn: () => unknown, includes: string): SegmemError {
  const err = t.throws(fn) as SegmemError;
  t.true(SegmemError.is(err, 'PROTOCOL'), String(err));
  t.true(err.message.includes(includes), err.message);
  return err;
}

test('layout matches the documented table', (t) => {
  const buf = encodeFrameToBuffer(7, 0x01020304, 0x0506, { a: 1 }, Buffer.from([9, 8, 7]));
  // msgpackr writes maps as map16: de 0001, then fixstr "a", fixint 1.
  const header = [0xde, 0x00, 0x01, 0xa1, 0x61, 0x01];
  t.is(buf.readUInt32LE(0), buf.length - 4);
  t.is(buf.readUInt32LE(0), 12 + header.length + 3);
  t.is(buf[4], PROTOCOL_VERSION);
  t.is(buf[5], 7);
  t.is(buf.readUInt32LE(6), 0x01020304);
  t.is(buf.readUInt16LE(10), 0x0506);
  t.is(buf.readUInt32LE(12), header.length);
  t.deepEqual([...buf.subarray(16, 16 + header.length)], header);
  t.deepEqual([...buf.subarray(16 + header.length)], [9, 8, 7]);
});

test('encodeFrame hands back the payload itself (no copy)', (t) => {
  const payload = Buffer.alloc(4096, 7);
  const parts = encodeFrame(0x40, 1, 0, { x: 1 }, payload);
  t.is(parts.length, 2);
  t.is(parts[1], payload);
  t.is(encodeFrame(0x40, 1, 0, { x: 1 }).length, 1);
  t.is(encodeFrame(0x40, 1, 0, { x: 1 }, Buffer.alloc(0)).length, 1);
  const u8 = new Uint8Array(10);
  const viaU8 = encodeFrame(0x40, 1, 0, {}, u8);
  t.true(Buffer.isBuffer(viaU8[1]));
  t.is(viaU8[1].buffer, u8.buffer);
});

test('encodeFrame refuses out-of-range fixed fields and oversize frames with INVALID_ARGUMENT', (t) => {
  const bad = [
    () => encodeFrame(256, 1, 0, {}),
    () => encodeFrame(-1, 1, 0, {}),
    () => encodeFrame(1, 2 ** 32, 0, {}),
    () => encodeFrame(1, 1.5, 0, {}),
    () => encodeFrame(1, 1, 65536, {}),
    () => encodeFrame(1, 1, 0, {}, Buffer.alloc(100), 50),
    () => encodeFrame(1, 1, 0, {}, Buffer.allocUnsafe(MAX_FRAME_BYTES)),
  ];
  for (const fn of bad) {
    const err = t.throws(fn) as SegmemError;
    t.true(SegmemError.is(err, 'INVALID_ARGUMENT'), String(err));
  }
  // Exactly at the limit is fine: 12 fixed bytes + 3 header bytes ({} as map16) + payload.
  t.notThrows(() => encodeFrame(1, 1, 0, {}, Buffer.alloc(35), 50));
  t.throws(() => encodeFrame(1, 1, 0, {}, Buffer.alloc(36), 50));
});

test('arbitrary frames round trip through arbitrary chunking', (t) => {
  fc.assert(
    fc.property(
      fc.array(specArb, { minLength: 1, maxLength: 5 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      (specs, cuts) => {
        const stream = Buffer.concat(specs.map(encode));
        const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
        const decoder = new FrameDecoder();
        const frames: Frame[] = [];
        let from = 0;
        for (const p of [...points, stream.length]) {
          frames.push(...decoder.push(stream.subarray(from, p)));
          from = p;
        }
        t.is(frames.length, specs.length);
        specs.forEach((s, i) => {
          same(t, frames[i], s);
        });
        t.is(decoder.bufferedBytes, 0);
      },
    ),
    { numRuns: 300 },
  );
});

test('frames split at every possible position decode, and coalesced ones too', (t) => {
  const specs: Spec[] = [
    { type: 1, requestId: 1, groupId: 0, header: { protocol: 1 }, payload: Buffer.alloc(0) },
    { type: 8, requestId: 2, groupId: 3, header: { ranges: [[0, 5]] }, payload: Buffer.from('hello') },
    { type: 0x40, requestId: 3, groupId: 0, header: {}, payload: Buffer.alloc(37, 1) },
  ];
  const stream = Buffer.concat(specs.map(encode));
  for (let i = 0; i <= stream.length; i++) {
    for (const j of [i, Math.min(stream.length, i + 1), Math.min(stream.length, i + 17)]) {
      const decoder = new FrameDecoder();
      const frames = [
        ...decoder.push(stream.subarray(0, i)),
        ...decoder.push(stream.subarray(i, j)),
        ...decoder.push(stream.subarray(j)),
      ];
      t.is(frames.length, 3, `cut at ${i},${j}`);
      specs.forEach((s, k) => {
        same(t, frames[k], s);
      });
    }
  }
  // Byte by byte.
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  for (let i = 0; i < stream.length; i++) frames.push(...decoder.push(stream.subarray(i, i + 1)));
  t.is(frames.length, 3);
  specs.forEach((s, k) => {
    same(t, frames[k], s);
  });
});

test('a frame within one chunk is decoded in place: its payload is a view of the chunk', (t) => {
  const a = encodeFrameToBuffer(0x40, 1, 0, { n: 1 }, Buffer.alloc(4096, 1));
  const b = encodeFrameToBuffer(0x40, 2, 0, { n: 2 }, Buffer.alloc(100, 2));
  const chunk = Buffer.concat([a, b]);
  const frames = new FrameDecoder().push(chunk);
  t.is(frames.length, 2);
  for (const f of frames) {
    t.is(f.payload.buffer, chunk.buffer);
    t.true(
      f.payload.byteOffset >= chunk.byteOffset &&
        f.payload.byteOffset + f.payload.length <= chunk.byteOffset + chunk.length,
    );
  }
  chunk[a.length - 1] = 0xee; // the payload sees changes to the chunk: shared memory
  t.is(frames[0].payload[4095], 0xee);
});

test('the encodeFrame parts pushed separately decode (one copy into a frame-sized buffer)', (t) => {
  const payload = Buffer.alloc(10_000, 3);
  const decoder = new FrameDecoder();
  const parts = encodeFrame(0x40, 9, 0, { pages: [0, 1, 2] }, payload);
  t.deepEqual(decoder.push(parts[0]), []);
  t.is(decoder.bufferedBytes, parts[0].length);
  const [frame] = decoder.push(parts[1]);
  t.deepEqual(frame.header, { pages: [0, 1, 2] });
  t.true(frame.payload.equals(payload));
  t.not(frame.payload.buffer, payload.buffer);
  t.is(decoder.bufferedBytes, 0);
});

test('a large frame over many chunks decodes in linear time', (t) => {
  const payload = Buffer.alloc(8 * 1024 * 1024, 5);
  const stream = encodeFrameToBuffer(0x40, 1, 0, { big: true }, payload);
  const decoder = new FrameDecoder();
  const started = process.hrtime.bigint();
  let frames: Frame[] = [];
  for (let i = 0; i < stream.length; i += 1000)
    frames = frames.concat(decoder.push(stream.subarray(i, i + 1000)));
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  t.is(frames.length, 1);
  t.true(frames[0].payload.equals(payload));
  t.log(`8 MiB frame in 1000-byte chunks: ${ms.toFixed(1)} ms`);
  t.true(ms < 5000);
});

test('an oversize length prefix is refused as soon as its 4 bytes arrive', (t) => {
  const decoder = new FrameDecoder();
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(MAX_FRAME_BYTES + 1, 0);
  protocolThrow(t, () => decoder.push(prefix), 'exceeds the limit');
  t.is(decoder.bufferedBytes, 0);
  // Split prefix: nothing until the 4th byte.
  const d2 = new FrameDecoder({ maxFrameBytes: 1000 });
  const p2 = Buffer.alloc(4);
  p2.writeUInt32LE(1001, 0);
  t.deepEqual(d2.push(p2.subarray(0, 2)), []);
  t.deepEqual(d2.push(p2.subarray(2, 3)), []);
  protocolThrow(t, () => d2.push(p2.subarray(3, 4)), 'exceeds the limit of 1000');
  // The maximum itself is accepted (and waits for the body).
  const d3 = new FrameDecoder({ maxFrameBytes: 1000 });
  const p3 = Buffer.alloc(16);
  p3.writeUInt32LE(1000, 0);
  p3[4] = PROTOCOL_VERSION;
  t.deepEqual(d3.push(p3), []);
  t.is(d3.bufferedBytes, 16);
});

test('next() hands frames one at a time, so the limit can rise between them (a login)', (t) => {
  const small = encodeFrameToBuffer(1, 1, 0, { a: 1 });
  const big = encodeFrameToBuffer(2, 2, 0, { b: 2 }, Buffer.alloc(5000, 7));
  const decoder = new FrameDecoder({ maxFrameBytes: 1000 });
  decoder.feed(Buffer.concat([small, big]));
  const first = decoder.next();
  t.is(first?.type, 1);
  // Under the old limit the next frame would be refused; raised now, it decodes from the same buffer.
  decoder.maxFrameBytes = 10_000;
  const second = decoder.next();
  t.is(second?.type, 2);
  t.is(second?.payload.length, 5000);
  t.is(decoder.next(), null);
  // Without the raise, the same stream fails on the second frame's length, before its body is wanted.
  const strict = new FrameDecoder({ maxFrameBytes: 1000 });
  strict.feed(Buffer.concat([small, big.subarray(0, 4)]));
  t.is(strict.next()?.type, 1);
  protocolThrow(t, () => strict.next(), 'exceeds the limit of 1000');
  protocolThrow(t, () => strict.feed(Buffer.alloc(1)), 'stopped after an earlier error');
  t.throws(
    () => {
      decoder.maxFrameBytes = 3;
    },
    { code: 'INVALID_ARGUMENT' } as never,
  );
});

test('frames below the minimum length are refused', (t) => {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(11, 0);
  protocolThrow(t, () => new FrameDecoder().push(buf), 'below the minimum');
});

test('a version mismatch is refused once the 16-byte prefix arrives, naming both versions', (t) => {
  const frame = encodeFrameToBuffer(1, 1, 0, { a: 1 }, Buffer.alloc(1000));
  frame[4] = PROTOCOL_VERSION + 1;
  const decoder = new FrameDecoder();
  t.deepEqual(decoder.push(frame.subarray(0, 15)), []);
  const err = protocolThrow(t, () => decoder.push(frame.subarray(15, 16)), `version ${PROTOCOL_VERSION + 1}`);
  t.true(err.message.includes(`speaks version ${PROTOCOL_VERSION}`));
});

test('headerBytes larger than the frame is refused before the body arrives', (t) => {
  const frame = encodeFrameToBuffer(1, 1, 0, { a: 1 }, Buffer.alloc(100));
  frame.writeUInt32LE(frame.readUInt32LE(0) - 11, 12);
  protocolThrow(t, () => new FrameDecoder().push(frame.subarray(0, FRAME_PREFIX_BYTES)), 'does not fit');
});

test('bad msgpack and non-map headers are refused', (t) => {
  const good = encodeFrameToBuffer(3, 5, 0, { a: 1 });
  const badMsgpack = Buffer.from(good);
  badMsgpack[16] = 0xc1;
  protocolThrow(t, () => new FrameDecoder().push(badMsgpack), 'bad msgpack header');
  const arrayHeader = Buffer.concat([good.subarray(0, 16), Buffer.from([0x91, 0x01])]);
  arrayHeader.writeUInt32LE(14, 0);
  arrayHeader.writeUInt32LE(2, 12);
  const err = protocolThrow(t, () => new FrameDecoder().push(arrayHeader), 'must be a msgpack map');
  t.is(err.details?.requestId, 5);
  const empty = Buffer.from(good.subarray(0, 16));
  empty.writeUInt32LE(12, 0);
  empty.writeUInt32LE(0, 12);
  protocolThrow(t, () => new FrameDecoder().push(empty), 'empty header');
});

test('after an error the decoder refuses all further input', (t) => {
  const decoder = new FrameDecoder();
  const good = encodeFrameToBuffer(1, 1, 0, { a: 1 });
  const bad = Buffer.from(good);
  bad[4] = 99;
  // The good frame before the bad one is lost with the error: the whole push throws.
  protocolThrow(t, () => decoder.push(Buffer.concat([good, bad])), 'version 99');
  t.truthy(decoder.failure);
  protocolThrow(t, () => decoder.push(good), 'stopped after an earlier error');
  protocolThrow(t, () => decoder.push(Buffer.alloc(0)), 'stopped after an earlier error');
  t.is(decoder.bufferedBytes, 0);
});

test('decodeFrame takes exactly one frame', (t) => {
  const good = encodeFrameToBuffer(2, 1, 0, {}, Buffer.from([1]));
  t.is(decodeFrame(good).payload[0], 1);
  protocolThrow(t, () => decodeFrame(good.subarray(0, good.length - 1)), 'does not match');
  protocolThrow(t, () => decodeFrame(Buffer.concat([good, Buffer.from([0])])), 'does not match');
  protocolThrow(t, () => decodeFrame(good.subarray(0, 10)), 'at least 16');
});

test('FrameDecoder refuses a bad maxFrameBytes', (t) => {
  for (const maxFrameBytes of [11, 2 ** 32, 1.5, -1]) {
    const err = t.throws(() => new FrameDecoder({ maxFrameBytes })) as SegmemError;
    t.is(err.code, 'INVALID_ARGUMENT');
  }
});

test('a payload given in parts follows the header uncopied and decodes as one payload', (t) => {
  const a = Buffer.from('first part|');
  const b = Buffer.alloc(0);
  const c = Buffer.from('second part');
  const parts = encodeFrame(0x81, 1, 0, { n: 2 }, [a, b, c]);
  t.is(parts.length, 3, 'header, then the non-empty parts');
  t.is(parts[1], a, 'the same memory, not a copy');
  t.is(parts[2], c);
  const frames = new FrameDecoder().push(Buffer.concat(parts));
  t.is(frames.length, 1);
  t.is(frames[0]!.payload.toString(), 'first part|second part');
});
