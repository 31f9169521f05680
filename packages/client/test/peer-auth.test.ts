/**
 * Members authenticate each other: a process that can reach a peer port but does not hold the cluster
 * secret cannot move a member's term, install a snapshot or force an election. Real server processes,
 * raw sockets speaking the peer protocol as an attacker would.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { defaultClusterId } from '@segmem/server/internal/cluster';
import { encodePeerHello, encodeRaftMessage } from '@segmem/server/internal/shell/peer-codec';
import test from 'ava';
import { connect } from '../src/index.js';
import { bump, TestCluster, tempDir, untilItWorks } from './helpers.js';

/** The largest term any member's log line names (`raft: <role> in term N`). */
function highestTerm(cluster: TestCluster): number {
  let best = 0;
  for (const m of cluster.members) {
    for (const match of (m.server?.stderr() ?? '').matchAll(/raft: \w+ in term (\d+)/g))
      best = Math.max(best, Number(match[1]));
  }
  return best;
}

/** Writes `parts` on a fresh connection to `address` and waits until the member closes it (or 3 s pass). */
async function sendRaw(address: string, parts: Buffer[]): Promise<void> {
  const [host, port] = address.split(':');
  const socket = netConnect({ host: host!, port: Number(port) });
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, 3000);
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.on('connect', () => {
      for (const p of parts) socket.write(p);
    });
  });
}

/** PEER_HELLO then `messages`, as member `from` talking to member `to` of a cluster named `clusterId`. */
function forged(clusterId: string, from: string, to: string, messages: Buffer[][]): Buffer[] {
  return [...encodePeerHello({ clusterId, from, to, token: null }), ...messages.flat()];
}

const HOSTILE_TERM = Number.MAX_SAFE_INTEGER;

test('a forged heartbeat with a huge term moves no member, and the cluster keeps serving, also after a restart', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path);
  try {
    const seg = await connect({ servers: cluster.addresses });
    await seg.create('counter', 8);
    await bump(seg, 'counter', 1);
    const peers = Object.fromEntries(cluster.members.map((m) => [m.id, m.address]));
    const meta = JSON.parse(readFileSync(join(cluster.members[0]!.dataDir, 'meta.json'), 'utf8'));
    // An attacker who knows the addresses (the old default cluster id) or even the real cluster id.
    for (const clusterId of [defaultClusterId(peers), meta.clusterId as string]) {
      for (const target of cluster.members) {
        const from = cluster.members.find((m) => m.id !== target.id)!.id;
        const heartbeat = encodeRaftMessage({ type: 'heartbeat', from, to: target.id, term: HOSTILE_TERM });
        await sendRaw(target.address, forged(clusterId, from, target.id, [heartbeat]));
      }
    }
    await untilItWorks(() => bump(seg, 'counter', 1), 'a write after the forged heartbeats', 10_000);
    t.true(highestTerm(cluster) < 1000, `terms stayed small (highest ${highestTerm(cluster)})`);
    await seg.close();

    await cluster.stopAll();
    for (const m of cluster.members) await cluster.startMember(m.id);
    const again = await connect({ servers: cluster.addresses });
    try {
      await untilItWorks(() => bump(again, 'counter', 1), 'a write after restarting all three', 15_000);
      const value = await again.read('counter', (h) => h.view.getUint32(0, true));
      t.true(value >= 3, `the writes before and after are there (${value})`);
      t.true(highestTerm(cluster) < 1000, `terms stayed small after the restart (${highestTerm(cluster)})`);
    } finally {
      await again.close();
    }
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});
