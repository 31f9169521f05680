import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import {
  type AclRule,
  controlCharIndex,
  decodeChanged,
  decodeError,
  decodeFrame,
  decodeInvalidate,
  decodeOk,
  decodeProbed,
  decodeRequest,
  decodeResponse,
  decodeRevoke,
  ERROR_CODES,
  encodeChanged,
  encodeError,
  encodeFrameToBuffer,
  encodeInvalidate,
  encodeOk,
  encodeProbed,
  encodeRequest,
  encodeRevoke,
  type Frame,
  FrameDecoder,
  grantPayloadBytes,
  MAX_ERROR_MESSAGE_CHARS,
  MAX_LOG_BATCH_RECORDS,
  MAX_LOG_RECORD_BYTES,
  MAX_OBJECT_BYTES,
  MAX_PROBE_HOPS,
  MAX_WATCHES_PER_SESSION,
  MessageType,
  messageTypeName,
  type ObjectRecord,
  type OkBodyInput,
  PAGE_BYTES,
  type PasswordHash,
  PROTOCOL_VERSION,
  REQUEST_TYPES,
  type Request,
  type RequestType,
  rightCovers,
  rightOn,
  SegmemError,
  validateName,
  validatePrefix,
  validateSize,
  validateStoredName,
  validateTimeoutMs,
} from '../src/index.js';

function frameOf(parts: Buffer[]): Frame {
  const frames = new FrameDecoder().push(Buffer.concat(parts));
  if (frames.length !== 1) throw new Error(`expected 1 frame, got ${frames.length}`);
  return frames[0];
}

function rawFrame(type: number, header: object, payload?: Uint8Array, requestId = 1): Frame {
  return decodeFrame(encodeFrameToBuffer(type, requestId, 0, header, payload));
}

function throwsCode(t: ExecutionContext, fn: () => unknown, code: string, includes: string[]): SegmemError {
  const err = t.throws(fn) as SegmemError;
  t.true(SegmemError.is(err), String(err));
  t.is(err.code, code as SegmemError['code'], err.message);
  for (const s of includes) t.true(err.message.includes(s), `"${err.message}" should mention "${s}"`);
  return err;
}

const record: ObjectRecord = { id: 7, name: 'matrix/a', size: 10_000, address: 3 * PAGE_BYTES, version: 4 };

const samplePasswordHash: PasswordHash = {
  salt: '00112233445566778899aabbccddeeff',
  n: 2 ** 14,
  r: 8,
  p: 1,
  hash: 'ab'.repeat(32),
};

const sampleRequests: Request[] = [
  {
    type: 'HELLO',
    protocol: PROTOCOL_VERSION,
    clusterId: 'c1',
    token: 'secret',
    sessionTimeoutMs: 10_000,
    resumeSessionId: 12,
    resumeSecret: '0123456789abcdef0123456789abcdef',
    udpPort: 7402,
    clientName: 'worker-1',
  },
  {
    type: 'HELLO',
    protocol: PROTOCOL_VERSION,
    clusterId: null,
    token: null,
    sessionTimeoutMs: 200,
    resumeSessionId: null,
    resumeSecret: null,
    udpPort: null,
    clientName: null,
  },
  { type: 'KEEPALIVE' },
  { type: 'KEEPALIVE', lease: true },
  { type: 'CREATE', seq: 1, name: 'counter', size: 8, ifNotExists: true },
  { type: 'DELETE', seq: 2, name: 'counter', timeoutMs: null },
  { type: 'DELETE', seq: 3, name: 'counter', timeoutMs: 250 },
  { type: 'STAT', name: 'ü/ñ' },
  { type: 'LIST', prefix: '' },
  { type: 'LIST', prefix: 'matrix/' },
  { type: 'ACQUIRE', seq: 3, name: 'counter', mode: 'write', cachedId: 0, cachedVersion: 0, timeoutMs: null },
  { type: 'ACQUIRE', seq: 4, name: 'counter', mode: 'read', cachedId: 7, cachedVersion: 3, timeoutMs: 0 },
  {
    type: 'RELEASE',
    seq: 5,
    name: 'counter',
    mode: 'write',
    token: 9,
    ranges: [
      [0, 4],
      [100, 2],
    ],
    payload: Buffer.from([1, 2, 3, 4, 5, 6]),
  },
  { type: 'RELEASE', seq: 6, name: 'counter', mode: 'read', token: 10, ranges: [], payload: Buffer.alloc(0) },
  {
    type: 'RELEASE',
    seq: 7,
    name: 'counter',
    mode: 'write',
    token: 11,
    ranges: [[0, 1]],
    payload: Buffer.from([1]),
    keep: true,
  },
  { type: 'CANCEL', requestId: 17, reason: 'TIMEOUT' },
  { type: 'CANCEL', requestId: 2 ** 32 - 1, reason: 'ABORTED' },
  {
    type: 'VALIDATE',
    objects: [
      [1, 1],
      [Number.MAX_SAFE_INTEGER, 2 ** 40],
    ],
  },
  { type: 'VALIDATE', objects: [] },
  { type: 'GOODBYE' },
  { type: 'MEMBERSHIP', op: 'list', id: null, address: null },
  { type: 'MEMBERSHIP', op: 'add', id: 's4', address: '127.0.0.1:7404' },
  { type: 'MEMBERSHIP', op: 'remove', id: 's1', address: null },
  {
    type: 'LOG_APPEND',
    seq: 9,
    name: 'events',
    sizes: [3, 0, 2],
    maxBytes: null,
    payload: Buffer.from('abcde'),
  },
  { type: 'LOG_APPEND', seq: 10, name: 'events', sizes: [0], maxBytes: 4096, payload: Buffer.alloc(0) },
  { type: 'LOG_READ', name: 'events', from: null, maxBytes: 1024, waitMs: 0 },
  { type: 'LOG_READ', name: 'events', from: 12, maxBytes: 0, waitMs: 30_000 },
  { type: 'LOG_TRUNCATE', seq: 11, name: 'events', before: 100 },
  { type: 'READ_PAGES', objectId: 7, version: 4, pages: [0, 2, 9], waitMs: 1000 },
  { type: 'SNAPSHOT' },
  { type: 'SNAPSHOT_READ', id: 3, offset: 1 << 20, length: 16 * 1024 * 1024 },
  { type: 'STATUS' },
  { type: 'SLOTS' },
  { type: 'BARRIER', op: 'hold', holdMs: 2000 },
  { type: 'BARRIER', op: 'release', holdMs: 0 },
  { type: 'PROBE', initiator: '0123456789abcdef', probeId: 7, hops: 3 },
  { type: 'CANCEL', requestId: 9, reason: 'DEADLOCK' },
  { type: 'MOVE', op: 'status', moveId: null, slots: [[0, 99]] },
  {
    type: 'MOVE',
    op: 'freeze',
    moveId: 'm-1',
    from: 0,
    to: 1,
    slots: [
      [5, 9],
      [100, 100],
    ],
  },
  {
    type: 'MOVE',
    op: 'import',
    moveId: 'm-1',
    objects: [
      { name: 'a', size: 3, version: 4, lastToken: 9, written: true },
      { name: 'b', size: 5000, version: 1, lastToken: 0, written: false },
    ],
    logs: [{ name: 'events', maxBytes: 4096, first: 7, sizes: [2, 0] }],
    payload: Buffer.from('xyzhi'),
  },
  {
    type: 'MOVE',
    op: 'switch',
    moveId: 'm-1',
    table: { version: 2, ranges: [[0, 16383, 1]], groups: [{ id: 1, members: [] }] },
  },
  { type: 'MOVE', op: 'abort', moveId: 'm-1' },
  {
    type: 'MOVE',
    op: 'install',
    moveId: null,
    table: { version: 3, ranges: [[0, 16383, 2]], groups: [{ id: 2, members: [] }] },
  },
  {
    type: 'MOVE_READ',
    moveId: 'm-1',
    cursor: { phase: 'logs', after: 'events', from: 3 },
    maxBytes: 1 << 20,
  },
  { type: 'WATCH', name: 'jobs/ü' },
  { type: 'UNWATCH', objectId: Number.MAX_SAFE_INTEGER },
  {
    type: 'HELLO',
    protocol: PROTOCOL_VERSION,
    clusterId: null,
    token: null,
    sessionTimeoutMs: 10_000,
    resumeSessionId: null,
    resumeSecret: null,
    udpPort: null,
    clientName: null,
    user: 'alice@example.com',
    password: 'pässwörd',
  },
  { type: 'USERS', op: 'list', seq: 0, user: null },
  { type: 'USERS', op: 'list', seq: 0, user: 'bob' },
  { type: 'USERS', op: 'add', seq: 12, user: 'bob', password: samplePasswordHash },
  {
    type: 'USERS',
    op: 'add',
    seq: 17,
    user: 'root',
    password: samplePasswordHash,
    rules: [
      ['', 'admin'],
      ['a/', 'read'],
    ],
  },
  { type: 'USERS', op: 'remove', seq: 13, user: 'bob' },
  { type: 'USERS', op: 'aclSet', seq: 14, user: 'bob', prefix: 'jobs/', right: 'write' },
  { type: 'USERS', op: 'aclSet', seq: 15, user: 'bob', prefix: '', right: 'admin' },
  { type: 'USERS', op: 'aclRemove', seq: 16, user: 'bob', prefix: 'jobs/' },
];

