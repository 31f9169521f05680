import test from 'ava';
import fc from 'fast-check';
import {
  DATAGRAM_PREFIX_BYTES,
  decodeInvalidationDatagram,
  encodeHeader,
  encodeInvalidationDatagram,
  MAX_DATAGRAM_BYTES,
  PROTOCOL_VERSION,
  SegmemError,
  type VersionPair,
} from '../src/index.js';

function protocolOnly(fn: () => unknown): SegmemError | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    if (!SegmemError.is(err, 'PROTOCOL')) throw err;
    return err;
  }
}

test('layout: magic, version, kind, reserved, msgpack body', (t) => {
  const buf = encodeInvalidationDatagram({ sessionId: 5, seq: 9, objects: [[1, 2]] });
  t.is(buf.toString('latin1', 0, 4), 'SGMU');
  t.is(buf[4], PROTOCOL_VERSION);
  t.is(buf[5], 1);
  t.is(buf.readUInt16LE(6), 0);
  t.deepEqual(decodeInvalidationDatagram(buf), { sessionId: 5, seq: 9, objects: [[1, 2]], truncated: false });
});

test('hints round trip', (t) => {
  const pair = fc.tuple(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), fc.maxSafeNat());
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      fc.array(pair, { maxLength: 40 }),
      (sessionId, seq, objects) => {
        const buf = encodeInvalidationDatagram({ sessionId, seq, objects });
        t.true(buf.length <= MAX_DATAGRAM_BYTES);
        t.deepEqual(decodeInvalidationDatagram(buf), { sessionId, seq, objects, truncated: false });
      },
    ),
    { numRuns: 300 },
  );
});

test('a hint that does not fit keeps the longest prefix of objects and says truncated', (t) => {
  for (const [count, big] of [
    [100, true],
    [1000, false],
    [5000, true],
  ] as const) {
    const objects: VersionPair[] = [];
    for (let i = 0; i < count; i++) objects.push(big ? [2 ** 50 + i, 2 ** 45 + i] : [i + 1, i + 1]);
    const buf = encodeInvalidationDatagram({ sessionId: 1, seq: 2, objects });
    t.true(buf.length <= MAX_DATAGRAM_BYTES, `${buf.length} bytes`);
    const hint = decodeInvalidationDatagram(buf);
    t.true(hint.truncated);
    t.true(hint.objects.length > 0 && hint.objects.length < count);
    t.deepEqual(hint.objects, objects.slice(0, hint.objects.length));
    // One more object (with the truncated flag) would not have fit.
    const more = encodeInvalidationDatagram({
      sessionId: 1,
      seq: 2,
      objects: objects.slice(0, hint.objects.length + 1),
      truncated: true,
    });
    t.is(decodeInvalidationDatagram(more).objects.length, hint.objects.length);
    t.log(`${count} ${big ? 'large' : 'small'} pairs: ${hint.objects.length} fit in ${buf.length} bytes`);
  }
  const flagged = encodeInvalidationDatagram({ sessionId: 1, seq: 2, objects: [], truncated: true });
  t.true(decodeInvalidationDatagram(flagged).truncated);
});

test('bad datagrams are PROTOCOL errors', (t) => {
  const good = encodeInvalidationDatagram({ sessionId: 1, seq: 2, objects: [[3, 4]] });
  const mutate = (at: number, byte: number) => {
    const b = Buffer.from(good);
    b[at] = byte;
    return b;
  };
  const cases: [Buffer, string][] = [
    [Buffer.alloc(0), 'too short'],
    [good.subarray(0, DATAGRAM_PREFIX_BYTES), 'too short'],
    [Buffer.alloc(MAX_DATAGRAM_BYTES + 1), 'exceeds'],
    [mutate(0, 0x58), 'magic'],
    [mutate(4, PROTOCOL_VERSION + 1), 'version'],
    [mutate(5, 2), 'kind 2'],
    [Buffer.concat([good.subarray(0, 8), encodeHeader({ sessionId: 0, seq: 1, objects: [] })]), 'sessionId'],
    [
      Buffer.concat([good.subarray(0, 8), encodeHeader({ sessionId: 1, seq: 1, objects: [[0, 1]] })]),
      'objects[0][0]',
    ],
    [
      Buffer.concat([good.subarray(0, 8), encodeHeader({ sessionId: 1, seq: 1, objects: [], truncated: 1 })]),
      'truncated',
    ],
    [Buffer.concat([good.subarray(0, 8), Buffer.from([0x91, 0x01])]), 'must be a msgpack map'],
  ];
  for (const [buf, includes] of cases) {
    const err = protocolOnly(() => decodeInvalidationDatagram(buf));
    t.truthy(err, includes);
    t.true(err?.message.includes(includes), err?.message);
  }
  t.truthy(protocolOnly(() => decodeInvalidationDatagram('SGMU' as unknown as Buffer)));
});

test('garbage and mutated hints throw PROTOCOL and nothing else', (t) => {
  const good = encodeInvalidationDatagram({
    sessionId: 1,
    seq: 2,
    objects: [
      [3, 4],
      [5, 0],
    ],
  });
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 80 }), (bytes) => {
      protocolOnly(() => decodeInvalidationDatagram(Buffer.from(bytes)));
      const prefixed = Buffer.concat([good.subarray(0, 8), Buffer.from(bytes)]);
      protocolOnly(() => decodeInvalidationDatagram(prefixed));
      t.pass();
    }),
    { numRuns: 3000 },
  );
  fc.assert(
    fc.property(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.nat(), (at, byte, cut) => {
      const b = Buffer.from(good);
      b[at % b.length] = byte;
      protocolOnly(() => decodeInvalidationDatagram(b.subarray(0, b.length - (cut % 4))));
      t.pass();
    }),
    { numRuns: 3000 },
  );
});
