/**
 * Three real segmem-server processes replicating with Raft, under real faults: SIGKILL of the leader,
 * SIGSTOP beyond the election timeout, restarts. Every acknowledged increment must be there exactly once,
 * and every server must end with the same state.
 *
 * The tests run one after the other: each starts three servers on ports found free a moment before, and
 * run together they loaded the machine with twenty processes and raced for ports.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { connect, SegmemError } from '../src/index.js';
import {
  bump,
  converged,
  fixturesDir,
  freePort,
  runNode,
  startServerProcess,
  statuses,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
  withCluster,
  withXfs,
} from './helpers.js';

test.serial(
  'members compact into page files (clones on XFS); a member that fell behind installs the snapshot, compacts by cloning it, restarts from it and converges',
  async (t) => {
    // On XFS where it can be mounted (then compactions after a member's first are clones), else in /tmp.
    let ran = false;
    await withXfs(t, async (mount) => {
      ran = true;
      await compactAndInstall(t, mount, 'clone');
    });
    if (!ran) {
      t.log('so it ran in the temporary directory instead (copy path)');
      await compactAndInstall(t, undefined, 'copy');
    }
  },
);

/** The snapshot lines of a member's stderr: `snapshot at index` (compactions) and `installed snapshot`. */
function snapshotLines(stderr: string): { installed: boolean; path: string; pages: number }[] {
  return [
    ...stderr.matchAll(
      /(installed )?snapshot at index \d+(?: \(term \d+\))?: (clone|copy)[^,]*, (\d+) pages/g,
    ),
  ].map((m) => ({ installed: m[1] !== undefined, path: m[2]!, pages: Number(m[3]) }));
}

async function compactAndInstall(
  t: import('ava').ExecutionContext,
  under: string | undefined,
  laterPath: 'clone' | 'copy',
): Promise<void> {
  await withCluster(
    { extra: () => ['--snapshot-every-entries', '40'], sessionTimeoutMs: 10_000, under },
    async ({ cluster, seg }) => {
      let value = 0;
      const writePages = async (times: number) => {
        for (let i = 0; i < times; i++) {
          value++;
          // One of four pages each time, so a clone writes at most four.
          await seg.update('x', (h) => h.bytes.writeUInt32LE(value, (value % 4) * 4096));
        }
      };
      await seg.create('x', 4 * 4096);
      await writePages(1);
      const leader = await waitFor(() => cluster.leader(), 'a leader');
      const behind = cluster.members.find((m) => m.id !== leader.id)!;
      await cluster.kill(behind.id);
      await writePages(100); // two entries each (acquire, release): the others compact several times meanwhile
      const leaderLines = () => snapshotLines(cluster.member(leader.id).server!.stderr());
      await waitFor(() => leaderLines().length >= 2, 'two compactions on the leader', 20_000);
      t.like(leaderLines()[0], { installed: false, path: 'copy' });
      for (const l of leaderLines().slice(1)) t.like(l, { path: laterPath });
      if (laterPath === 'clone')
        t.true(
          leaderLines()
            .slice(1)
            .every((l) => l.pages <= 4),
        );

      await cluster.startMember(behind.id);
      const behindLines = () => snapshotLines(cluster.member(behind.id).server!.stderr());
      await waitFor(() => behindLines().some((l) => l.installed), 'the snapshot installed', 20_000);
      await converged(cluster);
      await writePages(60);
      await waitFor(() => behindLines().some((l) => !l.installed), 'a compaction after the install', 20_000);
      t.like(
        behindLines().find((l) => !l.installed),
        { path: laterPath },
        'its first compaction clones the installed file where it can',
      );
      t.log(
        cluster
          .member(behind.id)
          .server!.stderr()
          .split('\n')
          .filter((l) => l.includes('snapshot at'))
          .join('\n'),
      );

      // It restarts from its own page file and the WAL after it.
      await cluster.kill(behind.id);
      await cluster.startMember(behind.id);
      await converged(cluster);
      t.is(await seg.read('x', (h) => h.bytes.readUInt32LE((value % 4) * 4096)), value);
    },
  );
}

test.serial(
  'a 3-server cluster commits writes, fails over when the leader is killed, and the counter keeps counting',
  async (t) => {
    await withCluster({ sessionTimeoutMs: 5000 }, async ({ cluster, seg }) => {
      await seg.create('compteur', 4);
      await bump(seg, 'compteur', 20);
      const leader = await waitFor(() => cluster.leader(), 'a leader');
      const killedAt = Date.now();
      await cluster.kill(leader.id);
      await bump(seg, 'compteur');
      const failoverMs = Date.now() - killedAt;
      t.log(`first write after killing the leader took ${failoverMs} ms`);
      t.true(failoverMs < 10_000);
      t.is(await seg.read('compteur', (h) => h.bytes.readUInt32LE(0)), 21);
      await cluster.startMember(leader.id);
      await converged(cluster);
    });
  },
);

