// Failover: a counter incremented on a 3-server cluster keeps counting while its leader is killed with
// SIGKILL. At the end the counter equals the number of acknowledged increments: nothing lost, nothing twice.
import { connect } from '@segmem/client';
import { localCluster } from '../lib/local-server.mjs';

const total = Number(process.argv[2] ?? 300);
const cluster = await localCluster(3);
try {
  const seg = await connect({ servers: cluster.servers.split(',') });
  await seg.create('compteur', 4);
  let acked = 0;
  let killedAt = 0;
  let resumedAfterMs = 0;
  let victim = '';
  for (let i = 0; i < total; i++) {
    if (i === Math.floor(total / 3)) {
      const leader = cluster.leader();
      victim = leader.id;
      cluster.kill(victim);
      killedAt = performance.now();
      console.log(`failover: ${acked} increments acknowledged; killed the leader ${victim} (SIGKILL)`);
    }
    await seg.update('compteur', (h) => h.bytes.writeUInt32LE(h.bytes.readUInt32LE(0) + 1));
    acked++;
    if (killedAt && !resumedAfterMs) {
      resumedAfterMs = performance.now() - killedAt;
      console.log(
        `failover: first increment on the new leader ${cluster.leader()?.id ?? '?'} after ${resumedAfterMs.toFixed(0)} ms`,
      );
    }
  }
  const value = await seg.read('compteur', (h) => h.bytes.readUInt32LE(0));
  await seg.close();
  console.log(
    `failover: ${acked} increments acknowledged, compteur = ${value}: ${value === acked ? 'exact' : 'WRONG'}`,
  );
  if (value !== acked) process.exitCode = 1;
} finally {
  await cluster.stop();
}
