/** Slot moves in the replicated state: freeze, import, switch and abort, deterministic and idempotent by move id. */
import { SLOT_COUNT, type SlotTable, slotOf } from '@segmem/protocol';
import test from 'ava';
import { Packr } from 'msgpackr';
import { drainPlans, evenSpreadPlans, slotsOwnedBy, withSlots } from '../src/cli/rebalance.js';
import { type Command, decodeCommand, encodeCommand, type Outcome } from '../src/core/commands.js';
import type { MovedObject } from '../src/core/moves.js';
import { StateMachine } from '../src/core/state-machine.js';

const PAGE = 4096;
const codec = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

/** The whole state as its snapshot holds it, but for the applied index. */
function stateAside(sm: StateMachine): unknown[] {
  const elements = codec.unpack(sm.snapshot()) as unknown[];
  elements[3] = 0;
  return elements;
}

/** Group 0 owns slots 0..8191, group 1 the rest. */
const table: SlotTable = {
  version: 2,
  ranges: [
    [0, 8191, 0],
    [8192, SLOT_COUNT - 1, 1],
  ],
  groups: [
    { id: 0, members: [['s1', '127.0.0.1:7401']] },
    { id: 1, members: [['s4', '127.0.0.1:7404']] },
  ],
};

// "bar" hashes to slot 5061 (group 0), "foo" to 12182 (group 1).
const BAR = slotOf('bar');
const moved = (n: string) => `{bar}/${n}`;
const stays = (n: string) => `{zap}/${n}`;
/** The table after the move of BAR's slot from group 0 to group 1. */
const after: SlotTable = {
  version: 3,
  ranges: [
    [0, BAR - 1, 0],
    [BAR, BAR, 1],
    [BAR + 1, 8191, 0],
    [8192, SLOT_COUNT - 1, 1],
  ],
  groups: table.groups,
};
const freeze: Command = { op: 'moveFreeze', moveId: 'm1', from: 0, to: 1, slots: [[BAR, BAR]] };

function machine(groupId: number, pages = 64) {
  const start = groupId * 64 * PAGE;
  const sm = new StateMachine({
    pageBytes: PAGE,
    segmentBytes: 128 * PAGE,
    group: { id: groupId, start, bytes: pages * PAGE },
    slotTable: table,
  });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const open = (): number =>
    (run({ op: 'open', timeoutMs: 1000, clientName: null }).result as { value: { sessionId: number } }).value
      .sessionId;
  return { sm, run, open };
}

/** A command applied and its state unchanged: the refusal's code. */
function refused(m: ReturnType<typeof machine>, cmd: Command): { code: string; message: string } {
  const before = stateAside(m.sm);
  const r = m.run(cmd).result;
  if (r.ok) throw new Error(`expected a refusal of ${cmd.op}`);
  if (JSON.stringify(stateAside(m.sm)) !== JSON.stringify(before))
    throw new Error(`${cmd.op} changed the state`);
  return { code: r.code, message: r.message };
}

/** Group 0 with two objects in BAR's slot (one written, version 2) and one elsewhere, and a log. */
function sourceWithObjects() {
  const m = machine(0);
  const s = m.open();
  m.run({ op: 'create', sessionId: s, seq: 1, name: moved('a'), size: 5000, ifNotExists: false });
  m.run({ op: 'create', sessionId: s, seq: 2, name: moved('b'), size: 10, ifNotExists: false });
  m.run({ op: 'create', sessionId: s, seq: 3, name: stays('c'), size: 10, ifNotExists: false });
  m.run({ op: 'acquire', sessionId: s, seq: 4, name: moved('a'), mode: 'write' });
  m.run({
    op: 'release',
    sessionId: s,
    seq: 5,
    name: moved('a'),
    mode: 'write',
    token: 1,
    ranges: [[4096, 3]],
    data: Buffer.from('xyz'),
  });
  m.run({
    op: 'append',
    sessionId: s,
    seq: 6,
    name: moved('log'),
    sizes: [2, 3],
    maxBytes: null,
    data: Buffer.from('hello'),
  });
  return { ...m, s };
}

