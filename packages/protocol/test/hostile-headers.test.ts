/**
 * Valid-but-hostile headers for every request type (see hostile.ts): the decoder either refuses the frame
 * with SegmemError PROTOCOL or INVALID_ARGUMENT, or returns a request whose every field keeps the bounds the
 * message catalogue documents (checked here by an oracle written from those docs, not from validate.ts);
 * and every valid request survives encode then decode unchanged.
 *
 * The seed is fixed, so CI runs the same frames each time; SEGMEM_FUZZ_SEED=<n> runs others. A failure
 * prints the seed, fast-check's replay path and the frame in hex.
 */
import test from 'ava';
import fc from 'fast-check';
import {
  decodeRequest,
  encodeRequest,
  FrameDecoder,
  MAX_BARRIER_HOLD_MS,
  MAX_LOG_BATCH_BYTES,
  MAX_LOG_BATCH_RECORDS,
  MAX_LOG_MAX_BYTES,
  MAX_LOG_READ_BYTES,
  MAX_LOG_RECORD_BYTES,
  MAX_NAME_BYTES,
  MAX_OBJECT_BYTES,
  MAX_PASSWORD_BYTES,
  MAX_REQUEST_HEADER_ELEMENTS,
  MAX_RULES_PER_USER,
  MAX_SESSION_SECRET_BYTES,
  MAX_SESSION_TIMEOUT_MS,
  MAX_SNAPSHOT_CHUNK_BYTES,
  MAX_TIMEOUT_MS,
  MAX_TOKEN_BYTES,
  MIN_SESSION_TIMEOUT_MS,
  PAGE_BYTES,
  PROTOCOL_VERSION,
  REQUEST_TYPES,
  type Request,
  SegmemError,
} from '../src/index.js';
import {
  describeFrame,
  type HostileFrame,
  hostileFrameArb,
  hostileFrameBytes,
  REQUEST_FIELDS,
  validRequestArb,
} from './hostile.js';

const SEED = Number(process.env.SEGMEM_FUZZ_SEED ?? 20261207);
const FRAMES_PER_TYPE = 400;

/** Decodes one frame's bytes as a server does (header element bound included). */
function decodeAsServer(bytes: Buffer): Request {
  const frames = new FrameDecoder({ maxHeaderElements: MAX_REQUEST_HEADER_ELEMENTS }).push(bytes);
  if (frames.length !== 1) throw new Error(`expected one frame, decoded ${frames.length}`);
  return decodeRequest(frames[0]!);
}

// ----- the oracle: the documented bounds of each request (messages.ts comments, docs/protocol.md) -----

const utf8Bytes = (s: string) => Buffer.byteLength(s, 'utf8');
const hasControl = (s: string) =>
  [...s].some((c) => {
    const code = c.codePointAt(0)!;
    return code <= 0x1f || (code >= 0x7f && code <= 0x9f);
  });
/** A lone surrogate has no UTF-8 encoding: the round trip through UTF-8 replaces it. */
const hasLoneSurrogate = (s: string) => Buffer.from(s, 'utf8').toString('utf8') !== s;

function isInt(v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): boolean {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max;
}
function isName(v: unknown, minBytes = 1): boolean {
  return (
    typeof v === 'string' &&
    utf8Bytes(v) >= minBytes &&
    utf8Bytes(v) <= MAX_NAME_BYTES &&
    !hasControl(v) &&
    !hasLoneSurrogate(v)
  );
}
function isText(v: unknown, minBytes: number, maxBytes: number): boolean {
  return typeof v === 'string' && utf8Bytes(v) >= minBytes && utf8Bytes(v) <= maxBytes;
}
const orNull = (v: unknown, ok: (v: unknown) => boolean) => v === null || ok(v);

/**
 * The fields a decoded request may hold, per type (decoders return fresh objects of only these): its header
 * fields, and the payload where the request carries bytes.
 */
const KEYS = Object.fromEntries(
  Object.entries(REQUEST_FIELDS).map(([type, fields]) => [
    type,
    [
      'type',
      ...fields,
      ...(type === 'RELEASE' || type === 'LOG_APPEND' || type === 'MOVE' ? ['payload'] : []),
    ],
  ]),
) as Record<Request['type'], string[]>;

