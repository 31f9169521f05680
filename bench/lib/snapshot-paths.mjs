// A single server's own snapshots of a full segment by each path: with the data directory on a
// loop-mounted XFS (reflinks: the clone path) and in the temporary directory (ext4 here: the copy path).
// Through the server's own log (openLocalLog, fsync "batch", the code segmem-server runs), in this
// process: fill the segment with random bytes, take a snapshot (the first: no previous file, so a copy on
// both), change a few MiB spread over every object, take another; then time a restart from it.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { openLocalLog } from '../../packages/server/dist/src/log/local-log.js';
import { mountXfs } from '../../scripts/xfs-mount.mjs';
import { addCleanup, makeTempDir, removeTempDir } from './procs.mjs';
import { fmtInt } from './stats.mjs';

const MiB = 1024 * 1024;
const PAGE = 4096;
const OBJECT_MIB = 32;

/** Fills, snapshots, changes `changeMiB`, snapshots again, restarts; in `dir`. */
async function measure(dir, mib, changeMiB) {
  const opts = {
    dir,
    walDir: join(dir, 'wal'),
    fsync: 'batch',
    pageBytes: PAGE,
    segmentBytes: mib * MiB,
    snapshotEveryEntries: 0,
    snapshotIntervalMs: 0,
  };
  const log = (await openLocalLog(opts)).create(() => {});
  const run = async (cmd) => {
    const { result } = await log.propose(cmd);
    if (!result.ok) throw new Error(`${cmd.op}: ${result.message}`);
    return result.value;
  };
  const { sessionId } = await run({ op: 'open', timeoutMs: 600_000, clientName: 'bench' });
  let seq = 0;
  const write = async (name, ranges, data) => {
    const { granted } = await run({ op: 'acquire', sessionId, seq: ++seq, name, mode: 'write' });
    const release = { op: 'release', sessionId, name, mode: 'write', token: granted.token };
    await run({ ...release, seq: ++seq, ranges, data });
  };

  const objects = mib / OBJECT_MIB;
  const bytes = Buffer.allocUnsafe(OBJECT_MIB * MiB);
  randomFillSync(bytes);
  for (let i = 0; i < objects; i++) {
    await run({
      op: 'create',
      sessionId,
      seq: ++seq,
      name: `big/${i}`,
      size: bytes.length,
      ifNotExists: false,
    });
    bytes[0] = i; // every object differs
    await write(`big/${i}`, [[0, bytes.length]], bytes);
  }
  const first = await log.snapshot();
  // The change: 64 bytes in each of changeMiB MiB worth of pages, spread evenly over every object.
  const perObject = Math.max(1, Math.round((changeMiB * MiB) / PAGE / objects));
  const stride = Math.floor((OBJECT_MIB * MiB) / PAGE / perObject);
  for (let i = 0; i < objects; i++) {
    const ranges = Array.from({ length: perObject }, (_, k) => [k * stride * PAGE + 128, 64]);
    await write(`big/${i}`, ranges, randomBytes(64 * perObject));
  }
  const second = await log.snapshot();
  await log.close();
  const t0 = performance.now();
  const reopened = await openLocalLog(opts);
  const loadMs = performance.now() - t0;
  await reopened.create(() => {}).close();
  return { first, second, loadMs, changedPages: perObject * objects };
}

/**
 * Measures on XFS (if it can be mounted here) and on the temporary directory's file system; resolves
 * with the rows, the Markdown lines for docs/benchmarks.md and whether XFS was measured.
 */
export async function snapshotPaths({ mib, changeMiB }) {
  const rows = [];
  const load = loadavg();
  // Room for the WAL (the fill goes through it), the snapshot files and XFS's own log.
  const xfs = await mountXfs({ sizeMiB: 3 * mib + 1024 });
  const where = [];
  if ('skipped' in xfs) console.log(`snapshot paths: no XFS: ${xfs.skipped}`);
  else where.push({ fs: 'XFS (loop-mounted image)', dir: xfs.dir, xfs });
  where.push({ fs: `${fsType(tmpdir())} (${tmpdir()})`, dir: null });
  for (const w of where) {
    const cleanup = w.xfs ? addCleanup(() => w.xfs.unmountSync()) : null;
    const dir = w.dir ?? makeTempDir('paths');
    try {
      console.log(`snapshot paths: ${w.fs}: filling ${mib} MiB ...`);
      const m = await measure(dir, mib, changeMiB);
      for (const [which, s] of [
        [`first, after filling ${fmtInt(mib)} MiB`, m.first],
        [`second, after changing ${changeMiB} MiB (${fmtInt(m.changedPages)} pages)`, m.second],
      ]) {
        rows.push({
          fs: w.fs,
          which,
          path: s.cloneError ? `copy (clone failed: ${s.cloneError})` : s.path,
          pages: s.pages,
          mib: s.bytes / MiB,
          ms: s.ms,
        });
      }
      rows.push({ fs: w.fs, restart: m.loadMs });
      console.log(rows.slice(-3));
    } finally {
      if (w.xfs) {
        cleanup.remove();
        await w.xfs.unmount();
      } else removeTempDir(dir);
    }
  }
  const snapRows = rows.filter((r) => r.which);
  const lines = [
    '<!-- bench:snapshot-paths:start -->',
    "### Clone and copy paths of a single server's own snapshot",
    '',
    'Written by `npm run bench:snapshot -- --paths` (also part of the full run); rerunning it replaces this',
    'subsection.',
    '',
    `- Date: ${new Date().toUTCString()}; 2 CPUs shared with other work, load average ${load.map((l) => l.toFixed(1)).join(' / ')} at the start; Node ${process.version}; fsync "batch"; ${mib} MiB of random bytes in ${mib / OBJECT_MIB} objects of ${OBJECT_MIB} MiB, through the server's own log (\`openLocalLog\`) in one process.`,
    "- The time is the snapshot's own (`written in` of its log line): choosing pages, checksums, writes, fsync, rename, directory fsync.",
    '',
    '| data directory on | snapshot | path | pages written | MiB written | time ms |',
    '|---|---|---|---:|---:|---:|',
    ...snapRows.map(
      (r) => `| ${r.fs} | ${r.which} | ${r.path} | ${fmtInt(r.pages)} | ${fmtInt(r.mib)} | ${fmtInt(r.ms)} |`,
    ),
    '',
    ...rows
      .filter((r) => r.restart !== undefined)
      .map(
        (r) =>
          `${r.fs}: restart from the second snapshot (read, every page checked, state rebuilt, no WAL records after it) ${fmtInt(r.restart)} ms.`,
      )
      .flatMap((l) => [l, '']),
    '<!-- bench:snapshot-paths:end -->',
  ];
  return { lines, measuredXfs: where.length > 1 };
}

/** The file system type `dir` is on (ext4, xfs, ...). */
function fsType(dir) {
  try {
    return execFileSync('findmnt', ['-n', '-o', 'FSTYPE', '-T', dir], { encoding: 'utf8' }).trim();
  } catch {
    return 'default file system';
  }
}
