/**
 * Hash slots against a real server over real sockets: a server given a slot table in which another group
 * owns some names answers requests for those names with a MOVED redirect carrying the table (and changes
 * nothing), serves the others, answers SLOTS, and prints the table through `segmem cluster slots`; the
 * client's SlotRouter learns the table from the redirect.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  decodeResponse,
  encodeRequest,
  type Frame,
  FrameDecoder,
  PROTOCOL_VERSION,
  type Request,
  type RequestType,
  SegmemError,
  SLOT_COUNT,
  type SlotTable,
  slotOf,
} from '@segmem/protocol';
import { connectLocal, type RunningServer, SegmemNode, startServer } from '@segmem/server';
import test, { type ExecutionContext } from 'ava';
import { connect } from '../src/index.js';
import { SlotRouter } from '../src/slot-router.js';
import { RawConnection, runNode, segmemBin, tempDir, waitFor } from './helpers.js';

/** Group 0 (this server) owns slots 0..8191, group 1 the rest. */
function twoGroups(self: string): SlotTable {
  return {
    version: 2,
    ranges: [
      [0, 8191, 0],
      [8192, SLOT_COUNT - 1, 1],
    ],
    groups: [
      { id: 0, members: [['s1', self]] },
      { id: 1, members: [['s4', '127.0.0.1:1']] },
    ],
  };
}

// Hash tags pick the slot: "bar" hashes to 5061 (group 0), "foo" to 12182 (group 1).
const here = (n: string) => `{bar}/${n}`;
const elsewhere = (n: string) => `{foo}/${n}`;

/** A server of group 0 whose table gives group 1 the upper half of the slots. */
async function startGroup0(
  t: ExecutionContext,
): Promise<{ server: RunningServer; table: SlotTable; dir: string }> {
  const dir = tempDir();
  t.teardown(dir.cleanup);
  // The table names this server's address, which is known once it listens: it is given as 127.0.0.1:7401.
  const table = twoGroups('127.0.0.1:7401');
  const server = await startServer({
    id: 's1',
    listen: '127.0.0.1:0',
    dataDir: dir.path,
    fsync: 'none',
    maxMemory: 'off',
    slotTable: table,
  });
  t.teardown(() => server.close());
  return { server, table, dir: dir.path };
}

function isMoved(t: ExecutionContext, err: unknown, name: string, table: SlotTable, what: string): void {
  t.true(SegmemError.is(err, 'UNAVAILABLE'), `${what}: ${String(err)}`);
  const e = err as SegmemError;
  t.deepEqual(
    e.details,
    { reason: 'MOVED', slot: slotOf(name), group: 1, version: table.version, table },
    `${what}: the redirect says where the slot lives and carries the table`,
  );
  t.true(e.message.includes(`belongs to group 1`), e.message);
}

test('names another group owns are redirected with the table, and nothing changes', async (t) => {
  const { server, table } = await startGroup0(t);
  const raw = await RawConnection.open(server.address);
  t.teardown(() => raw.close());
  await raw.hello();
  const before = server.status();
  const name = elsewhere('obj');
  const log = elsewhere('log');
  const requests = [
    { type: 'CREATE', seq: 1, name, size: 64, ifNotExists: false },
    { type: 'STAT', name },
    {
      type: 'ACQUIRE',
      seq: 2,
      name,
      mode: 'write',
      cachedId: 0,
      cachedVersion: 0,
      timeoutMs: 1000,
    },
    { type: 'RELEASE', seq: 3, name, mode: 'read', token: 1, ranges: [], payload: Buffer.alloc(0) },
    { type: 'DELETE', seq: 4, name, timeoutMs: 1000 },
    { type: 'WATCH', name },
    { type: 'LOG_APPEND', seq: 5, name: log, sizes: [3], maxBytes: null, payload: Buffer.from('abc') },
    { type: 'LOG_READ', name: log, from: null, maxBytes: 1024, waitMs: 0 },
    { type: 'LOG_TRUNCATE', seq: 6, name: log, before: 0 },
  ] as const;
  for (const req of requests) {
    const err = await raw.call(req as never).then(
      () => null,
      (e: unknown) => e,
    );
    isMoved(t, err, req.name, table, req.type);
  }
  const after = server.status();
  t.is(after.applied, before.applied, 'no command reached the log');
  t.is(after.digest, before.digest);
  t.is(after.objects, 0);
  t.is(after.logs, 0);
  // The same connection serves this group's names.
  const created = await raw.call({ type: 'CREATE', seq: 7, name: here('obj'), size: 64, ifNotExists: false });
  t.true(created.created);
  t.is((await raw.call({ type: 'STAT', name: here('obj') })).object.name, here('obj'));
  t.deepEqual(await raw.call({ type: 'SLOTS' }), { groupId: 0, table });
});

