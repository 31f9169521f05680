// Mechanisms (f) and (g): one writer process appending 100-byte records to a segmem shared log. Same
// protocol as the C writers (READY, one byte on stdin to start, latencies to a file, one RESULT line).
// Up to `inflight` appends are outstanding at once (the client batches concurrent appends); they are
// issued in this writer's sequence order, and the sequence numbers append() returned are written to a file
// so that the verifier can check that each record sits exactly at the number it was given.
//   node bench/logs/segmem-writer.mjs '{"servers":[...],"log":"name","id":0,"durMs":2000,"cap":100000,
//                                       "inflight":32,"maxBytes":N,"latPath":"...","seqPath":"..."}'
import { writeFileSync } from 'node:fs';
import { connect } from '@segmem/client';
import { encodeRecord } from './record.mjs';

const spec = JSON.parse(process.argv[2]);
const seg = await connect({ servers: spec.servers });
let log;
try {
  // maxBytes (retention, an option beside the pinned log(name)) above what a cell can append, so that
  // the read-back sees every record.
  log = seg.log(spec.log, { maxBytes: spec.maxBytes });
} catch (err) {
  // Shared logs are not in every version of segmem yet: say so and let the runner skip the row.
  process.stdout.write(`UNAVAILABLE ${err?.code ?? 'ERROR'} ${err?.message ?? err}\n`);
  await seg.close();
  process.exit(3);
}

process.stdout.write('READY\n');
await new Promise((resolve, reject) => {
  process.stdin.once('data', resolve);
  process.stdin.once('end', () => reject(new Error('the runner went away')));
});
process.stdin.pause();
const ru0 = process.resourceUsage(); // start-up and connect are not counted per record

const cap = spec.cap;
const lat = new Uint32Array(cap);
const seqs = new Float64Array(cap).fill(-1);
let next = 0;
let done = 0;
let errors = 0;
let firstError = null;
const startNs = process.hrtime.bigint();
const deadline = startNs + BigInt(spec.durMs) * 1_000_000n;

async function lane() {
  while (next < cap) {
    const t0 = process.hrtime.bigint();
    if (t0 >= deadline) return;
    const i = next++;
    try {
      seqs[i] = await log.append(encodeRecord(spec.id, i, t0));
      const d = process.hrtime.bigint() - t0;
      lat[i] = d > 0xffffffffn ? 0xffffffff : Number(d);
      done++;
    } catch (err) {
      errors++;
      firstError ??= `${err?.code ?? ''} ${err?.message ?? err}`;
      return; // a failed append leaves a gap in this writer's sequence: stop this lane
    }
  }
}

await Promise.all(Array.from({ length: Math.max(1, spec.inflight) }, lane));
const endNs = process.hrtime.bigint();
const issued = next;
// Order check: records issued later must have got larger sequence numbers.
let orderViolations = 0;
for (let i = 1; i < issued; i++)
  if (seqs[i] >= 0 && seqs[i - 1] >= 0 && seqs[i] <= seqs[i - 1]) orderViolations++;
writeFileSync(spec.latPath, Buffer.from(lat.buffer, 0, issued * 4));
writeFileSync(spec.seqPath, Buffer.from(seqs.buffer, 0, issued * 8));
await seg.close();
const ru = process.resourceUsage();
const result = {
  id: spec.id,
  count: done,
  issued,
  startNs: Number(startNs),
  endNs: Number(endNs),
  errors,
  firstError,
  orderViolations,
  cpuUs: ru.userCPUTime + ru.systemCPUTime - ru0.userCPUTime - ru0.systemCPUTime,
  nvcsw: ru.voluntaryContextSwitches - ru0.voluntaryContextSwitches,
  nivcsw: ru.involuntaryContextSwitches - ru0.involuntaryContextSwitches,
};
process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
