// etcd side of the workloads (the etcd3 npm client, gRPC): one client per benchmark client, each with its
// own gRPC connection, pointed at the leader (as segmem's sessions and Redis's clients talk to theirs).
import { Etcd3 } from 'etcd3';
import { sleep, Unavailable } from './common.mjs';

// etcd's proto enums (rpc.proto): CompareTarget CREATE = 1, VALUE = 3; CompareResult EQUAL = 0.
const CREATE = 1;
const VALUE = 3;
const EQUAL = 0;
const LEASE_TTL_S = 30;

async function open(endpoint) {
  const client = new Etcd3({
    hosts: [`http://${endpoint}`],
    // grpc-js shares one TCP connection between channels to the same address unless told otherwise;
    // 32 clients must be 32 connections, as with the other systems.
    grpcOptions: { 'grpc.use_local_subchannel_pool': 1 },
    dialTimeout: 5000,
  });
  return client;
}

export async function prepare(spec) {
  const { clients, workload, valueBytes, prefix } = spec;
  const conns = [];
  for (let i = 0; i < clients; i++) conns.push(await open(spec.endpoints.leader));
  // Prove each connection works before the clock starts (and open it).
  for (const c of conns) await c.kv.range({ key: Buffer.from(`${prefix}/hello`) });
  const leases = [];
  const counters = { lockRetries: 0, lockLost: 0 };
  const close = async () => {
    for (const l of leases) await l.revoke().catch(() => {});
    for (const c of conns) c.close();
  };

  if (workload === 'write' || workload === 'big') {
    // One lease per client for its whole life, kept alive by the client library (every TTL/3), as a
    // long-lived session would; the lock key is attached to it so a dead client's lock expires.
    const leaseIds = [];
    for (const c of conns) {
      const l = c.lease(LEASE_TTL_S);
      l.on('lost', () => counters.lockLost++);
      leases.push(l);
      leaseIds.push(await l.grant());
    }
    const keys = conns.map((_, i) => Buffer.from(`${prefix}/obj/${i}`));
    for (const k of keys) {
      const r = await conns[0].kv.range({ key: k });
      if (r.kvs.length === 0) await conns[0].kv.put({ key: k, value: Buffer.alloc(valueBytes) });
    }
    const initial = [];
    for (const k of keys) initial.push((await conns[0].kv.range({ key: k })).kvs[0].value[0]);
    const done = new Array(clients).fill(0);
    const rand = spec.rand;
    const ops = conns.map((c, i) => {
      const key = keys[i];
      const lockKey = Buffer.from(`${keys[i]}/lock`);
      const lease = leaseIds[i];
      let n = 0;
      return async () => {
        const token = Buffer.from(`${spec.runId}:${i}:${++n}`);
        // Transaction 1 = lock + read: create the lock key (with the lease) only if it does not exist, and
        // in the same transaction read the object. A held lock is retried.
        let r;
        for (let tries = 0; ; tries++) {
          r = await c.kv.txn({
            compare: [{ key: lockKey, target: CREATE, result: EQUAL, create_revision: 0 }],
            success: [{ request_put: { key: lockKey, value: token, lease } }, { request_range: { key } }],
            failure: [],
          });
          if (r.succeeded) break;
          if (tries > 2000) throw new Error(`etcd: lock ${lockKey} still held after ${tries} tries`);
          counters.lockRetries++;
          await sleep(5);
        }
        const v = Buffer.from(r.responses[1].response_range.kvs[0].value);
        v[workload === 'big' ? rand() % valueBytes : 0]++;
        // Transaction 2 = write + unlock, only while the lock still holds this client's token.
        const w = await c.kv.txn({
          compare: [{ key: lockKey, target: VALUE, result: EQUAL, value: token }],
          success: [{ request_put: { key, value: v } }, { request_delete_range: { key: lockKey } }],
          failure: [],
        });
        if (!w.succeeded) counters.lockLost++;
        done[i]++;
      };
    });
    const verify = async () => {
      if (workload === 'big') return null;
      let bad = 0;
      for (let i = 0; i < clients; i++) {
        const v = (await conns[0].kv.range({ key: keys[i] })).kvs[0].value;
        if (v[0] !== ((initial[i] + done[i]) & 0xff)) bad++;
      }
      return bad;
    };
    return { ops, counters, verify, close };
  }

  if (workload === 'read') {
    const key = Buffer.from(`${prefix}/read`);
    const value = Buffer.alloc(valueBytes);
    for (let j = 0; j < valueBytes; j++) value[j] = (j * 7 + 3) & 0xff;
    await conns[0].kv.put({ key, value });
    let bad = 0;
    // A range request without `serializable` is linearizable (the leader confirms it still leads).
    const ops = conns.map((c) => async () => {
      const r = await c.kv.range({ key });
      if (r.kvs[0].value.length !== valueBytes) bad++;
    });
    return { ops, counters, verify: async () => bad, close };
  }

  if (workload === 'append') {
    // Each record is a put on a key of its own; the revision etcd assigns it is its sequence number
    // (strictly increasing across the log, though not contiguous), one durable round trip per record.
    const record = Buffer.alloc(valueBytes, 0x61);
    let disorder = 0;
    const ops = conns.map((c, i) => {
      let n = 0;
      let last = 0n;
      return async () => {
        const r = await c.kv.put({
          key: Buffer.from(`${prefix}/log/${spec.runId}/${i}/${++n}`),
          value: record,
        });
        const rev = BigInt(r.header.revision);
        if (rev <= last) disorder++;
        last = rev;
      };
    });
    return { ops, counters, verify: async () => disorder, close };
  }

  await close();
  throw new Unavailable(`unknown workload ${workload}`);
}
