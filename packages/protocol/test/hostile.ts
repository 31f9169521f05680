/**
 * Valid-but-hostile request frames for every request type: the header is well-formed msgpack of the right
 * shape (a map with the type's fields), but some fields carry hostile values (negative, huge, fractional or
 * non-finite numbers, 64-bit integers, strings empty or at and past their limits, control characters, lone
 * surrogates, wrong types, deep nesting), fields go missing or extra ones appear, and the payload may be
 * shorter or longer than the header declares.
 *
 * Shared by the decoder properties (protocol/test/hostile-headers.test.ts) and the fuzzer against a real
 * server (client/test/fuzz-server.test.ts), so both attack with the same frames.
 */
import fc from 'fast-check';
import {
  decodeFrame,
  encodeFrame,
  encodeRequest,
  MAX_LOG_BATCH_RECORDS,
  MAX_LOG_MAX_BYTES,
  MAX_LOG_READ_BYTES,
  MAX_LOG_RECORD_BYTES,
  MAX_NAME_BYTES,
  MAX_OBJECT_BYTES,
  MAX_PROBE_HOPS,
  MAX_SESSION_TIMEOUT_MS,
  MAX_SNAPSHOT_CHUNK_BYTES,
  MAX_TIMEOUT_MS,
  MAX_TOKEN_BYTES,
  MessageType,
  MIN_SESSION_TIMEOUT_MS,
  PAGE_BYTES,
  PROTOCOL_VERSION,
  type Request,
  type RequestType,
} from '../src/index.js';

/** Every header field each request type knows (present or optional). */
export const REQUEST_FIELDS: Record<RequestType, readonly string[]> = {
  HELLO: [
    'protocol',
    'clusterId',
    'token',
    'sessionTimeoutMs',
    'resumeSessionId',
    'resumeSecret',
    'udpPort',
    'clientName',
    'pageReader',
    'user',
    'password',
  ],
  KEEPALIVE: ['lease'],
  CREATE: ['seq', 'name', 'size', 'ifNotExists'],
  DELETE: ['seq', 'name', 'timeoutMs'],
  STAT: ['name'],
  LIST: ['prefix'],
  ACQUIRE: ['seq', 'name', 'mode', 'cachedId', 'cachedVersion', 'timeoutMs', 'inlineMaxBytes'],
  RELEASE: ['seq', 'name', 'mode', 'token', 'ranges', 'keep'],
  CANCEL: ['requestId', 'reason'],
  VALIDATE: ['objects'],
  GOODBYE: [],
  MEMBERSHIP: ['op', 'id', 'address'],
  LOG_APPEND: ['seq', 'name', 'sizes', 'maxBytes'],
  LOG_READ: ['name', 'from', 'maxBytes', 'waitMs'],
  LOG_TRUNCATE: ['seq', 'name', 'before'],
  READ_PAGES: ['objectId', 'version', 'pages', 'waitMs'],
  SNAPSHOT: [],
  SNAPSHOT_READ: ['id', 'offset', 'length'],
  STATUS: [],
  WATCH: ['name'],
  UNWATCH: ['objectId'],
  USERS: ['op', 'seq', 'user', 'password', 'rules', 'prefix', 'right'],
  SLOTS: [],
  BARRIER: ['op', 'holdMs'],
  PROBE: ['initiator', 'probeId', 'hops'],
  MOVE: ['op', 'moveId', 'from', 'to', 'slots', 'table', 'objects', 'logs'],
  MOVE_READ: ['moveId', 'cursor', 'maxBytes'],
};

const nameArb = (prefix: string) =>
  fc.oneof(
    fc.stringMatching(/^[a-z0-9/._-]{1,24}$/).map((s) => `${prefix}${s}`.slice(0, MAX_NAME_BYTES)),
    fc.constant(`${prefix}${'n'.repeat(MAX_NAME_BYTES - prefix.length)}`),
    fc.constant(`${prefix}\u00e9\u4e2d\u{1f600}`),
  );
