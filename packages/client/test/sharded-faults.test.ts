/**
 * Failure isolation of a sharded cluster, with real processes: two groups of three servers from one config
 * file, eight writer processes each incrementing one counter in each group, and faults struck one group at a
 * time: SIGKILL of each group's leader (restarted after), SIGSTOP of a member (continued after), and one
 * group's leader cut off from its majority (its two followers stopped). While a group is struck, the other
 * keeps acknowledging increments; at the end every counter holds its acknowledged increments (plus at most
 * those whose outcome its writer could not know).
 *
 * CI runs a short schedule. The full one (longer windows, more increments):
 *   SEGMEM_SHARDED_FULL=1 npx ava packages/client/dist/test/sharded-faults.test.js
 */
import { fileURLToPath } from 'node:url';
import { SLOT_COUNT, slotOf } from '@segmem/protocol';
import ava from 'ava';
import { connect, type Segment } from '../src/index.js';
import { groupedCluster, runNode, segmemBin, tempDir, untilItWorks, waitFor } from './helpers.js';

const FULL = process.env.SEGMEM_SHARDED_FULL === '1';
/** How long each fault lasts, and how many increments each writer makes at most. */
const FAULT_MS = FULL ? 6000 : 2500;
const INCREMENTS = FULL ? 100_000 : 20_000;
const WRITERS = 8;
/** Increments the healthy group must acknowledge while the other is struck. */
const PROGRESS = FULL ? 500 : 50;
const SEGMENT_BYTES = 64 * 1024 * 1024;
/** The tests start six to nine servers and eight writer processes each: one at a time. */
const test = ava.serial;
const HALF = SEGMENT_BYTES / 2;
const WRITER = fileURLToPath(new URL('../../test/fixtures/sharded-writer.mjs', import.meta.url));

/** `count` names whose slots group `index + 1` of two owns (group 1 the lower half of the slots). */
function namesOfGroup(index: number, count: number): string[] {
  const names: string[] = [];
  for (let i = 0; names.length < count; i++) {
    const name = `counter-${i}`;
    if (Math.floor((slotOf(name) * 2) / SLOT_COUNT) === index) names.push(name);
  }
  return names;
}

