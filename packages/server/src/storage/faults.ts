/**
 * Fault injection for the storage layer's file operations: the seam crash and I/O-error tests go through.
 *
 * Every file operation of the WAL, the snapshots and the data directory's metadata passes one named
 * {@link FaultStep} (see `files.ts`). Unless faults are configured, a step costs one comparison with null.
 * Configured from the environment when this module loads (so a child process can be told), or by
 * {@link setFaults} in-process:
 *
 * - `SEGMEM_CRASH_AT=<step>:<n>[:<mode>]`: at the n-th occurrence of `<step>` (counted from 1 since the
 *   process started) the process kills itself with SIGKILL: no exit handlers, no flushing, exactly as
 *   `kill -9`. Modes: `kill` (default: before the operation), `after` (right after it completed), and for
 *   write steps `torn` (the first half of the bytes reach the file, then the kill) and `reorder` (the
 *   second half reaches the file and the first half does not: a disk that wrote the later blocks first).
 * - `SEGMEM_FAIL_AT=<step>:<n>[:<count>[:<errno>]]`: occurrences n .. n+count-1 (count default 1) of
 *   `<step>` fail with a system error of code `<errno>` (default `ENOSPC`) instead of running.
 * - `SEGMEM_FAULT_TRACE=1`: every step writes `segmem-fault-step <step>` to stderr (a test learns the
 *   steps a workload goes through, then crashes at each).
 *
 * Several plans may be given, separated by commas.
 *
 * @module
 */
import { writeSync } from 'node:fs';

/** Every step a fault can be injected at. */
export const FAULT_STEPS = [
  // the write-ahead log while it runs
  'wal.create', // open a new segment file
  'wal.open', // reopen the last segment at start
  'wal.write', // write records (or a new segment's header)
  'wal.sync', // fdatasync a segment file
  'wal.close', // close a segment file (after a roll, or at close)
  'wal.dirsync', // fsync the log directory after creating or deleting segment files
  'wal.unlink', // delete a segment file a snapshot covers
  'wal.mark', // create the WAL-started marker beside the log (once), then sync its directory
  // recovery at start
  'recovery.truncate', // cut a torn tail off the last segment
  'recovery.unlink', // remove a torn segment file, or segment files a snapshot made useless
  'recovery.dirsync',
  'recovery.read-meta', // read meta.json at start
  'recovery.read-wal', // read a WAL segment file at start
  // snapshot files, written atomically (temp file, fsync, rename, directory fsync)
  'snapshot.clone', // reflink the previous snapshot file to the temp file (FICLONE; fails on ext4)
  'snapshot.open', // open the clone to write the changed pages into it
  'snapshot.create', // create an empty temp file (no previous snapshot, or no reflinks here)
  'snapshot.truncate', // set the file's length (the page image's holes, a shorter metadata)
  'snapshot.write',
  'snapshot.sync',
  'snapshot.rename',
  'snapshot.dirsync',
  'snapshot.unlink', // delete a snapshot two newer ones replace
  // the data directory's meta.json, written atomically once
  'meta.create',
  'meta.write',
  'meta.sync',
  'meta.rename',
  'meta.dirsync',
  // scheduled consolidated snapshots (backups, outside the data directory), written atomically
  'consolidated.create',
  'consolidated.write',
  'consolidated.sync',
  'consolidated.rename',
  'consolidated.dirsync',
  'consolidated.unlink', // delete a backup beyond the number kept
  // a cluster member's learned member addresses (peers.json), written atomically
  'peers.create',
  'peers.write',
  'peers.sync',
  'peers.rename',
  'peers.dirsync',
  // a cluster member's term and vote (the vote file), written atomically at every change of either
  'vote.create',
  'vote.write',
  'vote.sync',
  'vote.rename',
  'vote.dirsync',
] as const;

export type FaultStep = (typeof FAULT_STEPS)[number];

/** Steps only a file system with reflinks reaches (the crash-point harness expects them only there). */
export const CLONE_ONLY_STEPS: readonly FaultStep[] = ['snapshot.open'];

/** The steps of an atomically written file (see `writeFileAtomic`), by file kind. */
export type AtomicFileKind = 'snapshot' | 'meta' | 'consolidated' | 'peers' | 'vote';

type CrashMode = 'kill' | 'after' | 'torn' | 'reorder';
const CRASH_MODES: readonly string[] = ['kill', 'after', 'torn', 'reorder'] satisfies CrashMode[];

export type FaultPlan =
  | { step: FaultStep; at: number; action: 'crash'; mode: CrashMode }
  | { step: FaultStep; at: number; action: 'fail'; count: number; errno: string };

/** A write about to happen, for the `torn` and `reorder` crash modes. */
export interface PendingWrite {
  fd: number;
  buffers: readonly Uint8Array[];
  position: number;
}

