#!/usr/bin/env node
// Runs ava with TAP output, passes it through, and ends with the one summary line CI reads:
// "N passed, N failed". ava's own summary ("N tests passed") is not parsed by CI.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

// ava's package exports do not expose its CLI file; find it next to the resolved main entry.
const require = createRequire(import.meta.url);
const avaCli = join(dirname(require.resolve('ava')), 'cli.mjs');
const child = spawn(process.execPath, [avaCli, '--tap', ...process.argv.slice(2)], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
let pass = 0;
let fail = 0;
let pending = '';
child.stdout.setEncoding('utf8');
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  pending += chunk;
  const lines = pending.split('\n');
  pending = lines.pop() ?? '';
  for (const line of lines) count(line);
});
function count(line) {
  const m = /^# (pass|fail) (\d+)/.exec(line);
  if (m) {
    if (m[1] === 'pass') pass = Number(m[2]);
    else fail = Number(m[2]);
  }
}
child.on('close', (code, signal) => {
  if (pending) count(pending);
  const exit = code ?? (signal ? 1 : 0);
  if (exit !== 0 && fail === 0) fail = 1; // a crash of the runner itself counts as a failure
  process.stdout.write(`\n${pass} passed, ${fail} failed\n`);
  process.exit(exit);
});