/** A request as decoding returns it: payloads as Buffers, absent optional fields at their defaults. */
function normalise(req: Request): unknown {
  if (req.type === 'RELEASE' || req.type === 'LOG_APPEND')
    return { ...req, payload: Buffer.from(req.payload) };
  if (req.type === 'HELLO') return { ...req, pageReader: req.pageReader ?? false };
  if (req.type === 'ACQUIRE') return { ...req, inlineMaxBytes: req.inlineMaxBytes ?? null };
  return req;
}

test('every request type round trips through FrameDecoder', (t) => {
  const seen = new Set<string>();
  let requestId = 1;
  for (const req of sampleRequests) {
    const frame = frameOf(encodeRequest(req, requestId, 3));
    t.is(frame.type, MessageType[req.type]);
    t.is(frame.requestId, requestId);
    t.is(frame.groupId, 3);
    t.deepEqual(normalise(decodeRequest(frame)), normalise(req));
    seen.add(req.type);
    requestId++;
  }
  t.deepEqual([...seen].sort(), [...REQUEST_TYPES].sort());
});

test('HELLO optional fields default to null', (t) => {
  const decoded = decodeRequest(
    frameOf(encodeRequest({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 5000 }, 1)),
  );
  t.deepEqual(decoded, {
    type: 'HELLO',
    protocol: PROTOCOL_VERSION,
    clusterId: null,
    token: null,
    sessionTimeoutMs: 5000,
    resumeSessionId: null,
    resumeSecret: null,
    udpPort: null,
    clientName: null,
    pageReader: false,
  });
});

test('unknown extra header fields are ignored', (t) => {
  const frame = rawFrame(MessageType.STAT, { name: 'x', futureField: { a: [1, 2] }, other: 'y' });
  t.deepEqual(decodeRequest(frame), { type: 'STAT', name: 'x' });
  const ok = rawFrame(MessageType.OK, { version: 3, extra: true });
  t.deepEqual(decodeOk('RELEASE', ok), { version: 3 });
});

// ---- property tests over valid requests

const nameArb = fc
  .string({ unit: 'binary', minLength: 1, maxLength: 80 })
  .filter((s) => controlCharIndex(s) < 0 && Buffer.byteLength(s) <= 255);
const seqArb = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER });
const uintArb = fc.maxSafeNat();
const modeArb = fc.constantFrom<'read' | 'write'>('read', 'write');
const pairArb = fc.tuple(
  fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  fc.integer({ min: 1, max: 2 ** 40 }),
);

const rangesArb = fc
  .array(fc.tuple(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 1, max: 50 })), { maxLength: 6 })
  .map((gaps) => {
    let at = 0;
    return gaps.map(([gap, length]) => {
      const range: [number, number] = [at + gap, length];
      at += gap + length;
      return range;
    });
  });

const requestArb: fc.Arbitrary<Request> = fc.oneof(
  fc.record({
    type: fc.constant('HELLO' as const),
    protocol: fc.constant(PROTOCOL_VERSION),
    clusterId: fc.option(fc.string({ minLength: 1, maxLength: 50 })),
    token: fc.option(fc.string({ maxLength: 200 })),
    sessionTimeoutMs: fc.integer({ min: 200, max: 600_000 }),
    resumeSessionId: fc.option(seqArb),
    resumeSecret: fc.option(fc.string({ maxLength: 64, unit: 'binary-ascii' })),
    udpPort: fc.option(fc.integer({ min: 1, max: 65535 })),
    clientName: fc.option(fc.string({ maxLength: 50 })),
    pageReader: fc.boolean(),
  }),
  fc.constant({ type: 'KEEPALIVE' as const }),
  fc.record({
    type: fc.constant('CREATE' as const),
    seq: seqArb,
    name: nameArb,
    size: fc.integer({ min: 1, max: MAX_OBJECT_BYTES }),
    ifNotExists: fc.boolean(),
  }),
  fc.record({
    type: fc.constant('DELETE' as const),
    seq: seqArb,
    name: nameArb,
    timeoutMs: fc.option(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { nil: null }),
  }),
  fc.record({ type: fc.constant('STAT' as const), name: nameArb }),
  fc.record({ type: fc.constant('LIST' as const), prefix: fc.oneof(fc.constant(''), nameArb) }),
  fc.record({
    type: fc.constant('ACQUIRE' as const),
    seq: seqArb,
    name: nameArb,
    mode: modeArb,
    cachedId: uintArb,
    cachedVersion: uintArb,
    timeoutMs: fc.option(fc.integer({ min: 0, max: 2 ** 31 - 1 })),
    inlineMaxBytes: fc.option(fc.integer({ min: 0, max: 2 ** 32 - 1 })),
  }),
  fc
    .record({
      seq: seqArb,
      name: nameArb,
      token: uintArb,
      ranges: rangesArb,
      fill: fc.integer({ min: 0, max: 255 }),
    })
    .map(
      ({ seq, name, token, ranges, fill }): Request => ({
        type: 'RELEASE',
        seq,
        name,
        mode: 'write',
        token,
        ranges,
        payload: Buffer.alloc(
          ranges.reduce((n, r) => n + r[1], 0),
          fill,
        ),
      }),
    ),
  fc.record({
    type: fc.constant('CANCEL' as const),
    requestId: fc.integer({ min: 1, max: 2 ** 32 - 1 }),
    reason: fc.constantFrom<'TIMEOUT' | 'ABORTED'>('TIMEOUT', 'ABORTED'),
  }),
  fc.record({ type: fc.constant('VALIDATE' as const), objects: fc.array(pairArb, { maxLength: 20 }) }),
  fc.constant({ type: 'GOODBYE' as const }),
);