test('MOVED errors teach a SlotRouter the table; a client routes by it and a group it cannot reach fails in time', async (t) => {
  const { server, table } = await startGroup0(t);
  const seg = await connect({ servers: [server.address] });
  t.teardown(() => seg.close());
  await seg.create(here('a'), 16);
  await seg.update(here('a'), (h) => h.bytes.write('hello'));
  t.is(await seg.read(here('a'), (h) => h.bytes.toString('utf8', 0, 5)), 'hello');
  await seg.log(here('events')).append('one');
  // Group 1's only server (127.0.0.1:1) never answers: a call for its names fails within its timeout.
  const started = Date.now();
  const unreachable = await t.throwsAsync(seg.acquireRead(elsewhere('b'), { timeoutMs: 1000 }));
  t.true(SegmemError.is(unreachable, 'UNAVAILABLE'), String(unreachable));
  t.true(Date.now() - started < 4000, `failed after ${Date.now() - started} ms`);

  const raw = await RawConnection.open(server.address);
  t.teardown(() => raw.close());
  await raw.hello();
  const router = new SlotRouter();
  t.is(router.table.version, 1, 'a router starts from a single group');
  t.is(router.route(elsewhere('b')).group, 0);
  const failures = [
    { type: 'CREATE', seq: 1, name: elsewhere('b'), size: 16, ifNotExists: false },
    { type: 'STAT', name: elsewhere('b') },
    { type: 'DELETE', seq: 2, name: elsewhere('b'), timeoutMs: 1000 },
    {
      type: 'LOG_APPEND',
      seq: 3,
      name: elsewhere('events'),
      sizes: [1],
      maxBytes: null,
      payload: Buffer.from('x'),
    },
  ] as const;
  for (const req of failures) {
    const err = await raw.call(req as never).then(
      () => null,
      (e: unknown) => e,
    );
    isMoved(t, err, req.name, table, req.type);
    t.deepEqual(router.fromRedirect(err), table, `${req.type}: the router takes the table out`);
  }
  t.deepEqual(router.table, table, 'the router keeps the newest table');
  t.deepEqual(router.route(elsewhere('b')), {
    slot: slotOf(elsewhere('b')),
    group: 1,
    members: [['s4', '127.0.0.1:1']],
  });
  t.like(router.route(here('a')), { group: 0, members: [['s1', '127.0.0.1:7401']] });
  t.is(router.fromRedirect(new SegmemError('UNAVAILABLE', 'not the leader', { reason: 'NOT_LEADER' })), null);
  t.deepEqual(
    (await raw.call({ type: 'LIST', prefix: '' })).objects.map((o) => o.name),
    [here('a')],
  );
});

test('SLOTS on a server started without a table: group 0 owns every slot and nothing is redirected', async (t) => {
  const dir = tempDir();
  t.teardown(dir.cleanup);
  const server = await startServer({ id: 's1', listen: '127.0.0.1:0', dataDir: dir.path, fsync: 'none' });
  t.teardown(() => server.close());
  const raw = await RawConnection.open(server.address);
  t.teardown(() => raw.close());
  await raw.hello();
  t.deepEqual(await raw.call({ type: 'SLOTS' }), {
    groupId: 0,
    table: { version: 1, ranges: [[0, SLOT_COUNT - 1, 0]], groups: [{ id: 0, members: [] }] },
  });
  t.true(
    (await raw.call({ type: 'CREATE', seq: 1, name: elsewhere('x'), size: 8, ifNotExists: false })).created,
  );
});

