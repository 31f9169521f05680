#!/usr/bin/env node
// Event-loop delay while a single server snapshots a large state: `node bench/snapshot-loop.mjs` after `npx tsc -b`.
//
//   --objects N   objects of 4 MiB written with random bytes (default 64: 256 MiB)
//   --runs N      runs of each way (default 3)
//
// Three ways, each measured with perf_hooks.monitorEventLoopDelay (1 ms resolution; p99 and max) from the
// start of the snapshot to the file's rename (a fresh directory each time: the copy path, every page):
// "snapshot()": the state serialised in one synchronous call, as before frozen views (not written: page
// files are written from a view); "page file": freeze(), then the page file written from the view, as one
// server does; "page file + bytes": the same and the view serialised in slices, as a Raft member does
// (it keeps the bytes for InstallSnapshot). Prints a Markdown table; gates nothing.
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { StateMachine } from '../packages/server/dist/src/core/state-machine.js';
import { serialiseSnapshot } from '../packages/server/dist/src/storage/snapshot-serialise.js';
import { SnapshotDir } from '../packages/server/dist/src/storage/snapshots.js';

const { values } = parseArgs({ options: { objects: { type: 'string' }, runs: { type: 'string' } } });
const OBJECTS = Number(values.objects ?? 64);
const RUNS = Number(values.runs ?? 3);
const SIZE = 4 * 1024 * 1024;
const PAGE = 4096;

const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 2 * OBJECTS * SIZE });
let index = 0;
let seq = 0;
const apply = (cmd) => sm.apply(++index, cmd);
const sessionId = apply({ op: 'open', timeoutMs: 60_000, clientName: null }).result.value.sessionId;
for (let i = 0; i < OBJECTS; i++) {
  apply({ op: 'create', sessionId, seq: ++seq, name: `big${i}`, size: SIZE, ifNotExists: false });
  const { token } = apply({ op: 'acquire', sessionId, seq: ++seq, name: `big${i}`, mode: 'write' }).result
    .value.granted;
  const release = { op: 'release', sessionId, seq: ++seq, name: `big${i}`, mode: 'write', token };
  apply({ ...release, ranges: [[0, SIZE]], data: randomBytes(SIZE) });
}

const dir = mkdtempSync(join(tmpdir(), 'segmem-bench-snapshot-'));
const ms = (ns) => (ns / 1e6).toFixed(0);

async function measure(way, run) {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  // Let the histogram's timer start first: a stall before its first turn would not be recorded (nor
  // one right after reset(), hence a fresh histogram per run).
  await new Promise((r) => setTimeout(r, 50));
  const started = performance.now();
  let stallMs;
  let bytes;
  if (way === 'snapshot()') {
    bytes = sm.snapshot().length;
    stallMs = performance.now() - started;
    // A turn of the loop, so the histogram records the stall.
    await new Promise((r) => setTimeout(r, 10));
  } else {
    const view = sm.freeze();
    stallMs = performance.now() - started;
    try {
      const sub = join(dir, `${way === 'page file' ? 'p' : 'r'}${run}`);
      mkdirSync(sub);
      const written = await new SnapshotDir(sub).write(
        { index: sm.appliedIndex, term: 0, members: [] },
        view,
      );
      bytes = written.bytes;
      if (way === 'page file + bytes') bytes += (await serialiseSnapshot(view)).length;
    } finally {
      view.release();
    }
  }
  const totalMs = performance.now() - started;
  h.disable();
  return { way, stallMs, totalMs, p99: h.percentile(99), max: h.max, bytes };
}

console.log(
  `| way | bytes written or serialised | one call on the loop | done | loop delay p99 | loop delay max |`,
);
console.log(`|---|---|---|---|---|---|`);
try {
  for (let r = 0; r < RUNS; r++) {
    for (const way of ['snapshot()', 'page file', 'page file + bytes']) {
      const m = await measure(way, r);
      console.log(
        `| ${m.way} | ${m.bytes} | ${m.stallMs.toFixed(0)} ms | ${m.totalMs.toFixed(0)} ms | ` +
          `${ms(m.p99)} ms | ${ms(m.max)} ms |`,
      );
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
