/** The slot table in the replicated state: MOVED refusals in apply, installing newer tables, snapshots. */
import { SegmemError, SLOT_COUNT, type SlotTable, singleGroupSlotTable, slotOf } from '@segmem/protocol';
import test from 'ava';
import { Packr } from 'msgpackr';
import { type Command, decodeCommand, encodeCommand, mustSync, type Outcome } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';
import { requireSlot, withSlotTable } from '../src/node/slots.js';
import { unwrap } from '../src/node/util.js';

const PAGE = 4096;

const codec = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', moreTypes: false });

/** The whole state as its snapshot holds it, but for the applied index. */
function stateAside(sm: StateMachine): unknown[] {
  const elements = codec.unpack(sm.snapshot()) as unknown[];
  elements[3] = 0;
  return elements;
}

/** Group 0 owns slots 0..8191, group 1 the rest. */
const twoGroups: SlotTable = {
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

// Hash tags pick the slot: "bar" hashes to 5061 (group 0), "foo" to 12182 (group 1).
const here = (n: string) => `{bar}/${n}`;
const elsewhere = (n: string) => `{foo}/${n}`;

/** A state machine of group `groupId` (the whole segment its range) starting from `slotTable`. */
function machine(slotTable: SlotTable | null = twoGroups, groupId = 0) {
  const sm = new StateMachine({
    pageBytes: PAGE,
    segmentBytes: 64 * PAGE,
    group: { id: groupId, start: 0, bytes: 64 * PAGE },
    ...(slotTable ? { slotTable } : {}),
  });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const open = (): number =>
    (run({ op: 'open', timeoutMs: 1000, clientName: null }).result as { value: { sessionId: number } }).value
      .sessionId;
  return { sm, run, open };
}

/** Commands of every kind that names an object or a log, for session `s` from sequence number `seq`. */
function namedCommands(s: number, seq: number, name: (n: string) => string): Command[] {
  return [
    { op: 'create', sessionId: s, seq, name: name('obj'), size: 100, ifNotExists: false },
    { op: 'acquire', sessionId: s, seq: seq + 1, name: name('obj'), mode: 'write' },
    {
      op: 'release',
      sessionId: s,
      seq: seq + 2,
      name: name('obj'),
      mode: 'write',
      token: 1,
      ranges: [[0, 2]],
      data: Buffer.from('hi'),
    },
    { op: 'delete', sessionId: s, seq: seq + 3, name: name('obj') },
    {
      op: 'append',
      sessionId: s,
      seq: seq + 4,
      name: name('log'),
      sizes: [3],
      maxBytes: null,
      data: Buffer.from('abc'),
    },
    { op: 'truncate', sessionId: s, seq: seq + 5, name: name('log'), before: 0 },
  ];
}

test('the names of the test are where the test says', (t) => {
  t.is(slotOf(here('x')), 5061);
  t.is(slotOf(elsewhere('x')), 12182);
});

test('commands naming what another group owns are refused with MOVED and change nothing', (t) => {
  const a = machine();
  const twin = machine();
  for (const m of [a, twin]) {
    const s = m.open();
    t.like(m.run({ op: 'create', sessionId: s, seq: 1, name: here('kept'), size: 10, ifNotExists: false }), {
      result: { ok: true },
    });
  }
  const before = a.sm.digest();
  t.is(before, twin.sm.digest());
  for (const cmd of namedCommands(1, 2, elsewhere)) {
    const { result, effects } = a.run(cmd);
    const name = (cmd as { name: string }).name;
    t.like(result, { ok: false, code: 'UNAVAILABLE' }, cmd.op);
    if (!result.ok) {
      t.deepEqual(result.details, { reason: 'MOVED', slot: 12182, group: 1, version: 2 }, cmd.op);
      t.true(result.message.includes(`"${name}" (slot 12182) belongs to group 1`), result.message);
    }
    t.deepEqual(effects, [], `${cmd.op}: no effects`);
    // The twin applies an entry that changes nothing, so both stand at the same index.
    twin.run({ op: 'cancel', sessionId: 1, seq: 999, reason: 'ABORTED' });
  }
  t.is(a.sm.digest(), twin.sm.digest(), 'the state is what a no-op would have left');
  t.is(a.sm.stat(elsewhere('obj')), undefined);
  t.is(a.sm.logCount(), 0);
  // A refusal is not remembered: the same sequence number is free for a request this group owns.
  t.like(a.run({ op: 'create', sessionId: 1, seq: 2, name: here('obj'), size: 100, ifNotExists: false }), {
    result: { ok: true, value: { created: true } },
  });
});

test('the names this group owns are served as before', (t) => {
  const { run, open, sm } = machine();
  const s = open();
  for (const cmd of namedCommands(s, 1, here)) {
    const { result } = run(cmd);
    t.true(result.ok, `${cmd.op}: ${result.ok ? '' : result.message}`);
  }
  t.is(sm.stat(here('obj')), undefined, 'created, written, deleted');
  t.is(sm.logCount(), 1);
});

test('a machine given no table is its group owning every slot: it serves every name', (t) => {
  for (const groupId of [0, 1]) {
    const { run, open, sm } = machine(null, groupId);
    t.is(sm.group.id, groupId);
    t.deepEqual(sm.slotTable, singleGroupSlotTable(groupId));
    const s = open();
    for (const name of [elsewhere, here])
      for (const cmd of namedCommands(s, name === here ? 10 : 1, name))
        t.true(run(cmd).result.ok, `group ${groupId}: ${cmd.op}`);
  }
});

test('a newer table installs; an older or equal version, or a bad table, is refused and changes nothing', (t) => {
  const { run, open, sm } = machine();
  const s = open();
  run({ op: 'create', sessionId: s, seq: 1, name: elsewhere('x'), size: 10, ifNotExists: false });
  t.like(run({ op: 'create', sessionId: s, seq: 2, name: elsewhere('x'), size: 10, ifNotExists: false }), {
    result: { ok: false, code: 'UNAVAILABLE' },
  });
  // Version 3 gives every slot to group 0.
  const all: SlotTable = { ...twoGroups, version: 3, ranges: [[0, SLOT_COUNT - 1, 0]] };
  t.deepEqual(run({ op: 'slots', table: all }).result, { ok: true, value: { version: 3 } });
  t.deepEqual(sm.slotTable, all);
  t.like(run({ op: 'create', sessionId: s, seq: 3, name: elsewhere('x'), size: 10, ifNotExists: false }), {
    result: { ok: true, value: { created: true } },
  });
  const before = stateAside(sm);
  const refused = (table: unknown, includes: string) => {
    const { result } = run({ op: 'slots', table: table as SlotTable });
    t.like(result, { ok: false, code: 'INVALID_ARGUMENT' });
    if (!result.ok) t.true(result.message.includes(includes), result.message);
  };
  refused({ ...twoGroups, version: 3 }, 'slot table version 3 is not newer than the installed version 3');
  refused(twoGroups, 'slot table version 2 is not newer than the installed version 3');
  refused({ ...twoGroups, version: 4, ranges: [[0, 100, 0]] }, 'slots 101..16383 belong to no group');
  refused({ ...twoGroups, version: 4, ranges: [[0, SLOT_COUNT - 1, 9]] }, 'names group 9');
  refused({ version: 4 }, 'slot table groups must be an array');
  t.deepEqual(sm.slotTable, all);
  t.deepEqual(stateAside(sm), before, 'the refusals moved the applied index only');
});

test('a retry of a command applied before its slot moved is answered from the first result', (t) => {
  const { run, open } = machine({ ...twoGroups, ranges: [[0, SLOT_COUNT - 1, 0]] });
  const s = open();
  const first = run({
    op: 'create',
    sessionId: s,
    seq: 1,
    name: elsewhere('x'),
    size: 10,
    ifNotExists: false,
  });
  t.true(first.result.ok);
  t.true(run({ op: 'slots', table: { ...twoGroups, version: 3 } }).result.ok);
  const retry = run({
    op: 'create',
    sessionId: s,
    seq: 1,
    name: elsewhere('x'),
    size: 10,
    ifNotExists: false,
  });
  t.deepEqual(retry.result, first.result);
  t.like(run({ op: 'acquire', sessionId: s, seq: 2, name: elsewhere('x'), mode: 'read' }), {
    result: { ok: false, code: 'UNAVAILABLE', details: { reason: 'MOVED', group: 1, version: 3 } },
  });
});

test('a snapshot keeps the group and its table, whole or frozen', (t) => {
  const { run, open, sm } = machine(twoGroups, 1);
  const s = open();
  t.true(
    run({ op: 'create', sessionId: s, seq: 1, name: elsewhere('x'), size: 10, ifNotExists: false }).result.ok,
  );
  const newer: SlotTable = { ...twoGroups, version: 7 };
  t.true(run({ op: 'slots', table: newer }).result.ok);
  const restored = StateMachine.restore(sm.snapshot());
  t.is(restored.group.id, 1);
  t.deepEqual(restored.slotTable, newer);
  t.is(restored.digest(), sm.digest());
  const frozen = sm.freeze();
  t.true(Buffer.concat(frozen.parts).equals(sm.snapshot()), 'the frozen parts are the snapshot');
  const fromMeta = StateMachine.restore(Buffer.concat(frozen.metaParts));
  frozen.release();
  t.is(fromMeta.group.id, 1);
  t.deepEqual(fromMeta.slotTable, newer);
  // The restored state refuses and serves the same names.
  t.is(restored.slotMove(elsewhere('y')), null);
  t.like(restored.slotMove(here('y')), { reason: 'MOVED', group: 0, version: 7 });
});

test('snapshots of formats 4 and 5 (before slot tables) restore with the table a new state gets', (t) => {
  const { run, open, sm } = machine(null, 1);
  const s = open();
  run({ op: 'create', sessionId: s, seq: 1, name: elsewhere('x'), size: 10, ifNotExists: false });
  const elements = codec.unpack(sm.snapshot()) as unknown[];
  t.is(elements[0], 7, 'this version writes format 7');
  t.is(elements.length, 13);
  // Format 6 has no slot moves: it restores as a state with none.
  const six = StateMachine.restore(codec.pack([6, ...elements.slice(1, 12)]));
  t.is(six.digest(), sm.digest(), 'the same state as the one that wrote format 7');
  t.deepEqual(six.moveList(), []);
  // Format 5 has the group and its range, format 4 not even that (group 0, the whole segment).
  const five = StateMachine.restore(codec.pack([5, ...elements.slice(1, 11)]));
  t.is(five.group.id, 1);
  t.deepEqual(five.slotTable, singleGroupSlotTable(1), 'its group owns every slot');
  t.is(five.digest(), sm.digest(), 'the same state as the one that wrote format 7');
  const four = StateMachine.restore(codec.pack([4, ...elements.slice(1, 10)]));
  t.is(four.group.id, 0);
  t.deepEqual(four.slotTable, singleGroupSlotTable());
  t.truthy(four.stat(elsewhere('x')));
  // A slot table given to the restore stands in for the one an older snapshot lacks.
  const given = StateMachine.restore(codec.pack([5, ...elements.slice(1, 11)]), { slotTable: twoGroups });
  t.deepEqual(given.slotTable, twoGroups);
  t.deepEqual(
    StateMachine.restore(sm.snapshot(), { slotTable: twoGroups }).slotTable,
    singleGroupSlotTable(1),
  );
});

test('a snapshot with a bad slot table is refused', (t) => {
  const { sm } = machine();
  const elements = codec.unpack(sm.snapshot()) as unknown[];
  for (const [slots, includes] of [
    [null, 'slot table must be a map'],
    [[0, twoGroups], 'slot table must be a map'],
    [{ ...twoGroups, ranges: [[0, 5, 0]] }, 'slots 6..16383 belong to no group'],
    [{ ...twoGroups, version: 0 }, 'slot table version must be an integer >= 1'],
  ] as [unknown, string][]) {
    const err = t.throws(() => StateMachine.restore(codec.pack([...elements.slice(0, 11), slots])));
    t.like((err as SegmemError).details, { reason: 'BAD_SNAPSHOT', field: 'slots' });
    t.true(err?.message.includes(includes), err?.message);
  }
});

test('a machine refuses a bad slot table option', (t) => {
  t.throws(() => machine({ ...twoGroups, version: 0 }), {
    message: /version must be an integer >= 1/,
  });
  t.throws(() => machine({ ...twoGroups, ranges: [[0, 1, 0]] }), { message: /belong to no group/ });
});

test('the slots command goes through the log codec and waits for the disk', (t) => {
  const cmd: Command = { op: 'slots', table: twoGroups };
  t.deepEqual(decodeCommand(Buffer.concat(encodeCommand(cmd))), cmd);
  t.true(mustSync(cmd));
});

test('a MOVED refusal from apply gains the table on its way to the client; other errors pass as they are', (t) => {
  const { run, open, sm } = machine();
  const s = open();
  const { result } = run({
    op: 'create',
    sessionId: s,
    seq: 1,
    name: elsewhere('x'),
    size: 10,
    ifNotExists: false,
  });
  const err = t.throws(() => unwrap(result)) as SegmemError;
  t.false('table' in (err.details ?? {}), 'the state machine leaves the table out');
  const answered = withSlotTable(err, sm) as SegmemError;
  t.deepEqual(answered.details, { reason: 'MOVED', slot: 12182, group: 1, version: 2, table: twoGroups });
  t.is(answered.message, err.message);
  t.is(withSlotTable(answered, sm), answered, 'a redirect with its table is left alone');
  const other = new SegmemError('UNAVAILABLE', 'not the leader', { reason: 'NOT_LEADER' });
  t.is(withSlotTable(other, sm), other);
  t.throws(() => requireSlot(sm, elsewhere('y')), {
    message: /"\{foo\}\/y" \(slot 12182\) belongs to group 1 \(slot table version 2\)/,
  });
  t.notThrows(() => requireSlot(sm, here('y')));
});