test('segmem cluster slots prints the table', async (t) => {
  const { server, table } = await startGroup0(t);
  const text = await runNode(segmemBin, ['cluster', 'slots', '--servers', server.address], {
    env: { SEGMEM_TOKEN: '', SEGMEM_USER: '', SEGMEM_PASSWORD: '' },
    timeoutMs: 60_000,
  }).done;
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /slot table version 2, answered by group 0/);
  t.regex(text.stdout, /^0-8191\s+0$/m);
  t.regex(text.stdout, /^8192-16383\s+1$/m);
  t.regex(text.stdout, /^1\s+s4 127\.0\.0\.1:1$/m);
  const json = await runNode(segmemBin, ['cluster', 'slots', '--json', '--servers', server.address], {
    env: { SEGMEM_TOKEN: '', SEGMEM_USER: '', SEGMEM_PASSWORD: '' },
    timeoutMs: 60_000,
  }).done;
  t.is(json.code, 0, json.stderr);
  t.like(JSON.parse(json.stdout), {
    groupId: 0,
    version: table.version,
    ranges: [
      { first: 0, last: 8191, group: 0 },
      { first: 8192, last: 16383, group: 1 },
    ],
    groups: [
      { id: 0, members: [{ id: 's1', address: '127.0.0.1:7401' }] },
      { id: 1, members: [{ id: 's4', address: '127.0.0.1:1' }] },
    ],
  });
});

test('a bad slot table option is refused before anything is opened', async (t) => {
  const dir = tempDir();
  t.teardown(dir.cleanup);
  const table = twoGroups('127.0.0.1:7401');
  const refused = async (slotTable: unknown, includes: string) => {
    const err = await t.throwsAsync(
      startServer({
        id: 's1',
        listen: '127.0.0.1:0',
        dataDir: dir.path,
        fsync: 'none',
        slotTable: slotTable as SlotTable,
      }),
    );
    t.true(SegmemError.is(err, 'INVALID_ARGUMENT'), String(err));
    t.true(err?.message.includes(includes), err?.message);
  };
  await refused(
    { ...table, ranges: [[0, SLOT_COUNT - 1, 1]], groups: [table.groups[1]] },
    'slotTable does not list group 0, the group of this server',
  );
  await refused({ ...table, ranges: [[0, 5, 0]] }, 'slots 6..16383');
  await refused({ ...table, version: -1 }, 'slot table version must be an integer >= 1');
  await refused(null, 'slot table must be a map');
  t.false(existsSync(join(dir.path, 'meta.json')), 'the data directory was not initialised');
});

/** Requests to a node in this process over its in-process connection, answers decoded. */
function localCaller(node: SegmemNode) {
  const end = connectLocal(node);
  const decoder = new FrameDecoder();
  const frames = new Map<number, Frame>();
  end.onData = (chunk) => {
    for (const f of decoder.push(chunk)) frames.set(f.requestId, f);
  };
  let nextId = 1;
  const call = async <T extends RequestType>(req: Extract<Request, { type: T }>) => {
    const id = nextId++;
    end.write(encodeRequest(req, id));
    const frame = await waitFor(() => frames.get(id), `the answer to ${req.type}`, 10_000);
    return decodeResponse(req.type as T, frame);
  };
  return { call, close: () => end.close() };
}