/** null or a value of `a`. */
const opt = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | null> => fc.oneof(fc.constant(null), a);
const seqArb = fc.integer({ min: 1, max: 2 ** 40 });
const idArb = fc.oneof(
  fc.integer({ min: 1, max: 100 }),
  fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
);
const timeoutArb = fc.oneof(fc.constant(null), fc.integer({ min: 0, max: 200 }), fc.constant(MAX_TIMEOUT_MS));
const modeArb = fc.constantFrom('read' as const, 'write' as const);

/** Sorted, non-overlapping write ranges within a small object, with their payload. */
const rangesArb = fc
  .uniqueArray(fc.integer({ min: 0, max: 2 * PAGE_BYTES - 1 }), { minLength: 2, maxLength: 8 })
  .map((cuts) => {
    const sorted = [...cuts].sort((a, b) => a - b);
    const ranges: [number, number][] = [];
    for (let i = 0; i + 1 < sorted.length; i += 2) ranges.push([sorted[i]!, sorted[i + 1]! - sorted[i]!]);
    return ranges;
  });

/**
 * A valid request of `type`. `namePrefix` starts every object and log name it holds (a real-server test keeps
 * its control objects under another prefix, so the fuzzer never touches them).
 */
export function validRequestArb(type: RequestType, namePrefix = ''): fc.Arbitrary<Request> {
  const name = nameArb(namePrefix);
  switch (type) {
    case 'HELLO':
      return fc.record({
        type: fc.constant('HELLO' as const),
        protocol: fc.constant(PROTOCOL_VERSION),
        clusterId: opt(fc.stringMatching(/^[a-z0-9-]{1,40}$/)),
        token: opt(fc.string({ maxLength: 40 })),
        sessionTimeoutMs: fc.integer({ min: MIN_SESSION_TIMEOUT_MS, max: MAX_SESSION_TIMEOUT_MS }),
        resumeSessionId: opt(idArb),
        resumeSecret: opt(fc.stringMatching(/^[0-9a-f]{32}$/)),
        udpPort: opt(fc.integer({ min: 1, max: 65535 })),
        clientName: opt(fc.string({ maxLength: 40 })),
        pageReader: fc.boolean(),
      });
    case 'KEEPALIVE':
      return fc.boolean().map((lease) => (lease ? { type: 'KEEPALIVE', lease } : { type: 'KEEPALIVE' }));
    case 'CREATE':
      return fc.record({
        type: fc.constant('CREATE' as const),
        seq: seqArb,
        name,
        size: fc.oneof(fc.integer({ min: 1, max: 3 * PAGE_BYTES }), fc.constant(MAX_OBJECT_BYTES)),
        ifNotExists: fc.boolean(),
      });
    case 'DELETE':
      return fc.record({ type: fc.constant('DELETE' as const), seq: seqArb, name, timeoutMs: timeoutArb });
    case 'STAT':
      return fc.record({ type: fc.constant('STAT' as const), name });
    case 'LIST':
      return fc.record({ type: fc.constant('LIST' as const), prefix: fc.oneof(fc.constant(''), name) });
    case 'ACQUIRE':
      return fc.record({
        type: fc.constant('ACQUIRE' as const),
        seq: seqArb,
        name,
        mode: modeArb,
        cachedId: fc.nat({ max: 1000 }),
        cachedVersion: fc.nat({ max: 1000 }),
        timeoutMs: timeoutArb,
        inlineMaxBytes: opt(fc.nat({ max: 1 << 20 })),
      });
    case 'RELEASE':
      return fc
        .record({ seq: seqArb, name, mode: modeArb, token: fc.nat({ max: 1000 }), ranges: rangesArb })
        .map(({ seq, name, mode, token, ranges }) => {
          const rs = mode === 'read' ? [] : ranges;
          let bytes = 0;
          for (const r of rs) bytes += r[1];
          return {
            type: 'RELEASE' as const,
            seq,
            name,
            mode,
            token,
            ranges: rs,
            payload: Buffer.alloc(bytes, 7),
          };
        });
    case 'CANCEL':
      return fc.record({
        type: fc.constant('CANCEL' as const),
        requestId: fc.integer({ min: 1, max: 0xffffffff }),
        reason: fc.constantFrom('TIMEOUT' as const, 'ABORTED' as const, 'DEADLOCK' as const),
      });
    case 'VALIDATE':
      return fc.record({
        type: fc.constant('VALIDATE' as const),
        objects: fc.array(fc.tuple(idArb, fc.integer({ min: 1, max: 1000 })), { maxLength: 8 }),
      });
    case 'GOODBYE':
    case 'SNAPSHOT':
    case 'STATUS':
    case 'SLOTS':
      return fc.constant({ type } as Request);
    case 'BARRIER':
      // Only short holds: a fuzzer must not stall the server's writes for long.
      return fc.oneof(
        fc.record({
          type: fc.constant('BARRIER' as const),
          op: fc.constant('hold' as const),
          holdMs: fc.integer({ min: 1, max: 50 }),
        }),
        fc.constant({ type: 'BARRIER' as const, op: 'release' as const, holdMs: 0 }),
      );
    case 'PROBE':
      return fc.record({
        type: fc.constant('PROBE' as const),
        initiator: fc.stringMatching(/^[0-9a-f]{16}$/),
        probeId: fc.integer({ min: 1, max: 0xffffffff }),
        hops: fc.integer({ min: 0, max: MAX_PROBE_HOPS - 1 }),
      });
    case 'MOVE':
      // Only 'status': a fuzzer that froze or switched slots would be changing the cluster on purpose.
      return fc.constant({ type: 'MOVE', op: 'status', moveId: null } as Request);
    case 'MOVE_READ':
      return fc.record({
        type: fc.constant('MOVE_READ' as const),
        moveId: fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/),
        cursor: fc.record({
          phase: fc.constantFrom('objects' as const, 'logs' as const),
          after: opt(name),
          from: fc.nat({ max: 1000 }),
        }),
        maxBytes: fc.integer({ min: 1, max: 16 * 1024 * 1024 }),
      });
    case 'MEMBERSHIP':
      // Only 'list': a fuzzer that added or removed members would be changing the cluster on purpose.
      return fc.constant({ type: 'MEMBERSHIP', op: 'list', id: null, address: null });
    case 'LOG_APPEND':
      return fc
        .record({
          seq: seqArb,
          name,
          sizes: fc.array(fc.nat({ max: 64 }), { minLength: 1, maxLength: 6 }),
          maxBytes: opt(fc.integer({ min: 1, max: MAX_LOG_MAX_BYTES })),
        })
        .map(({ seq, name, sizes, maxBytes }) => ({
          type: 'LOG_APPEND' as const,
          seq,
          name,
          sizes,
          maxBytes,
          payload: Buffer.alloc(
            sizes.reduce((a, b) => a + b, 0),
            9,
          ),
        }));
    case 'LOG_READ':
      return fc.record({
        type: fc.constant('LOG_READ' as const),
        name,
        from: opt(fc.nat({ max: 1000 })),
        maxBytes: fc.oneof(fc.nat({ max: 4096 }), fc.constant(MAX_LOG_READ_BYTES)),
        waitMs: fc.nat({ max: 50 }),
      });
    case 'LOG_TRUNCATE':
      return fc.record({
        type: fc.constant('LOG_TRUNCATE' as const),
        seq: seqArb,
        name,
        before: fc.nat({ max: 1000 }),
      });
    case 'READ_PAGES':
      return fc.record({
        type: fc.constant('READ_PAGES' as const),
        objectId: idArb,
        version: fc.integer({ min: 1, max: 1000 }),
        pages: fc
          .uniqueArray(fc.nat({ max: MAX_OBJECT_BYTES / PAGE_BYTES - 1 }), { minLength: 1, maxLength: 6 })
          .map((p) => [...p].sort((a, b) => a - b)),
        waitMs: fc.nat({ max: 50 }),
      });
    case 'SNAPSHOT_READ':
      return fc.record({
        type: fc.constant('SNAPSHOT_READ' as const),
        id: idArb,
        offset: fc.nat(),
        length: fc.integer({ min: 1, max: MAX_SNAPSHOT_CHUNK_BYTES }),
      });
    case 'WATCH':
      return fc.record({ type: fc.constant('WATCH' as const), name });
    case 'UNWATCH':
      return fc.record({ type: fc.constant('UNWATCH' as const), objectId: idArb });
    case 'USERS': {
      // No 'add': a fuzzer that created users would turn logins on for every later connection on purpose.
      const user = fc.stringMatching(/^[A-Za-z0-9._@-]{1,20}$/);
      return fc.oneof(
        fc.record({
          type: fc.constant('USERS' as const),
          op: fc.constant('list' as const),
          seq: fc.constant(0),
          user: opt(user),
        }),
        fc.record({
          type: fc.constant('USERS' as const),
          op: fc.constant('remove' as const),
          seq: seqArb,
          user,
        }),
        fc.record({
          type: fc.constant('USERS' as const),
          op: fc.constant('aclRemove' as const),
          seq: seqArb,
          user,
          prefix: fc.oneof(fc.constant(''), name),
        }),
        fc.record({
          type: fc.constant('USERS' as const),
          op: fc.constant('aclSet' as const),
          seq: seqArb,
          user,
          prefix: fc.oneof(fc.constant(''), name),
          right: fc.constantFrom('read' as const, 'write' as const, 'admin' as const),
        }),
      );
    }
  }
}

