import test from 'ava';
import fc from 'fast-check';
import {
  checkHeaderBytes,
  decodeHeader,
  encodeHeader,
  FORBIDDEN_KEYS,
  HEADER_BYTES_PER_CONTAINER,
  HEADER_FREE_CONTAINERS,
  MAX_HEADER_DEPTH,
  MAX_REQUEST_HEADER_ELEMENTS,
  SegmemError,
  sanitizeHeaderValue,
} from '../src/index.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** msgpack str bytes for an ASCII string. */
function str(s: string): string {
  const b = Buffer.from(s, 'utf8');
  if (b.length < 32) return (0xa0 | b.length).toString(16) + b.toString('hex');
  return `d9${b.length.toString(16).padStart(2, '0')}${b.toString('hex')}`;
}

function refused(t: import('ava').ExecutionContext, bytes: Buffer, includes: string | RegExp): SegmemError {
  const err = t.throws(() => decodeHeader(bytes)) as SegmemError;
  t.true(SegmemError.is(err, 'PROTOCOL'), `expected PROTOCOL, got ${String(err)}`);
  if (typeof includes === 'string') t.true(err.message.includes(includes), err.message);
  else t.regex(err.message, includes);
  return err;
}

const leaf = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.maxSafeInteger(),
  fc.integer({ min: -100, max: 300 }),
  fc.double({ noNaN: true }).map((d) => (Object.is(d, -0) ? 0 : d)),
  fc.string({ unit: 'binary' }),
  fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)),
);
const key = fc.string({ unit: 'binary', maxLength: 12 }).filter((k) => !FORBIDDEN_KEYS.includes(k));
// The top-level map is depth 1; values add at most MAX_HEADER_DEPTH - 1 levels.
const { value: anyValue } = fc.letrec((tie) => ({
  value: fc.oneof(
    { maxDepth: MAX_HEADER_DEPTH - 1, depthIdentifier: 'header' },
    leaf,
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(key, tie('value'), { maxKeys: 5, noNullPrototype: true }),
  ),
}));
const anyHeader = fc.dictionary(key, anyValue, { maxKeys: 8, noNullPrototype: true });

test('arbitrary headers round trip', (t) => {
  fc.assert(
    fc.property(anyHeader, (header) => {
      t.deepEqual(decodeHeader(encodeHeader(header)), header);
    }),
    { numRuns: 500 },
  );
});

test('headers decode from the middle of a buffer', (t) => {
  const body = encodeHeader({ a: 1, b: 'x' });
  const buf = Buffer.concat([Buffer.from([1, 2, 3]), body, Buffer.from([9, 9])]);
  t.deepEqual(decodeHeader(buf, 3, 3 + body.length), { a: 1, b: 'x' });
});

test('reserved start space is left for the caller', (t) => {
  const buf = encodeHeader({ a: 1 }, 16);
  t.deepEqual(decodeHeader(buf, 16), { a: 1 });
});

test('bytes decode as a view of the input (no copy)', (t) => {
  const buf = encodeHeader({ data: Buffer.from([1, 2, 3, 4]) });
  const header = decodeHeader(buf);
  const data = header.data as Buffer;
  t.true(Buffer.isBuffer(data));
  t.is(data.buffer, buf.buffer);
  t.deepEqual([...data], [1, 2, 3, 4]);
});

test('prototype keys are refused at every depth and nothing is polluted', (t) => {
  for (const k of FORBIDDEN_KEYS) {
    refused(t, hex(`81 ${str(k)} 81 ${str('polluted')} c3`), `key "${k}" refused`);
    refused(t, hex(`81 ${str('a')} 91 81 ${str(k)} 01`), `key "${k}" refused`);
  }
  // The encoder writes an own __proto__ key faithfully; the decoder must still refuse it.
  const evil = JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}') as object;
  refused(t, encodeHeader(evil), 'key "__proto__" refused');
  t.is(({} as Record<string, unknown>).polluted, undefined);
  t.is(Object.getPrototypeOf(decodeHeader(encodeHeader({ a: { b: 1 } }))), Object.prototype);
  // Near misses are ordinary keys.
  t.deepEqual(decodeHeader(hex(`82 ${str('__proto_')} 01 ${str('prototypes')} 02`)), {
    __proto_: 1,
    prototypes: 2,
  });
});

