import { connect } from '@segmem/client';

const servers = process.argv[2].split(',');
const N = 32;
const segs = [];
for (let i = 0; i < N; i++) {
  const s = await connect({ servers });
  await s.create('o' + i, 4, { ifNotExists: true });
  segs.push(s);
}
let n = 0;
const lat = [];
const t0 = performance.now();
await Promise.all(
  segs.map(async (s, i) => {
    while (performance.now() - t0 < 3000) {
      const a = performance.now();
      await s.update('o' + i, (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
      lat.push(performance.now() - a);
      n++;
    }
  }),
);
lat.sort((a, b) => a - b);
console.log(
  '32 clients write cycles/s',
  Math.round(n / 3),
  'p50 ms',
  lat[lat.length >> 1].toFixed(2),
  'p99 ms',
  lat[Math.floor(lat.length * 0.99)].toFixed(2),
);
for (const s of segs) await s.close();