test.serial(
  'under repeated leader kills, pauses and restarts, every acknowledged increment is there exactly once',
  async (t) => {
    const dir = tempDir();
    const cluster = await TestCluster.start(3, dir.path);
    const admin = await connect({ servers: cluster.addresses });
    const counters = ['c0', 'c1', 'c2'];
    try {
      for (const c of counters) await admin.create(c, 4);
      const acked = new Map<string, number>();
      const children = counters.map((name) =>
        runNode(join(fixturesDir, 'increment.mjs'), [cluster.addresses.join(','), name, '400'], {
          timeoutMs: 120_000,
          onLine: (line) => {
            const m = /^ack (\d+)$/.exec(line);
            if (m) acked.set(name, Number(m[1]));
          },
        }),
      );
      const progress = () => [...acked.values()].reduce((a, b) => a + b, 0);
      // On a failure, what every server process and writer said is what a look at it needs.
      const explain = () => {
        t.log(cluster.history());
        counters.forEach((name, i) => {
          t.log(`writer of ${name}: last ack ${acked.get(name)}; stderr:\n${children[i]!.stderr()}`);
        });
      };
      try {
        for (let round = 0; round < 3; round++) {
          const before = progress();
          await waitFor(() => progress() >= before + 30, `progress before fault round ${round}`, 30_000);
          if (round % 2 === 0) {
            const leader = await waitFor(() => cluster.leader(), 'a leader', 20_000);
            await cluster.kill(leader.id); // SIGKILL
            const after = progress();
            await waitFor(() => progress() >= after + 10, 'progress on the new leader', 30_000);
            await cluster.startMember(leader.id);
          } else {
            const victim =
              cluster.members.find((m) => m.server && m !== cluster.leader()) ?? cluster.members[0]!;
            victim.server!.proc.kill('SIGSTOP'); // longer than the election timeout, then back
            const after = progress();
            try {
              await waitFor(() => progress() >= after + 20, 'progress while a member is paused', 30_000);
            } finally {
              victim.server!.proc.kill('SIGCONT');
            }
          }
        }
        const exits = [];
        for (const c of children) exits.push(await c.done);
        const values = [];
        for (const name of counters) values.push(await admin.read(name, (h) => h.bytes.readUInt32LE(0)));
        const ok = exits.every((e) => e.code === 0) && values.every((v) => v === 400);
        exits.forEach((e, i) => {
          t.is(e.code, 0, `writer of ${counters[i]}: ${e.stderr}`);
        });
        // A writer's last ack of 400 with a smaller value means an acknowledged write was lost; a last ack
        // below 400, that the writer computed from a stale copy.
        values.forEach((v, i) => {
          t.is(v, 400, `${counters[i]}: 400 increments, last ack ${acked.get(counters[i]!)}, ${v} applied`);
        });
        if (!ok) explain();
      } catch (err) {
        explain();
        throw err;
      }
      await converged(cluster);
    } finally {
      await admin.close();
      await cluster.stopAll();
      dir.cleanup();
    }
  },
);