test('nesting up to MAX_HEADER_DEPTH is accepted, deeper is refused', (t) => {
  let ok: unknown = 1;
  for (let i = 1; i < MAX_HEADER_DEPTH; i++) ok = i % 2 ? [ok] : { k: ok };
  t.deepEqual(decodeHeader(encodeHeader({ v: ok })), { v: ok });
  refused(t, encodeHeader({ v: [ok] }), `nesting deeper than ${MAX_HEADER_DEPTH}`);
  // A very deep nesting is refused by the scanner without recursion trouble.
  const deep = Buffer.alloc(200_000, 0x91);
  deep[0] = 0x81;
  deep[1] = 0xa1;
  deep[2] = 0x61;
  refused(t, deep, 'nesting deeper');
});

/** A header `{ k: [unit x count] }` as bytes (array 32), without going through the encoder. */
function arrayHeader(unit: Buffer, count: number): Buffer {
  const b = Buffer.alloc(8 + unit.length * count);
  b.write('81a16bdd', 'hex');
  b.writeUInt32BE(count, 4);
  for (let i = 0; i < count; i++) unit.copy(b, 8 + i * unit.length);
  return b;
}

test('a header holding more maps and arrays than its bytes pay for is refused before decoding', (t) => {
  // 64 KiB of empty maps (1 byte each): tens of thousands of objects from a frame a stranger may send.
  const hostile = arrayHeader(Buffer.from([0x80]), 65536 - 8);
  // Its second half is the reserved byte 0xc1: refused once the maps exceed the budget, before the rest is
  // looked at (and the scanner's message: msgpackr never decoded any of it).
  hostile.fill(0xc1, hostile.length / 2);
  const started = performance.now();
  const err = refused(t, hostile, 'more maps and arrays than a header of 65536 bytes may hold');
  // Milliseconds; the bound leaves room for a loaded machine that takes the CPU away meanwhile.
  t.true(performance.now() - started < 1000, 'refused by the scan, without decoding');
  t.is(err.details?.offset !== undefined, true);
  // The budget: HEADER_FREE_CONTAINERS plus one per HEADER_BYTES_PER_CONTAINER bytes, the top-level map and
  // the array included. Arrays of three nils (4 bytes each) stay within it at any size.
  t.notThrows(() => checkHeaderBytes(arrayHeader(Buffer.from([0x93, 0xc0, 0xc0, 0xc0]), 50_000), 0, 200_008));
  // The most empty maps a `{ k: [...] }` header of 8 + n bytes may hold: n + 2 containers within the budget.
  let exact = 0;
  while (exact + 3 <= HEADER_FREE_CONTAINERS + Math.floor((9 + exact) / HEADER_BYTES_PER_CONTAINER)) exact++;
  t.notThrows(() => decodeHeader(arrayHeader(Buffer.from([0x80]), exact)));
  refused(t, arrayHeader(Buffer.from([0x80]), exact + 1), 'more maps and arrays');
  // Real headers pass: 100000 [id, version] pairs, as a VALIDATE of a large cache carries them.
  const pairs = Array.from({ length: 100_000 }, (_, i) => [i + 1, (i % 7) + 1]);
  const validate = encodeHeader({ objects: pairs });
  t.true(validate.length / (pairs.length + 2) >= HEADER_BYTES_PER_CONTAINER - 0.5);
  t.deepEqual((decodeHeader(validate) as { objects: number[][] }).objects.length, 100_000);
});

