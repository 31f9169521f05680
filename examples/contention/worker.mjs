// One contender: takes read or write access to "matrix" ROUNDS times, holds it for HOLD_MS, and prints
// one JSON line per access with when it was granted and when it was given back.
import { connect } from '@segmem/client';

const [mode, rounds, holdMs] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const seg = await connect({ servers: process.env.SEGMEM_SERVERS.split(',') });
const me = `${mode}-${process.pid}`;
for (let i = 0; i < rounds; i++) {
  const asked = Date.now();
  const h = mode === 'write' ? await seg.acquireWrite('matrix') : await seg.acquireRead('matrix');
  const granted = Date.now();
  const m = new Float64Array(h.bytes.buffer, h.bytes.byteOffset, 16); // a 4x4 matrix
  if (mode === 'write') {
    // A writer rewrites every cell; a reader must never see a half-written matrix.
    const v = m[0] + 1;
    for (let k = 0; k < 16; k++) {
      m[k] = v;
      await new Promise((r) => setTimeout(r, holdMs / 16));
    }
  } else {
    await new Promise((r) => setTimeout(r, holdMs));
    if (!m.every((x) => x === m[0])) throw new Error(`${me} saw a torn matrix: ${[...m].join(',')}`);
  }
  const value = m[0]; // read it now: after release the page is protected again and touching it aborts
  const released = Date.now();
  await h.release();
  console.log(JSON.stringify({ who: me, mode, asked, granted, released, value }));
}
await seg.close();
