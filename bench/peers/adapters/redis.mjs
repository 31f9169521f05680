// Redis side of the workloads (ioredis): one connection per client, to the primary, commands one after
// another (no pipelining), every write followed by WAIT 1 so a replica has it before the cycle ends.
import Redis from 'ioredis';
import { sleep, Unavailable } from './common.mjs';

const WAIT_TIMEOUT_MS = 1000;
const LOCK_TTL_MS = 10000;
// Token-checked release: delete the lock only if this client still holds it.
const UNLOCK_LUA = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

async function open(primary) {
  const [host, port] = primary.split(':');
  const r = new Redis({
    host,
    port: Number(port),
    lazyConnect: true,
    enableAutoPipelining: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 5000,
  });
  r.on('error', () => {}); // errors surface on the commands themselves
  await r.connect();
  r.defineCommand('unlock', { numberOfKeys: 1, lua: UNLOCK_LUA });
  return r;
}

/**
 * Builds one operation per client for `spec.workload`. Returns { ops, counters, verify(), close() }.
 */
export async function prepare(spec) {
  const { clients, workload, valueBytes, prefix } = spec;
  const conns = [];
  for (let i = 0; i < clients; i++) conns.push(await open(spec.endpoints.primary));
  const counters = { waitShort: 0, lockRetries: 0, lockLost: 0 };
  const close = async () => {
    for (const r of conns) r.disconnect();
  };

  const waitOne = async (r) => {
    const n = await r.wait(1, WAIT_TIMEOUT_MS);
    if (n < 1) counters.waitShort++;
  };

  if (workload === 'write' || workload === 'big') {
    const keys = conns.map((_, i) => `${prefix}/obj/${i}`);
    for (let i = 0; i < clients; i++) {
      if (!(await conns[0].exists(keys[i]))) await conns[0].set(keys[i], Buffer.alloc(valueBytes));
    }
    const initial = [];
    for (const k of keys) initial.push((await conns[0].getBuffer(k))[0]);
    const done = new Array(clients).fill(0);
    const rand = spec.rand;
    const ops = conns.map((r, i) => {
      const key = keys[i];
      const lockKey = `${key}/lock`;
      let n = 0;
      return async () => {
        const token = `${spec.runId}:${i}:${++n}`;
        // Lock. With one object per client it is always free; a held lock (a previous run's) is retried.
        for (let tries = 0; (await r.set(lockKey, token, 'PX', LOCK_TTL_MS, 'NX')) !== 'OK'; tries++) {
          if (tries > 2000) throw new Error(`redis: lock ${lockKey} still held after ${tries} tries`);
          counters.lockRetries++;
          await sleep(5);
        }
        const v = await r.getBuffer(key);
        v[workload === 'big' ? rand() % valueBytes : 0]++;
        await r.set(key, v);
        await waitOne(r);
        if ((await r.unlock(lockKey, token)) !== 1) counters.lockLost++;
        done[i]++;
      };
    });
    // Each object's first byte must have moved by exactly the cycles done (mod 256): the writes landed.
    const verify = async () => {
      if (workload === 'big') return null;
      let bad = 0;
      for (let i = 0; i < clients; i++) {
        const v = await conns[0].getBuffer(keys[i]);
        if (v[0] !== ((initial[i] + done[i]) & 0xff)) bad++;
      }
      return bad;
    };
    return { ops, counters, verify, close };
  }

  if (workload === 'read') {
    const key = `${prefix}/read`;
    const value = Buffer.alloc(valueBytes);
    for (let j = 0; j < valueBytes; j++) value[j] = (j * 7 + 3) & 0xff;
    await conns[0].set(key, value);
    await waitOne(conns[0]);
    let bad = 0;
    const ops = conns.map((r) => async () => {
      const v = await r.getBuffer(key);
      if (v.length !== valueBytes) bad++;
    });
    return { ops, counters, verify: async () => bad, close };
  }

  if (workload === 'append') {
    const stream = `${prefix}/log`;
    const record = Buffer.alloc(valueBytes, 0x61);
    let disorder = 0;
    const ops = conns.map((r) => {
      let last = '0-0';
      return async () => {
        const id = await r.xadd(stream, '*', 'd', record); // the stream ID is the record's sequence number
        await waitOne(r);
        if (cmpId(id, last) <= 0) disorder++; // one writer's records must come in order
        last = id;
      };
    });
    return { ops, counters, verify: async () => disorder, close };
  }

  await close();
  throw new Unavailable(`unknown workload ${workload}`);
}

function cmpId(a, b) {
  const [am, as] = a.split('-').map(Number);
  const [bm, bs] = b.split('-').map(Number);
  return am === bm ? as - bs : am - bm;
}