test('bin values count as several containers; elements in all are capped for requests', (t) => {
  // 64 KiB of empty bins (2 bytes each, a Buffer each once decoded) is refused like empty maps.
  refused(t, arrayHeader(Buffer.from([0xc4, 0x00]), 32_000), 'a bin value counting as 8');
  // Bins that carry bytes pass: 1000 of 32 bytes.
  const bins = arrayHeader(Buffer.from([0xc4, 30, ...Buffer.alloc(30, 1)]), 1000);
  t.is((decodeHeader(bins) as { k: Buffer[] }).k.length, 1000);
  // One array announcing more elements than a request may hold is refused at its count, before the rest:
  // its elements are the reserved byte 0xc1, which the first one looked at would be refused for.
  const count = MAX_REQUEST_HEADER_ELEMENTS + 1;
  const head = Buffer.alloc(count + 8, 0xc1);
  head.write('81a16bdd', 'hex');
  head.writeUInt32BE(count, 4);
  const started = performance.now();
  const err = t.throws(() => decodeHeader(head, 0, head.length, MAX_REQUEST_HEADER_ELEMENTS)) as SegmemError;
  // Microseconds; the bound leaves room for a loaded machine that takes the CPU away meanwhile.
  t.true(performance.now() - started < 1000);
  t.is(err.code, 'PROTOCOL');
  t.true(err.message.includes(`more than ${MAX_REQUEST_HEADER_ELEMENTS} array elements and map entries`));
  // Elements of all containers add up: the top map's 2 entries and the arrays' 6 and 5 make 13.
  const two = encodeHeader({ a: [1, 2, 3, 4, 5, 6], b: [1, 2, 3, 4, 5] });
  t.notThrows(() => decodeHeader(two, 0, two.length, 13));
  t.throws(() => decodeHeader(two, 0, two.length, 12), { code: 'PROTOCOL' } as never);
  // Without a cap (a client reading answers) the same header, of valid elements, decodes.
  head.fill(0x01, 8);
  t.is((decodeHeader(head) as { k: number[] }).k.length, count);
});

test('integers beyond 2^53 - 1 are refused, safe ones decode as numbers', (t) => {
  const max = hex(`81 ${str('n')} cf 001fffff ffffffff`);
  t.deepEqual(decodeHeader(max), { n: Number.MAX_SAFE_INTEGER });
  refused(t, hex(`81 ${str('n')} cf 00200000 00000000`), 'beyond 2^53-1');
  refused(t, hex(`81 ${str('n')} cf 00200000 00000001`), 'beyond 2^53-1');
  refused(t, hex(`81 ${str('n')} cf ffffffff ffffffff`), 'beyond 2^53-1');
  t.deepEqual(decodeHeader(hex(`81 ${str('n')} d3 001fffff ffffffff`)), { n: Number.MAX_SAFE_INTEGER });
  t.deepEqual(decodeHeader(hex(`81 ${str('n')} d3 ffe00000 00000001`)), { n: -Number.MAX_SAFE_INTEGER });
  t.deepEqual(decodeHeader(hex(`81 ${str('n')} d3 ffffffff ffffffff`)), { n: -1 });
  refused(t, hex(`81 ${str('n')} d3 ffe00000 00000000`), 'beyond');
  refused(t, hex(`81 ${str('n')} d3 ffdfffff ffffffff`), 'beyond');
  refused(t, hex(`81 ${str('n')} d3 00200000 00000001`), 'beyond');
  const decoded = decodeHeader(encodeHeader({ n: 2 ** 53 - 1, m: -(2 ** 40) }));
  t.is(typeof decoded.n, 'number');
  t.is(decoded.n, 2 ** 53 - 1);
});

test('extension types and the reserved byte are refused', (t) => {
  const cases = [
    'd6 ff 00000000', // timestamp 32
    'd7 ff 0000000000000000', // timestamp 64
    'c7 0c ff 000000000000000000000000', // timestamp 96
    'd4 00 00', // msgpackr's undefined
    'd4 72 40', // msgpackr record definition
    'd5 01 0000',
    'd8 01 00000000000000000000000000000000',
    'c8 0001 05 00',
    'c9 00000001 05 00',
    'd6 69 00000001', // structured clone id
  ];
  for (const c of cases) refused(t, hex(`81 ${str('x')} ${c}`), 'extension type');
  refused(t, hex(`81 ${str('x')} c1`), '0xc1');
  const date = encodeHeader({ when: new Date(0) });
  refused(t, date, 'extension type -1');
});