/** Numbers no field accepts, and the edges of the ones fields do. */
const hostileNumber = fc.constantFrom(
  -1,
  -0,
  0,
  1,
  0.5,
  1.5,
  -(2 ** 31),
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32 - 1,
  2 ** 32,
  65535,
  65536,
  MAX_NAME_BYTES + 1,
  MAX_TOKEN_BYTES + 1,
  MAX_OBJECT_BYTES,
  MAX_OBJECT_BYTES + 1,
  MAX_OBJECT_BYTES / PAGE_BYTES,
  MAX_LOG_RECORD_BYTES + 1,
  MAX_LOG_BATCH_RECORDS + 1,
  MAX_LOG_MAX_BYTES + 1,
  MAX_TIMEOUT_MS + 1,
  MAX_SESSION_TIMEOUT_MS + 1,
  MIN_SESSION_TIMEOUT_MS - 1,
  Number.MAX_SAFE_INTEGER,
  Number.MAX_SAFE_INTEGER + 1,
  -Number.MAX_SAFE_INTEGER,
  2 ** 63,
  1e308,
  Number.MIN_VALUE,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
);
/** 64-bit integers: msgpack carries them, a header may not (they would lose precision as doubles). */
const hostileBigint = fc.constantFrom(2n ** 53n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n);
const hostileString = fc.oneof(
  fc.constantFrom(
    '',
    '\0',
    'a\0b',
    '\x1b[2J\x1b[H',
    'line\nbreak',
    '\u0085next-line',
    '\u007f',
    '\ud800',
    'x\udfff',
    '\u202egnp.exe',
    'read ',
    'WRITE',
    'list',
    'TIMEOUT',
    '__proto__',
    'a'.repeat(MAX_NAME_BYTES),
    'a'.repeat(MAX_NAME_BYTES + 1),
    '\u00e9'.repeat(128),
    '\u{1f600}'.repeat(64),
    'x'.repeat(MAX_TOKEN_BYTES + 1),
    'host:99999',
    '[::1]:7401',
  ),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.integer({ min: 1, max: 70_000 }).map((n) => 'z'.repeat(n)),
);
const wrongType = fc.constantFrom<unknown>(
  null,
  true,
  false,
  [],
  {},
  [[]],
  [1, 2],
  [[1, 2], [3]],
  [[-1, 1]],
  [[0, 0]],
  [
    [5, 1],
    [0, 1],
  ],
  [2, 1],
  { a: 1 },
  Buffer.alloc(3),
  Buffer.alloc(0),
);
/** Nested arrays deeper than any header may be. */
const deep = fc.integer({ min: 2, max: 12 }).map((depth) => {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
});
/** Arrays of hostile elements (pages, sizes, ranges, objects). */
const hostileList = fc.array(fc.oneof(hostileNumber, hostileString, wrongType), { maxLength: 6 });

