// npm run demo: the counter program on an embedded store, then the multi-process demos on a local
// server. Exits 0 when every check passed.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openEmbedded } from '@segmem/client';

const here = dirname(fileURLToPath(import.meta.url));

console.log('== 1. embedded: the counter program, in this process, durable in a directory ==');
const dir = mkdtempSync(join(tmpdir(), 'segmem-demo-'));
try {
  let seg = await openEmbedded({ dir });
  await seg.create('compteur', 4);
  const cpt = await seg.acquireWrite('compteur');
  cpt.bytes.writeInt32LE(23 * 45);
  await cpt.release();
  await seg.close();
  seg = await openEmbedded({ dir }); // reopen: the value is on disk
  const value = await seg.read('compteur', (h) => h.bytes.readInt32LE(0));
  console.log(`embedded: wrote 23*45, closed, reopened ${dir}: compteur = ${value}`);
  console.log(
    `embedded: page protection ${seg.protectedPages ? 'on (mmap + mprotect)' : 'off (no native addon)'}`,
  );
  await seg.close();
  if (value !== 1035) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}

for (const [title, script, ...args] of [
  ['2. counter: several processes increment one counter', 'counter/run.mjs'],
  ['3. contention: readers share, writers exclude', 'contention/run.mjs'],
  ['4. failover: a 3-server cluster loses its leader, the counter keeps counting', 'failover/run.mjs'],
  [
    '5. log-writers: 8 processes append to one shared log, a reader follows it',
    'log-writers/run.mjs',
    '8',
    '500',
  ],
]) {
  console.log(`\n== ${title} ==`);
  const r = spawnSync(process.execPath, [join(here, script), ...args], { stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`demo: ${script} failed`);
    process.exitCode = 1;
  }
}
console.log(process.exitCode ? '\ndemo: FAILED' : '\ndemo: all checks passed');
