// The counter demo: run the counter program, then let several processes increment the counter at the
// same time, and check that no increment was lost.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@segmem/client';
import { localServer, run } from '../lib/local-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const processes = Number(process.argv[2] ?? 4);
const times = Number(process.argv[3] ?? 250);

const server = await localServer();
try {
  console.log(`counter: segmem server at ${server.servers}`);
  const [first] = await run(join(here, 'counter.mjs'), [], server.servers);
  console.log(`counter: the counter program wrote 23*45; ${first}`);
  const started = performance.now();
  const outputs = await Promise.all(
    Array.from({ length: processes }, () =>
      run(join(here, 'increment.mjs'), [String(times)], server.servers),
    ),
  );
  const ms = performance.now() - started;
  for (const [line] of outputs) console.log(`counter:   ${line}`);
  const seg = await connect({ servers: server.servers.split(',') });
  const value = await seg.read('compteur', (h) => h.bytes.readInt32LE(0));
  await seg.close();
  const expected = 23 * 45 + processes * times;
  console.log(
    `counter: ${processes} processes x ${times} increments in ${ms.toFixed(0)} ms -> compteur = ${value} (expected ${expected})`,
  );
  if (value !== expected) {
    console.error('counter: LOST OR DUPLICATED INCREMENTS');
    process.exitCode = 1;
  }
} finally {
  await server.stop();
}