test('arbitrary valid requests round trip, pipelined and arbitrarily chunked', (t) => {
  fc.assert(
    fc.property(fc.array(requestArb, { minLength: 1, maxLength: 8 }), fc.nat(), (reqs, chunkSeed) => {
      const stream = Buffer.concat(reqs.flatMap((r, i) => encodeRequest(r, i + 1)));
      const decoder = new FrameDecoder();
      const chunk = 1 + (chunkSeed % 97);
      const frames: Frame[] = [];
      for (let i = 0; i < stream.length; i += chunk)
        frames.push(...decoder.push(stream.subarray(i, i + chunk)));
      t.is(frames.length, reqs.length);
      frames.forEach((f, i) => {
        t.is(f.requestId, i + 1);
        t.deepEqual(normalise(decodeRequest(f)), normalise(reqs[i]));
      });
    }),
    { numRuns: 300 },
  );
});

// ---- request refusals

test('frames that are not requests are PROTOCOL errors', (t) => {
  throwsCode(t, () => decodeRequest(rawFrame(0x7f, {})), 'PROTOCOL', ['unknown message type 0x7f']);
  throwsCode(t, () => decodeRequest(rawFrame(0x00, {})), 'PROTOCOL', ['unknown message type 0x00']);
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.OK, {})), 'PROTOCOL', [
    'OK (0x40) is not a request',
  ]);
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.INVALIDATE, {}, undefined, 0)), 'PROTOCOL', [
    'not a request',
  ]);
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.STAT, { name: 'x' }, undefined, 0)), 'PROTOCOL', [
    'requestId 0',
  ]);
  t.throws(() => encodeRequest({ type: 'KEEPALIVE' }, 0), { code: 'INVALID_ARGUMENT' } as never);
});

test('a HELLO of another protocol version is refused naming both versions', (t) => {
  const frame = rawFrame(MessageType.HELLO, { protocol: PROTOCOL_VERSION + 1, sessionTimeoutMs: 10_000 });
  throwsCode(t, () => decodeRequest(frame), 'PROTOCOL', [
    `version ${PROTOCOL_VERSION + 1}`,
    `server speaks version ${PROTOCOL_VERSION}`,
  ]);
});

const badFields: [type: RequestType, header: Record<string, unknown>, field: string][] = [
  ['HELLO', { protocol: 1, sessionTimeoutMs: 100 }, 'sessionTimeoutMs'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 600_001 }, 'sessionTimeoutMs'],
  ['HELLO', { protocol: 1 }, 'sessionTimeoutMs'],
  ['HELLO', { sessionTimeoutMs: 1000 }, 'protocol'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, udpPort: 0 }, 'udpPort'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, udpPort: 65536 }, 'udpPort'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, clusterId: '' }, 'clusterId'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, clusterId: 5 }, 'clusterId'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, token: 'x'.repeat(4097) }, 'token'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, resumeSessionId: 0 }, 'resumeSessionId'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, resumeSecret: 'x'.repeat(65) }, 'resumeSecret'],
  ['HELLO', { protocol: 1, sessionTimeoutMs: 1000, clientName: 'x'.repeat(256) }, 'clientName'],
  ['CREATE', { seq: 0, name: 'a', size: 1, ifNotExists: false }, 'seq'],
  ['CREATE', { seq: 1.5, name: 'a', size: 1, ifNotExists: false }, 'seq'],
  ['CREATE', { seq: 1, name: '', size: 1, ifNotExists: false }, 'name'],
  ['CREATE', { seq: 1, name: 'a', size: 0, ifNotExists: false }, 'size'],
  ['CREATE', { seq: 1, name: 'a', size: MAX_OBJECT_BYTES + 1, ifNotExists: false }, 'size'],
  ['CREATE', { seq: 1, name: 'a', size: '8', ifNotExists: false }, 'size'],
  ['CREATE', { seq: 1, name: 'a', size: 8 }, 'ifNotExists'],
  ['CREATE', { seq: 1, name: 'a', size: 8, ifNotExists: 1 }, 'ifNotExists'],
  ['DELETE', { name: 'a' }, 'seq'],
  ['STAT', {}, 'name'],
  ['STAT', { name: 'a\0b' }, 'name'],
  ['LIST', {}, 'prefix'],
  ['LIST', { prefix: 'x'.repeat(256) }, 'prefix'],
  [
    'ACQUIRE',
    { seq: 1, name: 'a', mode: 'exclusive', cachedId: 0, cachedVersion: 0, timeoutMs: null },
    'mode',
  ],
  ['ACQUIRE', { seq: 1, name: 'a', mode: 'read', cachedVersion: 0, timeoutMs: null }, 'cachedId'],
  [
    'ACQUIRE',
    { seq: 1, name: 'a', mode: 'read', cachedId: 0, cachedVersion: -1, timeoutMs: null },
    'cachedVersion',
  ],
  ['ACQUIRE', { seq: 1, name: 'a', mode: 'read', cachedId: 0, cachedVersion: 0, timeoutMs: -5 }, 'timeoutMs'],
  [
    'ACQUIRE',
    { seq: 1, name: 'a', mode: 'read', cachedId: 0, cachedVersion: 0, timeoutMs: 2 ** 31 },
    'timeoutMs',
  ],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', ranges: [] }, 'token'],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', token: 1 }, 'ranges'],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', token: 1, ranges: [[0, 0]] }, 'ranges[0][1] (length)'],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', token: 1, ranges: [[0]] }, 'ranges[0]'],
  [
    'RELEASE',
    {
      seq: 1,
      name: 'a',
      mode: 'write',
      token: 1,
      ranges: [
        [10, 5],
        [12, 1],
      ],
    },
    'ranges[1][0] (offset)',
  ],
  [
    'RELEASE',
    {
      seq: 1,
      name: 'a',
      mode: 'write',
      token: 1,
      ranges: [
        [10, 5],
        [0, 1],
      ],
    },
    'sorted and non-overlapping',
  ],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', token: 1, ranges: [[MAX_OBJECT_BYTES, 1]] }, 'offset'],
  [
    'RELEASE',
    { seq: 1, name: 'a', mode: 'read', token: 1, ranges: [[0, 1]] },
    'read RELEASE carries no ranges',
  ],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', token: 1, ranges: [[0, 2]] }, 'ranges add up to 2'],
  [
    'RELEASE',
    { seq: 1, name: 'a', mode: 'read', token: 1, ranges: [], keep: true },
    'only a write RELEASE may keep',
  ],
  ['RELEASE', { seq: 1, name: 'a', mode: 'write', token: 1, ranges: [], keep: 'yes' }, 'keep'],
  ['KEEPALIVE', { lease: 1 }, 'lease'],
  ['CANCEL', { requestId: 0, reason: 'TIMEOUT' }, 'requestId'],
  ['CANCEL', { requestId: 1, reason: 'BORED' }, 'reason'],
  ['VALIDATE', { objects: [[0, 1]] }, 'objects[0][0] (id)'],
  ['VALIDATE', { objects: [[1, 0]] }, 'objects[0][1] (version)'],
  ['VALIDATE', { objects: [[1, 2, 3]] }, 'objects[0]'],
  ['VALIDATE', { objects: {} }, 'objects'],
];

