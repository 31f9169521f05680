/**
 * The cluster snapshot file and restoring a server from it: a file of two groups' real states (built with
 * the project's encoder) decodes to what went in; a damaged or cut-short file is refused naming what is
 * wrong; restore into the same groups gives each server its group's part, into three groups re-places
 * every object by slot keeping bytes, version and token floor; a config that does not fit is refused and
 * builds nothing.
 */
import { existsSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initialSlotTable, ownerOf, SegmemError, type SlotTable, slotOf } from '@segmem/protocol';
import test from 'ava';
import { DEFAULT_CONFIG, type GroupConfig, type ServerConfig } from '../src/config.js';
import type { Command } from '../src/core/commands.js';
import { type StateContent, StateMachine } from '../src/core/state-machine.js';
import {
  decodeClusterFile,
  encodeClusterFileEnd,
  encodeClusterFileHead,
  encodePartTrailer,
} from '../src/storage/cluster-file.js';
import { encodeConsolidated } from '../src/storage/consolidated.js';
import { crc32c } from '../src/storage/crc32c.js';
import { restoreClusterMember } from '../src/storage/restore-cluster.js';
import { SNAPSHOT_DIR } from '../src/storage/snapshot-file.js';
import { SnapshotDir } from '../src/storage/snapshots.js';

const PAGE = 4096;
const SEGMENT = 256 * PAGE;
const HALF = SEGMENT / 2;

const twoGroups: GroupConfig[] = [
  { id: 1, start: 0, bytes: HALF, members: { s1: '127.0.0.1:1', s2: '127.0.0.1:2', s3: '127.0.0.1:3' } },
  { id: 2, start: HALF, bytes: HALF, members: { s4: '127.0.0.1:4', s5: '127.0.0.1:5', s6: '127.0.0.1:6' } },
];
const tableOf = (groups: GroupConfig[]): SlotTable =>
  initialSlotTable(groups.map((g) => ({ id: g.id, members: Object.entries(g.members) })));
const TABLE = tableOf(twoGroups);

/** `count` names whose slot `table` gives to group `id`. */
function namesOf(table: SlotTable, id: number, count: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < count; i++) if (ownerOf(table, slotOf(`o${i}`)) === id) out.push(`o${i}`);
  return out;
}

/** Group `g`'s state: three objects of its names, each written twice (distinct bytes), and a log. */
function groupState(g: GroupConfig): StateMachine {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: SEGMENT, group: g, slotTable: TABLE });
  let index = 0;
  const run = (cmd: Command) => sm.apply(++index, cmd);
  const open = run({ op: 'open', timeoutMs: 1000, clientName: null }).result as {
    value: { sessionId: number };
  };
  const s = open.value.sessionId;
  let seq = 0;
  for (const [i, name] of namesOf(TABLE, g.id, 3).entries()) {
    run({ op: 'create', sessionId: s, seq: ++seq, name, size: (i + 1) * PAGE + 100, ifNotExists: false });
    for (let w = 0; w < 2; w++) {
      const grant = run({ op: 'acquire', sessionId: s, seq: ++seq, name, mode: 'write' }).result as {
        value: { granted: { token: number } };
      };
      const data = Buffer.from(`${name} write ${w} of group ${g.id}`);
      const token = grant.value.granted.token;
      run({
        op: 'release',
        sessionId: s,
        seq: ++seq,
        name,
        mode: 'write',
        token,
        ranges: [[PAGE - 5, data.length]],
        data,
      });
    }
  }
  const log = namesOf(TABLE, g.id, 4)[3]!;
  run({
    op: 'append',
    sessionId: s,
    seq: ++seq,
    name: log,
    sizes: [2, 3],
    maxBytes: null,
    data: Buffer.from('abcde'),
  });
  return sm;
}

async function clusterFileOf(states: StateMachine[]): Promise<Buffer> {
  const parts = await Promise.all(
    states.map(async (sm) =>
      Buffer.concat(
        await encodeConsolidated(sm.exportContent(), {
          clusterId: 'c1',
          createdAt: '2026-12-07T00:00:00.000Z',
          groups: [[sm.group.id, 10, 2]],
        }),
      ),
    ),
  );
  const head = encodeClusterFileHead({
    format: 1,
    clusterId: 'c1',
    createdAt: '2026-12-07T00:00:00.000Z',
    pageBytes: PAGE,
    segmentBytes: SEGMENT,
    fence: 7,
    slots: TABLE,
    groups: states.map((sm, i) => ({
      ...sm.group,
      members: Object.entries(twoGroups[i]!.members),
      index: 10,
      term: 2,
      partBytes: parts[i]!.length,
    })),
  });
  return Buffer.concat([
    head,
    ...parts.flatMap((p) => [p, encodePartTrailer(crc32c(p))]),
    encodeClusterFileEnd(),
  ]);
}

