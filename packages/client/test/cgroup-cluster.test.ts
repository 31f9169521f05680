/**
 * A member of a 3-member cluster runs in a memory cgroup (v1) with a matching `--max-memory`; writers fill
 * the cluster until the budget refuses. The member is SIGKILLed and restarted in the same cgroup: it must
 * recover without an OOM kill, catch up, and hold its part of the majority (the acknowledged writes are
 * read back with another member down). Needs root and a writable cgroup v1 memory hierarchy; elsewhere
 * the test passes with a logged reason.
 */
import { AdminSession } from '@segmem/server/internal/cli/admin-client';
import test from 'ava';
import { connect, SegmemError, type Segment } from '../src/index.js';
import {
  MemoryCgroup,
  memoryCgroupDir,
  peakRssMiB,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

const MiB = 1024 * 1024;
/** Every member's budget; the member in the cgroup gets the budget plus 256 MiB (docs/operations.md, "Memory"). */
const MAX_MEMORY_MIB = 576;
const CGROUP_LIMIT_BYTES = (MAX_MEMORY_MIB + 256) * MiB;
const OBJECT_BYTES = MiB;
/** Snapshots while the cluster fills: the member restarts from a snapshot and the WAL after it. */
const SNAPSHOT_EVERY_ENTRIES = 150;
/** Recovery of a few hundred MiB on a loaded machine (2 cores shared by three servers) may take a while. */
const READY_TIMEOUT_MS = 90_000;
const IN_CGROUP = 's3';

/** The bytes object `i` is written with: a pattern of its own, so a lost or mixed-up write shows. */
function content(i: number): Buffer {
  const b = Buffer.alloc(OBJECT_BYTES, (i * 7) % 251);
  b.writeUInt32LE(i, 0);
  b.writeUInt32LE(i, OBJECT_BYTES - 4);
  return b;
}

/** Runs `fn` on 0.., `width` at a time, until one of them returns false (or `max` were started). */
async function untilRefused(
  max: number,
  width: number,
  fn: (i: number) => Promise<boolean>,
): Promise<number> {
  let next = 0;
  let done = false;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (!done && next < max) if (!(await fn(next++))) done = true;
    }),
  );
  return next;
}

/** Where the member at `address` stands (through an election: opening the admin session needs a leader). */
function status(address: string) {
  return untilItWorks(
    async () => {
      const admin = new AdminSession({ servers: [address], timeoutMs: 5000, token: null });
      try {
        return await admin.call({ type: 'STATUS' }, 10_000);
      } finally {
        await admin.close();
      }
    },
    `the status of ${address}`,
    30_000,
  );
}

/**
 * Waits until the member in the cgroup has applied everything the other members had committed when this
 * was called.
 */
async function caughtUp(cluster: TestCluster, what: string): Promise<void> {
  let target = 0;
  for (const m of cluster.members)
    if (m.id !== IN_CGROUP) target = Math.max(target, (await status(m.address)).commitIndex);
  await waitFor(
    async () => (await status(cluster.member(IN_CGROUP).address)).appliedIndex >= target,
    what,
    60_000,
  );
}

const where = memoryCgroupDir();

