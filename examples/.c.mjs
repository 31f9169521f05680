import { connect } from '@segmem/client';

const c = await connect({ servers: ['127.0.0.1:7471', '127.0.0.1:7472', '127.0.0.1:7473'] });
await c.create('n', 4, { ifNotExists: true });
for (const kind of ['write', 'read']) {
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < 1500) {
    if (kind === 'write') await c.update('n', (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
    else await c.read('n', () => {});
    n++;
  }
  console.log(kind, 'cycles/s', Math.round(n / 1.5));
}
await c.close();