test('bad fields are INVALID_ARGUMENT naming message type and field', (t) => {
  for (const [type, header, field] of badFields) {
    const payload = type === 'RELEASE' ? Buffer.alloc(1) : undefined;
    const err = throwsCode(
      t,
      () => decodeRequest(rawFrame(MessageType[type], header, payload)),
      'INVALID_ARGUMENT',
      [`${type}: `, field],
    );
    t.is(err.details?.type, type);
  }
});

test('requests without a payload refuse one', (t) => {
  throwsCode(
    t,
    () => decodeRequest(rawFrame(MessageType.STAT, { name: 'a' }, Buffer.alloc(3))),
    'INVALID_ARGUMENT',
    ['STAT: ', 'no payload', '3 payload bytes'],
  );
  throwsCode(
    t,
    () =>
      decodeRequest(
        rawFrame(
          MessageType.RELEASE,
          { seq: 1, name: 'a', mode: 'read', token: 1, ranges: [] },
          Buffer.alloc(3),
        ),
      ),
    'INVALID_ARGUMENT',
    ['payload is 3 bytes but the ranges add up to 0'],
  );
});

// ---- names and other field validators

test('validateName', (t) => {
  t.is(validateName('a'), 'a');
  t.is(validateName('a/b/c'), 'a/b/c');
  const multi = 'é'.repeat(127) + 'a'; // 255 bytes exactly
  t.is(Buffer.byteLength(multi), 255);
  t.is(validateName(multi), multi);
  const emoji = '🚀'.repeat(63) + 'abc'; // 4 * 63 + 3 = 255
  t.is(validateName(emoji), emoji);
  throwsCode(t, () => validateName(''), 'INVALID_ARGUMENT', [
    'name must be 1..255 bytes of UTF-8; got 0 bytes',
  ]);
  throwsCode(t, () => validateName('x'.repeat(256)), 'INVALID_ARGUMENT', ['got 256 bytes']);
  throwsCode(t, () => validateName('x'.repeat(300)), 'INVALID_ARGUMENT', [
    'name must be 1..255 bytes of UTF-8; got 300 bytes',
  ]);
  throwsCode(t, () => validateName(`${multi}é`), 'INVALID_ARGUMENT', ['got 257 bytes']);
  throwsCode(t, () => validateName('a\0b'), 'INVALID_ARGUMENT', ['NUL']);
  throwsCode(t, () => validateName(42), 'INVALID_ARGUMENT', ['name must be a string; got number 42']);
  throwsCode(t, () => validateName(null), 'INVALID_ARGUMENT', ['got null']);
  throwsCode(t, () => validateName(undefined, 'object.name'), 'INVALID_ARGUMENT', [
    'object.name must be a string',
  ]);
  throwsCode(t, () => validateName('ab\ud800'), 'INVALID_ARGUMENT', ['lone surrogate']);
  throwsCode(t, () => validateName('\udc00ab'), 'INVALID_ARGUMENT', ['lone surrogate']);
});

test('names refuse C0 and C1 control characters, naming the rule; other Unicode passes', (t) => {
  for (const [name, code, at] of [
    ['a\x1b[31mred', '001B', 1],
    ['line\nbreak', '000A', 4],
    ['\ttab', '0009', 0],
    ['del\x7f', '007F', 3],
    ['c1\u0085x', '0085', 2],
    ['c1\u009f', '009F', 2],
  ] as const) {
    throwsCode(t, () => validateName(name), 'INVALID_ARGUMENT', [
      'name must not contain control characters (U+0000..U+001F, U+007F..U+009F)',
      `found U+${code} at character ${at}`,
    ]);
    throwsCode(t, () => validatePrefix(name), 'INVALID_ARGUMENT', [
      'prefix must not contain control characters',
    ]);
    // A request carrying it is refused by the decoder, so a server refuses it at its boundary too.
    throwsCode(
      t,
      () => decodeRequest(rawFrame(MessageType.CREATE, { seq: 1, name, size: 8 })),
      'INVALID_ARGUMENT',
      ['CREATE', 'control characters'],
    );
  }
  // Bidi controls, zero-width and confusable letters are ordinary Unicode here (the CLI escapes bidi controls).
  for (const name of [
    'abc\u202Eexe.txt',
    'x\u2066y\u2069',
    'zero\u200Bwidth',
    'p\u0430ypal',
    '\u00a0nbsp',
    'ÿ',
  ]) {
    t.is(validateName(name), name);
  }
  // Answers keep the older rule, so a listing that holds an object named before this rule still decodes.
  t.is(validateStoredName('old\nname'), 'old\nname');
  throwsCode(t, () => validateStoredName('a\0b'), 'INVALID_ARGUMENT', ['NUL']);
});

test('validateSize and validateTimeoutMs', (t) => {
  t.is(validateSize(1), 1);
  t.is(validateSize(MAX_OBJECT_BYTES), MAX_OBJECT_BYTES);
  for (const bad of [0, -1, 1.5, MAX_OBJECT_BYTES + 1, '1', null, Number.NaN, 2 ** 53 + 2]) {
    throwsCode(t, () => validateSize(bad), 'INVALID_ARGUMENT', ['size must be an integer 1..']);
  }
  t.is(validateTimeoutMs(undefined), null);
  t.is(validateTimeoutMs(null), null);
  t.is(validateTimeoutMs(0), 0);
  throwsCode(t, () => validateTimeoutMs(-1), 'INVALID_ARGUMENT', ['timeoutMs']);
  throwsCode(t, () => validateTimeoutMs(Number.POSITIVE_INFINITY), 'INVALID_ARGUMENT', ['timeoutMs']);
});

test('grantPayloadBytes', (t) => {
  t.is(grantPayloadBytes(4096, []), 0);
  t.is(grantPayloadBytes(4096, [0]), 4096);
  t.is(grantPayloadBytes(5000, [0, 1]), 5000);
  t.is(grantPayloadBytes(5000, [1]), 904);
  t.is(grantPayloadBytes(5000, [0]), 4096);
  t.is(grantPayloadBytes(1, [0]), 1);
  t.is(grantPayloadBytes(3 * 4096, [0, 2]), 8192);
});

