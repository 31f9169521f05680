// One benchmark row, run in its own process: `node bench/worker.mjs '<json spec>'`.
// Prints `BENCH_RESULT <json>` on stdout and exits 0, or exits non-zero on an error.
//
// Modes:
//   floor  - plain TCP ping-pong of 16 bytes against bench/echo-server.mjs
//   fsyncFloor - append 4 KiB to a file + fdatasync, one after another
//   cycle  - segmem write / read / big-object cycles against a server (tcp) or an embedded store
//   codec  - protocol encode + decode of one frame, in-process
//   memory - RSS of a client that connects, creates one small object and uses it
import { connect as netConnect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { drive, driveBatched } from './lib/load.mjs';

const MiB = 1024 * 1024;

function result(obj) {
  const cpu = process.cpuUsage(); // this process's CPU time since it started, for the orchestrator's accounting
  process.stdout.write(
    `BENCH_RESULT ${JSON.stringify({ ...obj, workerCpuSeconds: (cpu.user + cpu.system) / 1e6 })}\n`,
  );
}

/** Deterministic PRNG (xorshift32) so runs pick the same offsets. */
function xorshift(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

// ---------------------------------------------------------------------------------------------------------
// floor

function pingClient(host, port) {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host, port, noDelay: true });
    const msg = Buffer.alloc(16, 0x5a);
    let received = 0;
    let waiter = null;
    socket.on('data', (chunk) => {
      received += chunk.length;
      if (received >= 16 && waiter) {
        received -= 16;
        const w = waiter;
        waiter = null;
        w();
      }
    });
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.setNoDelay(true);
      resolve({
        op: () =>
          new Promise((r) => {
            waiter = r;
            socket.write(msg);
          }),
        close: () => socket.destroy(),
      });
    });
  });
}

async function floor(spec) {
  const [host, port] = splitAddress(spec.address);
  const clients = [];
  for (let i = 0; i < spec.clients; i++) clients.push(await pingClient(host, port));
  const r = await drive(
    clients.map((c) => c.op),
    spec,
  );
  for (const c of clients) c.close();
  return { ...r, txPerOp: 16, rxPerOp: 16 };
}

/** Second floor: append 4 KiB to a file and fdatasync it, one after another (what a durable write costs). */
async function fsyncFloor(spec) {
  const { open } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const fh = await open(join(spec.dir, 'floor.log'), 'a');
  const block = Buffer.alloc(4096, 0x42);
  const r = await drive(
    [
      async () => {
        await fh.write(block);
        await fh.datasync();
      },
    ],
    spec,
  );
  await fh.close();
  return { ...r, txPerOp: null, rxPerOp: null };
}

function splitAddress(address) {
  const i = address.lastIndexOf(':');
  return [address.slice(0, i), Number(address.slice(i + 1))];
}

// ---------------------------------------------------------------------------------------------------------
// segmem cycles

async function openTarget(target, client) {
  if (target.kind === 'tcp') return client.connect({ servers: [target.address] });
  return client.openEmbedded({ dir: target.dir, fsync: target.fsync });
}

function traffic(segments) {
  const t = { bytesSent: 0, bytesReceived: 0, requests: 0 };
  for (const s of segments) {
    const x = s.stats();
    t.bytesSent += x.bytesSent;
    t.bytesReceived += x.bytesReceived;
    t.requests += x.requests;
  }
  return t;
}