const states = twoGroups.map(groupState);
const original = states.flatMap((sm) => sm.exportContent().objects);

function refused(t: import('ava').ExecutionContext, f: () => unknown, message: RegExp): void {
  const err = t.throws(f);
  t.true(SegmemError.is(err), `a SegmemError, not ${err?.stack}`);
  t.is((err as SegmemError).code, 'INVALID_ARGUMENT');
  t.regex(err!.message, message);
  t.false(err!.message.includes('\n'), 'one line');
}

test('a cluster file decodes to its header and every group part', async (t) => {
  const bytes = await clusterFileOf(states);
  const c = decodeClusterFile(bytes, 'f');
  t.is(c.header.fence, 7);
  t.deepEqual(
    c.header.groups.map((g) => [g.id, g.start, g.bytes, g.members.length]),
    [
      [1, 0, HALF, 3],
      [2, HALF, HALF, 3],
    ],
  );
  t.deepEqual(c.header.slots, TABLE);
  for (const [i, part] of c.parts.entries()) {
    t.deepEqual(
      part.content.objects.map((o) => [o.name, o.version, o.data?.toString('latin1')]),
      states[i]!.exportContent().objects.map((o) => [o.name, o.version, o.data?.toString('latin1')]),
    );
  }
});

test('a damaged or cut-short cluster file is refused naming what is wrong', async (t) => {
  const bytes = await clusterFileOf(states);
  const headEnd = 12 + bytes.readUInt32LE(8) + 4;
  const part1 = decodeClusterFile(bytes, 'f').header.groups[0]!.partBytes;
  const inPart2 = headEnd + part1 + 4 + 20;
  refused(
    t,
    () => decodeClusterFile(bytes.subarray(0, 5), 'f'),
    /f is not a usable cluster snapshot: bad magic/,
  );
  refused(t, () => decodeClusterFile(bytes.subarray(0, headEnd - 3), 'f'), /cut short in the header/);
  refused(
    t,
    () => decodeClusterFile(bytes.subarray(0, headEnd + 10), 'f'),
    /cut short in the part of group 1/,
  );
  refused(t, () => decodeClusterFile(bytes.subarray(0, inPart2), 'f'), /cut short in the part of group 2/);
  refused(
    t,
    () => decodeClusterFile(bytes.subarray(0, bytes.length - 3), 'f'),
    /cut short \(no end marker\)/,
  );
  const flip = (at: number) => {
    const b = Buffer.from(bytes);
    b[at]! ^= 0x40;
    return b;
  };
  refused(t, () => decodeClusterFile(flip(14), 'f'), /header checksum mismatch/);
  refused(t, () => decodeClusterFile(flip(inPart2), 'f'), /the part of group 2 fails its checksum/);
  refused(t, () => decodeClusterFile(flip(bytes.length - 2), 'f'), /bad end marker/);
  refused(
    t,
    () => decodeClusterFile(Buffer.concat([bytes, Buffer.from('x')]), 'f'),
    /1 unexpected bytes after the end marker/,
  );
});

/** The state restored into `dir`. */
async function restoredState(dir: string): Promise<StateContent> {
  const loaded = await new SnapshotDir(join(dir, SNAPSHOT_DIR)).loadNewest();
  return loaded.newest!.state.exportContent();
}

function configOf(groups: GroupConfig[], segmentBytes = SEGMENT): ServerConfig {
  return { ...DEFAULT_CONFIG, segmentBytes, groups, servers: {} };
}

