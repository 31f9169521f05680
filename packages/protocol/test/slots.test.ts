import test from 'ava';
import {
  crc16,
  initialSlotTable,
  MAX_GROUP_MEMBERS,
  ownerOf,
  SegmemError,
  SLOT_COUNT,
  type SlotGroup,
  type SlotTable,
  singleGroupSlotTable,
  slotOf,
  validateSlotTable,
} from '../src/index.js';

const group = (id: number, ...members: [string, string][]): SlotGroup => ({ id, members });

const twoGroups: SlotTable = {
  version: 2,
  ranges: [
    [0, 8191, 0],
    [8192, 16383, 1],
  ],
  groups: [group(0, ['s1', '127.0.0.1:7401']), group(1, ['s4', '127.0.0.1:7404'])],
};

test('CRC16 is XMODEM, the checksum Redis Cluster hashes keys with', (t) => {
  // The check value of CRC-16/XMODEM and Redis's cluster spec: CRC16("123456789") = 0x31C3.
  t.is(crc16(Buffer.from('123456789')), 0x31c3);
  t.is(crc16(Buffer.alloc(0)), 0);
  // Values from the Redis Cluster specification's examples and `CLUSTER KEYSLOT`.
  t.is(slotOf('foo'), 12182);
  t.is(slotOf('bar'), 5061);
  t.is(slotOf('hello'), 866);
  t.is(slotOf('somekey'), 11058);
  // A slice hashes the bytes it covers only.
  t.is(crc16(Buffer.from('xx123456789yy'), 2, 11), 0x31c3);
});

test('a name hashes its UTF-8 bytes', (t) => {
  const name = 'jobs/ü中😀';
  t.is(slotOf(name), crc16(Buffer.from(name, 'utf8')) % SLOT_COUNT);
  t.not(slotOf('é'), crc16(Buffer.from('é', 'latin1')) % SLOT_COUNT);
});

test('hash tags: only the bytes between the first { and the next } are hashed', (t) => {
  t.is(slotOf('user{42}/a'), slotOf('user{42}/b'));
  t.is(slotOf('user{42}/a'), slotOf('42'));
  t.is(slotOf('{user1000}.following'), slotOf('{user1000}.followers'));
  // The first { only, and the first } after it.
  t.is(slotOf('foo{{bar}}zap'), slotOf('{bar'));
  t.is(slotOf('foo{bar}{zap}'), slotOf('bar'));
  t.is(slotOf('a{b}c{d}'), slotOf('x{b}y'));
  // An empty tag hashes the whole name; so does a { without a } after it, or a } only before it.
  t.is(slotOf('foo{}{bar}'), crc16(Buffer.from('foo{}{bar}')) % SLOT_COUNT);
  t.not(slotOf('foo{}{bar}'), slotOf('bar'));
  t.is(slotOf('{}'), crc16(Buffer.from('{}')) % SLOT_COUNT);
  t.is(slotOf('abc{def'), crc16(Buffer.from('abc{def')) % SLOT_COUNT);
  t.is(slotOf('abc}def{'), crc16(Buffer.from('abc}def{')) % SLOT_COUNT);
  // Tags in UTF-8: the bytes between the braces.
  t.is(slotOf('x{ü}y'), crc16(Buffer.from('ü', 'utf8')) % SLOT_COUNT);
});

test('every slot is reachable by some name', (t) => {
  const seen = new Uint8Array(SLOT_COUNT);
  let left = SLOT_COUNT;
  for (let i = 0; left > 0 && i < 1_000_000; i++) {
    const s = slotOf(`k${i}`);
    t.true(s >= 0 && s < SLOT_COUNT);
    if (seen[s] === 0) {
      seen[s] = 1;
      left--;
    }
  }
  t.is(left, 0, 'every slot was hit by a name k0..k999999');
});

test('initialSlotTable splits the slots into nearly equal contiguous ranges in group order', (t) => {
  for (let n = 1; n <= 5; n++) {
    // Given out of order: ranges follow the ids.
    const groups = Array.from({ length: n }, (_, i) => group(n - 1 - i, [`s${i}`, `127.0.0.1:${7401 + i}`]));
    const table = initialSlotTable(groups);
    t.is(table.version, 1);
    t.deepEqual(validateSlotTable(table), table, `${n} groups: a valid table`);
    t.deepEqual(
      table.ranges.map((r) => r[2]),
      Array.from({ length: n }, (_, i) => i),
    );
    const sizes = table.ranges.map(([first, last]) => last - first + 1);
    t.is(
      sizes.reduce((a, b) => a + b, 0),
      SLOT_COUNT,
    );
    t.true(Math.max(...sizes) - Math.min(...sizes) <= 1, `${n} groups: sizes ${sizes.join(', ')}`);
    t.deepEqual(
      table.groups.map((g) => g.id),
      Array.from({ length: n }, (_, i) => i),
    );
  }
  t.deepEqual(initialSlotTable([group(0, ['s1', '127.0.0.1:7401'])]).ranges, [[0, SLOT_COUNT - 1, 0]]);
  t.deepEqual(initialSlotTable([group(0), group(1), group(2)]).ranges, [
    [0, 5460, 0],
    [5461, 10921, 1],
    [10922, 16383, 2],
  ]);
});

test('a single group owns every slot', (t) => {
  const table = singleGroupSlotTable();
  t.deepEqual(validateSlotTable(table), table);
  for (const slot of [0, 1, 8191, SLOT_COUNT - 1]) t.is(ownerOf(table, slot), 0);
});