test('a newer table installed in the log moves slots away: LIST and requests follow it, and it outlives a restart', async (t) => {
  const dir = tempDir();
  t.teardown(dir.cleanup);
  // Version 1: group 0 owns every slot, though the table lists group 1 already.
  const first: SlotTable = { ...twoGroups('127.0.0.1:7401'), version: 1, ranges: [[0, SLOT_COUNT - 1, 0]] };
  const moved = twoGroups('127.0.0.1:7401');
  const open = () => SegmemNode.open({ id: 's1', dataDir: dir.path, fsync: 'always', slotTable: first });
  let node = await open();
  let local = localCaller(node);
  try {
    await local.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 60_000 });
    await local.call({ type: 'CREATE', seq: 1, name: here('a'), size: 8, ifNotExists: false });
    await local.call({ type: 'CREATE', seq: 2, name: elsewhere('b'), size: 8, ifNotExists: false });
    const names = async () => (await local.call({ type: 'LIST', prefix: '' })).objects.map((o) => o.name);
    t.deepEqual((await names()).sort(), [here('a'), elsewhere('b')].sort());
    t.deepEqual(await node.installSlots(moved), { version: 2 });
    t.deepEqual(await names(), [here('a')], "LIST answers with this group's slots only");
    const err = await local.call({ type: 'STAT', name: elsewhere('b') }).then(
      () => null,
      (e: unknown) => e,
    );
    isMoved(t, err, elsewhere('b'), moved, 'STAT after the move');
    for (const stale of [moved, first]) {
      const refused = await t.throwsAsync(node.installSlots(stale));
      t.true(SegmemError.is(refused, 'INVALID_ARGUMENT'), String(refused));
      t.true(refused?.message.includes('is not newer than the installed version 2'), refused?.message);
    }
    t.deepEqual(await local.call({ type: 'SLOTS' }), { groupId: 0, table: moved });
  } finally {
    local.close();
    await node.close();
  }
  // Replayed from the write-ahead log: the first table, the objects created under it, then the newer one.
  node = await open();
  local = localCaller(node);
  try {
    await local.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 60_000 });
    t.deepEqual(await local.call({ type: 'SLOTS' }), { groupId: 0, table: moved });
    t.is(node.status().objects, 2, 'the object created before the move is still held');
    t.deepEqual(
      (await local.call({ type: 'LIST', prefix: '' })).objects.map((o) => o.name),
      [here('a')],
    );
  } finally {
    local.close();
    await node.close();
  }
});

test('a SlotRouter keeps the newest table: a lower or equal version never replaces it', (t) => {
  const v2 = twoGroups('127.0.0.1:7401');
  const router = new SlotRouter(v2);
  const v1: SlotTable = { ...v2, version: 1, ranges: [[0, SLOT_COUNT - 1, 1]] };
  const v2other: SlotTable = { ...v2, ranges: [[0, SLOT_COUNT - 1, 0]] };
  t.false(router.learn(v1));
  t.false(router.learn(v2other));
  t.deepEqual(router.table, v2);
  const moved = (table: unknown) =>
    new SegmemError('UNAVAILABLE', 'moved', { reason: 'MOVED', slot: 1, group: 1, version: 1, table });
  t.deepEqual(router.fromRedirect(moved(v1)), v1, 'an older table is read from the redirect...');
  t.deepEqual(router.table, v2, '...but not kept');
  const v3: SlotTable = { ...v2, version: 3, ranges: [[0, SLOT_COUNT - 1, 1]] };
  t.true(router.learn(v3));
  t.is(router.route(here('x')).group, 1);
  // A redirect without a table, or with a bad one, is a server breaking the protocol.
  for (const bad of [undefined, { ...v3, version: 0 }, { ...v3, ranges: [[0, 1, 1]] }]) {
    const err = t.throws(() => router.fromRedirect(moved(bad)));
    t.true(SegmemError.is(err, 'PROTOCOL'), String(err));
  }
  t.deepEqual(router.table, v3);
  t.is(router.fromRedirect(new Error('moved')), null);
  t.throws(() => router.learn({ ...v3, version: 4, groups: [] }), { message: /groups must list/ });
  t.throws(() => new SlotRouter({ ...v3, version: -1 }), { message: /version/ });
});
