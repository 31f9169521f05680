// Shared log demo: 8 writer processes append to one log at the same time while a reader follows it;
// then check that every record arrived exactly once and each writer's records kept their order.
//   node examples/log-writers/run.mjs [writers] [records per writer] [servers]
// With no SEGMEM_SERVERS it starts its own cluster on 127.0.0.1 (3 servers unless told otherwise).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@segmem/client';
import { localCluster, run } from '../lib/local-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const writers = Number(process.argv[2] ?? 8);
const perWriter = Number(process.argv[3] ?? 2000);
const size = Number(process.argv[4] ?? 3);

const cluster = process.env.SEGMEM_SERVERS
  ? { servers: process.env.SEGMEM_SERVERS, stop: async () => {} }
  : await localCluster(size);
const seg = await connect({ servers: cluster.servers.split(',') });
try {
  console.log(
    `log-writers: ${writers} processes x ${perWriter} records of 100 bytes, servers ${cluster.servers}`,
  );
  const log = seg.log('example/events');
  const start = (await log.append('start')) + 1;
  const total = writers * perWriter;

  // The reader follows the log from where the writers start: the server pushes records as they commit.
  const ac = new AbortController();
  const seen = [];
  const reading = (async () => {
    try {
      for await (const r of log.read({ from: start, follow: true, signal: ac.signal })) {
        seen.push({ seq: r.seq, text: r.data.toString() });
        if (seen.length === total) ac.abort();
      }
    } catch (err) {
      if (err.code !== 'ABORTED') throw err;
    }
  })();

  const started = performance.now();
  const outputs = await Promise.all(
    Array.from({ length: writers }, (_, i) =>
      run(join(here, 'writer.mjs'), [`w${i}`, String(perWriter)], cluster.servers),
    ),
  );
  const ms = performance.now() - started;
  await reading;
  for (const [line] of outputs) console.log(`log-writers:   ${line}`);

  // Exactly once, one order, each writer's order kept.
  const problems = [];
  const lastOf = new Map();
  const texts = new Set();
  seen.forEach((r, i) => {
    if (r.seq !== start + i) problems.push(`gap or duplicate at seq ${r.seq}`);
    if (texts.has(r.text)) problems.push(`record ${r.text.slice(0, 20)} twice`);
    texts.add(r.text);
    const [writer, n] = r.text.split(':');
    if (Number(n) <= (lastOf.get(writer) ?? -1)) problems.push(`${writer}:${n} after ${lastOf.get(writer)}`);
    lastOf.set(writer, Number(n));
  });
  for (let i = 0; i < writers; i++) {
    if (lastOf.get(`w${i}`) !== perWriter - 1) problems.push(`w${i} ends at ${lastOf.get(`w${i}`)}`);
  }
  console.log(
    `log-writers: the reader saw ${seen.length} of ${total} records in ${ms.toFixed(0)} ms (${Math.round(
      (total / ms) * 1000,
    )} records/s), seq ${start}..${start + seen.length - 1}`,
  );
  if (problems.length > 0 || seen.length !== total) {
    console.error(`log-writers: FAILED: ${problems.slice(0, 5).join('; ')}`);
    process.exitCode = 1;
  } else {
    console.log('log-writers: every record exactly once, each writer in order: yes');
  }
} finally {
  await seg.close();
  await cluster.stop();
}