test('ownerOf finds the range of a slot', (t) => {
  const table = validateSlotTable({
    version: 1,
    ranges: [
      [0, 0, 2],
      [1, 99, 0],
      [100, 100, 1],
      [101, SLOT_COUNT - 1, 2],
    ],
    groups: [group(0), group(1), group(2)],
  });
  t.is(ownerOf(table, 0), 2);
  t.is(ownerOf(table, 1), 0);
  t.is(ownerOf(table, 99), 0);
  t.is(ownerOf(table, 100), 1);
  t.is(ownerOf(table, 101), 2);
  t.is(ownerOf(table, SLOT_COUNT - 1), 2);
  const err = t.throws(() => ownerOf(table, SLOT_COUNT));
  t.true(SegmemError.is(err, 'INVALID_ARGUMENT'));
});

test('validateSlotTable returns a fresh copy with only the known fields', (t) => {
  const given = { ...twoGroups, extra: 1, groups: twoGroups.groups.map((g) => ({ ...g, x: 2 })) };
  const back = validateSlotTable(given);
  t.deepEqual(back, twoGroups);
  t.not(back.ranges, twoGroups.ranges);
});

function refuses(t: import('ava').ExecutionContext, value: unknown, includes: string, why: string): void {
  const err = t.throws(() => validateSlotTable(value), undefined, why);
  t.true(SegmemError.is(err, 'INVALID_ARGUMENT'), `${why}: ${String(err)}`);
  t.true(err?.message.includes(includes), `${why}: "${err?.message}" should say "${includes}"`);
}

test('validateSlotTable refuses what is wrong, naming it', (t) => {
  const g01 = twoGroups.groups;
  const with_ = (ranges: unknown[], extra: object = {}) => ({ version: 1, ranges, groups: g01, ...extra });
  refuses(t, null, 'slot table must be a map', 'not a map');
  refuses(t, [], 'slot table must be a map', 'an array');
  refuses(t, { ...twoGroups, version: 0 }, 'version must be an integer >= 1', 'version 0');
  refuses(t, { ...twoGroups, version: -3 }, 'version', 'a negative version');
  refuses(t, { ...twoGroups, version: 1.5 }, 'version', 'a fractional version');
  refuses(t, { ...twoGroups, version: '2' }, 'version', 'a string version');
  refuses(t, { ...twoGroups, version: undefined }, 'version', 'no version');
  refuses(
    t,
    with_([
      [0, 99, 0],
      [101, SLOT_COUNT - 1, 1],
    ]),
    'slots 100..100 belong to no group',
    'a gap',
  );
  refuses(t, with_([[1, SLOT_COUNT - 1, 0]]), 'slots 0..0 belong to no group', 'a gap at the start');
  refuses(t, with_([[0, 100, 0]]), 'slots 101..16383 belong to no group', 'a gap at the end');
  refuses(
    t,
    with_([
      [0, 100, 0],
      [100, SLOT_COUNT - 1, 1],
    ]),
    'overlaps the range before it: slots 100..100',
    'an overlap',
  );
  refuses(
    t,
    with_([
      [8192, SLOT_COUNT - 1, 1],
      [0, 8191, 0],
    ]),
    'out of order',
    'unsorted ranges',
  );
  refuses(
    t,
    with_([
      [0, 8191, 0],
      [8192, SLOT_COUNT - 1, 7],
    ]),
    'names group 7, which groups does not list',
    'an unknown group',
  );
  refuses(t, with_([[0, SLOT_COUNT, 0]]), 'last must be an integer 0..16383', 'a slot past the end');
  refuses(t, with_([[5, 4, 0]]), 'ends (4) before it starts (5)', 'a reversed range');
  refuses(t, with_([[0, SLOT_COUNT - 1]]), 'must be [first, last, group]', 'a pair');
  refuses(t, with_([]), 'ranges must list 1..16384', 'no ranges');
  refuses(t, { ...twoGroups, groups: [] }, 'groups must list 1..1024', 'no groups');
  refuses(
    t,
    { ...twoGroups, groups: [g01[0], g01[1], group(0, ['s9', '127.0.0.1:7409'])] },
    'lists group 0 a second time',
    'a twin',
  );
  refuses(
    t,
    { ...twoGroups, groups: [g01[0], { id: 65536, members: [] }] },
    'groups[1].id must be an integer 0..65535',
    'a group id too large',
  );
  refuses(
    t,
    { ...twoGroups, groups: [g01[0], group(1, ['s 4', '127.0.0.1:7404'])] },
    'server id must be',
    'a bad server id',
  );
  refuses(
    t,
    { ...twoGroups, groups: [g01[0], group(1, ['s4', 'nowhere'])] },
    'address must be host:port',
    'a bad address',
  );
  refuses(
    t,
    { ...twoGroups, groups: [g01[0], group(1, ['s4', '127.0.0.1:7404'], ['s4', '127.0.0.1:7405'])] },
    'lists server s4 a second time',
    'a server twice in a group',
  );
  refuses(
    t,
    { ...twoGroups, groups: [g01[0], group(1, ['s1', '127.0.0.1:7405'])] },
    'groups[1].members[0] lists server s1 a second time',
    'a server in two groups',
  );
  const many = Array.from(
    { length: MAX_GROUP_MEMBERS + 1 },
    (_, i) => [`s${i}`, `127.0.0.1:${7000 + i}`] as [string, string],
  );
  refuses(t, { ...twoGroups, groups: [g01[0], group(1, ...many)] }, 'at most 64 servers', 'too many members');
  const err = t.throws(() => validateSlotTable(with_([[0, 100, 0]])));
  t.like((err as SegmemError).details, { reason: 'BAD_SLOT_TABLE', field: 'ranges' });
});