async function cycle(spec) {
  const client = await import('@segmem/client');
  const { target, clients, op, objectSize, prefix } = spec;
  // Sessions: one per client over TCP; an embedded store admits one session per process, so its clients
  // are concurrent tasks sharing that one session (each on its own object for writes).
  const segments = [];
  const perClient = [];
  if (target.kind === 'tcp') {
    for (let i = 0; i < clients; i++) segments.push(await openTarget(target, client));
    for (let i = 0; i < clients; i++) perClient.push(segments[i]);
  } else {
    segments.push(await openTarget(target, client));
    for (let i = 0; i < clients; i++) perClient.push(segments[0]);
  }
  const protectedPages = segments[0].protectedPages;

  const names = [];
  let sink = 0;
  let payloadBytes = 0;
  let payloadOps = 0;
  const counts = new Array(clients).fill(0);
  let ops;
  if (op === 'write' || op === 'big') {
    for (let i = 0; i < clients; i++) {
      const name = op === 'big' ? `${prefix}/big${i}` : `${prefix}/w${i}`;
      names.push(name);
      await perClient[i].create(name, objectSize, { ifNotExists: true });
      // Fill the object and pull it into the client's cache before the clock starts.
      await perClient[i].update(name, (h) => {
        for (let j = 0; j < h.bytes.length; j += 97) h.bytes[j] = (j * 31) & 0xff;
      });
    }
    const rand = xorshift(spec.seed ?? 12345);
    ops = perClient.map((seg, i) => {
      const name = names[i];
      if (op === 'write') {
        return async () => {
          const h = await seg.acquireWrite(name);
          const b = h.bytes;
          b[0]++;
          b[1]++;
          b[2]++;
          b[3]++;
          await h.release();
          counts[i]++;
        };
      }
      return async () => {
        const h = await seg.acquireWrite(name);
        const off = rand() % objectSize;
        h.bytes[off]++;
        await h.release();
        if (typeof h.bytesSent === 'number') {
          payloadBytes += h.bytesSent;
          payloadOps++;
        }
        counts[i]++;
      };
    });
  } else if (op === 'read') {
    const name = `${prefix}/r`;
    names.push(name);
    await perClient[0].create(name, objectSize, { ifNotExists: true });
    await perClient[0].update(name, (h) => {
      for (let j = 0; j < h.bytes.length; j++) h.bytes[j] = (j * 7 + 3) & 0xff;
    });
    // Warm cache: every session acquires once, so the page bytes are local before the clock starts.
    for (const seg of segments) await seg.read(name, (h) => h.bytes[0]);
    ops = perClient.map((seg) => async () => {
      const h = await seg.acquireRead(name);
      sink ^= h.bytes[h.bytes.length - 1];
      await h.release();
    });
  } else {
    throw new Error(`unknown op ${op}`);
  }

  let before;
  let after;
  const r = await drive(ops, spec, {
    beforeWindow: () => {
      before = traffic(segments);
      payloadBytes = 0;
      payloadOps = 0;
    },
    afterWindow: () => {
      after = traffic(segments);
    },
  });
  const n = r.ops;
  const out = {
    ...r,
    txPerOp: (after.bytesSent - before.bytesSent) / n,
    rxPerOp: (after.bytesReceived - before.bytesReceived) / n,
    requestsPerOp: (after.requests - before.requests) / n,
    payloadPerOp: payloadOps > 0 ? payloadBytes / payloadOps : null,
    protectedPages,
    sessions: segments.length,
    sink,
  };

  // Check that the writes reached the server: a fresh session must see what the last cycle left.
  if ((op === 'write' || op === 'big') && target.kind === 'tcp') {
    const expected = [];
    for (let i = 0; i < clients; i++)
      expected.push(await perClient[i].read(names[i], (h) => Buffer.from(h.bytes)));
    const fresh = await openTarget(target, client);
    let mismatches = 0;
    for (let i = 0; i < clients; i++) {
      const seen = await fresh.read(names[i], (h) => Buffer.from(h.bytes));
      if (!seen.equals(expected[i])) mismatches++;
    }
    await fresh.close();
    out.verified = mismatches === 0;
    out.verifyMismatches = mismatches;
  }
  for (const s of segments) await s.close();
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// codec

async function codec(spec) {
  const p = await import('@segmem/protocol');
  const decoder = new p.FrameDecoder();
  let requestId = 1;
  let sink = 0;
  let frameBytes = 0;
  let op;
  const asChunk = (parts) => (parts.length === 1 ? parts[0] : Buffer.concat(parts));
  if (spec.case === 'acquire-request') {
    const req = {
      type: 'ACQUIRE',
      seq: 1,
      name: 'bench/object-0001',
      mode: 'write',
      cachedId: 17,
      cachedVersion: 42,
      timeoutMs: null,
    };
    op = () => {
      req.seq = requestId;
      const chunk = asChunk(p.encodeRequest(req, requestId));
      requestId = requestId >= 0xfffffff0 ? 1 : requestId + 1;
      const frames = decoder.push(chunk);
      const back = p.decodeRequest(frames[0]);
      sink ^= back.seq;
    };
    frameBytes = asChunk(p.encodeRequest(req, 1)).length;
  } else if (spec.case === 'grant-4k') {
    const payload = Buffer.alloc(4096, 0xab);
    const body = {
      object: { id: 17, name: 'bench/object-0001', size: 4096, address: 17 * 4096, version: 42 },
      token: 9,
      pages: [0],
    };
    op = () => {
      const chunk = asChunk(p.encodeOk('ACQUIRE', requestId, body, payload));
      requestId = requestId >= 0xfffffff0 ? 1 : requestId + 1;
      const frames = decoder.push(chunk);
      const back = p.decodeOk('ACQUIRE', frames[0]);
      sink ^= back.payload[4095] ^ back.token;
    };
    frameBytes = asChunk(p.encodeOk('ACQUIRE', 1, body, payload)).length;
  } else {
    throw new Error(`unknown codec case ${spec.case}`);
  }
  const r = driveBatched(op, spec);
  return { ...r, frameBytes, sink };
}

// ---------------------------------------------------------------------------------------------------------
// memory

async function memory(spec) {
  const rssStart = process.memoryUsage().rss;
  const client = await import('@segmem/client');
  const rssImported = process.memoryUsage().rss;
  const seg = await openTarget(spec.target, client);
  const segmentBytes = seg.session?.hello?.segmentBytes ?? null; // not pinned API: informational only
  await seg.create('mem/small', 64, { ifNotExists: true });
  const t0 = performance.now();
  for (let i = 0; i < spec.cycles; i++) {
    await seg.update('mem/small', (h) => {
      h.bytes[i & 63]++;
    });
    await seg.read('mem/small', (h) => h.bytes[0]);
    if (performance.now() - t0 > 20000) break; // bounded in time too
  }
  const m = process.memoryUsage();
  const out = {
    rssStartMiB: rssStart / MiB,
    rssImportedMiB: rssImported / MiB,
    rssMiB: m.rss / MiB,
    heapUsedMiB: m.heapUsed / MiB,
    externalMiB: m.external / MiB,
    arrayBuffersMiB: m.arrayBuffers / MiB,
    segmentBytes,
    protectedPages: seg.protectedPages,
  };
  await seg.close();
  return out;
}

// ---------------------------------------------------------------------------------------------------------

const modes = { floor, fsyncFloor, cycle, codec, memory };

async function main() {
  const spec = JSON.parse(process.argv[2] ?? '{}');
  const fn = modes[spec.mode];
  if (!fn) throw new Error(`unknown mode ${spec.mode}`);
  const out = await fn(spec);
  result(out);
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`worker error: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
