/**
 * Members authenticate each other: a process that can reach a peer port but does not hold the cluster
 * secret cannot move a member's term, install a snapshot or force an election. Real server processes,
 * raw sockets speaking the peer protocol as an attacker would.
 */
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { decodeError, MessageType } from '@segmem/protocol';
import { defaultClusterId } from '@segmem/server/internal/cluster';
import { createClusterSecretFile, readClusterSecretFile } from '@segmem/server/internal/secret-file';
import {
  encodePeerHello,
  encodeRaftMessage,
  PeerMessageType,
} from '@segmem/server/internal/shell/peer-codec';
import test from 'ava';
import { connect } from '../src/index.js';
import {
  bump,
  converged,
  freePort,
  rawPeer,
  runNode,
  segmemBin,
  serverBin,
  startServerProcess,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

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

/** The metrics endpoint a member logged (`--metrics 127.0.0.1:0`), scraped for one counter. */
async function peerAuthRefusals(cluster: TestCluster, id: string): Promise<number> {
  const at = /metrics on http:\/\/(\S+)\/metrics/.exec(cluster.member(id).server!.stderr());
  if (!at) throw new Error(`${id} logged no metrics address`);
  const body = await (await fetch(`http://${at[1]}/metrics`)).text();
  const m = /segmem_connections_refused_total\{reason="peer_auth"\} (\d+)/.exec(body);
  return m ? Number(m[1]) : 0;
}

test('a peer with the wrong secret is refused and counted, a raw one and a real server alike', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path, 'batch', () => ['--metrics', '127.0.0.1:0']);
  try {
    const meta = JSON.parse(readFileSync(join(cluster.members[0]!.dataDir, 'meta.json'), 'utf8'));
    const wrong = join(dir.path, 'wrong-secret');
    createClusterSecretFile(wrong);
    // A raw peer posing as s2 that goes through the handshake with the wrong secret.
    const raw = await rawPeer(
      cluster.member('s1').address,
      { clusterId: meta.clusterId, from: 's2', to: 's1' },
      readClusterSecretFile(wrong),
    );
    const answer = await raw.next();
    t.is(answer?.type, MessageType.ERROR);
    t.is(decodeError(answer!).code, 'UNAUTHORIZED');
    t.regex(decodeError(answer!).message, /peer s2: its proof of the cluster secret does not match/);
    await raw.closed;
    t.is(await peerAuthRefusals(cluster, 's1'), 1, 'counted on s1');

    // A real server with another secret in place of s3: neither side accepts the other.
    await cluster.kill('s3');
    const impostor = await startServerProcess({
      id: 's3',
      dataDir: join(dir.path, 'impostor'),
      listen: cluster.member('s3').address,
      extra: ['--peers', cluster.peers, '--cluster-secret-file', wrong, '--cluster-id', meta.clusterId],
    });
    try {
      await waitFor(
        () => /peer s1 at \S+ did not prove the cluster secret/.test(impostor.stderr()),
        'the impostor to find that s1 does not hold its secret',
      );
      await waitFor(
        () => /peer s3 at \S+ did not prove the cluster secret/.test(cluster.member('s1').server!.stderr()),
        's1 to refuse the impostor it dialled',
      );
      t.true((await peerAuthRefusals(cluster, 's1')) > 1, 'the impostor counted too');
      const seg = await connect({ servers: [cluster.member('s1').address, cluster.member('s2').address] });
      try {
        await untilItWorks(() => seg.create('still-served', 8), 's1 and s2 to serve without s3');
      } finally {
        await seg.close();
      }
      t.notRegex(
        impostor.stderr(),
        /raft: (follower|leader) in term \d+, leader/,
        'the impostor never followed',
      );
    } finally {
      await impostor.stop();
    }
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('junk snapshots, forged timeoutNow and hostile terms change nothing, with or without the secret', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path);
  try {
    const seg = await connect({ servers: cluster.addresses });
    try {
      await seg.create('counter', 8);
      await bump(seg, 'counter', 2);
      const leader = await waitFor(() => cluster.leader(), 'a leader');
      const [follower, other] = cluster.members.filter((m) => m.id !== leader.id) as [
        (typeof cluster.members)[0],
        (typeof cluster.members)[0],
      ];
      const term = highestTerm(cluster);
      const meta = JSON.parse(readFileSync(join(follower.dataDir, 'meta.json'), 'utf8'));
      const junk = encodeRaftMessage({
        type: 'snapshot',
        from: leader.id,
        to: follower.id,
        term,
        snapshot: {
          meta: { index: 1_000_000, term, members: [leader.id] },
          data: Buffer.from('not a snapshot'),
        },
      });
      const timeoutNow = encodeRaftMessage({ type: 'timeoutNow', from: other.id, to: follower.id, term });

      // Without the secret: refused at the handshake, before any of it is read.
      const stranger = await rawPeer(
        follower.address,
        { clusterId: meta.clusterId, from: leader.id, to: follower.id },
        null,
      );
      t.is((await stranger.next())?.type, PeerMessageType.PEER_CHALLENGE);
      stranger.write([...junk, ...timeoutNow]);
      const refused = await stranger.next();
      t.is(decodeError(refused!).code, 'UNAUTHORIZED');
      await stranger.closed;

      // With the secret (a member gone wrong): the junk snapshot is checked and refused, the member stays.
      const secret = readClusterSecretFile(cluster.secretFile);
      const rogue = await rawPeer(
        follower.address,
        { clusterId: meta.clusterId, from: leader.id, to: follower.id },
        secret,
      );
      rogue.write(junk);
      // timeoutNow from a member that does not lead: ignored.
      const fromOther = await rawPeer(
        follower.address,
        { clusterId: meta.clusterId, from: other.id, to: follower.id },
        secret,
      );
      fromOther.write(timeoutNow);
      // A hostile term even from a member: refused with the link.
      fromOther.write(
        encodeRaftMessage({ type: 'heartbeat', from: other.id, to: follower.id, term: 2 ** 50 }),
      );
      const bounded = await fromOther.next();
      t.is(decodeError(bounded!).code, 'INVALID_ARGUMENT');
      t.regex(decodeError(bounded!).message, /term/);
      await bump(seg, 'counter', 3);
      await converged(cluster);
      t.is(highestTerm(cluster), term, 'no election, no term moved');
      t.is(await seg.read('counter', (h) => h.view.getUint32(0, true)), 5);
      t.is(follower.server!.proc.exitCode, null, 'the follower runs on');
      t.notRegex(follower.server!.stderr(), /installed snapshot at index 1000000/);
      t.regex(follower.server!.stderr(), /refused the snapshot at index 1000000 \(term \d+\) from s\d/);
    } finally {
      await seg.close();
    }
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('a member refuses to start without a secret, with one others may read, or with another than before', async (t) => {
  const dir = tempDir();
  try {
    const ports = [await freePort(), await freePort(), await freePort()];
    const peers = ports.map((p, i) => `s${i + 1}=127.0.0.1:${p}`).join(',');
    const base = [
      '--id',
      's1',
      '--listen',
      `127.0.0.1:${ports[0]}`,
      '--data',
      join(dir.path, 's1'),
      '--peers',
      peers,
    ];
    const refuses = async (extra: string[], why: RegExp) => {
      const r = await runNode(serverBin, [...base, ...extra]).done;
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr, why);
      t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    };
    await refuses(
      [],
      /^segmem-server: a member of a replicated group needs the cluster secret: --cluster-secret-file FILE/,
    );
    const open = join(dir.path, 'open-secret');
    createClusterSecretFile(open);
    chmodSync(open, 0o644);
    await refuses(
      ['--cluster-secret-file', open],
      /cluster secret file .*open-secret: mode 0644 lets its group and other users at it; chmod 600 it/,
    );
    const short = join(dir.path, 'short-secret');
    writeFileSync(short, '0123456789abcdef\n', { mode: 0o600 });
    await refuses(['--cluster-secret-file', short], /8 bytes is too short \(at least 16\)/);
    await refuses(['--cluster-secret-file', join(dir.path, 'missing')], /cannot read it/);

    // The first start records the secret's fingerprint; another secret is refused, unless rotated.
    const first = join(dir.path, 'first-secret');
    const second = join(dir.path, 'second-secret');
    createClusterSecretFile(first);
    createClusterSecretFile(second);
    const member = await startServerProcess({
      id: 's1',
      listen: `127.0.0.1:${ports[0]}`,
      dataDir: join(dir.path, 's1'),
      extra: ['--peers', peers, '--cluster-secret-file', first],
    });
    t.is(await member.stop(), 0);
    const meta = JSON.parse(readFileSync(join(dir.path, 's1', 'meta.json'), 'utf8'));
    t.regex(meta.secretFingerprint, /^[0-9a-f]{64}$/);
    t.false(
      readFileSync(join(dir.path, 's1', 'meta.json'), 'utf8').includes(readFileSync(first, 'utf8').trim()),
    );
    await refuses(['--cluster-secret-file', second], /was started with another cluster secret/);
    const rotated = await startServerProcess({
      id: 's1',
      listen: `127.0.0.1:${ports[0]}`,
      dataDir: join(dir.path, 's1'),
      extra: ['--peers', peers, '--cluster-secret-file', second, '--rotate-cluster-secret'],
    });
    t.is(await rotated.stop(), 0);
    await refuses(['--cluster-secret-file', first], /was started with another cluster secret/);
  } finally {
    dir.cleanup();
  }
});

test('segmem secret new writes 32 random bytes as hex with mode 0600, and never overwrites a file', async (t) => {
  const dir = tempDir();
  try {
    const file = join(dir.path, 'cluster-secret');
    const made = await runNode(segmemBin, ['secret', 'new', file]).done;
    t.is(made.code, 0, made.stderr);
    t.regex(made.stdout, /^created .*cluster-secret \(fingerprint [0-9a-f]{16}\)\n$/);
    t.is(statSync(file).mode & 0o777, 0o600);
    const text = readFileSync(file, 'utf8');
    t.regex(text, /^[0-9a-f]{64}\n$/);
    const again = await runNode(segmemBin, ['secret', 'new', file]).done;
    t.is(again.code, 1);
    t.regex(again.stderr, /^segmem: .*already exists; a secret is never overwritten.*\(ALREADY_EXISTS\)\n$/);
    t.is(readFileSync(file, 'utf8'), text, 'the secret is unchanged');
    const short = await runNode(segmemBin, ['secret', 'new', join(dir.path, 'short'), '--bytes', '8']).done;
    t.is(short.code, 1);
    t.regex(short.stderr, /--bytes must be an integer 16\.\.1024/);
  } finally {
    dir.cleanup();
  }
});