// ---- OK answers

const sampleOks: { [T in RequestType]: OkBodyInput<T> } = {
  HELLO: {
    sessionId: 42,
    resumed: false,
    sessionSecret: '0123456789abcdef0123456789abcdef',
    clusterId: 'c1',
    serverId: 's1',
    pageBytes: PAGE_BYTES,
    segmentBytes: 2 ** 32,
    maxFrameBytes: 64 * 1024 * 1024,
    maxObjectBytes: MAX_OBJECT_BYTES,
    sessionTimeoutMs: 10_000,
    keepaliveMs: 2500,
    udpPort: null,
    groupId: 2,
  },
  KEEPALIVE: {},
  CREATE: { object: record, created: true },
  DELETE: {},
  STAT: { object: record },
  LIST: { objects: [record, { ...record, id: 8, name: 'matrix/b', address: 0, size: 1 }] },
  ACQUIRE: { object: record, token: 77, pages: [0, 2], payload: Buffer.alloc(4096 + (10_000 - 8192), 9) },
  RELEASE: { version: 5 },
  CANCEL: { cancelled: true },
  VALIDATE: {
    stale: [
      [7, 5],
      [9, 0],
    ],
  },
  GOODBYE: {},
  MEMBERSHIP: {
    members: [
      ['s1', '127.0.0.1:7401'],
      ['s4', null],
    ],
    leader: 's1',
  },
  LOG_APPEND: { first: 0, count: 3 },
  LOG_READ: { first: 2, next: 10, bytes: 800, from: 4, sizes: [1, 0, 2], payload: Buffer.from('xyz') },
  LOG_TRUNCATE: { first: 7 },
  READ_PAGES: { object: record, pages: [1], payload: Buffer.alloc(4096, 3) },
  SNAPSHOT: { id: 1, bytes: 123_456, index: 77, term: 3 },
  SNAPSHOT_READ: { offset: 4096, payload: Buffer.from('chunk') },
  STATUS: {
    serverId: 's1',
    clusterId: 'c1',
    role: 'leader',
    leader: 's1',
    term: 3,
    commitIndex: 120,
    appliedIndex: 119,
    lastIndex: 121,
    members: [
      ['s1', '127.0.0.1:7401'],
      ['s2', null],
    ],
    progress: [['s2', 100]],
    walFiles: 1,
    walBytes: 65536,
    snapshotFiles: 1,
    snapshotBytes: 8192,
    snapshotIndex: 100,
    sessions: 2,
    objects: 5,
    logs: 1,
    locks: [['counter', 'write', 1, 2]],
    lockedObjects: 1,
    fsync: 'batch',
    group: { id: 2, start: 2 ** 31, bytes: 2 ** 31 },
  },
  WATCH: { objectId: 7, version: 3 },
  UNWATCH: { removed: true },
  USERS: {
    users: [
      { name: 'alice', rules: [] },
      {
        name: 'bob',
        rules: [
          ['jobs/', 'write'],
          ['', 'read'],
        ],
      },
    ],
  },
  PROBE: { pushed: 2 },
  MOVE: {
    groupId: 1,
    tableVersion: 4,
    freeBytes: 1 << 30,
    moves: [{ id: 'm-1', role: 'source', from: 1, to: 2, slots: [[0, 99]] }],
    objects: 3,
    objectBytes: 12288,
    logs: 1,
    busy: 0,
  },
  MOVE_READ: {
    objects: [{ name: 'a', size: 3, version: 2, lastToken: 1, written: true }],
    logs: [{ name: 'events', maxBytes: 4096, first: 0, sizes: [1] }],
    next: { phase: 'logs', after: 'events', from: 1 },
    payload: Buffer.from('abcd'),
  },
  SLOTS: {
    groupId: 1,
    table: {
      version: 3,
      ranges: [
        [0, 8191, 0],
        [8192, 16383, 1],
      ],
      groups: [
        { id: 0, members: [['s1', '127.0.0.1:7401']] },
        {
          id: 1,
          members: [
            ['s4', '127.0.0.1:7404'],
            ['s5', '[::1]:7405'],
          ],
        },
      ],
    },
  },
  BARRIER: { held: true, index: 42, term: 3, remainingMs: 1999 },
};

test('every OK body round trips', (t) => {
  for (const type of REQUEST_TYPES) {
    const body = sampleOks[type] as OkBodyInput<typeof type>;
    const frame = frameOf(encodeOk(type, 5, body));
    t.is(frame.type, MessageType.OK);
    t.is(frame.requestId, 5);
    const decoded = decodeOk(type, frame) as unknown as Record<string, unknown>;
    if (type === 'ACQUIRE' || type === 'LOG_READ' || type === 'SNAPSHOT_READ' || type === 'MOVE_READ') {
      t.true(Buffer.isBuffer(decoded.payload));
      t.deepEqual(
        { ...decoded, payload: [...(decoded.payload as Buffer)] },
        {
          ...body,
          payload: [...(body as { payload: Uint8Array }).payload],
        },
      );
    } else {
      t.deepEqual(decoded, body as unknown as Record<string, unknown>);
    }
    t.deepEqual(decodeResponse(type, frame), decoded as never);
  }
});

test('a grant payload may come as the separate argument, and must match the pages', (t) => {
  const { payload, ...header } = sampleOks.ACQUIRE;
  const frame = frameOf(encodeOk('ACQUIRE', 1, header, payload));
  t.is(decodeOk('ACQUIRE', frame).payload.length, 5904);
  throwsCode(t, () => encodeOk('ACQUIRE', 1, header, Buffer.alloc(10)), 'INVALID_ARGUMENT', ['need 5904']);
  throwsCode(t, () => encodeOk('ACQUIRE', 1, header), 'INVALID_ARGUMENT', ['grant payload is 0 bytes']);
});

