/** The README's demo and the examples keep working: they are what a newcomer runs first. */
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { runNode } from './helpers.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

test('npm run demo: the counter program, the multi-process counter, contention, failover and log-writers demos all pass', async (t) => {
  const { done } = runNode(resolve(root, 'examples/demo.mjs'), [], {
    timeoutMs: 90_000,
    env: { SEGMEM_SERVERS: '' },
  });
  const exit = await done;
  t.is(exit.code, 0, exit.stderr);
  t.regex(exit.stdout, /compteur = 1035/);
  t.regex(exit.stdout, /compteur = 2035 \(expected 2035\)/);
  t.regex(exit.stdout, /each alone: yes/);
  t.regex(exit.stdout, /failover: \d+ increments acknowledged, compteur = \d+: exact/);
  t.regex(exit.stdout, /log-writers: every record exactly once, each writer in order: yes/);
  t.regex(exit.stdout, /demo: all checks passed/);
});