test.serial(
  'with 2 of 3 servers down writes fail with UNAVAILABLE within the timeout, and work again when one returns',
  async (t) => {
    await withCluster({ sessionTimeoutMs: 3000 }, async ({ cluster, seg }) => {
      await seg.create('x', 4);
      const [a, b] = cluster.members.slice(0, 2) as [
        (typeof cluster.members)[0],
        (typeof cluster.members)[0],
      ];
      await cluster.kill(a.id);
      await cluster.kill(b.id);
      const started = Date.now();
      const err = await t.throwsAsync(seg.acquireWrite('x', { timeoutMs: 1500 }));
      const waited = Date.now() - started;
      t.true(SegmemError.is(err) && (err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT'), String(err));
      t.true(waited < 6000, `failed after ${waited} ms`);
      await cluster.startMember(a.id);
      const h = await untilItWorks(
        () => seg.acquireWrite('x', { timeoutMs: 2000 }),
        'a write once a majority is back',
        30_000,
      ).catch((err) => {
        t.log(cluster.history());
        throw err;
      });
      h.bytes.writeUInt32LE(9);
      await h.release();
      t.is(await seg.read('x', (r) => r.bytes.readUInt32LE(0)), 9);
    });
  },
);

test.serial(
  'a server that accepts connections but never answers (paused, wedged) does not hold the client: it moves on',
  async (t) => {
    // The kernel completes TCP handshakes for a stopped process's listening socket: such a server
    // connects, then says nothing. This one does exactly that.
    const { createServer } = await import('node:net');
    const accepted: import('node:net').Socket[] = [];
    const silent = createServer((socket) => accepted.push(socket));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const silentAddress = `127.0.0.1:${(silent.address() as { port: number }).port}`;
    const dir = tempDir();
    const listen = `127.0.0.1:${await freePort()}`;
    let real = await startServerProcess({ dataDir: dir.path, listen });
    try {
      // Opening: the silent server is tried first, the handshake times out, the next server is used.
      let started = Date.now();
      const seg = await connect({ servers: [silentAddress, real.address] });
      t.log(`connect past a silent server took ${Date.now() - started} ms`);
      t.true(accepted.length >= 1, 'the silent server was tried first');
      t.true(Date.now() - started < 8000);
      await seg.create('x', 4);
      // Reconnecting: the real server goes; the client's reconnection reaches the silent one, which must
      // not hold it once the real one is back.
      await real.kill();
      const before = accepted.length;
      await waitFor(() => accepted.length > before, 'a reconnection attempt at the silent server', 15_000);
      real = await startServerProcess({ dataDir: dir.path, listen });
      started = Date.now();
      await untilItWorks(() => seg.stat('x'), 'the client back on the restarted server', 20_000);
      t.log(`back on the restarted server after ${Date.now() - started} ms`);
      await seg.close();
    } finally {
      for (const s of accepted) s.destroy();
      silent.close();
      await real.stop();
      dir.cleanup();
    }
  },
);

test.serial(
  'a follower that fell behind a compaction catches up from a snapshot larger than a frame (64 MiB)',
  async (t) => {
    await withCluster(
      { extra: () => ['--snapshot-every-entries', '20'], sessionTimeoutMs: 10_000 },
      async ({ cluster, seg }) => {
        const leader = await waitFor(() => cluster.leader(), 'a leader');
        const behind = cluster.members.find((m) => m !== leader)!;
        await cluster.kill(behind.id);
        // 96 MiB of object bytes, then enough commands for the others to compact past them.
        const MiB = 1024 * 1024;
        for (let i = 0; i < 3; i++) {
          await seg.create(`big${i}`, 32 * MiB);
          await seg.update(`big${i}`, (h) => {
            for (let at = 0; at < h.bytes.length; at += 4096) h.bytes.writeUInt32LE(at ^ (i + 1), at);
          });
        }
        await seg.create('n', 4);
        for (let i = 0; i < 30; i++) await seg.update('n', (h) => h.bytes.writeUInt32LE(i + 1));
        // The leader drops the entries a snapshot covers only once the snapshot is written and serialised
        // (seconds for 96 MiB on a loaded machine): until then the follower could catch up from the log.
        await waitFor(
          () => /snapshot at index \d+/.test(leader.server!.stderr()),
          "the leader's first compaction",
          60_000,
        );
        await cluster.startMember(behind.id);
        await waitFor(
          () => /installed snapshot at index \d+/.test(behind.server!.stderr()),
          `${behind.id} to install the leader's snapshot`,
          60_000,
        ).catch((err) => {
          t.log(cluster.history());
          throw err;
        });
        await converged(cluster);
        t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 30);
      },
    );
  },
);

test.serial(
  'a leader restarted from its snapshot serialises it once a follower needs it, and sends it as soon as it is made',
  async (t) => {
    await withCluster(
      { extra: () => ['--snapshot-every-entries', '40'], sessionTimeoutMs: 10_000 },
      async ({ cluster, seg }) => {
        const behind = cluster.member('s3');
        await cluster.kill(behind.id);
        await seg.create('n', 4);
        // Past the first compaction of s1 and s2, far from the next: their restarts replay few entries.
        const compacted = () =>
          ['s1', 's2'].every((id) => /snapshot at index \d+/.test(cluster.member(id).server!.stderr()));
        let n = 0;
        while (n < 100 && !compacted()) await bump(seg, 'n').then(() => n++);
        t.true(compacted(), 's1 and s2 took a snapshot');
        await bump(seg, 'n', 3);
        n += 3;
        // Both restart from their snapshots: the bytes a follower needs are not made at start.
        await cluster.kill('s1');
        await cluster.kill('s2');
        await Promise.all([cluster.startMember('s1'), cluster.startMember('s2')]);
        const leader = await waitFor(() => cluster.leader(), 'a leader', 20_000);
        const started = Date.now();
        await cluster.startMember(behind.id);
        await waitFor(
          () => /installed snapshot at index \d+/.test(behind.server!.stderr()),
          `${behind.id} to install the restarted leader's snapshot`,
          20_000,
        ).catch((err) => {
          t.log(cluster.history());
          throw err;
        });
        const ms = Date.now() - started;
        t.log(`${behind.id} installed the snapshot ${ms} ms after it started`);
        t.regex(leader.server!.stderr(), /is being serialised for the first follower that needs it/);
        // The core's own retry would come 10 s (200 ticks) after the dropped message.
        t.true(ms < 8000, `${ms} ms`);
        t.is(await untilItWorks(() => seg.read('n', (h) => h.bytes.readUInt32LE(0)), 'reading n', 20_000), n);
        await converged(cluster);
      },
    );
  },
);

test.serial('a clean shutdown of the leader hands leadership to a follower first', async (t) => {
  await withCluster({ sessionTimeoutMs: 5000 }, async ({ cluster, seg }) => {
    await seg.create('x', 4);
    const leader = await waitFor(() => cluster.leader(), 'a leader');
    const stderr = () => leader.server!.stderr();
    const code = await leader.server!.stop(); // SIGTERM
    t.is(code, 0);
    t.regex(stderr(), /handed leadership to s\d/);
    leader.server = null;
    const started = Date.now();
    await seg.update('x', (h) => h.bytes.writeUInt32LE(1));
    t.log(`first write after the leader's clean shutdown took ${Date.now() - started} ms`);
    t.is(await seg.read('x', (h) => h.bytes.readUInt32LE(0)), 1);
  });
});

test.serial(
  'membership: a new server joins with segmem cluster add, catches up, and a member is removed',
  async (t) => {
    await withCluster({ sessionTimeoutMs: 5000 }, async ({ cluster, seg, dir }) => {
      const cli = async (...args: string[]) => {
        const r = await cluster.admin(...args);
        if (r.code !== 0) t.log(cluster.history());
        t.is(r.code, 0, r.stderr);
        return r.stdout;
      };
      await seg.create('n', 4);
      await bump(seg, 'n', 30);
      const listed = await cli('list');
      const clusterId = /^cluster (\S+)$/m.exec(listed)![1]!;
      t.is(listed.trim().split('\n').length, 4, listed);
      // s4 starts as a joiner (it never campaigns), then the group adds it.
      const { address } = await cluster.startJoiner('s4', dir, clusterId);
      const added = await cli('add', 's4', address);
      t.regex(added, new RegExp(`^s4 ${address}$`, 'm'));
      await bump(seg, 'n');
      // Every member, the new one included, ends with the same state.
      await converged(cluster);
      // Remove s1 (leader or not) and stop it: the other three go on.
      const removed = await cli('remove', 's1');
      t.notRegex(removed, /^s1 /m);
      await cluster.member('s1').server?.stop();
      cluster.member('s1').server = null;
      await bump(seg, 'n');
      t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 32);
      await converged(cluster);
    });
  },
);