export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: hostileNumber },
  { weight: 1, arbitrary: hostileBigint },
  { weight: 3, arbitrary: hostileString },
  { weight: 3, arbitrary: wrongType },
  { weight: 1, arbitrary: deep },
  { weight: 2, arbitrary: hostileList },
);

/** A field change: a hostile value, or the field removed. */
type Mutation = { field: string; remove: true } | { field: string; remove: false; value: unknown };

export interface HostileFrame {
  type: RequestType;
  /** The frame's bytes, ready to write to a socket (requestId as given to {@link hostileFrameArb}'s map). */
  header: Record<string, unknown>;
  payload: Buffer;
  /** What was done to the valid request it came from, for a failure's message. */
  mutations: string[];
}

const EXTRA_KEYS = ['extra', 'type', 'payload', '__proto__', 'constructor', 'prototype', '', 'x'.repeat(300)];

/**
 * A hostile frame of `type`: a valid request's header with 1..4 fields changed or removed, maybe extra
 * fields, and maybe a payload shorter or longer than the header says.
 */
export function hostileFrameArb(type: RequestType, namePrefix = ''): fc.Arbitrary<HostileFrame> {
  const fields = REQUEST_FIELDS[type];
  const mutationArb: fc.Arbitrary<Mutation> =
    fields.length === 0
      ? fc.constant({ field: 'extra', remove: false, value: 1 })
      : fc.oneof(
          {
            weight: 5,
            arbitrary: fc.record({
              field: fc.constantFrom(...fields),
              remove: fc.constant(false as const),
              value: hostileValue,
            }),
          },
          {
            weight: 1,
            arbitrary: fc.record({ field: fc.constantFrom(...fields), remove: fc.constant(true as const) }),
          },
        );
  return fc
    .record({
      valid: validRequestArb(type, namePrefix),
      mutations: fc.array(mutationArb, { minLength: 1, maxLength: 4 }),
      extras: fc.array(fc.tuple(fc.constantFrom(...EXTRA_KEYS), hostileValue), { maxLength: 2 }),
      payloadChange: fc.oneof(
        { weight: 4, arbitrary: fc.constant(0) },
        { weight: 1, arbitrary: fc.integer({ min: -64, max: 64 }) },
        { weight: 1, arbitrary: fc.constantFrom(PAGE_BYTES, 70_000) },
      ),
    })
    .map(({ valid, mutations, extras, payloadChange }) => {
      const frame = decodeFrame(Buffer.concat(encodeRequest(valid, 1)));
      // A map without a prototype: a key like "__proto__" is then an ordinary own key, encoded as such.
      const header: Record<string, unknown> = Object.create(null);
      Object.assign(header, frame.header);
      const notes: string[] = [];
      for (const m of mutations) {
        if (m.remove) {
          delete header[m.field];
          notes.push(`-${m.field}`);
        } else {
          header[m.field] = m.value;
          notes.push(`${m.field}=${show(m.value)}`);
        }
      }
      for (const [k, v] of extras) {
        header[k] = v;
        notes.push(`+${k.length > 20 ? `${k.slice(0, 20)}...` : k}=${show(v)}`);
      }
      let payload = Buffer.from(frame.payload);
      if (payloadChange < 0) payload = payload.subarray(0, Math.max(0, payload.length + payloadChange));
      else if (payloadChange > 0) payload = Buffer.concat([payload, Buffer.alloc(payloadChange, 0xee)]);
      if (payloadChange !== 0) notes.push(`payload ${frame.payload.length} -> ${payload.length} bytes`);
      return { type, header, payload, mutations: notes };
    });
}

/** The frame's bytes with `requestId`. */
export function hostileFrameBytes(f: HostileFrame, requestId: number): Buffer {
  return Buffer.concat(encodeFrame(MessageType[f.type], requestId, 0, f.header, f.payload));
}

/** A short text of a value for a failure's message. */
export function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v);
  if (typeof v === 'string')
    return JSON.stringify(v.length > 30 ? `${v.slice(0, 30)}...(${v.length} chars)` : v);
  if (Buffer.isBuffer(v)) return `<${v.length} bytes>`;
  try {
    const s = JSON.stringify(v);
    return s.length > 60 ? `${s.slice(0, 60)}...` : s;
  } catch {
    return String(v);
  }
}

/** What a failing property prints: the type, the mutations and the frame in hex (cut after 512 bytes). */
export function describeFrame(f: HostileFrame): string {
  const hex = hostileFrameBytes(f, 1).toString('hex');
  return `${f.type} [${f.mutations.join(', ')}] frame ${hex.length > 1024 ? `${hex.slice(0, 1024)}...` : hex}`;
}
