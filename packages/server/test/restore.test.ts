/**
 * `segmem restore` trusts nothing in the file: a consolidated snapshot whose checksum matches but whose
 * content breaks one of the state's invariants (crafted here with the project's encoder, so the checksum
 * is right) is refused with one INVALID_ARGUMENT line naming the field and the object or log, and no data
 * directory is created or written.
 */
import { existsSync, promises as fsp, mkdirSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_OBJECT_BYTES, SegmemError } from '@segmem/protocol';
import test from 'ava';
import { Packr } from 'msgpackr';
import type { Command } from '../src/core/commands.js';
import { type StateContent, StateMachine } from '../src/core/state-machine.js';
import { encodeConsolidated } from '../src/storage/consolidated.js';
import { crc32c } from '../src/storage/crc32c.js';
import { LocalStorage } from '../src/storage/local-storage.js';
import { restoreConsolidated } from '../src/storage/restore.js';
import { stateHolding } from './fixtures/workload.js';

const PAGE = 4096;
const SEGMENT_PAGES = 64;

/** A small real state: "cfg" (2 pages, written: version 2, token 1), "b" (1 page), log "events" (3 records). */
function sourceMachine(): StateMachine {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: SEGMENT_PAGES * PAGE });
  let index = 0;
  const run = (cmd: Command) => sm.apply(++index, cmd);
  const open = run({ op: 'open', timeoutMs: 1000, clientName: null }).result;
  const s = (open as { value: { sessionId: number } }).value.sessionId;
  run({ op: 'create', sessionId: s, seq: 1, name: 'cfg', size: 2 * PAGE, ifNotExists: false });
  const grant = run({ op: 'acquire', sessionId: s, seq: 2, name: 'cfg', mode: 'write' }).result;
  const token = (grant as { value: { granted: { token: number } } }).value.granted.token;
  const data = Buffer.from('settings');
  run({ op: 'release', sessionId: s, seq: 3, name: 'cfg', mode: 'write', token, ranges: [[10, 8]], data });
  run({ op: 'create', sessionId: s, seq: 4, name: 'b', size: 100, ifNotExists: false });
  const records = Buffer.from('onetwothree');
  run({
    op: 'append',
    sessionId: s,
    seq: 5,
    name: 'events',
    sizes: [3, 3, 5],
    maxBytes: null,
    data: records,
  });
  return sm;
}

const source = sourceMachine();

type Tamper = (c: StateContent) => void;
const object = (c: StateContent, name: string) => c.objects.find((o) => o.name === name)!;
/** The log entry `[name, maxBytes, first, next, sizes, data]` of "events". */
const events = (c: StateContent) => c.logs[0] as unknown[];

interface Case {
  title: string;
  /** Changes the content before it is encoded. */
  tamper?: Tamper;
  /** Changes the encoded header or directory (the checksum is computed again after). */
  header?: (h: Record<string, unknown>) => void;
  directory?: (d: unknown[][]) => void;
  field: string;
  message: RegExp;
}

const fileCodec = new Packr({
  useRecords: false,
  mapsAsObjects: true,
  int64AsType: 'number',
  moreTypes: false,
});

/** `file` with its header and directory sections re-encoded after `c` changed them, and a new checksum. */
function tamperSections(file: Buffer, c: Case): Buffer {
  let at = 8;
  const section = () => {
    const len = file.readUInt32LE(at);
    const body = file.subarray(at + 4, at + 4 + len);
    at += 4 + len;
    return body;
  };
  const header = fileCodec.unpack(section()) as Record<string, unknown>;
  const directory = fileCodec.unpack(section()) as unknown[][];
  const rest = file.subarray(at, file.length - 12); // pages and logs, unchanged
  c.header?.(header);
  c.directory?.(directory);
  const prefixed = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return [len, b];
  };
  const body = Buffer.concat([
    file.subarray(0, 8),
    ...prefixed(fileCodec.pack(header)),
    ...prefixed(fileCodec.pack(directory)),
    rest,
  ]);
  const tail = Buffer.alloc(12);
  tail.writeUInt32LE(crc32c(body), 0);
  tail.write('SGMCONSE', 4, 'latin1');
  return Buffer.concat([body, tail]);
}