test('LOG_APPEND and LOG_READ refuse bad record lists, naming the field', (t) => {
  const appendFrame = (header: object, payload?: Uint8Array) =>
    rawFrame(MessageType.LOG_APPEND, { seq: 1, name: 'l', maxBytes: null, ...header }, payload);
  const cases: [Frame, string][] = [
    [appendFrame({ sizes: [] }), 'at least one record'],
    [appendFrame({ sizes: [2] }, Buffer.alloc(3)), 'sizes add up to 2'],
    [appendFrame({ sizes: [-1] }), 'sizes[0]'],
    [appendFrame({ sizes: [MAX_LOG_RECORD_BYTES + 1] }, Buffer.alloc(MAX_LOG_RECORD_BYTES + 1)), 'sizes[0]'],
    [appendFrame({ sizes: 'x' }), 'sizes'],
    [appendFrame({ sizes: new Array(MAX_LOG_BATCH_RECORDS + 1).fill(0) }), 'at most 65536'],
    [appendFrame({ sizes: [1], maxBytes: 0 }, Buffer.alloc(1)), 'maxBytes'],
    [appendFrame({ sizes: [1], name: '' }, Buffer.alloc(1)), 'name'],
    [
      appendFrame({ sizes: new Array(9).fill(MAX_LOG_RECORD_BYTES) }, Buffer.alloc(9 * MAX_LOG_RECORD_BYTES)),
      'at most 8388608 bytes',
    ],
    [
      rawFrame(MessageType.LOG_READ, { name: 'l', from: null, maxBytes: 5 * 1024 * 1024, waitMs: 0 }),
      'maxBytes',
    ],
    [rawFrame(MessageType.LOG_READ, { name: 'l', from: -1, maxBytes: 1, waitMs: 0 }), 'from'],
    [rawFrame(MessageType.LOG_READ, { name: 'l', from: 0, maxBytes: 1, waitMs: 2 ** 31 }), 'waitMs'],
    [rawFrame(MessageType.LOG_TRUNCATE, { seq: 1, name: 'l', before: 1.5 }), 'before'],
  ];
  for (const [frame, mention] of cases) {
    throwsCode(t, () => decodeRequest(frame), 'INVALID_ARGUMENT', [mention]);
  }
  // A read answer must not claim more records than the log's bounds allow, nor bytes it does not carry.
  const ok = (header: object, payload?: Uint8Array) => rawFrame(MessageType.OK, header, payload);
  const base = { first: 0, next: 2, bytes: 2, from: 0 };
  throwsCode(t, () => decodeOk('LOG_READ', ok({ ...base, sizes: [1, 1, 1] }, Buffer.alloc(3))), 'PROTOCOL', [
    'at most 2',
  ]);
  throwsCode(t, () => decodeOk('LOG_READ', ok({ ...base, sizes: [1] }, Buffer.alloc(2))), 'PROTOCOL', [
    'add up to 1',
  ]);
  throwsCode(t, () => decodeOk('LOG_READ', ok({ ...base, from: 3, sizes: [] })), 'PROTOCOL', ['from']);
});

test('a deferred grant lists its pages without their bytes; READ_PAGES refuses an empty page list', (t) => {
  const { payload: _bytes, ...header } = sampleOks.ACQUIRE;
  const frame = frameOf(encodeOk('ACQUIRE', 1, { ...header, deferred: true }));
  t.deepEqual(decodeOk('ACQUIRE', frame), { ...header, deferred: true, payload: Buffer.alloc(0) });
  throwsCode(
    t,
    () => encodeOk('ACQUIRE', 1, { ...header, deferred: true }, Buffer.alloc(1)),
    'INVALID_ARGUMENT',
    ['deferred'],
  );
  const read = (h: object) => rawFrame(MessageType.READ_PAGES, { objectId: 1, version: 1, waitMs: 0, ...h });
  throwsCode(t, () => decodeRequest(read({ pages: [] })), 'INVALID_ARGUMENT', ['at least one page']);
  throwsCode(t, () => decodeRequest(read({ pages: [2, 1] })), 'INVALID_ARGUMENT', ['pages[1]']);
  throwsCode(t, () => decodeRequest(read({ pages: [0], objectId: 0 })), 'INVALID_ARGUMENT', ['objectId']);
});

test('bad answers are PROTOCOL errors naming the field', (t) => {
  const okFrame = (header: object, payload?: Uint8Array) => rawFrame(MessageType.OK, header, payload);
  const cases: [RequestType, Frame, string][] = [
    ['RELEASE', okFrame({ version: 0 }), 'version'],
    ['RELEASE', okFrame({}), 'version'],
    ['CANCEL', okFrame({ cancelled: 'yes' }), 'cancelled'],
    ['STAT', okFrame({ object: { ...record, address: 100 } }), 'object.address must be a multiple of 4096'],
    ['STAT', okFrame({ object: { ...record, id: 0 } }), 'object.id'],
    ['STAT', okFrame({ object: { ...record, name: '' } }), 'object.name'],
    ['STAT', okFrame({ object: [1, 2] }), 'object must be a map'],
    ['LIST', okFrame({ objects: [record, { ...record, size: 0 }] }), 'objects[1].size'],
    ['CREATE', okFrame({ object: record }), 'created'],
    ['HELLO', okFrame({ ...sampleOks.HELLO, sessionId: -1 }), 'sessionId'],
    [
      'ACQUIRE',
      okFrame({ object: record, token: 1, pages: [0], deferred: true }, Buffer.alloc(4096)),
      'payload',
    ],
    ['READ_PAGES', okFrame({ object: record, pages: [0] }, Buffer.alloc(10)), 'payload'],
    ['READ_PAGES', okFrame({ object: record, pages: [3] }, Buffer.alloc(4096)), 'pages[0]'],
    ['HELLO', okFrame({ ...sampleOks.HELLO, udpPort: 70000 }), 'udpPort'],
    ['VALIDATE', okFrame({ stale: [[1, -1]] }), 'stale[0][1]'],
    ['KEEPALIVE', okFrame({}, Buffer.alloc(1)), 'no payload'],
    ['ACQUIRE', okFrame({ object: record, token: 1, pages: [1, 0] }, Buffer.alloc(8192)), 'pages[1]'],
    ['ACQUIRE', okFrame({ object: record, token: 1, pages: [3] }, Buffer.alloc(4096)), 'pages[0]'],
    [
      'ACQUIRE',
      okFrame({ object: record, token: 1, pages: [0, 0] }, Buffer.alloc(8192)),
      'strictly ascending',
    ],
    ['ACQUIRE', okFrame({ object: record, token: 1, pages: [2] }, Buffer.alloc(4096)), 'need 1808'],
    ['ACQUIRE', okFrame({ object: record, token: 1, pages: [] }, Buffer.alloc(1)), 'need 0'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, role: 'boss' }), 'role must be one of'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, locks: [['x', 'write', 1]] }), 'locks[0]'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, locks: [['x', 'own', 1, 0]] }), 'locks[0].mode'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, lockedObjects: 0 }), 'lockedObjects'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, progress: [['s2']] }), 'progress[0]'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, group: { id: 65536, start: 0, bytes: 4096 } }), 'group.id'],
    [
      'STATUS',
      okFrame({ ...sampleOks.STATUS, group: { id: 1, start: 4096, bytes: 2 ** 46 } }),
      'group.bytes',
    ],
    ['STATUS', okFrame({ ...sampleOks.STATUS, group: [1, 0, 4096] }), 'group must be a map'],
    ['STATUS', okFrame({ ...sampleOks.STATUS, writesHeldMs: 0 }), 'writesHeldMs'],
    ['HELLO', okFrame({ ...sampleOks.HELLO, groupId: -1 }), 'groupId'],
    ['SLOTS', okFrame({ ...sampleOks.SLOTS, groupId: 65536 }), 'groupId'],
    [
      'SLOTS',
      okFrame({ ...sampleOks.SLOTS, table: { ...sampleOks.SLOTS.table, ranges: [[0, 100, 0]] } }),
      'slots 101..16383 belong to no group',
    ],
    ['SLOTS', okFrame({ groupId: 0 }), 'slot table must be a map'],
    ['BARRIER', okFrame({ ...sampleOks.BARRIER, held: 1 }), 'held must be a boolean'],
    ['BARRIER', okFrame({ ...sampleOks.BARRIER, remainingMs: 10_001 }), 'remainingMs'],
    ['PROBE', okFrame({ pushed: -1 }), 'pushed'],
  ];
  for (const [type, frame, includes] of cases) {
    throwsCode(t, () => decodeOk(type, frame), 'PROTOCOL', [`bad OK answer to ${type}`, includes]);
  }
  throwsCode(t, () => decodeOk('STAT', rawFrame(MessageType.INVALIDATE, {})), 'PROTOCOL', ['expected OK']);
});