async function withFile(
  t: import('ava').ExecutionContext,
  body: (dir: string, file: string) => Promise<void>,
) {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-cluster-file-'));
  try {
    const file = join(dir, 'cluster.segsnap');
    await fsp.writeFile(file, await clusterFileOf(states));
    await body(dir, file);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
  t.pass();
}

test('restore into the same groups gives each server its group part', async (t) => {
  await withFile(t, async (dir, file) => {
    for (const [id, g] of [
      ['s2', 0],
      ['s5', 1],
    ] as const) {
      const r = await restoreClusterMember(file, {
        config: configOf(twoGroups),
        configFile: 'c.json',
        id,
        dir: join(dir, id),
      });
      t.is(r.placement, 'same-groups');
      t.is(r.clusterId, 'c1');
      const c = await restoredState(join(dir, id));
      const want = states[g]!.exportContent();
      t.deepEqual(c.group, want.group);
      t.deepEqual(
        c.objects.map((o) => [o.id, o.name, o.firstPage, o.version, o.lastToken, o.data]),
        want.objects.map((o) => [o.id, o.name, o.firstPage, o.version, o.lastToken, o.data]),
      );
      t.deepEqual(c.logs, want.logs);
    }
  });
});

test('restore into three groups places every object and log by slot, keeping bytes, version and token floor', async (t) => {
  const third = Math.floor(SEGMENT / 3 / PAGE) * PAGE;
  const three: GroupConfig[] = [1, 2, 3].map((id, i) => ({
    id,
    start: i * third,
    bytes: third,
    members: { [`s${id}`]: `127.0.0.1:${id}` },
  }));
  const table = tableOf(three);
  await withFile(t, async (dir, file) => {
    const restored: StateContent[] = [];
    for (const g of three) {
      const r = await restoreClusterMember(file, {
        config: configOf(three),
        configFile: 'c.json',
        id: `s${g.id}`,
        dir: join(dir, `s${g.id}`),
      });
      t.is(r.placement, 'by-slot');
      const c = await restoredState(join(dir, `s${g.id}`));
      t.deepEqual(c.group, { id: g.id, start: g.start, bytes: g.bytes });
      t.deepEqual(c.slotTable, table);
      for (const o of c.objects) {
        t.is(ownerOf(table, slotOf(o.name)), g.id, `${o.name} is in the group of its slot`);
        t.true(o.firstPage * PAGE >= g.start && o.firstPage * PAGE + o.size <= g.start + g.bytes);
      }
      for (const l of c.logs) t.is(ownerOf(table, slotOf((l as [string])[0])), g.id);
      restored.push(c);
    }
    const all = restored.flatMap((c) => c.objects);
    t.deepEqual(
      all.map((o) => [o.name, o.size, o.version, o.lastToken, [...o.pageVersions], o.data]).sort(),
      original.map((o) => [o.name, o.size, o.version, o.lastToken, [...o.pageVersions], o.data]).sort(),
    );
    t.is(restored.flatMap((c) => c.logs).length, 2);
  });
});

test('restore refuses a config that does not fit the file, and builds nothing', async (t) => {
  await withFile(t, async (dir, file) => {
    const cases: [ServerConfig, string, RegExp][] = [
      [
        configOf(twoGroups, SEGMENT * 2),
        's1',
        /holds a segment of 1048576 bytes in pages of 4096; c.json has 2097152/,
      ],
      [configOf(twoGroups), 's9', /server "s9" is in no group of c.json/],
    ];
    for (const [config, id, message] of cases) {
      const target = join(dir, `bad-${id}`);
      const err = await t.throwsAsync(
        restoreClusterMember(file, { config, configFile: 'c.json', id, dir: target }),
      );
      t.true(SegmemError.is(err));
      t.regex(err!.message, message);
      t.false(existsSync(target), 'no directory built');
    }
    // Objects that do not fit in their new group's range: NO_SPACE, naming the group.
    const tiny: GroupConfig[] = [
      { id: 1, start: 0, bytes: 2 * PAGE, members: { s1: '127.0.0.1:1' } },
      { id: 2, start: 2 * PAGE, bytes: SEGMENT - 2 * PAGE, members: { s2: '127.0.0.1:2' } },
    ];
    const err = await t.throwsAsync(
      restoreClusterMember(file, {
        config: configOf(tiny),
        configFile: 'c.json',
        id: 's1',
        dir: join(dir, 'tiny'),
      }),
    );
    t.is((err as SegmemError).code, 'NO_SPACE');
    t.regex(err!.message, /group 1's slots need more than its 8192 bytes/);
  });
});

test('restore --config of a cluster without groups takes a single consolidated snapshot; a grouped config refuses one', async (t) => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-cluster-file-'));
  try {
    const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: SEGMENT });
    sm.apply(1, { op: 'open', timeoutMs: 1000, clientName: null });
    sm.apply(2, { op: 'create', sessionId: 1, seq: 1, name: 'solo', size: 10, ifNotExists: false });
    const file = join(dir, 'single.segsnap');
    await fsp.writeFile(
      file,
      Buffer.concat(
        await encodeConsolidated(sm.exportContent(), {
          clusterId: 'c0',
          createdAt: '2026-12-07T00:00:00.000Z',
          groups: [[0, 2, 1]],
        }),
      ),
    );
    const servers = { s1: '127.0.0.1:1', s2: '127.0.0.1:2', s3: '127.0.0.1:3' };
    const ungrouped: ServerConfig = { ...DEFAULT_CONFIG, segmentBytes: SEGMENT, servers };
    const r = await restoreClusterMember(file, {
      config: ungrouped,
      configFile: 'c.json',
      id: 's2',
      dir: join(dir, 's2'),
    });
    t.deepEqual([r.group, r.clusterId, r.objects], [0, 'c0', 1]);
    const loaded = await new SnapshotDir(join(dir, 's2', SNAPSHOT_DIR)).loadNewest();
    t.deepEqual(loaded.newest!.meta.members, ['s1', 's2', 's3']);
    t.deepEqual(
      loaded.newest!.state.exportContent().objects.map((o) => o.name),
      ['solo'],
    );
    const err = await t.throwsAsync(
      restoreClusterMember(file, {
        config: configOf(twoGroups),
        configFile: 'c.json',
        id: 's1',
        dir: join(dir, 's1'),
      }),
    );
    t.regex(
      err!.message,
      /single.segsnap is one group's snapshot, not a cluster snapshot: c.json has shard groups/,
    );
    t.false(existsSync(join(dir, 's1')));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("a copy a slot move imported before its switch is restored once, in the group the cut's table names", async (t) => {
  // Group 2 holds a copy of one of group 1's objects, as a move's import leaves it before the switch.
  const dir = await fsp.mkdtemp(join(tmpdir(), 'segmem-cluster-file-'));
  try {
    const g2 = states[1]!.exportContent();
    const moved = states[0]!.exportContent().objects[0]!;
    const lastPage = Math.max(...g2.objects.map((o) => o.firstPage + Math.ceil(o.size / PAGE)));
    g2.objects.push({ ...moved, id: g2.nextObjectId, firstPage: lastPage });
    g2.nextObjectId++;
    const parts = [
      Buffer.concat(
        await encodeConsolidated(states[0]!.exportContent(), {
          clusterId: 'c1',
          createdAt: 'now',
          groups: [[1, 10, 2]],
        }),
      ),
      Buffer.concat(
        await encodeConsolidated(g2, { clusterId: 'c1', createdAt: 'now', groups: [[2, 10, 2]] }),
      ),
    ];
    const head = encodeClusterFileHead({
      format: 1,
      clusterId: 'c1',
      createdAt: 'now',
      pageBytes: PAGE,
      segmentBytes: SEGMENT,
      fence: 0,
      slots: TABLE,
      groups: twoGroups.map((g, i) => ({
        id: g.id,
        start: g.start,
        bytes: g.bytes,
        members: Object.entries(g.members),
        index: 10,
        term: 2,
        partBytes: parts[i]!.length,
      })),
    });
    const file = join(dir, 'mid-move.segsnap');
    await fsp.writeFile(
      file,
      Buffer.concat([
        head,
        ...parts.flatMap((p) => [p, encodePartTrailer(crc32c(p))]),
        encodeClusterFileEnd(),
      ]),
    );
    await restoreClusterMember(file, {
      config: configOf(twoGroups),
      configFile: 'c.json',
      id: 's4',
      dir: join(dir, 's4'),
    });
    const same = await restoredState(join(dir, 's4'));
    t.false(
      same.objects.some((o) => o.name === moved.name),
      'the copy is left out of the group the table does not give it to',
    );
    const third = Math.floor(SEGMENT / 3 / PAGE) * PAGE;
    const three: GroupConfig[] = [1, 2, 3].map((id, i) => ({
      id,
      start: i * third,
      bytes: third,
      members: { [`s${id}`]: `127.0.0.1:${id}` },
    }));
    const names: string[] = [];
    for (const g of three) {
      const id = `s${g.id}`;
      await restoreClusterMember(file, {
        config: configOf(three),
        configFile: 'c.json',
        id,
        dir: join(dir, `3-${id}`),
      });
      names.push(...(await restoredState(join(dir, `3-${id}`))).objects.map((o) => o.name));
    }
    t.deepEqual(names.sort(), original.map((o) => o.name).sort(), 'every object once');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