test('two groups under eight writers: each fault stops only its group; counters hold every acknowledged increment', async (t) => {
  t.timeout(5 * 60_000);
  const dir = tempDir();
  const groups = [
    ['s1', 's2', 's3'],
    ['s4', 's5', 's6'],
  ];
  const ids = groups.flat();
  const cluster = await groupedCluster({ dir: dir.path, groups, rangeBytes: HALF });
  const { addressOf, servers, start } = cluster;
  const segs: Segment[] = [];
  const writers: ReturnType<typeof runNode>[] = [];
  /** Per counter: acknowledged increments, and those whose outcome is unknown. */
  const acked = new Map<string, number>();
  const unknown = new Map<string, number>();
  const codes = new Map<string, number>();
  const events: string[] = [];
  const counters = [namesOfGroup(0, WRITERS), namesOfGroup(1, WRITERS)];
  const groupOfName = new Map(counters.flatMap((names, g) => names.map((n) => [n, g] as const)));
  const ackedIn = (g: number) => counters[g]!.reduce((n, name) => n + (acked.get(name) ?? 0), 0);
  try {
    const setup = await connect({ servers: ids.map(addressOf), sessionTimeoutMs: 4000 });
    segs.push(setup);
    for (const name of counters.flat())
      await untilItWorks(() => setup.create(name, 4, { ifNotExists: true }), `${name} created`);

    let ready = 0;
    for (let w = 0; w < WRITERS; w++) {
      const names = [counters[0]![w]!, counters[1]![w]!];
      writers.push(
        runNode(WRITER, [ids.map(addressOf).join(','), names.join(','), String(INCREMENTS), '1500'], {
          timeoutMs: 4 * 60_000,
          onLine: (line) => {
            events.push(`w${w} ${line}`);
            const [what, name, code] = line.split(' ');
            if (what === 'ready') ready++;
            else if (what === 'ack') acked.set(name!, (acked.get(name!) ?? 0) + 1);
            else if (what === 'unknown') unknown.set(name!, (unknown.get(name!) ?? 0) + 1);
            if (code && what !== 'why') codes.set(`${what} ${code}`, (codes.get(`${what} ${code}`) ?? 0) + 1);
          },
        }),
      );
    }
    await waitFor(() => ready === WRITERS, 'every writer connected', 30_000);
    await waitFor(() => ackedIn(0) >= 20 && ackedIn(1) >= 20, 'both groups acknowledging', 30_000);

    /** The leader of `group`, asked of its running members (SIGUSR2 prints a status line). */
    const leaderOf = async (group: string[]): Promise<string> =>
      waitFor(
        async () => {
          for (const id of group) {
            const s = servers.get(id);
            if (!s || s.proc.exitCode !== null || s.proc.signalCode !== null) continue;
            const before = (s.stderr().match(/ status /g) ?? []).length;
            s.proc.kill('SIGUSR2');
            await waitFor(() => (s.stderr().match(/ status /g) ?? []).length > before, `status of ${id}`);
            const lines = s
              .stderr()
              .split('\n')
              .filter((l) => l.includes(' status '));
            if (/leader=true/.test(lines[lines.length - 1]!)) return id;
          }
          return undefined;
        },
        'a leader',
        20_000,
      );

    /** Strikes group `g` with `fault` for FAULT_MS; the other group must go on acknowledging meanwhile. */
    const strike = async (g: number, what: string, fault: () => Promise<() => Promise<void>>) => {
      const other = 1 - g;
      const heal = await fault();
      const before = ackedIn(other);
      const struckBefore = ackedIn(g);
      const started = Date.now();
      await waitFor(
        () => ackedIn(other) - before >= PROGRESS && Date.now() - started >= FAULT_MS,
        `group ${other + 1} to keep acknowledging while group ${g + 1} is struck (${what})`,
        FAULT_MS + 30_000,
      );
      t.log(
        `${what}: group ${other + 1} acknowledged ${ackedIn(other) - before} increments in ${Date.now() - started} ms; group ${g + 1} ${ackedIn(g) - struckBefore}`,
      );
      await heal();
      const healedAt = ackedIn(g);
      const eventsAt = events.length;
      try {
        await waitFor(() => ackedIn(g) > healedAt, `group ${g + 1} serving again after ${what}`, 30_000);
      } catch (err) {
        t.log(`what the writers saw since: ${events.slice(eventsAt, eventsAt + 60).join(' | ')}`);
        throw err;
      }
    };

    for (const g of [0, 1]) {
      await strike(g, `SIGKILL of group ${g + 1}'s leader`, async () => {
        const leader = await leaderOf(groups[g]!);
        await servers.get(leader)!.kill();
        return () => start(leader);
      });
    }
    await strike(0, 'SIGSTOP of a member of group 1 (its leader)', async () => {
      const leader = await leaderOf(groups[0]!);
      servers.get(leader)!.proc.kill('SIGSTOP');
      return async () => {
        servers.get(leader)!.proc.kill('SIGCONT');
      };
    });
    await strike(1, "group 2's leader cut off from its majority (its followers stopped)", async () => {
      const leader = await leaderOf(groups[1]!);
      const followers = groups[1]!.filter((id) => id !== leader);
      for (const id of followers) servers.get(id)!.proc.kill('SIGSTOP');
      return async () => {
        for (const id of followers) servers.get(id)!.proc.kill('SIGCONT');
      };
    });

    for (const w of writers) w.proc.kill('SIGTERM');
    const ends = await Promise.all(writers.map((w) => w.done));
    for (const end of ends) t.is(end.code, 0, end.stderr);

    const reader = await connect({ servers: ids.map(addressOf), sessionTimeoutMs: 4000 });
    segs.push(reader);
    let total = 0;
    let unknownTotal = 0;
    for (const name of counters.flat()) {
      const value = await untilItWorks(
        () => reader.read(name, (h) => h.bytes.readUInt32LE(0)),
        `the final read of ${name}`,
      );
      const a = acked.get(name) ?? 0;
      const u = unknown.get(name) ?? 0;
      t.true(
        value >= a && value <= a + u,
        `${name} (group ${groupOfName.get(name)! + 1}) is ${value}: ${a} acknowledged, ${u} unknown`,
      );
      total += a;
      unknownTotal += u;
    }
    const odd = events.flatMap((e, i) =>
      /unknown|DEADLOCK|why/.test(e) ? [events.slice(Math.max(0, i - 2), i + 1).join(' | ')] : [],
    );
    if (odd.length > 0) t.log(odd.join('\n'));
    t.log(
      `${total} increments acknowledged over ${counters.flat().length} counters, ${unknownTotal} of unknown outcome; failures ${JSON.stringify(Object.fromEntries(codes))}`,
    );
  } finally {
    for (const w of writers) if (w.proc.exitCode === null) w.proc.kill('SIGKILL');
    for (const seg of segs) await seg.close().catch(() => {});
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('rebalancing 2 groups to 3 and back under eight writers: counters exact, acquires fail only by their own timeout', async (t) => {
  t.timeout(5 * 60_000);
  const dir = tempDir();
  // CI: the third group has one server; the full run gives it three.
  const groups = [['s1', 's2', 's3'], ['s4', 's5', 's6'], FULL ? ['s7', 's8', 's9'] : ['s7']];
  const ids = groups.flat();
  const range = SEGMENT_BYTES / 2;
  const cluster = await groupedCluster({ dir: dir.path, groups, rangeBytes: range, joining: [2] });
  const { addressOf, config } = cluster;
  const segs: Segment[] = [];
  const writers: ReturnType<typeof runNode>[] = [];
  const acked = new Map<string, number>();
  const unknown = new Map<string, number>();
  const codes = new Map<string, number>();
  const counters = [namesOfGroup(0, WRITERS), namesOfGroup(1, WRITERS)];
  const ackedAll = () => [...acked.values()].reduce((a, b) => a + b, 0);
  const env = { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '' };
  try {
    const setup = await connect({ servers: ids.slice(0, 6).map(addressOf), sessionTimeoutMs: 4000 });
    segs.push(setup);
    for (const name of counters.flat())
      await untilItWorks(() => setup.create(name, 4, { ifNotExists: true }), `${name} created`);
    let ready = 0;
    for (let w = 0; w < WRITERS; w++) {
      const names = [counters[0]![w]!, counters[1]![w]!];
      writers.push(
        runNode(
          WRITER,
          [ids.slice(0, 6).map(addressOf).join(','), names.join(','), String(INCREMENTS), '3000'],
          {
            timeoutMs: 4 * 60_000,
            onLine: (line) => {
              const [what, name, code] = line.split(' ');
              if (what === 'ready') ready++;
              else if (what === 'ack') acked.set(name!, (acked.get(name!) ?? 0) + 1);
              else if (what === 'unknown') unknown.set(name!, (unknown.get(name!) ?? 0) + 1);
              if (code && what !== 'why')
                codes.set(`${what} ${code}`, (codes.get(`${what} ${code}`) ?? 0) + 1);
            },
          },
        ),
      );
    }
    await waitFor(() => ready === WRITERS, 'every writer connected', 30_000);
    await waitFor(() => ackedAll() >= 50, 'the writers acknowledging', 30_000);

    /** Runs `segmem cluster COMMAND --group 3` while the writers go on; they must keep acknowledging. */
    const rebalance = async (command: string) => {
      const before = ackedAll();
      const startedAt = Date.now();
      const run = await runNode(segmemBin, ['cluster', command, '--config', config, '--group', '3'], {
        env,
        timeoutMs: 180_000,
      }).done;
      t.is(run.code, 0, `${run.stdout}${run.stderr}`);
      const summary = run.stdout.split('\n').filter((l) => /^moved|^group \d+:/.test(l));
      t.log(
        `${command}: ${Date.now() - startedAt} ms, ${ackedAll() - before} increments acknowledged meanwhile; ${summary.join('; ')}`,
      );
      await waitFor(() => ackedAll() > before + 20, `the writers acknowledging after ${command}`, 30_000);
    };
    await rebalance('add-group');
    // Where the counters live now: every group holds some.
    const spread = new Map<number, number>();
    for (const name of counters.flat()) {
      const info = await untilItWorks(() => setup.stat(name), `stat of ${name}`);
      const group = Math.floor(info.address / range) + 1;
      spread.set(group, (spread.get(group) ?? 0) + 1);
    }
    t.log(
      `counters per group after add-group: ${[...spread]
        .sort()
        .map(([g, n]) => `group ${g}: ${n}`)
        .join(', ')}`,
    );
    t.is(spread.size, 3, 'the third group took some of the counters');
    await rebalance('remove-group');

    for (const w of writers) w.proc.kill('SIGTERM');
    const ends = await Promise.all(writers.map((w) => w.done));
    for (const end of ends) t.is(end.code, 0, end.stderr);
    // An acquire fails only by its own timeout while its object moves; nothing else fails.
    for (const key of codes.keys())
      t.true(key === 'fail TIMEOUT', `a writer saw ${key} (${codes.get(key)} times)`);

    const reader = await connect({ servers: ids.slice(0, 6).map(addressOf), sessionTimeoutMs: 4000 });
    segs.push(reader);
    let total = 0;
    for (const name of counters.flat()) {
      const value = await untilItWorks(
        () => reader.read(name, (h) => h.bytes.readUInt32LE(0)),
        `${name} read`,
      );
      const a = acked.get(name) ?? 0;
      const u = unknown.get(name) ?? 0;
      t.true(value >= a && value <= a + u, `${name} is ${value}: ${a} acknowledged, ${u} unknown`);
      const info = await reader.stat(name);
      t.true(info.address < 2 * range, `${name} is back in groups 1 and 2 (address ${info.address})`);
      total += a;
    }
    t.log(`${total} increments acknowledged; failures ${JSON.stringify(Object.fromEntries(codes))}`);
  } finally {
    for (const w of writers) if (w.proc.exitCode === null) w.proc.kill('SIGKILL');
    for (const seg of segs) await seg.close().catch(() => {});
    await cluster.stopAll();
    dir.cleanup();
  }
});