/** The first documented bound `req` breaks, or null. `payloadBytes`: what the frame carried. */
function brokenBound(req: Request, payloadBytes: number): string | null {
  if (Object.getPrototypeOf(req) !== Object.prototype) return 'not a plain object';
  for (const k of Object.keys(req)) if (!KEYS[req.type].includes(k)) return `unknown field ${k}`;
  const timeout = (v: unknown) => orNull(v ?? null, (x) => isInt(x, 0, MAX_TIMEOUT_MS));
  const noPayload = payloadBytes === 0;
  switch (req.type) {
    case 'HELLO':
      if (req.protocol !== PROTOCOL_VERSION) return 'protocol';
      if (!orNull(req.clusterId ?? null, (v) => isText(v, 1, MAX_NAME_BYTES))) return 'clusterId';
      if (!orNull(req.token ?? null, (v) => isText(v, 0, MAX_TOKEN_BYTES))) return 'token';
      if (!isInt(req.sessionTimeoutMs, MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS))
        return 'sessionTimeoutMs';
      if (!orNull(req.resumeSessionId ?? null, (v) => isInt(v, 1))) return 'resumeSessionId';
      if (!orNull(req.resumeSecret ?? null, (v) => isText(v, 0, MAX_SESSION_SECRET_BYTES)))
        return 'resumeSecret';
      if (!orNull(req.udpPort ?? null, (v) => isInt(v, 1, 65535))) return 'udpPort';
      if (!orNull(req.clientName ?? null, (v) => isText(v, 0, MAX_NAME_BYTES))) return 'clientName';
      if (typeof req.pageReader !== 'boolean') return 'pageReader';
      if ((req.user === undefined) !== (req.password === undefined)) return 'user/password';
      if (req.user !== undefined && !isUser(req.user)) return 'user';
      if (req.password !== undefined && !isText(req.password, 1, MAX_PASSWORD_BYTES)) return 'password';
      return noPayload ? null : 'payload';
    case 'KEEPALIVE':
      if (req.lease !== undefined && req.lease !== true) return 'lease';
      return noPayload ? null : 'payload';
    case 'CREATE':
      if (!isInt(req.seq, 1) || !isName(req.name) || !isInt(req.size, 1, MAX_OBJECT_BYTES))
        return 'seq/name/size';
      return typeof req.ifNotExists === 'boolean' && noPayload ? null : 'ifNotExists/payload';
    case 'DELETE':
      return isInt(req.seq, 1) && isName(req.name) && timeout(req.timeoutMs) && noPayload
        ? null
        : 'DELETE field';
    case 'STAT':
    case 'WATCH':
      return isName(req.name) && noPayload ? null : 'name';
    case 'LIST':
      return (req.prefix === '' || isName(req.prefix)) && noPayload ? null : 'prefix';
    case 'ACQUIRE':
      if (!isInt(req.seq, 1) || !isName(req.name) || (req.mode !== 'read' && req.mode !== 'write'))
        return 'seq/name/mode';
      if (!isInt(req.cachedId, 0) || !isInt(req.cachedVersion, 0) || !timeout(req.timeoutMs))
        return 'cached/timeout';
      if (!orNull(req.inlineMaxBytes ?? null, (v) => isInt(v, 0, 0xffffffff))) return 'inlineMaxBytes';
      return noPayload ? null : 'payload';
    case 'RELEASE': {
      if (!isInt(req.seq, 1) || !isName(req.name) || (req.mode !== 'read' && req.mode !== 'write'))
        return 'seq/name/mode';
      if (!isInt(req.token, 0)) return 'token';
      if (req.keep !== undefined && !(req.keep === true && req.mode === 'write')) return 'keep';
      if (!Array.isArray(req.ranges)) return 'ranges';
      if (req.mode === 'read' && req.ranges.length > 0) return 'read ranges';
      let end = 0;
      let total = 0;
      for (const r of req.ranges) {
        if (!Array.isArray(r) || r.length !== 2) return 'range shape';
        const [offset, length] = r;
        if (!isInt(offset, end) || !isInt(length, 1) || offset + length > MAX_OBJECT_BYTES)
          return 'range bounds';
        end = offset + length;
        total += length;
      }
      return total === payloadBytes && req.payload.length === payloadBytes ? null : 'payload length';
    }
    case 'CANCEL':
      if (!isInt(req.requestId, 1, 0xffffffff)) return 'requestId';
      return (req.reason === 'TIMEOUT' || req.reason === 'ABORTED' || req.reason === 'DEADLOCK') && noPayload
        ? null
        : 'reason';
    case 'VALIDATE':
      for (const p of req.objects)
        if (!Array.isArray(p) || p.length !== 2 || !isInt(p[0], 1) || !isInt(p[1], 1)) return 'objects';
      return noPayload ? null : 'payload';
    case 'GOODBYE':
    case 'SNAPSHOT':
    case 'STATUS':
    case 'SLOTS':
      return noPayload ? null : 'payload';
    case 'BARRIER':
      if (req.op === 'release') return req.holdMs === 0 && noPayload ? null : 'holdMs';
      if (req.op !== 'hold') return 'op';
      if (!isInt(req.holdMs, 1, MAX_BARRIER_HOLD_MS)) return 'holdMs';
      return noPayload ? null : 'payload';
    case 'PROBE':
      if (typeof req.initiator !== 'string' || !/^[0-9a-f]{16}$/.test(req.initiator)) return 'initiator';
      if (!isInt(req.probeId, 1, 0xffffffff) || !isInt(req.hops, 0, 31)) return 'probeId/hops';
      return noPayload ? null : 'payload';
    case 'MOVE':
      if (req.moveId !== null && !/^[A-Za-z0-9._-]{1,64}$/.test(req.moveId)) return 'moveId';
      if (req.op === 'status' || req.op === 'install')
        return req.moveId === null && noPayload ? null : 'status';
      if (req.moveId === null) return 'moveId';
      if (req.op === 'import') return (req.payload?.length ?? 0) === payloadBytes ? null : 'payload length';
      return noPayload ? null : 'payload';
    case 'MOVE_READ':
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(req.moveId)) return 'moveId';
      if (req.cursor.phase !== 'objects' && req.cursor.phase !== 'logs') return 'cursor.phase';
      if (!isInt(req.cursor.from, 0)) return 'cursor.from';
      return isInt(req.maxBytes, 1, 16 * 1024 * 1024) && noPayload ? null : 'maxBytes';
    case 'MEMBERSHIP':
      if (req.op === 'list') return noPayload ? null : 'payload';
      if (typeof req.id !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(req.id)) return 'id';
      if (req.op === 'add') {
        const m = /^(\[[^\]]+\]|[^:\s]+):(\d{1,5})$/.exec(req.address ?? '');
        if (!m || Number(m[2]) > 65535) return 'address';
      } else if (req.op !== 'remove') return 'op';
      return noPayload ? null : 'payload';
    case 'LOG_APPEND': {
      if (!isInt(req.seq, 1) || !isName(req.name)) return 'seq/name';
      if (req.sizes.length < 1 || req.sizes.length > MAX_LOG_BATCH_RECORDS) return 'sizes count';
      let total = 0;
      for (const n of req.sizes) {
        if (!isInt(n, 0, MAX_LOG_RECORD_BYTES)) return 'size';
        total += n;
      }
      if (total !== payloadBytes || payloadBytes > MAX_LOG_BATCH_BYTES || req.payload.length !== payloadBytes)
        return 'payload';
      return orNull(req.maxBytes, (v) => isInt(v, 1, MAX_LOG_MAX_BYTES)) ? null : 'maxBytes';
    }
    case 'LOG_READ':
      if (!isName(req.name) || !orNull(req.from, (v) => isInt(v, 0))) return 'name/from';
      return isInt(req.maxBytes, 0, MAX_LOG_READ_BYTES) && isInt(req.waitMs, 0, MAX_TIMEOUT_MS) && noPayload
        ? null
        : 'maxBytes/waitMs';
    case 'LOG_TRUNCATE':
      return isInt(req.seq, 1) && isName(req.name) && isInt(req.before, 0) && noPayload
        ? null
        : 'LOG_TRUNCATE field';
    case 'READ_PAGES': {
      if (!isInt(req.objectId, 1) || !isInt(req.version, 1) || !isInt(req.waitMs, 0, MAX_TIMEOUT_MS))
        return 'ids';
      if (req.pages.length === 0) return 'no pages';
      let previous = -1;
      for (const p of req.pages) {
        if (!isInt(p, previous + 1, MAX_OBJECT_BYTES / PAGE_BYTES - 1)) return 'pages';
        previous = p;
      }
      return noPayload ? null : 'payload';
    }
    case 'SNAPSHOT_READ':
      if (!isInt(req.id, 1) || !isInt(req.offset, 0) || !isInt(req.length, 1, MAX_SNAPSHOT_CHUNK_BYTES))
        return 'fields';
      return noPayload ? null : 'payload';
    case 'UNWATCH':
      return isInt(req.objectId, 1) && noPayload ? null : 'objectId';
    case 'USERS': {
      if (!noPayload) return 'payload';
      if (req.op === 'list') return req.seq === 0 && orNull(req.user, isUser) ? null : 'list';
      if (!isInt(req.seq, 1) || !isUser(req.user)) return 'seq/user';
      const isPrefix = (v: unknown) => v === '' || isName(v);
      switch (req.op) {
        case 'add': {
          const h = req.password as Record<string, unknown> | undefined;
          if (!h || !/^[0-9a-f]{32}$/.test(String(h.salt)) || !/^[0-9a-f]{64}$/.test(String(h.hash)))
            return 'password';
          if (!isInt(h.n, 1024, 2 ** 20) || !isInt(h.r, 1, 32) || !isInt(h.p, 1, 4)) return 'password cost';
          const rules = req.rules ?? [];
          if (!Array.isArray(rules) || rules.length > MAX_RULES_PER_USER) return 'rules';
          return rules.every((r) => isPrefix(r[0]) && ['read', 'write', 'admin'].includes(r[1]))
            ? null
            : 'rule';
        }
        case 'remove':
          return null;
        case 'aclRemove':
          return isPrefix(req.prefix) ? null : 'prefix';
        case 'aclSet':
          return isPrefix(req.prefix) && ['read', 'write', 'admin'].includes(String(req.right))
            ? null
            : 'rule';
        default:
          return 'op';
      }
    }
  }
}
const isUser = (v: unknown) => typeof v === 'string' && /^[A-Za-z0-9._@-]{1,64}$/.test(v);

