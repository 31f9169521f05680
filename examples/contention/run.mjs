// Readers and writers on one shared object, each in its own process. Readers share the object;
// a writer has it alone; nobody ever sees a half-written matrix. Prints a timeline and checks it.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@segmem/client';
import { localServer, run } from '../lib/local-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const server = await localServer();
try {
  const seg = await connect({ servers: server.servers.split(',') });
  await seg.create('matrix', 16 * 8, { ifNotExists: true });
  await seg.close();
  const worker = join(here, 'worker.mjs');
  const jobs = [
    ...Array.from({ length: 3 }, () => run(worker, ['read', '6', '40'], server.servers)),
    ...Array.from({ length: 2 }, () => run(worker, ['write', '3', '48'], server.servers)),
  ];
  const events = (await Promise.all(jobs)).flat().map((l) => JSON.parse(l));
  events.sort((a, b) => a.granted - b.granted);
  const t0 = events[0].granted;
  console.log('contention: who              held from..to (ms)   waited (ms)');
  for (const e of events) {
    const who = e.who.padEnd(16);
    const span = `${String(e.granted - t0).padStart(5)}..${String(e.released - t0).padEnd(6)}`;
    console.log(`contention: ${who} ${span}        ${e.granted - e.asked}`);
  }
  let readOverlaps = 0;
  let violations = 0;
  for (let i = 0; i < events.length; i++) {
    for (let j = i + 1; j < events.length; j++) {
      const [a, b] = [events[i], events[j]];
      // Grant and release times are taken in the processes around the real acquire/release calls,
      // so overlapping intervals of a writer and anyone else would mean broken exclusion.
      const overlap = a.granted < b.released && b.granted < a.released;
      if (!overlap) continue;
      if (a.mode === 'read' && b.mode === 'read') readOverlaps++;
      else violations++;
    }
  }
  const writes = events.filter((e) => e.mode === 'write').length;
  console.log(
    `contention: ${events.length} accesses; ${readOverlaps} pairs of readers overlapped (sharing); ` +
      `${writes} writes, each alone: ${violations === 0 ? 'yes' : `NO (${violations} overlaps)`}`,
  );
  if (violations > 0) process.exitCode = 1;
} finally {
  await server.stop();
}