test('a frozen slot takes no create, acquire, delete or append; releases and other slots go on', (t) => {
  const m = sourceWithObjects();
  const s = m.s;
  m.run({ op: 'acquire', sessionId: s, seq: 10, name: moved('b'), mode: 'read' });
  const r = m.run(freeze);
  t.deepEqual(r.result, { ok: true, value: { role: 'source', already: false } });
  // The holder of b is asked to give it back.
  t.true(r.effects.some((e) => e.kind === 'revoke' && e.sessionIds.includes(s)));
  // ... and again now and then while it holds it (a REVOKE may be lost with a connection).
  t.deepEqual(m.sm.contendedHolders(), [{ objectId: m.sm.objectNamed(moved('b'))!.id, sessionIds: [s] }]);
  for (const cmd of [
    { op: 'create', sessionId: s, seq: 11, name: moved('new'), size: 10, ifNotExists: false },
    { op: 'acquire', sessionId: s, seq: 12, name: moved('a'), mode: 'write' },
    { op: 'delete', sessionId: s, seq: 13, name: moved('a') },
    {
      op: 'append',
      sessionId: s,
      seq: 14,
      name: moved('log'),
      sizes: [1],
      maxBytes: null,
      data: Buffer.from('x'),
    },
    { op: 'truncate', sessionId: s, seq: 15, name: moved('log'), before: 1 },
  ] as Command[]) {
    const before = stateAside(m.sm);
    const res = m.run(cmd).result;
    t.false(res.ok, cmd.op);
    if (!res.ok) {
      t.is(res.code, 'UNAVAILABLE');
      t.like(res.details, { reason: 'FROZEN', slot: BAR, moveId: 'm1' });
    }
    t.deepEqual(stateAside(m.sm), before, `${cmd.op} changed nothing`);
  }
  // Not remembered: the same seq proposed again after the move is applied anew.
  t.false(
    m.run({ op: 'create', sessionId: s, seq: 11, name: moved('new'), size: 10, ifNotExists: false }).result
      .ok,
  );
  t.true(
    m.run({
      op: 'release',
      sessionId: s,
      seq: 16,
      name: moved('b'),
      mode: 'read',
      token: 1,
      ranges: [],
      data: null,
    }).result.ok,
  );
  t.true(
    m.run({ op: 'create', sessionId: s, seq: 17, name: stays('d'), size: 10, ifNotExists: false }).result.ok,
  );
  t.is(m.sm.busyInSlots([[BAR, BAR]]), 0);
  // The same freeze again is answered as done; another move of this group is refused.
  t.deepEqual(m.run(freeze).result, { ok: true, value: { role: 'source', already: true } });
  t.is(refused(m, { ...freeze, moveId: 'm2' }).code, 'INVALID_ARGUMENT');
  t.is(refused(m, { ...freeze, slots: [[BAR, BAR + 1]] }).code, 'INVALID_ARGUMENT');
});

test('a write release does not keep its lock on a frozen object', (t) => {
  const m = sourceWithObjects();
  const g = m.run({ op: 'acquire', sessionId: m.s, seq: 10, name: moved('b'), mode: 'write' }).result;
  t.true(g.ok);
  m.run(freeze);
  const r = m.run({
    op: 'release',
    sessionId: m.s,
    seq: 11,
    name: moved('b'),
    mode: 'write',
    token: 1,
    ranges: [],
    data: null,
    keep: true,
  });
  t.deepEqual(r.result, { ok: true, value: { version: 1 } });
  t.is(m.sm.busyInSlots([[BAR, BAR]]), 0);
});

test('bad freezes are refused with a typed error and change nothing', (t) => {
  const m = sourceWithObjects();
  const bad: Command[] = [
    { ...freeze, moveId: '' },
    { ...freeze, moveId: 'has space' },
    { ...freeze, slots: [] },
    { ...freeze, slots: [[5, 4]] },
    { ...freeze, slots: [[0, SLOT_COUNT]] },
    { ...freeze, from: 0, to: 0 },
    { ...freeze, from: 0, to: 7 },
    // Slot 9000 belongs to group 1, not to the source.
    { ...freeze, slots: [[9000, 9000]] },
  ];
  for (const cmd of bad) t.is(refused(m, cmd).code, 'INVALID_ARGUMENT', JSON.stringify(cmd));
  // The target checks the same: it accepts imports only for slots the source owns.
  const target = machine(1);
  t.regex(
    refused(target, { ...freeze, slots: [[9000, 9000]] }).message,
    /slot 9000 does not belong to group 0/,
  );
});

/** What the driver copies: the objects of BAR's slot as the source holds them, and their bytes. */
function copyOf(source: StateMachine): { objects: MovedObject[]; data: Buffer } {
  const objects: MovedObject[] = [];
  const parts: Buffer[] = [];
  for (const o of source.objectsInSlots([[BAR, BAR]])) {
    objects.push({
      name: o.name,
      size: o.size,
      version: o.version,
      lastToken: o.lastToken,
      written: o.data !== null,
    });
    if (o.data) parts.push(o.data);
  }
  return { objects, data: Buffer.concat(parts) };
}

