import { initialSlotTable, singleGroupSlotTable } from '@segmem/protocol';
import test from 'ava';
import type { Command, Outcome } from '../src/core/commands.js';
import { type StateContent, StateMachine } from '../src/core/state-machine.js';
import {
  ConsolidatedVerifier,
  decodeConsolidated,
  encodeConsolidated,
  verifyConsolidated,
} from '../src/storage/consolidated.js';

const PAGE = 4096;

function machine() {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const s = (
    run({ op: 'open', timeoutMs: 1000, clientName: null }).result as { value: { sessionId: number } }
  ).value.sessionId;
  /** Creates object `name` of `size` bytes and writes `data` at `offset` (commands seq .. seq+2). */
  const createAndWrite = (seq: number, name: string, size: number, offset: number, data: Buffer) => {
    run({ op: 'create', sessionId: s, seq, name, size, ifNotExists: false });
    const grant = run({ op: 'acquire', sessionId: s, seq: seq + 1, name, mode: 'write' });
    const token = (grant.result as { value: { granted: { token: number } } }).value.granted.token;
    const ranges: [number, number][] = [[offset, data.length]];
    run({ op: 'release', sessionId: s, seq: seq + 2, name, mode: 'write', token, ranges, data });
  };
  return { sm, run, s, createAndWrite };
}

test('a consolidated snapshot keeps content only, leaves zero pages out, and restores it exactly', async (t) => {
  const { sm, run, s, createAndWrite } = machine();
  createAndWrite(1, 'a', 4 * PAGE, PAGE + 5, Buffer.from('xyz'));
  run({ op: 'create', sessionId: s, seq: 4, name: 'b', size: 10, ifNotExists: false });
  run({ op: 'acquire', sessionId: s, seq: 5, name: 'b', mode: 'read' }); // a lock: not content
  run({
    op: 'append',
    sessionId: s,
    seq: 6,
    name: 'log',
    sizes: [2, 0],
    maxBytes: null,
    data: Buffer.from('hi'),
  });

  const parts = await encodeConsolidated(sm.exportContent(), {
    clusterId: 'c1',
    createdAt: '2026-11-23T00:00:00.000Z',
    groups: [[0, 9, 2]],
  });
  const file = Buffer.concat(parts);
  t.true(file.length < 2 * PAGE, `only the one written page is stored (${file.length} bytes)`);
  const decoded = decodeConsolidated(file, 'test.segsnap');
  t.like(decoded.header, { clusterId: 'c1', groups: [[0, 9, 2]], objectCount: 2, logCount: 1 });

  const restored = StateMachine.fromContent(decoded.content, 1);
  t.deepEqual(restored.exportContent(), sm.exportContent());
  t.is(restored.objectNamed('a')!.data!.toString('latin1', PAGE + 5, PAGE + 8), 'xyz');
  t.is(restored.objectNamed('b')!.readers, 0, 'locks are not part of a snapshot');
  t.is(restored.sessionIds().length, 0, 'nor are sessions');
  // The same content gives the same bytes and digest, whatever the header says.
  const again = decodeConsolidated(
    Buffer.concat(
      await encodeConsolidated(restored.exportContent(), { clusterId: 'c2', createdAt: 'x', groups: [] }),
    ),
    'again',
  );
  t.is(again.contentDigest, decoded.contentDigest);

  // Damage anywhere is caught.
  for (const at of [3, 40, file.length >> 1, file.length - 10]) {
    const bad = Buffer.from(file);
    bad[at]! ^= 1;
    t.throws(() => decodeConsolidated(bad, 'bad'), { code: 'INVALID_ARGUMENT' } as never);
  }
  t.throws(() => decodeConsolidated(file.subarray(0, file.length - 1), 'short'), { message: /cut short/ });
});

test('checked piece by piece as it arrives, a file gets the same verdict as checked whole', async (t) => {
  const { sm, createAndWrite } = machine();
  createAndWrite(1, 'a', 3 * PAGE, 10, Buffer.alloc(2 * PAGE, 7));
  const good = Buffer.concat(
    await encodeConsolidated(sm.exportContent(), { clusterId: 'c', createdAt: 'now', groups: [[0, 3, 0]] }),
  );
  const verdict = (bytes: Buffer, pieces: number[]): string => {
    const v = new ConsolidatedVerifier(good.length, 'f');
    let at = 0;
    for (const n of pieces) {
      v.push(bytes.subarray(at, at + n));
      at += n;
    }
    try {
      v.finish();
      return 'ok';
    } catch (err) {
      return (err as Error).message;
    }
  };
  const whole = (bytes: Buffer): string => {
    try {
      verifyConsolidated(bytes, 'f');
      return 'ok';
    } catch (err) {
      return (err as Error).message;
    }
  };
  // Piece sizes that split the magic, the checksum and the end marker in every way.
  const splits = [[good.length], [3, good.length - 3], [good.length - 10, 10], [good.length - 13, 2, 11]];
  for (let n = 1; n < 40; n += 7)
    splits.push([...Array(Math.floor(good.length / n)).fill(n), good.length % n]);
  const damaged = [0, 5, 100, good.length - 14, good.length - 12, good.length - 9, good.length - 1].map(
    (i) => {
      const b = Buffer.from(good);
      b[i]! ^= 0x40;
      return b;
    },
  );
  for (const bytes of [good, ...damaged]) {
    for (const pieces of splits)
      t.is(
        verdict(
          bytes,
          pieces.filter((n) => n > 0),
        ),
        whole(bytes),
      );
  }
  t.is(
    verdict(good, [good.length - 1]),
    'f is not a usable consolidated snapshot: cut short (' + `${good.length - 1} of ${good.length} bytes)`,
  );
});