function runProperty(
  t: import('ava').ExecutionContext,
  name: string,
  prop: fc.IProperty<[HostileFrame]> | fc.IAsyncProperty<[HostileFrame]>,
) {
  const result = fc.check(prop as fc.IProperty<[HostileFrame]>, { seed: SEED, numRuns: FRAMES_PER_TYPE });
  if (result.failed) {
    const frame = result.counterexample?.[0];
    t.fail(
      `${name}: ${result.errorInstance instanceof Error ? result.errorInstance.message : String(result.errorInstance)}\n` +
        `replay: SEGMEM_FUZZ_SEED=${result.seed} (fast-check seed ${result.seed}, path "${result.counterexamplePath}")\n` +
        (frame ? describeFrame(frame) : ''),
    );
  } else t.pass();
}

for (const type of REQUEST_TYPES) {
  test(`hostile ${type} headers: refused with PROTOCOL or INVALID_ARGUMENT, or decoded within the documented bounds`, (t) => {
    let accepted = 0;
    runProperty(
      t,
      type,
      fc.property(hostileFrameArb(type), (f) => {
        let req: Request;
        try {
          req = decodeAsServer(hostileFrameBytes(f, 1));
        } catch (err) {
          if (SegmemError.is(err, 'PROTOCOL') || SegmemError.is(err, 'INVALID_ARGUMENT')) return;
          throw err;
        }
        accepted++;
        if (req.type !== type) throw new Error(`decoded as ${req.type}`);
        const broken = brokenBound(req, f.payload.length);
        if (broken !== null)
          throw new Error(`accepted a request that breaks its bounds (${broken}): ${JSON.stringify(req)}`);
      }),
    );
    t.log(`${type}: ${accepted} of ${FRAMES_PER_TYPE} hostile frames decoded (the rest refused)`);
  });

  test(`valid ${type} requests round-trip through encode and decode`, (t) => {
    const result = fc.check(
      fc.property(validRequestArb(type), (req) => {
        const bytes = Buffer.concat(encodeRequest(req, 7));
        const back = decodeAsServer(bytes);
        const payloadBytes = 'payload' in req ? (req.payload?.length ?? 0) : 0;
        const broken = brokenBound(back, payloadBytes);
        if (broken !== null) throw new Error(`a valid request decodes out of bounds (${broken})`);
        // Optional fields come back as null where they were absent; compare with that normalisation.
        const normal = (r: Request) =>
          JSON.stringify(r, (_k, v) => (v === undefined ? null : Buffer.isBuffer(v) ? v.toString('hex') : v));
        if (normal(back) !== normal(req))
          throw new Error(`round trip changed it: ${normal(req)} -> ${normal(back)}`);
      }),
      { seed: SEED, numRuns: 200 },
    );
    t.false(result.failed, fc.defaultReportMessage(result) ?? '');
  });
}

test('the oracle refuses what it should (the test that proves the test)', (t) => {
  const base = { type: 'CREATE', seq: 1, name: 'ok', size: 8, ifNotExists: false } as const;
  t.is(brokenBound(base, 0), null);
  t.not(brokenBound({ ...base, size: MAX_OBJECT_BYTES + 1 }, 0), null);
  t.not(brokenBound({ ...base, name: 'a\u0007' }, 0), null);
  t.not(brokenBound({ ...base, name: '\ud800' }, 0), null);
  t.not(brokenBound({ ...base, seq: 0.5 }, 0), null);
  t.not(brokenBound({ ...base, extra: 1 } as Request, 0), null);
  t.not(brokenBound(base, 3), null);
  const release: Request = {
    type: 'RELEASE',
    seq: 1,
    name: 'r',
    mode: 'write',
    token: 1,
    ranges: [
      [4, 2],
      [0, 2],
    ],
    payload: Buffer.alloc(4),
  };
  t.not(brokenBound(release, 4), null, 'unsorted ranges');
});