const cases: Case[] = [
  {
    title: 'nextSessionId NaN (every HELLO would get session NaN)',
    tamper: (c) => (c.nextSessionId = Number.NaN),
    field: 'nextSessionId',
    message: /^restore: nextSessionId NaN must be an integer >= 1$/,
  },
  {
    title: 'nextSessionId negative',
    tamper: (c) => (c.nextSessionId = -3),
    field: 'nextSessionId',
    message: /nextSessionId -3 must be/,
  },
  {
    title: 'nextObjectId not an integer',
    tamper: (c) => (c.nextObjectId = 7.5),
    field: 'nextObjectId',
    message: /nextObjectId 7\.5 must be an integer >= 1/,
  },
  {
    title: 'nextObjectId not above every id',
    tamper: (c) => (c.nextObjectId = 2),
    field: 'nextObjectId',
    message:
      /^restore: nextObjectId 2 must be above every object id \(the highest is 2 of object "b" \(id 2\)\)$/,
  },
  {
    title: 'a numeric name',
    tamper: (c) => ((object(c, 'b') as { name: unknown }).name = 42),
    field: 'name',
    message: /^restore: object number 42 \(id 2\): name must be a string; got number 42$/,
  },
  {
    title: 'a name with NUL',
    tamper: (c) => ((object(c, 'b') as { name: string }).name = 'a\0b'),
    field: 'name',
    message: /^restore: object "a\\u0000b" \(id 2\): name must not contain NUL/,
  },
  {
    title: 'a name with a control character',
    tamper: (c) => ((object(c, 'b') as { name: string }).name = 'a\x1b[2Jb'),
    field: 'name',
    message: /object "a\\u001b\[2Jb" \(id 2\): name must not contain control characters/,
  },
  {
    title: 'an empty name',
    tamper: (c) => ((object(c, 'b') as { name: string }).name = ''),
    field: 'name',
    message: /object "" \(id 2\): name must be 1\.\.255 bytes/,
  },
  {
    title: 'two objects of one name',
    tamper: (c) => ((object(c, 'b') as { name: string }).name = 'cfg'),
    field: 'name',
    message: /^restore: object "cfg" \(id 2\): the name is also the name of object "cfg" \(id 1\)$/,
  },
  {
    title: 'a log named like an object',
    tamper: (c) => (events(c)[0] = 'cfg'),
    field: 'name',
    message: /^restore: log "cfg": the name is also the name of object "cfg" \(id 1\)$/,
  },
  {
    title: 'two objects of one id',
    tamper: (c) => ((object(c, 'b') as { id: number }).id = 1),
    field: 'id',
    message: /^restore: object "b" \(id 1\): id 1 is also the id of object "cfg" \(id 1\)$/,
  },
  {
    title: 'id 0',
    tamper: (c) => ((object(c, 'b') as { id: number }).id = 0),
    field: 'id',
    message: /object "b" \(id 0\): id 0 must be an integer >= 1/,
  },
  {
    title: 'an id beyond 2^53',
    tamper: (c) => ((object(c, 'b') as { id: number }).id = 2 ** 53 + 2),
    field: 'id',
    message: /id 9007199254740994 must be an integer >= 1/,
  },
  {
    title: 'a negative version',
    tamper: (c) => (object(c, 'cfg').version = -1),
    field: 'version',
    message: /^restore: object "cfg" \(id 1\): version -1 must be an integer >= 1$/,
  },
  {
    title: 'a page version above the object version',
    tamper: (c) => (object(c, 'cfg').pageVersions[1] = 9),
    field: 'pageVersions',
    message: /object "cfg" \(id 1\): page 1's version 9 must be an integer 1\.\.2/,
  },
  {
    title: 'size 0',
    tamper: (c) => ((object(c, 'b') as { size: number }).size = 0),
    field: 'size',
    message: /^restore: object "b" \(id 2\): size 0 must be an integer 1\.\.\d+$/,
  },
  {
    title: 'a size above the largest object',
    tamper: (c) => {
      const o = object(c, 'b') as { size: number; pageVersions: Float64Array };
      o.size = MAX_OBJECT_BYTES + 1;
      o.pageVersions = new Float64Array(Math.ceil(o.size / PAGE)).fill(1);
    },
    field: 'size',
    message: /object "b" \(id 2\): size 33554433 must be an integer 1\.\.33554432/,
  },
  {
    title: 'an object past the end of the segment',
    tamper: (c) => ((object(c, 'cfg') as { firstPage: number }).firstPage = SEGMENT_PAGES - 1),
    field: 'firstPage',
    message: /object "cfg" \(id 1\): firstPage 63 must be an integer 0\.\.62, so that its 2 pages end inside/,
  },
  {
    title: 'a negative first page',
    tamper: (c) => ((object(c, 'b') as { firstPage: number }).firstPage = -1),
    field: 'firstPage',
    message: /object "b" \(id 2\): firstPage -1 must be/,
  },
  {
    title: 'overlapping objects',
    tamper: (c) => ((object(c, 'b') as { firstPage: number }).firstPage = 1),
    field: 'firstPage',
    message: /^restore: object "b" \(id 2\): pages 1\.\.1 overlap pages 0\.\.1 of object "cfg" \(id 1\)$/,
  },
  {
    title: 'a negative fencing token',
    tamper: (c) => (object(c, 'cfg').lastToken = -5),
    field: 'lastToken',
    message: /object "cfg" \(id 1\): lastToken -5 must be an integer >= 0/,
  },
  {
    title: 'a page size the server does not use',
    tamper: (c) => (c.pageBytes = 1024),
    field: 'pageBytes',
    message: /^restore: pageBytes 1024 must be 4096$/,
  },
  {
    title: 'a segment that is not whole pages',
    tamper: (c) => (c.segmentBytes = SEGMENT_PAGES * PAGE + 1),
    field: 'segmentBytes',
    message: /segmentBytes 262145 must be a multiple of 4096/,
  },
  {
    title: 'a log with retention 0',
    tamper: (c) => (events(c)[1] = 0),
    field: 'maxBytes',
    message: /^restore: log "events": maxBytes 0 must be an integer 1\.\.\d+$/,
  },
  {
    title: 'a log whose first sequence number is negative',
    tamper: (c) => (events(c)[2] = -1),
    field: 'first',
    message: /log "events": first -1 must be an integer >= 0/,
  },
  {
    title: 'a log whose next sequence number is below its first',
    tamper: (c) => (events(c)[2] = 5),
    field: 'next',
    message: /log "events": next 3 must be an integer >= first \(5\)/,
  },
  {
    title: 'a log whose record sizes do not match its bounds',
    tamper: (c) => (events(c)[3] = 4),
    field: 'sizes',
    message:
      /log "events": sizes must hold one u32 per retained record \(4 records, 16 bytes\); got 12 bytes/,
  },
  {
    title: 'a log whose records do not add up to its bytes',
    tamper: (c) => (events(c)[5] = Buffer.from('onetwo')),
    field: 'data',
    message: /log "events": data must be the records' 11 bytes; got 6 bytes/,
  },
  {
    title: 'a log name with NUL',
    tamper: (c) => (events(c)[0] = 'ev\0'),
    field: 'name',
    message: /log "ev\\u0000": name must not contain NUL/,
  },
  {
    title: 'a header whose cluster id is not a string',
    header: (h) => (h.clusterId = 42),
    field: 'clusterId',
    message: /^restore: clusterId must be a non-empty string; got number 42$/,
  },
  {
    title: 'a header whose group table holds a negative index',
    header: (h) => (h.groups = [[0, -1, 2]]),
    field: 'groups',
    message: /groups must be a list of \[group id, Raft index, Raft term\] integers >= 0/,
  },
  {
    title: "a header whose object count is not the directory's",
    header: (h) => (h.objectCount = 5),
    field: 'objectCount',
    message: /^restore: objectCount 5 must be the 2 the file lists$/,
  },
  {
    title: 'an object that lists one stored page twice',
    // Directory entries: [id, name, size, firstPage, version, pageVersions, lastToken, stored pages].
    directory: (d) => (d.find((o) => o[1] === 'cfg')![7] = [0, 0]),
    field: 'pages',
    message: /^restore: object "cfg" \(id 1\): stored page 0 must be in 0\.\.1 and after 0$/,
  },
];

