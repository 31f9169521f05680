/**
 * The crash-point harness: a child process writes to a single-member log (WAL files rolling, snapshots
 * written, replaced and deleted, the WAL cut behind them) and is killed with SIGKILL at one storage step
 * at a time (SEGMEM_CRASH_AT, see src/storage/faults.ts): before it, right after it, or, for writes, with
 * only the first or only the second half of the bytes written. Then the directory is opened the way a
 * server opens it, and the invariants are checked:
 *
 * - it opens (a torn batch of unacknowledged records written out of order may instead be refused as
 *   corrupt, the conservative answer, and then opens with repair);
 * - every write release acknowledged before the kill is there (fsync "batch" and "always");
 * - no release is there in part: the three pages one release wrote hold the same value;
 * - nothing is there that was not asked for: at most the one release per object in flight at the kill.
 *
 * The steps are not listed by hand: a traced run of the same workload reports every step it goes
 * through, and each one is crashed at its first and at a middle occurrence. The data directory is on the
 * default file system (ext4 here: snapshots take the copy path, after a refused clone) and, for the
 * snapshot steps, on a loop-mounted XFS, where snapshots after the first are reflink clones.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import { SegmemNode } from '../src/node/index.js';
import { CLONE_ONLY_STEPS, FAULT_STEPS, type FaultStep } from '../src/storage/faults.js';
import type { FsyncPolicy } from '../src/storage/wal.js';
import { CRASH_TEST_GEOMETRY as G } from './fixtures/crash-geometry.js';
import { withXfs } from './fixtures/xfs.js';

const child = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'crash-writer.js');
/** Write releases per object and child run. */
const WRITES = 12;
/** Child processes run at once (the machine has two cores). */
const PARALLEL = 2;
/**
 * How long a harness test may run: its 40 cases start about 120 node processes, which took 112 s on a
 * loaded 2-core machine (beside the suite, more than the 120 s this was).
 */
const HARNESS_TIMEOUT_MS = 300_000;

interface ChildRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runChild(dir: string, fsync: FsyncPolicy, env: Record<string, string>): Promise<ChildRun> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SEGMEM_')));
  const proc = spawn(process.execPath, [child, dir, fsync, String(WRITES)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...clean, ...env },
  });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`crash-writer did not finish within 30 s; stderr: ${stderr}`));
    }, 30_000);
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** What the children acknowledged, over every run on one directory. */
interface Acked {
  created: Set<string>;
  values: Map<string, number>;
}

function noteAcks(acked: Acked, stdout: string): void {
  for (const line of stdout.split('\n')) {
    const created = /^created (\S+)$/.exec(line);
    if (created) acked.created.add(created[1]!);
    const ack = /^ack (\S+) (\d+)$/.exec(line);
    if (ack) acked.values.set(ack[1]!, Math.max(acked.values.get(ack[1]!) ?? 0, Number(ack[2])));
  }
}

function nodeOptions(dir: string, fsync: FsyncPolicy, lines: string[]) {
  return {
    id: G.serverId,
    dataDir: dir,
    fsync,
    segmentBytes: G.segmentBytes,
    walFileBytes: G.walFileBytes,
    snapshotEveryEntries: G.snapshotEveryEntries,
    snapshotIntervalMs: 0,
    log: (line: string) => lines.push(line),
  };
}