let plans: FaultPlan[] | null = null;
let trace = false;
const counts = new Map<FaultStep, number>();

function isStep(s: string): s is FaultStep {
  return (FAULT_STEPS as readonly string[]).includes(s);
}

function parseCount(text: string | undefined, what: string, spec: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`segmem faults: bad ${what} in ${JSON.stringify(spec)}`);
  return n;
}

/** Parses `SEGMEM_CRASH_AT` / `SEGMEM_FAIL_AT` values. Throws on a malformed spec (a test typo must not pass silently). */
export function parseFaults(crashAt: string | undefined, failAt: string | undefined): FaultPlan[] {
  const out: FaultPlan[] = [];
  for (const spec of (crashAt ?? '').split(',').filter(Boolean)) {
    const [step, n, mode = 'kill'] = spec.split(':');
    if (!step || !isStep(step)) throw new Error(`segmem faults: unknown step in ${JSON.stringify(spec)}`);
    if (!CRASH_MODES.includes(mode))
      throw new Error(`segmem faults: unknown crash mode in ${JSON.stringify(spec)}`);
    out.push({ step, at: parseCount(n, 'occurrence', spec), action: 'crash', mode: mode as CrashMode });
  }
  for (const spec of (failAt ?? '').split(',').filter(Boolean)) {
    const [step, n, count = '1', errno = 'ENOSPC'] = spec.split(':');
    if (!step || !isStep(step)) throw new Error(`segmem faults: unknown step in ${JSON.stringify(spec)}`);
    if (!/^E[A-Z0-9]+$/.test(errno)) throw new Error(`segmem faults: bad errno in ${JSON.stringify(spec)}`);
    out.push({
      step,
      at: parseCount(n, 'occurrence', spec),
      action: 'fail',
      count: parseCount(count, 'count', spec),
      errno,
    });
  }
  return out;
}

/**
 * Replaces the fault plans (null: none) and restarts the occurrence counts. For in-process tests.
 * @internal
 */
export function setFaults(next: FaultPlan[] | null, opts: { trace?: boolean } = {}): void {
  plans = next && next.length > 0 ? next : null;
  trace = opts.trace === true;
  counts.clear();
  if (trace && plans === null) plans = [];
}

/** How often each step ran since the plans were last set (counted only while faults or tracing are on). @internal */
export function faultCounts(): ReadonlyMap<FaultStep, number> {
  return counts;
}

{
  const env = process.env;
  if (env.SEGMEM_CRASH_AT || env.SEGMEM_FAIL_AT || env.SEGMEM_FAULT_TRACE === '1') {
    setFaults(parseFaults(env.SEGMEM_CRASH_AT, env.SEGMEM_FAIL_AT), {
      trace: env.SEGMEM_FAULT_TRACE === '1',
    });
  }
}

function injectedError(step: FaultStep, errno: string): Error {
  return Object.assign(new Error(`${errno}: injected fault at ${step}`), { code: errno, syscall: step });
}

function die(): never {
  process.kill(process.pid, 'SIGKILL');
  // SIGKILL to oneself is delivered before kill() returns; this line is never reached.
  process.exit(137);
}

/** Writes part of `w` synchronously: the first half of its bytes (`torn`) or the second half (`reorder`). */
function partialWrite(w: PendingWrite, mode: 'torn' | 'reorder'): void {
  const all = Buffer.concat(w.buffers);
  const half = all.length >> 1;
  if (mode === 'torn') writeSync(w.fd, all, 0, half, w.position);
  else writeSync(w.fd, all, half, all.length - half, w.position + half);
}

/**
 * Marks one occurrence of `step`, about to run. Crashes or throws if a plan says so; does nothing
 * otherwise. `write` describes the bytes of a write step, for the partial-write crash modes.
 */
export function faultPoint(step: FaultStep, write?: PendingWrite): void {
  if (plans === null) return;
  const n = (counts.get(step) ?? 0) + 1;
  counts.set(step, n);
  if (trace) writeSync(2, `segmem-fault-step ${step}\n`);
  for (const p of plans) {
    if (p.step !== step) continue;
    if (p.action === 'crash' && n === p.at && p.mode !== 'after') {
      if ((p.mode === 'torn' || p.mode === 'reorder') && write) partialWrite(write, p.mode);
      die();
    }
    if (p.action === 'fail' && n >= p.at && n < p.at + p.count) throw injectedError(step, p.errno);
  }
}

/** Marks the end of the occurrence of `step` that {@link faultPoint} last counted: crashes if a plan says `after`. */
export function faultDone(step: FaultStep): void {
  if (plans === null) return;
  const n = counts.get(step) ?? 0;
  for (const p of plans) {
    if (p.step === step && p.action === 'crash' && p.mode === 'after' && n === p.at) die();
  }
}