test.serial(
  'a member restarted with its original --peers after a compaction still reaches a member added since',
  async (t) => {
    await withCluster(
      { extra: () => ['--snapshot-every-entries', '20'], sessionTimeoutMs: 5000 },
      async ({ cluster, seg, dir }) => {
        const cli = async (...args: string[]) => {
          const r = await cluster.admin(...args);
          t.is(r.code, 0, r.stderr);
          return r.stdout;
        };
        await seg.create('n', 4);
        await bump(seg, 'n', 5);
        const clusterId = /^cluster (\S+)$/m.exec(await cli('list'))![1]!;
        const { address } = await cluster.startJoiner('s4', dir, clusterId);
        await cli('add', 's4', address);
        await cli('remove', 's3');
        await cluster.member('s3').server?.stop();
        cluster.member('s3').server = null;
        // Members s1, s2, s4. Enough commands for every member to compact past the entry that added s4.
        await bump(seg, 'n', 30);
        await converged(cluster);
        // s1 comes back with the --peers it started with, which do not name s4...
        await cluster.member('s1').server?.stop();
        await cluster.startMember('s1');
        const saved = JSON.parse(readFileSync(join(cluster.member('s1').dataDir, 'peers.json'), 'utf8'));
        t.is(saved.s4, address, 'peers.json kept the address of the added member');
        await converged(cluster);
        // ...and with s2 gone, s1 and s4 are the majority: they must reach each other to elect and commit.
        await cluster.member('s2').server?.stop();
        cluster.member('s2').server = null;
        await untilItWorks(() => bump(seg, 'n'), 'a write committed by s1 and s4', 30_000).catch((err) => {
          t.log(cluster.history());
          throw err;
        });
        t.is(await seg.read('n', (h) => h.bytes.readUInt32LE(0)), 36);
      },
    );
  },
);