async function craftedFile(dir: string, c: Case | null): Promise<string> {
  const content = source.exportContent();
  c?.tamper?.(content);
  // The encoder writes a correct checksum over whatever it is given: only the content is wrong.
  const parts = await encodeConsolidated(content, {
    clusterId: 'c1',
    createdAt: '2026-12-07T00:00:00.000Z',
    groups: [[0, 9, 2]],
  });
  const file = join(dir, 'crafted.segsnap');
  const bytes = Buffer.concat(parts);
  await fsp.writeFile(file, c?.header || c?.directory ? tamperSections(bytes, c) : bytes);
  return file;
}

test.serial('an untampered file restores (the table below differs from it by one field each)', async (t) => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-restore-test-'));
  try {
    const file = await craftedFile(dir, null);
    const r = await restoreConsolidated(file, { dirs: [join(dir, 'd1')] });
    t.deepEqual(r.snapshot.content.objects.map((o) => o.name).sort(), ['b', 'cfg']);
    t.true(readdirSync(join(dir, 'd1')).length > 0);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

for (const c of cases) {
  test(`restore refuses ${c.title}`, async (t) => {
    const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-restore-test-'));
    try {
      const file = await craftedFile(dir, c);
      const missing = join(dir, 'missing');
      const empty = join(dir, 'empty');
      mkdirSync(empty);
      const err = await t.throwsAsync(restoreConsolidated(file, { dirs: [missing, empty] }));
      t.true(SegmemError.is(err), `a SegmemError, not ${err?.stack}`);
      const e = err as SegmemError;
      t.is(e.code, 'INVALID_ARGUMENT');
      t.deepEqual(e.details, { reason: 'BAD_SNAPSHOT', field: c.field });
      t.regex(e.message, c.message);
      t.false(e.message.includes('\n'), 'one line');
      t.false(existsSync(missing), 'a missing directory stays missing');
      t.deepEqual(readdirSync(empty), [], 'an empty directory stays empty');
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
}

test('a server snapshot that breaks an invariant does not restore either; stored names keep the older rule', (t) => {
  const codec = new Packr({
    useRecords: false,
    mapsAsObjects: true,
    int64AsType: 'number',
    moreTypes: false,
  });
  const good = source.snapshot();
  t.is(StateMachine.restore(good).digest(), source.digest());
  // [format, pageBytes, segmentBytes, appliedIndex, nextObjectId, nextSessionId, objects, sessions, logs]
  const fields = codec.unpack(good) as unknown[];
  fields[5] = Number.NaN;
  const err = t.throws(() => StateMachine.restore(codec.pack(fields)));
  t.like(err as SegmemError, {
    code: 'INVALID_ARGUMENT',
    message: 'snapshot: nextSessionId NaN must be an integer >= 1',
    details: { reason: 'BAD_SNAPSHOT', field: 'nextSessionId' },
  });

  const withSession = codec.unpack(good) as unknown[];
  withSession[5] = 1; // the source's one session has id 1: it would be handed out again
  t.like(t.throws(() => StateMachine.restore(codec.pack(withSession))) as SegmemError, {
    message: 'snapshot: session 1: session id 1 must be a unique integer >= 1 below nextSessionId (1)',
    details: { reason: 'BAD_SNAPSHOT', field: 'sessionId' },
  });

  // A name with a control character other than NUL, stored before names were held to that rule, still
  // loads at server start; a restore from a file refuses it (the table above).
  const legacy = new StateMachine({ pageBytes: PAGE, segmentBytes: SEGMENT_PAGES * PAGE });
  legacy.apply(1, { op: 'open', timeoutMs: 1000, clientName: null });
  legacy.apply(2, { op: 'create', sessionId: 1, seq: 1, name: 'old\x1bname', size: 10, ifNotExists: false });
  t.truthy(StateMachine.restore(legacy.snapshot()).objectNamed('old\x1bname'));
});

test('at start, a newest snapshot whose content breaks an invariant is skipped like a damaged one', async (t) => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-restore-test-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const options = { dir, walDir: join(dir, 'wal'), fsync: 'batch' as const };
  const { storage } = await LocalStorage.open(options);
  for (let i = 1; i <= 80; i++) storage.wal.append(Buffer.from(`record ${i}`));
  await storage.wal.waitDurable(80);
  await storage.saveSnapshot(40, stateHolding(40).freeze());
  // Its checksums are right: only the state is wrong (a name no API accepts, which a bug let through).
  const bad = stateHolding(80);
  bad.apply(5, { op: 'create', sessionId: 1, seq: 4, name: 'a\0b', size: 10, ifNotExists: false });
  await storage.saveSnapshot(80, bad.freeze());
  await storage.close();

  const reopened = await LocalStorage.open(options);
  t.is(reopened.state?.digest(), stateHolding(40).digest());
  t.is(reopened.records[0]!.index, 41);
  t.is(reopened.report.damagedSnapshots.length, 1);
  t.regex(
    reopened.report.damagedSnapshots[0]!.problem,
    /80\.snap is damaged.*snapshot: object "a\\u0000b" \(id 2\): name must not contain NUL/,
  );
  await reopened.storage.close();
});
