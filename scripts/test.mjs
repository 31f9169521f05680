#!/usr/bin/env node
// Runs ava with TAP output, passes it through, and ends with the one summary line CI reads:
// "N passed, N failed". ava's own summary ("N tests passed") is not parsed by CI.
//
// A stall watchdog bounds the run: ava's inactivity timeout (package.json) reports a hung test, but a
// test that hangs in a teardown while another test's longer t.timeout() runs is never reported by ava at
// all. If nothing is printed for STALL_MS, the run is stopped, counted as failed, and says so.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** Longer than ava's own timeout (6 min), so ava names the hung tests first when it can. */
const STALL_MS = Number(process.env.SEGMEM_TEST_STALL_MS) || 9 * 60_000;

// ava's package exports do not expose its CLI file; find it next to the resolved main entry.
const require = createRequire(import.meta.url);
const avaCli = join(dirname(require.resolve('ava')), 'cli.mjs');
// Its own process group: a stopped run takes every server the tests started with it.
const child = spawn(process.execPath, [avaCli, '--tap', ...process.argv.slice(2)], {
  stdio: ['ignore', 'pipe', 'inherit'],
  detached: true,
});
let pass = 0;
let fail = 0;
let stalled = false;
let pending = '';
let lastOutput = Date.now();

function killGroup(signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // The group is gone already.
  }
}
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => killGroup(signal));

const watchdog = setInterval(() => {
  if (stalled || Date.now() - lastOutput < STALL_MS) return;
  stalled = true;
  process.stdout.write(
    `\nnot ok - the test run stalled: nothing finished for ${Math.round(STALL_MS / 1000)} s; stopping it\n`,
  );
  killGroup('SIGTERM');
  setTimeout(() => killGroup('SIGKILL'), 5_000).unref();
}, 10_000);

child.stdout.setEncoding('utf8');
child.stdout.on('data', (chunk) => {
  lastOutput = Date.now();
  process.stdout.write(chunk);
  pending += chunk;
  const lines = pending.split('\n');
  pending = lines.pop() ?? '';
  for (const line of lines) count(line);
});
// ava's own totals when it prints them; the test lines counted as they come when it does not (ava's TAP
// reporter itself crashes when its timeout fires).
let summary = false;
function count(line) {
  const m = /^# (pass|fail) (\d+)/.exec(line);
  if (m) {
    if (!summary) pass = fail = 0;
    summary = true;
    if (m[1] === 'pass') pass = Number(m[2]);
    else fail = Number(m[2]);
    return;
  }
  if (summary || / # (SKIP|TODO)\b/.test(line)) return;
  if (/^ok \d/.test(line)) pass++;
  else if (/^not ok\b/.test(line)) fail++;
}
// A process a test left running may hold ava's stdout open after ava exits: 'close' would never come.
child.on('exit', () => setTimeout(() => killGroup('SIGKILL'), 10_000).unref());
child.on('close', (code, signal) => {
  clearInterval(watchdog);
  killGroup('SIGKILL'); // whatever a test left running
  if (pending) count(pending);
  let exit = code ?? (signal ? 1 : 0);
  if (stalled) {
    fail += 1;
    exit = 1;
  }
  if (exit !== 0 && fail === 0) fail = 1; // a crash of the runner itself counts as a failure
  process.stdout.write(`\n${pass} passed, ${fail} failed\n`);
  process.exit(exit);
});