test.serial(
  'followers serve the bytes of large grants; reads stay correct when a follower dies',
  async (t) => {
    const dir = tempDir();
    const cluster = await TestCluster.start(3, dir.path);
    const writer = await connect({ servers: cluster.addresses, sessionTimeoutMs: 5000 });
    const reader = await connect({ servers: cluster.addresses, sessionTimeoutMs: 5000 });
    const size = 1024 * 1024;
    try {
      await writer.create('big', size);
      let round = 0;
      /** The writer rewrites every page; the reader then needs all of them, a 1 MiB delta. */
      const writeAndCheck = async () => {
        round++;
        await writer.update('big', (h) => h.bytes.fill(round % 251));
        await reader.read('big', (h) => {
          t.is(h.bytes[0], round % 251);
          t.is(h.bytes[size - 1], round % 251);
          t.true(h.bytes.every((b) => b === round % 251));
        });
      };
      // The reader learns the members in the background; from then on its large grants are deferred.
      await waitFor(
        async () => {
          await writeAndCheck();
          return (
            (reader as unknown as { stats(): { pageReads: { fromFollowers: number } } }).stats().pageReads
              .fromFollowers > 0
          );
        },
        'a grant whose pages came from a follower',
        20_000,
      );
      const served = [...(await statuses(cluster)).values()];
      t.true(
        served.some((s) => !s.leader && s.pagesServed >= 256),
        `a follower served the pages: ${JSON.stringify(served)}`,
      );
      t.is(served.find((s) => s.leader)?.pagesServed, 0, 'the leader served none of them');

      // One follower dies: reads go on, from the other follower or from the leader, and stay right.
      const leader = await waitFor(() => cluster.leader(), 'a leader');
      const follower = cluster.members.find((m) => m.id !== leader.id)!;
      await cluster.kill(follower.id);
      for (let i = 0; i < 5; i++) await writeAndCheck();
      await cluster.startMember(follower.id);
      await converged(cluster);
    } finally {
      await reader.close().catch(() => {});
      await writer.close().catch(() => {});
      await cluster.stopAll();
      dir.cleanup();
    }
  },
);

test.serial(
  'kill -9 of all 3 servers at once under load: after a restart every acknowledged increment is there',
  async (t) => {
    const dir = tempDir();
    const cluster = await TestCluster.start(3, dir.path);
    const admin = await connect({ servers: cluster.addresses, sessionTimeoutMs: 20_000 });
    const counters = ['k0', 'k1'];
    try {
      for (const c of counters) await admin.create(c, 4);
      const acked = new Map<string, number>();
      const children = counters.map((name) =>
        runNode(join(fixturesDir, 'increment.mjs'), [cluster.addresses.join(','), name, '300'], {
          timeoutMs: 120_000,
          onLine: (line) => {
            const m = /^ack (\d+)$/.exec(line);
            if (m) acked.set(name, Number(m[1]));
          },
        }),
      );
      const progress = () => [...acked.values()].reduce((a, b) => a + b, 0);
      await waitFor(() => progress() >= 100, 'progress before the kill', 30_000);
      // Every server at once, mid-write: only what reached the disks of a majority may have been acknowledged.
      await Promise.all(cluster.members.map((m) => cluster.kill(m.id)));
      const ackedAtKill = new Map(acked);
      await Promise.all(cluster.members.map((m) => cluster.startMember(m.id)));
      for (const name of counters) {
        const value = await admin.read(name, (h) => h.bytes.readUInt32LE(0));
        t.true(
          value >= (ackedAtKill.get(name) ?? 0),
          `${name}: ${ackedAtKill.get(name)} acknowledged before the kill, ${value} after the restart`,
        );
      }
      // The writers' sessions were in the replicated state: they resume and finish, exactly once.
      for (const c of children) {
        const exit = await c.done;
        t.is(exit.code, 0, exit.stderr);
      }
      for (const name of counters) {
        t.is(await admin.read(name, (h) => h.bytes.readUInt32LE(0)), 300);
        t.is(acked.get(name), 300);
      }
      await converged(cluster);
    } finally {
      await admin.close().catch(() => {});
      await cluster.stopAll();
      dir.cleanup();
    }
  },
);