test('a cluster member filled to its budget in a cgroup restarts after SIGKILL without an OOM kill, catches up and its data counts', async (t) => {
  if ('reason' in where) {
    t.log(`skipped: ${where.reason}`);
    t.pass();
    return;
  }
  t.timeout(300_000);
  const cgroup = MemoryCgroup.create(where.dir, 'segmem-member', CGROUP_LIMIT_BYTES);
  const dir = tempDir();
  let cluster: TestCluster | null = null;
  const segs: Segment[] = [];
  try {
    cluster = await TestCluster.start(3, dir.path, 'batch', () => [
      '--max-memory',
      `${MAX_MEMORY_MIB}MiB`,
      '--snapshot-every-entries',
      String(SNAPSHOT_EVERY_ENTRIES),
    ]);
    // The member goes into the cgroup before it holds anything.
    await cluster.kill(IN_CGROUP);
    await cluster.startMember(IN_CGROUP, { cgroup: cgroup.path });
    const seg = await connect({ servers: cluster.addresses });
    segs.push(seg);

    // Shared-log records (16 MiB), then objects, each written, until the budget refuses one.
    const log = seg.log('events', { maxBytes: 1024 * MiB });
    const batch = Array.from({ length: 16 }, (_, k) => Buffer.alloc(64 * 1024, k + 1));
    for (let i = 0; i < 16; i++) await log.appendBatch(batch);
    const written = new Set<number>();
    let refused: SegmemError | null = null;
    await untilRefused(1000, 4, async (i) => {
      try {
        await seg.create(`o${i}`, OBJECT_BYTES);
      } catch (err) {
        if (!SegmemError.is(err, 'NO_SPACE')) throw err;
        refused = err;
        return false;
      }
      await seg.update(`o${i}`, (h) => content(i).copy(h.bytes));
      written.add(i);
      return true;
    });
    t.like((refused as SegmemError | null)?.details, { budget: 'max-memory' });
    t.true(written.size > 150, `${written.size} objects of 1 MiB admitted`);

    const member = cluster.member(IN_CGROUP);
    const runPid = member.server!.proc.pid!;
    await caughtUp(cluster, `${IN_CGROUP} caught up before the kill`);
    t.is(cgroup.oomKills(), 0, 'no OOM kill while filling');
    t.log(
      `${written.size} objects of 1 MiB; ${IN_CGROUP} peak RSS ${peakRssMiB(runPid)} MiB running, cgroup limit ` +
        `${CGROUP_LIMIT_BYTES / MiB} MiB`,
    );

    // SIGKILL, then a restart in the same cgroup: recovery must fit.
    await cluster.kill(IN_CGROUP);
    try {
      await cluster.startMember(IN_CGROUP, { cgroup: cgroup.path, readyTimeoutMs: READY_TIMEOUT_MS });
    } catch (err) {
      t.fail(
        `${IN_CGROUP} did not restart (OOM kills in its cgroup: ${cgroup.oomKills()}): ${(err as Error).message}`,
      );
      return;
    }
    const restarted = member.server!;
    await caughtUp(cluster, `${IN_CGROUP} caught up after the restart`);
    t.is(cgroup.oomKills(), 0, 'no OOM kill during recovery');
    t.is(restarted.proc.exitCode, null, 'still running');
    t.is(restarted.proc.signalCode, null, 'not killed');
    t.log(`${IN_CGROUP} restart: peak RSS ${peakRssMiB(restarted.proc.pid!)} MiB`);

    // Another member goes (the leader, unless it is the restarted one): the restarted member is now part of
    // every majority, and every acknowledged write must still be there.
    const leader = (await status(cluster.member('s1').address)).leader;
    const gone = leader === 's2' ? 's2' : 's1';
    await cluster.kill(gone);
    const after = await connect({ servers: cluster.addresses });
    segs.push(after);
    const wrong: string[] = [];
    for (const i of written) {
      const same = await untilItWorks(
        () => after.read(`o${i}`, (h) => h.bytes.equals(content(i))),
        `reading o${i} with ${gone} down`,
        30_000,
      );
      if (!same) wrong.push(`o${i}`);
    }
    t.deepEqual(wrong, [], 'every object holds its acknowledged write');
    let records = 0;
    for await (const r of after.log('events').read({ from: 0 })) {
      if (!r.data.equals(batch[r.seq % 16]!)) throw new Error(`record ${r.seq} differs`);
      records++;
      if (r.seq === 16 * 16 - 1) break;
    }
    t.is(records, 16 * 16);
    t.is(cgroup.oomKills(), 0, 'no OOM kill while serving after the restart');
    t.is(restarted.proc.exitCode ?? restarted.proc.signalCode, null, 'the restarted member still runs');
  } catch (err) {
    t.log(`OOM kills in the cgroup: ${cgroup.oomKills()}`);
    if (cluster) t.log(cluster.history());
    throw err;
  } finally {
    await Promise.all(segs.map((s) => s.close().catch(() => {})));
    if (cluster) for (const m of cluster.members) await cluster.kill(m.id);
    await cgroup.remove().catch((err) => t.log(String(err)));
    dir.cleanup();
  }
});