// ---- ERROR

test('ERROR frames round trip every code', (t) => {
  for (const code of ERROR_CODES) {
    const err = new SegmemError(code, `something ${code}`, { name: 'x', n: 3, nested: { list: [1, 'a'] } });
    const frame = frameOf(encodeError(9, err));
    t.is(frame.type, MessageType.ERROR);
    t.is(frame.requestId, 9);
    const back = decodeError(frame);
    t.true(SegmemError.is(back, code));
    t.is(back.message, err.message);
    t.deepEqual(back.details, err.details);
    const thrown = t.throws(() => decodeResponse('STAT', frame)) as SegmemError;
    t.is(thrown.code, code);
  }
  const plain = decodeError(frameOf(encodeError(0, new SegmemError('PROTOCOL', 'bad frame'))));
  t.is(plain.details, undefined);
});

test('ERROR encoding makes any message and details carriable', (t) => {
  const long = 'x'.repeat(MAX_ERROR_MESSAGE_CHARS * 2);
  const back = decodeError(
    frameOf(encodeError(1, new SegmemError('NOT_FOUND', `${long}`, { when: new Date(0), big: 2n ** 64n }))),
  );
  t.is(back.message.length, MAX_ERROR_MESSAGE_CHARS);
  t.deepEqual(back.details, { when: '1970-01-01T00:00:00.000Z', big: '18446744073709551616' });
  const surrogate = decodeError(
    frameOf(encodeError(1, new SegmemError('INVALID_ARGUMENT', 'bad name "\ud800"'))),
  );
  t.is(surrogate.message, 'bad name "\ufffd"');
});

test('bad ERROR frames are PROTOCOL errors', (t) => {
  throwsCode(
    t,
    () => decodeError(rawFrame(MessageType.ERROR, { code: 'BORED', message: 'zzz' })),
    'PROTOCOL',
    ['unknown code', 'BORED', 'zzz'],
  );
  throwsCode(t, () => decodeError(rawFrame(MessageType.ERROR, { code: 'NOT_FOUND' })), 'PROTOCOL', [
    'message',
  ]);
  throwsCode(
    t,
    () => decodeError(rawFrame(MessageType.ERROR, { code: 'NOT_FOUND', message: 'x', details: 5 })),
    'PROTOCOL',
    ['details'],
  );
  throwsCode(t, () => decodeError(rawFrame(MessageType.OK, {})), 'PROTOCOL', ['expected ERROR']);
});

// ---- INVALIDATE

test('INVALIDATE round trips and is validated', (t) => {
  const msg = {
    seq: 3,
    objects: [
      [1, 2],
      [3, 0],
    ] as [number, number][],
  };
  const frame = frameOf(encodeInvalidate(msg, 2));
  t.is(frame.type, MessageType.INVALIDATE);
  t.is(frame.requestId, 0);
  t.is(frame.groupId, 2);
  t.deepEqual(decodeInvalidate(frame), msg);
  throwsCode(t, () => decodeInvalidate(rawFrame(MessageType.INVALIDATE, msg, undefined, 4)), 'PROTOCOL', [
    'requestId 4',
  ]);
  throwsCode(
    t,
    () => decodeInvalidate(rawFrame(MessageType.INVALIDATE, { seq: 0, objects: [] }, undefined, 0)),
    'PROTOCOL',
    ['seq'],
  );
  throwsCode(t, () => decodeInvalidate(rawFrame(MessageType.OK, msg)), 'PROTOCOL', ['expected INVALIDATE']);
});

test('messageTypeName covers every code', (t) => {
  for (const [name, code] of Object.entries(MessageType)) t.is(messageTypeName(code), name as never);
  t.is(messageTypeName(0x42), undefined);
});

test('WATCH and UNWATCH refuse bad fields, naming them', (t) => {
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.WATCH, {})), 'INVALID_ARGUMENT', ['WATCH', 'name']);
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.WATCH, { name: '' })), 'INVALID_ARGUMENT', ['name']);
  throwsCode(
    t,
    () => decodeRequest(rawFrame(MessageType.WATCH, { name: 'a' }, Buffer.alloc(1))),
    'INVALID_ARGUMENT',
    ['payload'],
  );
  for (const objectId of [0, -1, 1.5, '3', null, 2 ** 53]) {
    throwsCode(t, () => decodeRequest(rawFrame(MessageType.UNWATCH, { objectId })), 'INVALID_ARGUMENT', [
      'UNWATCH',
      'objectId',
    ]);
  }
  throwsCode(t, () => decodeOk('WATCH', rawFrame(MessageType.OK, { objectId: 1, version: 0 })), 'PROTOCOL', [
    'version',
  ]);
  throwsCode(t, () => decodeOk('UNWATCH', rawFrame(MessageType.OK, { removed: 1 })), 'PROTOCOL', ['removed']);
});

test('HELLO user and password are validated and come together', (t) => {
  const hello = { protocol: 1, sessionTimeoutMs: 1000 };
  for (const [fields, field] of [
    [{ user: 'alice' }, 'password'],
    [{ password: 'x' }, 'user'],
    [{ user: 'al ice', password: 'x' }, 'user'],
    [{ user: '', password: 'x' }, 'user'],
    [{ user: 'a'.repeat(65), password: 'x' }, 'user'],
    [{ user: 'alice', password: '' }, 'password'],
    [{ user: 'alice', password: 'x'.repeat(1025) }, 'password'],
    [{ user: 7, password: 'x' }, 'user'],
  ] as const) {
    throwsCode(
      t,
      () => decodeRequest(rawFrame(MessageType.HELLO, { ...hello, ...fields })),
      'INVALID_ARGUMENT',
      ['HELLO', field],
    );
  }
});

test('USERS refuses bad fields, naming them', (t) => {
  const add = { op: 'add', seq: 1, user: 'bob', password: samplePasswordHash };
  for (const [header, field] of [
    [{ op: 'grant', seq: 1, user: 'bob' }, 'op'],
    [{ op: 'remove', seq: 0, user: 'bob' }, 'seq'],
    [{ op: 'remove', seq: 1, user: null }, 'user'],
    [{ op: 'list', user: 'b b' }, 'user'],
    [{ ...add, password: null }, 'password'],
    [{ ...add, password: { ...samplePasswordHash, salt: 'abcd' } }, 'password.salt'],
    [{ ...add, password: { ...samplePasswordHash, hash: 'AB'.repeat(32) } }, 'password.hash'],
    [{ ...add, password: { ...samplePasswordHash, n: 3000 } }, 'password.n'],
    [{ ...add, password: { ...samplePasswordHash, n: 2 ** 21 } }, 'password.n'],
    [{ ...add, password: { ...samplePasswordHash, r: 0 } }, 'password.r'],
    [{ ...add, password: { ...samplePasswordHash, n: 2 ** 18, r: 8 } }, 'password'],
    [{ op: 'aclSet', seq: 1, user: 'bob', prefix: 'a/', right: 'owner' }, 'right'],
    [{ op: 'aclSet', seq: 1, user: 'bob', right: 'read' }, 'prefix'],
    [{ op: 'aclRemove', seq: 1, user: 'bob', prefix: 'x'.repeat(256) }, 'prefix'],
  ] as const) {
    throwsCode(t, () => decodeRequest(rawFrame(MessageType.USERS, header)), 'INVALID_ARGUMENT', [
      'USERS',
      field,
    ]);
  }
  throwsCode(
    t,
    () => decodeOk('USERS', rawFrame(MessageType.OK, { users: [{ name: 'bob', rules: [['a/', 'all']] }] })),
    'PROTOCOL',
    ['right'],
  );
});

