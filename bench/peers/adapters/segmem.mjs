// segmem side of the workloads: one connect() session per client against the 3-server group.
// `spec.delegations: false` turns kept grants off for a comparison row; by default they are on, as in connect().
import { connect, SegmemError } from '@segmem/client';
import { Unavailable } from './common.mjs';

export async function prepare(spec) {
  const { clients, workload, valueBytes, prefix } = spec;
  const servers = spec.endpoints.servers.split(',');
  const delegations = spec.delegations ?? true;
  const segs = [];
  for (let i = 0; i < clients; i++) segs.push(await connect({ servers, delegations }));
  const counters = {};
  const close = async () => {
    for (const s of segs) await s.close();
  };
  // Client-side transport counters (segment.stats()), a cross-check of the kernel's socket counters.
  const stats = () => {
    const t = { bytesSent: 0, bytesReceived: 0, requests: 0 };
    for (const s of segs) {
      const x = s.stats();
      t.bytesSent += x.bytesSent;
      t.bytesReceived += x.bytesReceived;
      t.requests += x.requests;
    }
    return t;
  };

  if (workload === 'write' || workload === 'big') {
    const names = segs.map((_, i) => `${prefix}/obj/${i}`);
    for (let i = 0; i < clients; i++) await segs[i].create(names[i], valueBytes, { ifNotExists: true });
    const initial = [];
    for (let i = 0; i < clients; i++) initial.push(await segs[i].read(names[i], (h) => h.bytes[0]));
    const done = new Array(clients).fill(0);
    const rand = spec.rand;
    const ops = segs.map((seg, i) => {
      const name = names[i];
      // The whole cycle: exclusive lock, the bytes are local, change them, release ships the change.
      return async () => {
        const h = await seg.acquireWrite(name);
        h.bytes[workload === 'big' ? rand() % valueBytes : 0]++;
        await h.release();
        done[i]++;
      };
    });
    const verify = async () => {
      if (workload === 'big') return null;
      // A fresh session, so nothing comes from a client cache.
      const fresh = await connect({ servers });
      let bad = 0;
      try {
        for (let i = 0; i < clients; i++) {
          const b = await fresh.read(names[i], (h) => h.bytes[0]);
          if (b !== ((initial[i] + done[i]) & 0xff)) bad++;
        }
      } finally {
        await fresh.close();
      }
      return bad;
    };
    return { ops, counters, verify, close, stats };
  }

  if (workload === 'hot') {
    // Every client on the same object: each cycle waits for the lock the others hold.
    const name = `${prefix}/hot`;
    await segs[0].create(name, valueBytes, { ifNotExists: true });
    const initial = await segs[0].read(name, (h) => h.bytes[0]);
    let done = 0;
    const ops = segs.map((seg) => async () => {
      const h = await seg.acquireWrite(name);
      h.bytes[0]++;
      await h.release();
      done++;
    });
    const verify = async () => {
      const fresh = await connect({ servers });
      try {
        const b = await fresh.read(name, (h) => h.bytes[0]);
        return b === ((initial + done) & 0xff) ? 0 : 1;
      } finally {
        await fresh.close();
      }
    };
    return { ops, counters, verify, close, stats };
  }

  if (workload === 'read') {
    const name = `${prefix}/read`;
    await segs[0].create(name, valueBytes, { ifNotExists: true });
    await segs[0].update(name, (h) => {
      for (let j = 0; j < valueBytes; j++) h.bytes[j] = (j * 7 + 3) & 0xff;
    });
    let bad = 0;
    const ops = segs.map((seg) => async () => {
      const h = await seg.acquireRead(name);
      if (h.bytes.length !== valueBytes) bad++;
      await h.release();
    });
    return { ops, counters, verify: async () => bad, close, stats };
  }

  if (workload === 'append') {
    const record = Buffer.alloc(valueBytes, 0x61);
    const logs = [];
    try {
      for (const s of segs) logs.push(s.log(`${prefix}/log`));
      await logs[0].append(record); // the first append creates the log
    } catch (err) {
      await close();
      // This version may not have shared logs yet: say so for this row, and let the others run.
      if (err instanceof SegmemError) throw new Unavailable(`${err.code}: ${err.message}`);
      throw err;
    }
    let disorder = 0;
    const ops = logs.map((lg) => {
      let last = -1;
      return async () => {
        const seq = await lg.append(record); // resolves to the record's sequence number
        if (seq <= last) disorder++;
        last = seq;
      };
    });
    return { ops, counters, verify: async () => disorder, close, stats };
  }

  await close();
  throw new Unavailable(`unknown workload ${workload}`);
}