test("a shard group's consolidated snapshot keeps its range and slot table; an ungrouped one has neither", async (t) => {
  const segmentBytes = 64 * PAGE;
  const range = { id: 2, start: 32 * PAGE, bytes: 32 * PAGE };
  const slotTable = initialSlotTable([
    { id: 1, members: [['s1', '127.0.0.1:7401']] },
    { id: 2, members: [['s2', '127.0.0.1:7402']] },
  ]);
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes, group: range, slotTable });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const opened = run({ op: 'open', timeoutMs: 1000, clientName: null }).result;
  const s = (opened as { value: { sessionId: number } }).value.sessionId;
  // "{foo}" hashes to slot 12182 (group 2's half), "{bar}" to 5061 (group 1's).
  t.true(
    run({ op: 'create', sessionId: s, seq: 1, name: '{foo}a', size: 3 * PAGE, ifNotExists: false }).result.ok,
  );
  const address = sm.objectNamed('{foo}a')!.firstPage * PAGE;
  t.true(address >= range.start, `placed in the group's range at ${address}`);

  const meta = { clusterId: 'c', createdAt: 'now', groups: [[2, index, 1]] as [number, number, number][] };
  const file = Buffer.concat(await encodeConsolidated(sm.exportContent(), meta));
  const decoded = decodeConsolidated(file, 'g2.segsnap');
  t.deepEqual(decoded.header.group, [2, range.start, range.bytes]);
  t.deepEqual(decoded.content.group, range);
  t.deepEqual(decoded.content.slotTable, slotTable);
  const restored = StateMachine.fromContent(decoded.content, 1);
  t.deepEqual(restored.group, range);
  t.deepEqual(restored.slotTable, slotTable);
  t.is(restored.objectNamed('{foo}a')!.firstPage * PAGE, address);
  t.like(restored.slotMove('{bar}b'), { reason: 'MOVED', group: 1 });
  t.is(restored.slotMove('{foo}b'), null);
  t.deepEqual(restored.exportContent(), sm.exportContent());

  // An ungrouped state's file has no group fields: it reads, as before, as group 0 over the whole segment.
  const plain = machine();
  plain.createAndWrite(1, 'a', PAGE, 0, Buffer.from('x'));
  const plainFile = decodeConsolidated(
    Buffer.concat(await encodeConsolidated(plain.sm.exportContent(), meta)),
    'plain.segsnap',
  );
  t.false('group' in plainFile.header || 'slots' in plainFile.header);
  t.false('group' in plainFile.content || 'slotTable' in plainFile.content);
  const plainRestored = StateMachine.fromContent(plainFile.content);
  t.deepEqual(plainRestored.group, { id: 0, start: 0, bytes: 64 * PAGE });
  t.deepEqual(plainRestored.slotTable, singleGroupSlotTable(0));

  // A group or table no state can hold is refused naming the file, and so is the same content given directly.
  const crafted: [string, (c: StateContent) => void, RegExp][] = [
    ['a range past the segment', (c) => (c.group = { ...range, bytes: 64 * PAGE }), /ends past the segment/],
    ['a range not page-aligned', (c) => (c.group = { ...range, start: range.start + 1 }), /multiple of 4096/],
    [
      'an object outside the range',
      (c) => (c.group = { ...range, id: 2, start: 0 }),
      /must be inside group 2/,
    ],
    ['a table without the group', (c) => (c.group = { ...range, id: 3 }), /not this content's group 3/],
    ['a broken table', (c) => (c.slotTable = { ...slotTable, ranges: [] }), /slot table: ranges/],
  ];
  for (const [what, tamper, message] of crafted) {
    const content = sm.exportContent();
    tamper(content);
    const bad = Buffer.concat(await encodeConsolidated(content, meta));
    const err = t.throws(() => decodeConsolidated(bad, 'crafted.segsnap'), { message }, what);
    t.like(err, { code: 'INVALID_ARGUMENT' }, what);
    t.regex(err!.message, /^crafted\.segsnap is not a usable consolidated snapshot: header: /, what);
    t.throws(() => StateMachine.fromContent(content), { message }, what);
  }
});