/** Opens `dir` as a server would and checks the invariants; returns what is wrong (empty: nothing). */
async function verify(
  dir: string,
  fsync: FsyncPolicy,
  acked: Acked,
  mayRefuseAsCorrupt: boolean,
): Promise<{ problems: string[]; refused: boolean; lines: string[] }> {
  const lines: string[] = [];
  const problems: string[] = [];
  let refused = false;
  let node: SegmemNode;
  try {
    node = await SegmemNode.open(nodeOptions(dir, fsync, lines));
  } catch (err) {
    const corrupt = SegmemError.is(err, 'UNAVAILABLE') && err.details?.reason === 'WAL_CORRUPT';
    if (!corrupt || !mayRefuseAsCorrupt) return { problems: [`open failed: ${String(err)}`], refused, lines };
    refused = true;
    node = await SegmemNode.open({ ...nodeOptions(dir, fsync, lines), repair: true });
  }
  try {
    const sm = node.sm;
    for (const name of G.objects) {
      const rec = sm.stat(name);
      if (!rec) {
        if (acked.created.has(name)) problems.push(`${name}: acknowledged create lost`);
        continue;
      }
      const data = sm.object(rec.id)?.data ?? null;
      const values: number[] = [];
      for (let p = 0; p < G.pages; p++) {
        values.push(
          data ? data.readUInt32LE(p * G.pageBytes) : 0,
          data ? data.readUInt32LE(p * G.pageBytes + 4) : 0,
        );
      }
      const v = values[0]!;
      if (values.some((x) => x !== v))
        problems.push(`${name}: a release applied in part: ${values.join(',')}`);
      const ack = acked.values.get(name) ?? 0;
      if (v < ack) problems.push(`${name}: acknowledged value ${ack} lost (recovered ${v})`);
      if (v > ack + 1)
        problems.push(`${name}: recovered ${v}, but only ${ack} was acknowledged and one write in flight`);
    }
  } finally {
    await node.close();
  }
  return { problems, refused, lines };
}

interface Case {
  name: string;
  fsync: FsyncPolicy;
  /** SEGMEM_CRASH_AT of each child run on the directory, in order. */
  crashes: string[];
  /** Run the deliberately broken log that acknowledges before the disk. */
  unsafe?: boolean;
}

async function runCase(
  c: Case,
  under = tmpdir(),
): Promise<{ crashed: boolean[]; problems: string[]; refused: boolean }> {
  const dir = await mkdtemp(join(under, 'segmem-crash-'));
  try {
    const acked: Acked = { created: new Set(), values: new Map() };
    const crashed: boolean[] = [];
    for (const plan of c.crashes) {
      const run = await runChild(dir, c.fsync, {
        SEGMEM_CRASH_AT: plan,
        ...(c.unsafe ? { CRASH_WRITER_UNSAFE_ACK: '1' } : {}),
      });
      noteAcks(acked, run.stdout);
      crashed.push(run.signal === 'SIGKILL');
      if (run.signal !== 'SIGKILL' && run.code !== 0) {
        return { crashed, problems: [`child failed (${run.code}): ${run.stderr}`], refused: false };
      }
    }
    // Torn or reordered writes: a batch of records whose later part reached the file but not an earlier
    // part looks like corruption to recovery, which then refuses rather than guess.
    const mayRefuse = c.crashes.some((p) => p.endsWith(':reorder'));
    const result = await verify(dir, c.fsync, acked, mayRefuse);
    const problems = result.problems.map((p) => `${p} [recovery said: ${result.lines.join(' | ')}]`);
    // The directory keeps working: a second run on it writes and acknowledges more, and verifies again.
    if (problems.length === 0) {
      const again = await runChild(dir, c.fsync, {});
      noteAcks(acked, again.stdout);
      if (again.code !== 0) problems.push(`a run after recovery failed (${again.code}): ${again.stderr}`);
      else
        problems.push(
          ...(await verify(dir, c.fsync, acked, false)).problems.map((p) => `after another run: ${p}`),
        );
    }
    // No stray temporary files survive a recovery.
    const leftovers = (await readdir(join(dir, 'snap'))).filter((n) => n.includes('.tmp-'));
    if (leftovers.length > 0) problems.push(`temporary files left in snap/: ${leftovers.join(', ')}`);
    return { crashed, problems, refused: result.refused };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function pool<T, R>(items: T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  });
  await Promise.all(workers);
  return out;
}