test('the top level must be exactly one map', (t) => {
  refused(t, hex('91 01'), 'must be a msgpack map');
  refused(t, hex(str('abc')), 'must be a msgpack map');
  refused(t, hex('c0'), 'must be a msgpack map');
  refused(t, Buffer.alloc(0), 'empty header');
  refused(t, hex(`80 01`), 'bytes after the header map');
  refused(t, hex(`81 ${str('a')}`), 'truncated');
  refused(t, hex(`81 ${str('a')} cd 01`), 'truncated');
  refused(t, hex(`81 d9 05 61`), 'truncated');
  refused(t, hex('df ffffffff'), 'cannot fit');
  refused(t, hex(`81 ${str('a')} dd ffffffff`), 'cannot fit');
  t.deepEqual(decodeHeader(hex('80')), {});
  t.deepEqual(decodeHeader(hex('de 0000')), {});
});

test('map keys must be strings and strings must be UTF-8', (t) => {
  refused(t, hex('81 01 02'), 'keys must be strings');
  refused(t, hex('81 c0 02'), 'keys must be strings');
  refused(t, hex(`81 ${str('a')} a2 c328`), 'not valid UTF-8');
  refused(t, hex('81 a2 c328 01'), 'not valid UTF-8');
  refused(t, hex(`81 ${str('a')} a3 eda080`), 'not valid UTF-8'); // an encoded lone surrogate
  t.deepEqual(decodeHeader(encodeHeader({ ключ: 'значение 🚀' })), { ключ: 'значение 🚀' });
});

test('refusals carry the byte offset', (t) => {
  const err = refused(t, hex(`82 ${str('a')} 01 ${str('b')} c1`), '0xc1');
  t.is(err.details?.offset, 6);
});

test('random bytes never throw anything but PROTOCOL', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), fc.boolean(), (bytes, asMap) => {
      const buf = Buffer.from(bytes);
      if (asMap && buf.length > 0) buf[0] = 0x80 | (buf[0] & 0x0f);
      try {
        const value = decodeHeader(buf);
        t.true(typeof value === 'object' && value !== null && !Array.isArray(value));
      } catch (err) {
        t.true(SegmemError.is(err, 'PROTOCOL'), String(err));
      }
    }),
    { numRuns: 5000 },
  );
});

test('mutated valid headers never throw anything but PROTOCOL', (t) => {
  fc.assert(
    fc.property(anyHeader, fc.nat(), fc.integer({ min: 0, max: 255 }), (header, at, byte) => {
      const buf = Buffer.from(encodeHeader(header));
      buf[at % buf.length] = byte;
      try {
        checkHeaderBytes(buf, 0, buf.length);
        decodeHeader(buf);
      } catch (err) {
        t.true(SegmemError.is(err, 'PROTOCOL'), String(err));
      }
    }),
    { numRuns: 2000 },
  );
});

test('sanitizeHeaderValue keeps plain data and makes the rest encodable', (t) => {
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  const clean = sanitizeHeaderValue(
    {
      n: 1,
      s: 'x\ud800',
      big: 2n ** 70n,
      small: 5n,
      when: new Date(0),
      err: new Error('boom'),
      fn: () => 1,
      undef: undefined,
      inf: Number.POSITIVE_INFINITY,
      list: [undefined, 1],
      map: new Map([[1, 2]]),
      cyclic,
    },
    MAX_HEADER_DEPTH - 1,
  ) as Record<string, unknown>;
  t.is(clean.n, 1);
  t.is(clean.s, 'x\ufffd');
  t.is(clean.big, '1180591620717411303424');
  t.is(clean.small, 5);
  t.is(clean.when, '1970-01-01T00:00:00.000Z');
  t.is(clean.err, 'boom');
  t.false('fn' in clean);
  t.false('undef' in clean);
  t.is(clean.inf, 'Infinity');
  t.deepEqual(clean.list, [null, 1]);
  t.is(clean.map, null);
  // The cycle is cut at the depth limit, and the result decodes.
  const header = { details: clean };
  t.notThrows(() => decodeHeader(encodeHeader(header)));
});
