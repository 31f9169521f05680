/**
 * Shard groups without processes: the grouped config file (every mistake named by file, line and key path,
 * read by config-json's position-recording reader), a server's group, the state machine allocating inside
 * its group's range (snapshot format 5, older formats as group 0), and a data directory keeping its group.
 */
import { promises as fsp, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import { Packr } from 'msgpackr';
import { groupOf, loadConfigFile } from '../src/config.js';
import { JsonSyntaxError, parseJsonWithPositions } from '../src/config-json.js';
import type { Command } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';
import { openLocalLog } from '../src/log/local-log.js';
import { DataDir } from '../src/storage/datadir.js';

const GiB = 1024 ** 3;

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'segmem-groups-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `text` as segmem.json in a new temp dir and returns its path. */
function configFile(t: ExecutionContext, text: string): string {
  const path = join(tempDir(t), 'segmem.json');
  writeFileSync(path, text);
  return path;
}

/** A grouped config text, one key per line (so line numbers are easy to count), with `edit` applied. */
function grouped(edit: (c: { segmentBytes: unknown; groups: Record<string, unknown>[] }) => void): string {
  const c = {
    segmentBytes: '2GiB',
    groups: [
      {
        id: 1,
        start: 0,
        bytes: '1GiB',
        members: { s1: '127.0.0.1:7401', s2: '127.0.0.1:7402', s3: '127.0.0.1:7403' },
      },
      {
        id: 2,
        start: '1GiB',
        bytes: '1GiB',
        members: { s4: '127.0.0.1:7404', s5: '127.0.0.1:7405', s6: '127.0.0.1:7406' },
      },
    ],
  };
  edit(c);
  return JSON.stringify(c, null, 2);
}

test('a grouped config file: each server finds its group, its peers and its range', (t) => {
  const path = configFile(
    t,
    grouped(() => {}),
  );
  const config = loadConfigFile(path);
  t.is(config.segmentBytes, 2 * GiB);
  t.deepEqual(
    config.groups?.map((g) => [g.id, g.start, g.bytes, Object.keys(g.members)]),
    [
      [1, 0, GiB, ['s1', 's2', 's3']],
      [2, GiB, GiB, ['s4', 's5', 's6']],
    ],
  );
  t.deepEqual(groupOf(config, 's5', path), {
    id: 2,
    start: GiB,
    bytes: GiB,
    members: { s4: '127.0.0.1:7404', s5: '127.0.0.1:7405', s6: '127.0.0.1:7406' },
  });
  const err = t.throws(() => groupOf(config, 's9', path));
  t.true(SegmemError.is(err, 'INVALID_ARGUMENT'));
  t.is(err.message, `server "s9" is in no group of ${path} (its members: s1, s2, s3, s4, s5, s6)`);
});

test('a config file with servers loads as before: one group 0 over the whole segment', (t) => {
  const path = configFile(t, JSON.stringify({ segmentBytes: 1 << 20, servers: { a: '127.0.0.1:1' } }));
  const config = loadConfigFile(path);
  t.is(config.groups, undefined);
  t.deepEqual(groupOf(config, 'a', path), {
    id: 0,
    start: 0,
    bytes: 1 << 20,
    members: { a: '127.0.0.1:1' },
  });
});

/** [what, config text, expected line, expected message after `<file>:<line>: `]. */
const MISTAKES: [string, string, number, string | RegExp][] = [
  [
    'a start not page-aligned',
    grouped((c) => {
      c.groups[1]!.start = GiB + 1;
    }),
    16,
    'groups[1].start: 1073741825 is not a multiple of the page size (4096)',
  ],
  [
    'a size not page-aligned',
    grouped((c) => {
      c.groups[0]!.bytes = 1000;
    }),
    7,
    'groups[0].bytes: 1000 is not a multiple of the page size (4096)',
  ],
  [
    'a range past segmentBytes',
    grouped((c) => {
      c.segmentBytes = '1GiB';
    }),
    17,
    'groups[1].bytes: the range [1073741824, 2147483648) ends past the segment (segmentBytes 1073741824)',
  ],
  [
    'overlapping ranges, both groups named',
    grouped((c) => {
      c.groups[1]!.start = '512MiB';
    }),
    16,
    "groups[1].start: group 2's range [536870912, 1610612736) overlaps group 1's [0, 1073741824) (groups[0])",
  ],
  [
    'a duplicate group id',
    grouped((c) => {
      c.groups[1]!.id = 1;
    }),
    15,
    'groups[1].id: group id 1 is already used by groups[0]',
  ],
  [
    'a group id out of range',
    grouped((c) => {
      c.groups[0]!.id = 65536;
    }),
    5,
    'groups[0].id: must be an integer 1..65535; got 65536',
  ],
  [
    'a server in two groups',
    grouped((c) => {
      c.groups[1]!.members = { s4: '127.0.0.1:7404', s1: '127.0.0.1:7411', s6: '127.0.0.1:7406' };
    }),
    20,
    'groups[1].members.s1: server s1 is already a member at groups[0].members.s1',
  ],
  [
    'one address for two servers',
    grouped((c) => {
      c.groups[1]!.members = { s4: '127.0.0.1:7404', s5: '127.0.0.1:7402', s6: '127.0.0.1:7406' };
    }),
    20,
    'groups[1].members.s5: address 127.0.0.1:7402 is already given to groups[0].members.s2',
  ],
  [
    'two members',
    grouped((c) => {
      c.groups[0]!.members = { s1: '127.0.0.1:7401', s2: '127.0.0.1:7402' };
    }),
    8,
    'groups[0].members: a group has 1, 3 or 5 members; group 1 has 2',
  ],
  [
    'an unknown key in a group',
    grouped((c) => {
      c.groups[0]!.replicas = 3;
    }),
    13,
    'groups[0].replicas: unknown key (a group has id, start, bytes, members, joining)',
  ],
  [
    'joining that is not true or false',
    grouped((c) => {
      c.groups[1]!.joining = 'yes';
    }),
    23,
    'groups[1].joining: must be true or false; got "yes"',
  ],
  [
    'a missing key in a group',
    grouped((c) => {
      delete c.groups[0]!.bytes;
    }),
    4,
    'groups[0]: missing "bytes"',
  ],
  ['an empty groups list', '{\n  "groups": []\n}', 2, 'groups: must list at least one group'],
  [
    'an unknown setting',
    '{\n  "segmentBytes": 4096,\n  "replicas": 3\n}',
    3,
    'replicas: unknown setting "replicas"',
  ],
  [
    'servers and groups both',
    '{\n  "servers": { "s1": "127.0.0.1:1" },\n  "groups": [{ "id": 1, "start": 0, "bytes": 4096, "members": { "s1": "127.0.0.1:1" } }]\n}',
    3,
    "groups: cannot be used with servers (line 2): list every server under its group's members",
  ],
  [
    'a server listed twice in one group (JSON duplicate key)',
    '{\n  "groups": [\n    { "id": 1, "start": 0, "bytes": 4096,\n      "members": {\n        "s1": "127.0.0.1:1",\n        "s1": "127.0.0.1:2",\n        "s3": "127.0.0.1:3" } } ]\n}',
    6,
    'groups[0].members.s1: duplicate key "s1" (first on line 5)',
  ],
  [
    "an existing setting's mistake gains its line",
    '{\n  "fsync": "always",\n  "segmentBytes": 100\n}',
    3,
    /^segmentBytes must be a multiple of 4096/,
  ],
  ['not an object', '\n[1]', 2, 'a config file holds a JSON object; got a list'],
  ['a syntax error', '{\n  "fsync": "always",\n  "dataDir" "x"\n}', 3, 'expected ":", found "\\""'],
];

test('every config mistake is INVALID_ARGUMENT naming the file, the line and the key path', (t) => {
  for (const [what, text, line, message] of MISTAKES) {
    const path = configFile(t, text);
    const err = t.throws(() => loadConfigFile(path), undefined, what);
    t.true(SegmemError.is(err, 'INVALID_ARGUMENT'), what);
    const prefix = `${path}:${line}: `;
    t.true(err!.message.startsWith(prefix), `${what}: ${err!.message}`);
    const rest = err!.message.slice(prefix.length);
    if (typeof message === 'string') t.is(rest, message, what);
    else t.regex(rest, message, what);
    t.like((err as SegmemError).details, { file: path, line }, what);
  }
});

test('the JSON reader: values as JSON.parse gives them, a line for every key path, duplicates refused', (t) => {
  const text =
    '{\n  "a": [1, -2.5e3, true, null],\n  "b": { "c\\n\\u00e9": "x\\"y" },\n\n  "d": [\n    {}, []\n  ]\n}';
  const doc = parseJsonWithPositions(text);
  t.deepEqual(JSON.parse(JSON.stringify(doc.value)), JSON.parse(text));
  t.is(doc.lineOf('a'), 2);
  t.is(doc.lineOf('a[3]'), 2);
  t.is(doc.lineOf('b["c\\né"]'), 3);
  t.is(doc.lineOf('d'), 5);
  t.is(doc.lineOf('d[1]'), 6);
  const dup = t.throws(() => parseJsonWithPositions('{"a": 1,\n "a": 2}'));
  t.true(dup instanceof JsonSyntaxError);
  t.is(dup!.message, 'line 2: a: duplicate key "a" (first on line 1)');
  // "__proto__" is an ordinary key, not a prototype.
  const proto = parseJsonWithPositions('{"__proto__": {"polluted": 1}}').value as Record<string, unknown>;
  t.deepEqual(Object.keys(proto), ['__proto__']);
  t.is(({} as Record<string, unknown>).polluted, undefined);
  for (const bad of ['', '{', '[1,]', '{"a":1}x', '"\\q"', '01', '{"a":tru}', '"a\nb"'])
    t.throws(() => parseJsonWithPositions(bad), { instanceOf: JsonSyntaxError }, JSON.stringify(bad));
});

const PAGE = 4096;

/** A state machine of group 2 over pages 16..23 of a 32-page segment, and a create on it. */
function groupMachine() {
  const sm = new StateMachine({
    pageBytes: PAGE,
    segmentBytes: 32 * PAGE,
    group: { id: 2, start: 16 * PAGE, bytes: 8 * PAGE },
  });
  return { sm, create: creator(sm) };
}

/** Creates objects on `sm` in a session of its own. */
function creator(sm: StateMachine) {
  const run = (cmd: Command) => sm.apply(sm.appliedIndex + 1, cmd).result;
  const opened = run({ op: 'open', timeoutMs: 10_000, clientName: null });
  const sessionId = (opened as { ok: true; value: { sessionId: number } }).value.sessionId;
  let seq = 0;
  return (name: string, size: number) =>
    run({ op: 'create', sessionId, seq: ++seq, name, size, ifNotExists: false });
}

test('the state machine hands out addresses inside its group range only; NO_SPACE names the group', (t) => {
  const { sm, create } = groupMachine();
  const a = create('a', 3 * PAGE);
  const b = create('b', 5 * PAGE);
  t.like(a, { ok: true, value: { object: { address: 16 * PAGE } } });
  t.like(b, { ok: true, value: { object: { address: 19 * PAGE } } });
  t.like(create('c', 1), {
    ok: false,
    code: 'NO_SPACE',
    message: `group 2 (range [${16 * PAGE}, ${24 * PAGE})) has no free extent of 1 pages for "c" (1 bytes); 0 bytes free in all`,
  });
  t.deepEqual(sm.group, { id: 2, start: 16 * PAGE, bytes: 8 * PAGE });
  t.throws(
    () =>
      new StateMachine({
        pageBytes: PAGE,
        segmentBytes: 32 * PAGE,
        group: { id: 1, start: 30 * PAGE, bytes: 4 * PAGE },
      }),
    { instanceOf: RangeError, message: /ends past the segment/ },
  );
});

test('snapshot format 5 keeps the group and range; a format 4 snapshot restores as group 0, the whole segment', (t) => {
  const { sm, create } = groupMachine();
  create('a', 100);
  const restored = StateMachine.restore(sm.snapshot());
  t.deepEqual(restored.group, sm.group);
  t.is(restored.digest(), sm.digest());
  // The frozen view's bytes are the snapshot's.
  const frozen = sm.freeze();
  t.true(Buffer.concat(frozen.parts).equals(sm.snapshot()));
  frozen.release();
  t.like(creator(restored)('b', 100), { ok: true, value: { object: { address: 17 * PAGE } } });

  // The same content as format 4 wrote it: ten elements, no group.
  const whole = new StateMachine({ pageBytes: PAGE, segmentBytes: 32 * PAGE });
  const codec = new Packr({
    useRecords: false,
    mapsAsObjects: true,
    int64AsType: 'number',
    moreTypes: false,
  });
  const elements = codec.unpack(whole.snapshot()) as unknown[];
  // Format 6 added the slot table after the group (a twelfth element), format 7 the slot moves.
  t.is(elements.length, 13);
  t.is(elements[0], 7);
  t.deepEqual(elements[10], [0, 0, 32 * PAGE]);
  const format4 = codec.pack([4, ...elements.slice(1, 10)]);
  t.deepEqual(StateMachine.restore(format4).group, { id: 0, start: 0, bytes: 32 * PAGE });

  const bad = codec.pack([5, ...elements.slice(1, 10), [1, 100, PAGE]]);
  t.throws(() => StateMachine.restore(bad), { message: /group.*must start at a multiple of 4096/ });
});

test('a data directory keeps its group: opened as another group or range, it is refused naming both', async (t) => {
  const dir = join(tempDir(t), 'data');
  const base = { dir, serverId: 's4', pageBytes: PAGE, segmentBytes: 2 * GiB };
  const g2 = { id: 2, start: GiB, bytes: GiB };
  const first = await DataDir.open({ ...base, group: g2 });
  t.deepEqual(first.meta.group, g2);
  await first.close();
  const again = await DataDir.open({ ...base, group: g2 });
  await again.close();
  for (const other of [{ id: 3, start: GiB, bytes: GiB }, { id: 2, start: 0, bytes: GiB }, undefined]) {
    const err = await t.throwsAsync(DataDir.open({ ...base, ...(other ? { group: other } : {}) }));
    t.true(SegmemError.is(err, 'INVALID_ARGUMENT'));
    const configured = other
      ? `group ${other.id} (bytes [${other.start}, ${other.start + other.bytes}))`
      : `group 0 (bytes [0, ${2 * GiB}))`;
    t.is(
      err!.message,
      `data directory ${dir} holds group 2 (bytes [${GiB}, ${2 * GiB})), but this server is configured as ${configured}; a server keeps its group and range (start it with the config it was created with)`,
    );
  }
  // A directory of a cluster without groups records none, and is refused as a group's member.
  const plain = join(tempDir(t), 'plain');
  await (await DataDir.open({ ...base, dir: plain })).close();
  t.false('group' in JSON.parse(await fsp.readFile(join(plain, 'meta.json'), 'utf8')));
  await t.throwsAsync(DataDir.open({ ...base, dir: plain, group: g2 }), { message: /holds group 0/ });
});

test("a state restored from a snapshot of another group's range is refused before the WAL is replayed", async (t) => {
  const dir = tempDir(t);
  const options = {
    dir,
    walDir: join(dir, 'wal'),
    fsync: 'always' as const,
    pageBytes: PAGE,
    segmentBytes: 32 * PAGE,
    snapshotEveryEntries: 0,
    snapshotIntervalMs: 0,
  };
  const g2 = { id: 2, start: 16 * PAGE, bytes: 8 * PAGE };
  const log = (await openLocalLog({ ...options, group: g2 })).create(() => {});
  const opened = await log.propose({ op: 'open', timeoutMs: 10_000, clientName: null });
  const sessionId = (opened.result as { ok: true; value: { sessionId: number } }).value.sessionId;
  const created = await log.propose({
    op: 'create',
    sessionId,
    seq: 1,
    name: 'a',
    size: 1,
    ifNotExists: false,
  });
  t.like(created.result, { ok: true, value: { object: { address: 16 * PAGE } } });
  t.truthy(await log.snapshot());
  await log.close();

  const again = (await openLocalLog({ ...options, group: g2 })).create(() => {});
  t.deepEqual(again.stateMachine.group, g2);
  await again.close();
  const other = { id: 2, start: 8 * PAGE, bytes: 8 * PAGE };
  const err = await t.throwsAsync(openLocalLog({ ...options, group: other }));
  t.true(SegmemError.is(err, 'INVALID_ARGUMENT'));
  t.is(
    err!.message,
    `the snapshot in ${dir} holds group 2 (bytes [${16 * PAGE}, ${24 * PAGE})), but this server is configured as group 2 (bytes [${8 * PAGE}, ${16 * PAGE})); a server keeps its group and range (start it with the config it was created with)`,
  );
});