test('rightOn takes the strongest matching rule; rightCovers orders read < write < admin', (t) => {
  const rules: AclRule[] = [
    ['a/', 'read'],
    ['a/b/', 'write'],
    ['', 'read'],
    ['adm', 'admin'],
  ];
  t.is(rightOn(rules, 'a/x'), 'read');
  t.is(rightOn(rules, 'a/b/c'), 'write');
  t.is(rightOn(rules, 'admin/x'), 'admin');
  t.is(rightOn([['a/', 'read']], 'b/x'), null);
  t.true(rightCovers('admin', 'write'));
  t.true(rightCovers('write', 'read'));
  t.false(rightCovers('read', 'write'));
  t.false(rightCovers(null, 'read'));
});

test('a REVOKE push round trips; a bad one is PROTOCOL', (t) => {
  const frame = frameOf(encodeRevoke({ objectId: 42 }, 1));
  t.is(frame.type, MessageType.REVOKE);
  t.is(frame.requestId, 0);
  t.deepEqual(decodeRevoke(frame), { objectId: 42 });
  throwsCode(t, () => decodeRevoke(rawFrame(MessageType.REVOKE, { objectId: 0 }, undefined, 0)), 'PROTOCOL', [
    'objectId',
  ]);
  throwsCode(t, () => decodeRevoke(rawFrame(MessageType.REVOKE, { objectId: 1 }, undefined, 3)), 'PROTOCOL', [
    'REVOKE',
  ]);
});

test('a grant says when others wait behind it, and a kept write release says whether the lock stayed', (t) => {
  const record = { id: 1, name: 'c', size: 10, address: 0, version: 2 };
  const grant = { object: record, token: 3, pages: [], payload: Buffer.alloc(0), contended: true as const };
  t.deepEqual(decodeOk('ACQUIRE', frameOf(encodeOk('ACQUIRE', 1, grant))), grant);
  const plain = { object: record, token: 3, pages: [], payload: Buffer.alloc(0) };
  t.deepEqual(decodeOk('ACQUIRE', frameOf(encodeOk('ACQUIRE', 1, plain))), plain);
  t.deepEqual(decodeOk('RELEASE', frameOf(encodeOk('RELEASE', 1, { version: 4, kept: true }))), {
    version: 4,
    kept: true,
  });
  t.deepEqual(decodeOk('RELEASE', frameOf(encodeOk('RELEASE', 1, { version: 4, kept: false }))), {
    version: 4,
    kept: false,
  });
  t.deepEqual(decodeOk('RELEASE', frameOf(encodeOk('RELEASE', 1, { version: 4 }))), { version: 4 });
});

test('a PROBED push round trips; a bad one is PROTOCOL', (t) => {
  const msg = { initiator: 'fedcba9876543210', probeId: 12, hops: 2, name: 'jobs/a' };
  const frame = frameOf(encodeProbed(msg, 1));
  t.is(frame.type, MessageType.PROBED);
  t.is(frame.requestId, 0);
  t.deepEqual(decodeProbed(frame), msg);
  const bad: [Record<string, unknown>, string][] = [
    [{ ...msg, initiator: 'FEDCBA9876543210' }, 'initiator'],
    [{ ...msg, initiator: 'abc' }, 'initiator'],
    [{ ...msg, probeId: 0 }, 'probeId'],
    [{ ...msg, hops: 0 }, 'hops'],
    [{ ...msg, hops: MAX_PROBE_HOPS + 1 }, 'hops'],
    [{ ...msg, name: '' }, 'name'],
  ];
  for (const [header, field] of bad) {
    throwsCode(t, () => decodeProbed(rawFrame(MessageType.PROBED, header, undefined, 0)), 'PROTOCOL', [
      field,
    ]);
  }
  throwsCode(t, () => decodeProbed(rawFrame(MessageType.PROBED, msg, undefined, 4)), 'PROTOCOL', [
    'requestId 4',
  ]);
  // A push is not a request; a probe request with a bad field is refused by name.
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.PROBED, msg)), 'PROTOCOL', ['not a request']);
  throwsCode(
    t,
    () => decodeRequest(rawFrame(MessageType.PROBE, { initiator: 'x', probeId: 1, hops: 0 })),
    'INVALID_ARGUMENT',
    ['initiator'],
  );
  throwsCode(
    t,
    () => decodeRequest(rawFrame(MessageType.PROBE, { initiator: '0123456789abcdef', probeId: 1, hops: 32 })),
    'INVALID_ARGUMENT',
    ['hops'],
  );
});

test('a CHANGED push round trips; a bad one is PROTOCOL', (t) => {
  const msg = {
    objects: [
      [5, 9],
      [6, 0],
    ] as [number, number][],
  };
  const frame = frameOf(encodeChanged(msg, 1));
  t.is(frame.type, MessageType.CHANGED);
  t.is(frame.requestId, 0);
  t.deepEqual(decodeChanged(frame), msg);
  throwsCode(t, () => decodeChanged(rawFrame(MessageType.CHANGED, msg, undefined, 3)), 'PROTOCOL', [
    'requestId 3',
  ]);
  throwsCode(
    t,
    () => decodeChanged(rawFrame(MessageType.CHANGED, { objects: [] }, undefined, 0)),
    'PROTOCOL',
    ['objects'],
  );
  const tooMany = Array.from({ length: MAX_WATCHES_PER_SESSION + 1 }, (_, i) => [i + 1, 1]);
  throwsCode(
    t,
    () => decodeChanged(rawFrame(MessageType.CHANGED, { objects: tooMany }, undefined, 0)),
    'PROTOCOL',
    ['objects'],
  );
  throwsCode(
    t,
    () => decodeChanged(rawFrame(MessageType.CHANGED, { objects: [[0, 1]] }, undefined, 0)),
    'PROTOCOL',
    ['id'],
  );
  throwsCode(t, () => decodeChanged(rawFrame(MessageType.OK, msg)), 'PROTOCOL', ['expected CHANGED']);
  // A push is not a request: a client cannot send one to a server.
  throwsCode(t, () => decodeRequest(rawFrame(MessageType.CHANGED, msg)), 'PROTOCOL', ['not a request']);
});