/** Every step the workload goes through, and how often, from a traced run. */
async function traceSteps(
  fsync: FsyncPolicy,
  under = tmpdir(),
  sequence: FaultStep[] = [],
): Promise<Map<FaultStep, number>> {
  const dir = await mkdtemp(join(under, 'segmem-crash-trace-'));
  try {
    const run = await runChild(dir, fsync, { SEGMEM_FAULT_TRACE: '1' });
    if (run.code !== 0) throw new Error(`traced run failed: ${run.stderr}`);
    const counts = new Map<FaultStep, number>();
    for (const m of run.stderr.matchAll(/^segmem-fault-step (\S+)$/gm)) {
      counts.set(m[1] as FaultStep, (counts.get(m[1] as FaultStep) ?? 0) + 1);
      sequence.push(m[1] as FaultStep);
    }
    return counts;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Steps whose first occurrence differs from later ones (the first WAL file roll, the first snapshot). */
const FIRST_TOO = new Set<string>([
  'wal.create',
  'wal.close',
  'wal.unlink',
  'snapshot.clone',
  'snapshot.create',
  'snapshot.rename',
]);
/**
 * Steps where a kill right after the operation leaves a state no kill before the next step does (a clone
 * only where it succeeds: on ext4 it fails, so nothing runs after it).
 */
const AFTER_TOO = new Set<string>(['wal.create', 'wal.unlink', 'snapshot.rename', 'snapshot.unlink']);
const AFTER_TOO_WITH_CLONES = new Set<string>([...AFTER_TOO, 'snapshot.clone', 'snapshot.open']);

function casesFor(
  fsync: FsyncPolicy,
  counts: Map<FaultStep, number>,
  full: boolean,
  after = AFTER_TOO,
): Case[] {
  const cases: Case[] = [];
  for (const [step, count] of counts) {
    // Under "always" only the WAL's writes and syncs behave differently; the rest is covered under "batch".
    if (!full && step !== 'wal.write' && step !== 'wal.sync') continue;
    const middle = Math.max(1, Math.floor(count / 2));
    const plans = new Set([`${step}:${middle}`]);
    if (full && FIRST_TOO.has(step)) plans.add(`${step}:1`);
    if (step.endsWith('.write'))
      for (const mode of ['torn', 'reorder']) plans.add(`${step}:${middle}:${mode}`);
    if (full && after.has(step)) plans.add(`${step}:${middle}:after`);
    for (const plan of plans) cases.push({ name: `${fsync} ${plan}`, fsync, crashes: [plan] });
  }
  return cases;
}

test('crash-point harness: a kill at any storage step loses nothing acknowledged and applies nothing in part', async (t) => {
  t.timeout(HARNESS_TIMEOUT_MS);
  const started = Date.now();
  const batchSequence: FaultStep[] = [];
  const batchSteps = await traceSteps('batch', tmpdir(), batchSequence);
  // The workload goes through every step of the WAL, snapshot and compaction paths (recovery steps only
  // happen after a crash: the chained cases below reach them; the clone's own steps only where files can
  // be cloned, the XFS test below). Scheduled consolidated snapshots are backups written outside the data
  // directory, and peers.json and the vote file belong to cluster members: the single server's recovery never
  // reads them.
  const expected = FAULT_STEPS.filter(
    (s) =>
      !s.startsWith('recovery.') &&
      !s.startsWith('consolidated.') &&
      !s.startsWith('peers.') &&
      !s.startsWith('vote.') &&
      s !== 'wal.open' &&
      !CLONE_ONLY_STEPS.includes(s),
  );
  t.deepEqual(
    expected.filter((s) => !batchSteps.has(s)),
    [],
    'steps the workload never reached',
  );
  const alwaysSteps = await traceSteps('always');
  const middle = (step: FaultStep) => Math.max(1, Math.floor((batchSteps.get(step) ?? 2) / 2));
  // The first WAL write from the middle on that writes records, not a new segment file's header.
  const middleRecordWrite = (() => {
    let n = 0;
    let previous: FaultStep | undefined;
    for (const step of batchSequence.filter((s) => s.startsWith('wal.'))) {
      if (step === 'wal.write' && ++n >= middle('wal.write') && previous !== 'wal.create') return n;
      previous = step;
    }
    return middle('wal.write');
  })();
  const cases: Case[] = [
    ...casesFor('batch', batchSteps, true),
    ...casesFor('always', alwaysSteps, false),
    // Crashes during recovery itself, after a crash that left it work to do.
    {
      name: 'batch torn record, then a kill while recovery truncates it',
      fsync: 'batch',
      crashes: [`wal.write:${middleRecordWrite}:torn`, 'recovery.truncate:1'],
    },
    {
      name: 'batch new segment file left empty, then a kill while recovery removes it',
      fsync: 'batch',
      crashes: [`wal.create:${middle('wal.create')}:after`, 'recovery.unlink:1'],
    },
    {
      name: 'batch new segment file left empty, then a kill before recovery syncs the directory',
      fsync: 'batch',
      crashes: [`wal.create:${middle('wal.create')}:after`, 'recovery.dirsync:1'],
    },
    {
      name: 'batch kill at reopening the last segment after a crash',
      fsync: 'batch',
      crashes: [`wal.write:${middle('wal.write')}`, 'wal.open:1'],
    },
  ];
  await runCases(t, cases, started);
});

/** Runs `cases` (two at a time), fails `t` with every problem found, and logs a summary. */
async function runCases(t: ExecutionContext, cases: Case[], started: number, under?: string): Promise<void> {
  const results = await pool(cases, PARALLEL, (c) => runCase(c, under));
  let crashes = 0;
  let refusals = 0;
  const failures: string[] = [];
  for (const [i, r] of results.entries()) {
    const c = cases[i]!;
    failures.push(...r.problems.map((p) => `${c.name}: ${p}`));
    // Every planned kill happened (a middle occurrence is reached in every run of the same workload).
    if (r.crashed.some((k) => !k)) failures.push(`${c.name}: a planned kill did not happen (${r.crashed})`);
    crashes += r.crashed.filter(Boolean).length;
    if (r.refused) refusals++;
  }
  t.deepEqual(failures, []);
  t.log(
    `${cases.length} cases, ${crashes} kills, ${refusals} refused as corrupt then repaired; ${Date.now() - started} ms`,
  );
}

test('crash-point harness on XFS: a kill at any step of a snapshot taken as a clone loses nothing', async (t) => {
  t.timeout(HARNESS_TIMEOUT_MS);
  await withXfs(t, async (mount) => {
    const started = Date.now();
    const steps = await traceSteps('batch', mount);
    const snapshotSteps = FAULT_STEPS.filter((s) => s.startsWith('snapshot.'));
    t.deepEqual(
      snapshotSteps.filter((s) => !steps.has(s)),
      [],
      'snapshot steps the workload never reached on XFS (snapshot.open only runs after a clone succeeded)',
    );
    const only = new Map([...steps].filter(([s]) => s.startsWith('snapshot.')));
    t.log(`snapshot steps on XFS: ${[...only].map(([s, n]) => `${s} ×${n}`).join(', ')}`);
    await runCases(t, casesFor('batch', only, true, AFTER_TOO_WITH_CLONES), started, mount);
  });
});

test('crash-point harness: a log that acknowledges before the disk is caught (the test of the test)', async (t) => {
  t.timeout(HARNESS_TIMEOUT_MS / 2);
  const steps = await traceSteps('batch');
  const middle = (step: FaultStep) => Math.max(1, Math.floor((steps.get(step) ?? 2) / 2));
  const cases: Case[] = (['wal.write', 'wal.create'] as const).map((step) => ({
    name: `unsafe ${step}:${middle(step)}`,
    fsync: 'batch',
    crashes: [`${step}:${middle(step)}`],
    unsafe: true,
  }));
  const results = await pool(cases, PARALLEL, runCase);
  const caught = results
    .flatMap((r) => r.problems)
    .filter((p) => /acknowledged (value|create) .*lost/.test(p));
  t.true(caught.length > 0, `no lost acknowledgement detected: ${JSON.stringify(results)}`);
});