test('a move end to end: import into the target, switch the target then the source', (t) => {
  const a = sourceWithObjects();
  const b = machine(1);
  // A waiter queued on a in the source before the freeze is answered MOVED at the switch.
  const other = a.open();
  a.run({ op: 'acquire', sessionId: a.s, seq: 20, name: moved('a'), mode: 'write' });
  t.like(a.run({ op: 'acquire', sessionId: other, seq: 1, name: moved('a'), mode: 'write' }).result, {
    ok: true,
    value: { queued: true },
  });
  t.true(a.run(freeze).result.ok);
  t.deepEqual(b.run(freeze).result, { ok: true, value: { role: 'target', already: false } });
  const { objects, data } = copyOf(a.sm);
  const log = { name: moved('log'), maxBytes: 1 << 20, first: 0, sizes: [2, 3] };
  const imp: Command = {
    op: 'moveImport',
    moveId: 'm1',
    objects,
    logs: [log],
    data: Buffer.concat([data, Buffer.from('hello')]),
  };
  // Through the log codec, as a replica reads it.
  const decoded = decodeCommand(Buffer.concat(encodeCommand(imp)));
  t.like(b.run(decoded).result, { ok: true, value: { objects: 2 } });
  // Idempotent: the same chunk again changes nothing but the applied index.
  const aside = stateAside(b.sm);
  t.like(b.run(decoded).result, { ok: true, value: { objects: 0 } });
  t.deepEqual(stateAside(b.sm), aside);
  // Not served yet: the target does not own the slot.
  t.truthy(b.sm.slotMove(moved('a')));
  const ia = b.sm.objectNamed(moved('a'))!;
  t.is(ia.version, 2);
  t.is(ia.address >= 64 * PAGE, true, 'allocated in the target range');
  t.deepEqual(ia.data!.subarray(4096, 4099), Buffer.from('xyz'));
  // Switch: an older table is refused; the new one, in the target first.
  t.is(refused(b, { op: 'moveSwitch', moveId: 'm1', table }).code, 'INVALID_ARGUMENT');
  t.is(refused(b, { op: 'moveSwitch', moveId: 'nope', table: after }).code, 'NOT_FOUND');
  t.is(
    refused(b, { op: 'moveSwitch', moveId: 'm1', table: { ...table, version: 9 } }).code,
    'INVALID_ARGUMENT',
  );
  t.deepEqual(b.run({ op: 'moveSwitch', moveId: 'm1', table: after }).result, {
    ok: true,
    value: { version: 3 },
  });
  t.is(b.sm.slotMove(moved('a')), null);
  t.deepEqual(b.sm.moveList(), []);
  const bs = b.open();
  const g = b.run({ op: 'acquire', sessionId: bs, seq: 1, name: moved('a'), mode: 'write' }).result;
  // The token floor: above every token the source handed out.
  t.like(g, { ok: true, value: { granted: { token: a.sm.objectNamed(moved('a'))!.lastToken + 1 } } });
  t.like(b.sm.readLog(moved('log'), 0, 100, 10), { ok: true, read: { first: 0, next: 2, sizes: [2, 3] } });
  // The source: its objects and log of the slot go, the queued waiter hears MOVED.
  const sw = a.run({ op: 'moveSwitch', moveId: 'm1', table: after });
  t.deepEqual(sw.result, { ok: true, value: { version: 3 } });
  const failEffect = sw.effects.find((e) => e.kind === 'fail' && e.sessionId === other);
  t.like(failEffect, { code: 'UNAVAILABLE', details: { reason: 'MOVED', slot: BAR, group: 1, version: 3 } });
  t.is(a.sm.objectNamed(moved('a')), undefined);
  t.is(a.sm.logSize(moved('log')), null);
  t.truthy(a.sm.objectNamed(stays('c')));
  t.deepEqual(a.sm.moveList(), []);
  // After the switch the move is over: its id is unknown.
  t.is(refused(a, { op: 'moveAbort', moveId: 'm1' }).code, 'NOT_FOUND');
});

test('imports: unknown move, wrong group, names outside the slots, bad sizes and NO_SPACE change nothing', (t) => {
  const a = sourceWithObjects();
  const b = machine(1, 2);
  const { objects, data } = copyOf(a.sm);
  const imp = (over: Partial<Command & { op: 'moveImport' }> = {}): Command => ({
    op: 'moveImport',
    moveId: 'm1',
    objects,
    logs: [],
    data,
    ...over,
  });
  t.is(refused(b, imp()).code, 'NOT_FOUND');
  b.run(freeze);
  // The source imports nothing.
  a.run(freeze);
  t.is(refused(a, imp()).code, 'INVALID_ARGUMENT');
  t.is(
    refused(b, imp({ objects: [{ ...objects[0]!, name: stays('x') }], data: data })).code,
    'INVALID_ARGUMENT',
  );
  t.is(refused(b, imp({ data: Buffer.alloc(3) })).code, 'INVALID_ARGUMENT');
  t.is(refused(b, imp({ objects: [{ ...objects[0]!, version: 0 }] })).code, 'INVALID_ARGUMENT');
  // Two pages free in the target: the 5000-byte object fits, another of 2 pages does not, and neither goes in.
  const big: MovedObject = { name: moved('big'), size: 2 * PAGE, version: 1, lastToken: 0, written: false };
  const nospace = refused(b, imp({ objects: [...objects, big] }));
  t.is(nospace.code, 'NO_SPACE');
  t.regex(nospace.message, /group 1/);
  t.is(b.sm.objectCount(), 0);
});

