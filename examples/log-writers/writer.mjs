// One writer process: appends `count` records "<writer>:<n>:<padding>" to the shared log, keeping up to
// 64 appends in flight (the client batches them), and prints how long it took.
import { connect } from '@segmem/client';

const [writer, countArg] = process.argv.slice(2);
const count = Number(countArg);
const seg = await connect({ servers: process.env.SEGMEM_SERVERS.split(',') });
const log = seg.log('example/events');
const started = performance.now();
let next = 0;
const lane = async () => {
  while (next < count) {
    const n = next++;
    await log.append(`${writer}:${n}:`.padEnd(100, '.'));
  }
};
await Promise.all(Array.from({ length: 64 }, lane));
const ms = performance.now() - started;
console.log(`${writer}: ${count} records in ${ms.toFixed(0)} ms`);
await seg.close();
