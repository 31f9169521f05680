/** Rough throughput figures, logged for the record (not asserted: benchmarks never decide CI). */
import test from 'ava';
import {
  type AcquireRequest,
  decodeHeader,
  decodeOk,
  decodeRequest,
  encodeHeader,
  encodeOk,
  encodeRequest,
  FrameDecoder,
  PAGE_BYTES,
} from '../src/index.js';

function rate(fn: () => void, budgetMs = 400): number {
  for (let i = 0; i < 2000; i++) fn(); // warm up
  let n = 0;
  const started = process.hrtime.bigint();
  let elapsedNs = 0n;
  const budgetNs = BigInt(budgetMs) * 1_000_000n;
  while (elapsedNs < budgetNs) {
    for (let i = 0; i < 1000; i++) fn();
    n += 1000;
    elapsedNs = process.hrtime.bigint() - started;
  }
  return n / (Number(elapsedNs) / 1e9);
}

const fmt = (perSecond: number) => `${Math.round(perSecond).toLocaleString('en-US')}/s`;

test('throughput', (t) => {
  const acquire: AcquireRequest = {
    type: 'ACQUIRE',
    seq: 12345,
    name: 'matrix/row-17',
    mode: 'write',
    cachedId: 42,
    cachedVersion: 7,
    timeoutMs: 5000,
  };
  const { type: _type, ...header } = acquire;
  const encoded = encodeHeader(header);
  t.log(`small header (${encoded.length} bytes): encode ${fmt(rate(() => encodeHeader(header)))}`);
  t.log(`small header: decode (scan + unpack) ${fmt(rate(() => decodeHeader(encoded)))}`);
  t.log(`small header: encode + decode ${fmt(rate(() => decodeHeader(encodeHeader(header))))}`);

  const decoder = new FrameDecoder();
  let requestId = 1;
  const requestRate = rate(() => {
    const parts = encodeRequest(acquire, requestId++);
    decodeRequest(decoder.push(parts[0])[0]);
  });
  t.log(
    `ACQUIRE request frame (${encodeRequest(acquire, 1)[0].length} bytes): encode + FrameDecoder + decodeRequest ${fmt(requestRate)}`,
  );

  const payload = Buffer.alloc(PAGE_BYTES, 7);
  const grant = {
    object: { id: 42, name: 'matrix/row-17', size: PAGE_BYTES, address: 17 * PAGE_BYTES, version: 8 },
    token: 99,
    pages: [0],
  };
  const twoChunks = rate(() => {
    const parts = encodeOk('ACQUIRE', 5, grant, payload);
    decoder.push(parts[0]);
    decodeOk('ACQUIRE', decoder.push(parts[1])[0]);
  });
  t.log(
    `4 KiB grant, header and payload as two chunks (one copy): ${fmt(twoChunks)} = ${((twoChunks * PAGE_BYTES) / 2 ** 30).toFixed(2)} GiB/s of pages`,
  );
  // Socket reads usually coalesce many frames into one chunk: decode 16 grants from one buffer (zero copy).
  const batch = Buffer.concat(
    Array.from({ length: 16 }, () => encodeOk('ACQUIRE', 5, grant, payload)).flat(),
  );
  const oneChunk =
    16 *
    rate(() => {
      for (const f of decoder.push(batch)) decodeOk('ACQUIRE', f);
    }, 400);
  t.log(`4 KiB grant decode, 16 per chunk (zero copy): ${fmt(oneChunk)}`);
  const encodeOnly = rate(() => encodeOk('ACQUIRE', 5, grant, payload));
  t.log(`4 KiB grant encode (payload not copied): ${fmt(encodeOnly)}`);
  t.pass();
});