test('an abort rolls back: the target drops what it imported, the source unfreezes', (t) => {
  const a = sourceWithObjects();
  const b = machine(1);
  a.run(freeze);
  b.run(freeze);
  const { objects, data } = copyOf(a.sm);
  b.run({
    op: 'moveImport',
    moveId: 'm1',
    objects,
    logs: [{ name: moved('log'), maxBytes: 100, first: 0, sizes: [5] }],
    data: Buffer.concat([data, Buffer.from('hello')]),
  });
  t.is(b.sm.objectCount(), 2);
  t.is(refused(b, { op: 'moveAbort', moveId: 'other' }).code, 'NOT_FOUND');
  t.like(b.run({ op: 'moveAbort', moveId: 'm1' }).result, {
    ok: true,
    value: { role: 'target', dropped: 3 },
  });
  t.is(b.sm.objectCount(), 0);
  t.is(b.sm.logSize(moved('log')), null);
  t.is(b.sm.freePages, 64);
  t.like(a.run({ op: 'moveAbort', moveId: 'm1' }).result, { ok: true, value: { role: 'source' } });
  t.true(
    a.run({ op: 'create', sessionId: a.s, seq: 30, name: moved('after'), size: 1, ifNotExists: false }).result
      .ok,
  );
});

test('moves are deterministic and survive a snapshot round trip (format 7)', (t) => {
  const run = () => {
    const a = sourceWithObjects();
    const b = machine(1);
    a.run(freeze);
    b.run(freeze);
    const { objects, data } = copyOf(a.sm);
    b.run({ op: 'moveImport', moveId: 'm1', objects, logs: [], data });
    return { a, b };
  };
  const one = run();
  const two = run();
  t.is(one.a.sm.digest(), two.a.sm.digest());
  t.is(one.b.sm.digest(), two.b.sm.digest());
  const snap = one.a.sm.snapshot();
  t.is((codec.unpack(snap) as unknown[])[0], 7);
  const ra = StateMachine.restore(snap);
  t.is(ra.digest(), one.a.sm.digest());
  t.deepEqual(ra.moveList(), [{ id: 'm1', role: 'source', from: 0, to: 1, slots: [[BAR, BAR]] }]);
  t.like(ra.frozenBy(moved('a')), { moveId: 'm1', slot: BAR });
  const rb = StateMachine.restore(one.b.sm.snapshot());
  t.is(rb.digest(), one.b.sm.digest());
  // The frozen view writes the same bytes as snapshot().
  const frozen = one.b.sm.freeze();
  t.deepEqual(Buffer.concat(frozen.parts as Buffer[]), one.b.sm.snapshot());
  frozen.release();
  // The restored target still knows what the move imported: an abort drops it.
  t.like(rb.apply(rb.appliedIndex + 1, { op: 'moveAbort', moveId: 'm1' }).result, {
    ok: true,
    value: { dropped: 2 },
  });
  t.is(rb.objectCount(), 0);
});

test('the driver plans an even spread, a group drained, and a range given to one group', (t) => {
  const two: SlotTable = {
    version: 1,
    ranges: [
      [0, 8191, 1],
      [8192, SLOT_COUNT - 1, 2],
    ],
    groups: [
      { id: 1, members: [] },
      { id: 2, members: [] },
      { id: 3, members: [] },
    ],
  };
  // Three groups: 0..5460, 5461..10921, 10922..16383 (the table a new cluster of three starts with).
  t.deepEqual(evenSpreadPlans(two, [1, 2, 3]), [
    { from: 1, to: 2, slots: [[5461, 8191]] },
    { from: 2, to: 3, slots: [[10922, SLOT_COUNT - 1]] },
  ]);
  t.deepEqual(evenSpreadPlans(two, [1, 2]), [], 'already even: nothing to move');
  t.deepEqual(drainPlans(two, 2, [1, 3]), [
    { from: 2, to: 1, slots: [[8192, 12287]] },
    { from: 2, to: 3, slots: [[12288, SLOT_COUNT - 1]] },
  ]);
  const moved = withSlots(two, [[0, 99]], 3);
  t.is(moved.version, 2);
  t.deepEqual(moved.ranges, [
    [0, 99, 3],
    [100, 8191, 1],
    [8192, SLOT_COUNT - 1, 2],
  ]);
  t.true(slotsOwnedBy(moved, [[0, 99]], 3));
  t.false(slotsOwnedBy(moved, [[0, 100]], 3));
});
