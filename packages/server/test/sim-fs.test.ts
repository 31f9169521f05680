/**
 * Cluster members crash and restart over the simulated disk (sim/fs.ts): the shipped storage code (DataDir,
 * DiskRaftStorage, the WAL's writes and its recovery, the vote file) runs over a disk that loses or tears
 * what was not synced, flips bits on the medium, fills up, and (the broken variant) skips an fdatasync.
 * Nothing here touches the real disk or waits for real time.
 */
import { PROTOCOL_VERSION, SegmemError } from '@segmem/protocol';
import test from 'ava';
import type { ClusterNodeOptions } from '../src/cluster.js';
import type { SegmemNode } from '../src/node/index.js';
import { connectLocal } from '../src/shell/local.js';
import { SimClock, SimEnv } from '../src/sim/env.js';
import { SimFs } from '../src/sim/fs.js';
import { Prng } from '../src/sim/prng.js';
import { Wal } from '../src/storage/wal.js';
import { FrameClient, RealSim } from './sim-members.js';

const SEGMENT = '/sim/s1/wal/00000000000000000001.wal';
const OBJECT_BYTES = 8192;

/** A client of `node` that created the object `counter` and writes it, one acknowledged write at a time. */
class Writer {
  private readonly client: FrameClient;
  private seq = 1;

  private constructor(client: FrameClient) {
    this.client = client;
  }

  static async open(sim: RealSim, node: SegmemNode): Promise<Writer> {
    const client = new FrameClient(sim, connectLocal(node));
    await client.call({ type: 'HELLO', protocol: PROTOCOL_VERSION, sessionTimeoutMs: 60_000 });
    const w = new Writer(client);
    await client.call({
      type: 'CREATE',
      seq: w.seq++,
      name: 'counter',
      size: OBJECT_BYTES,
      ifNotExists: true,
    });
    return w;
  }

  private async acquire(): Promise<number> {
    const grant = await this.client.call(
      {
        type: 'ACQUIRE',
        seq: this.seq++,
        name: 'counter',
        mode: 'write',
        cachedId: 0,
        cachedVersion: 0,
        timeoutMs: null,
      },
      5000,
      1,
    );
    return grant.token;
  }

  private release(token: number, payload: Buffer) {
    return {
      type: 'RELEASE' as const,
      seq: this.seq++,
      name: 'counter',
      mode: 'write' as const,
      token,
      ranges: [[0, payload.length]] as [number, number][],
      payload,
    };
  }

  /**
   * Writes `payload` at offset 0 (`beforeRelease` runs once the lock is granted, right before the write is
   * sent); resolves with the version the acknowledgement names.
   */
  async write(payload: Buffer, beforeRelease?: () => void): Promise<number> {
    const token = await this.acquire();
    beforeRelease?.();
    // Checked every simulated ms: the clock stops as soon as the write is acknowledged.
    const released = await this.client.call(this.release(token, payload), 5000, 1);
    return released.version;
  }

  /** Sends a write and lets it reach the leader's WAL (the page cache), without waiting for its answer. */
  async writeUnacknowledged(sim: RealSim, payload: Buffer): Promise<void> {
    const token = await this.acquire();
    this.client.send(this.release(token, payload));
    await sim.run(0);
  }
}

/** A simulated disk on a clock of its own, and a way to run that clock until a promise settles. */
function disk(seed: number) {
  const clock = new SimClock(0);
  const env = new SimEnv(clock, new Prng(seed));
  const fs = new SimFs(env.process(), new Prng(seed + 1000), { fsyncMaxMs: 8 });
  /** Runs the clock (at most 1 simulated s) until `p` settles; resolves or rejects as it does. */
  const settle = async <T>(p: Promise<T>): Promise<T> => {
    let settled = false;
    const tracked = p.finally(() => {
      settled = true;
    });
    tracked.catch(() => {});
    for (let ms = 0; ms < 1000 && !settled; ms++) {
      clock.runUntil(clock.nowMs + 1);
      await new Promise((r) => setImmediate(r));
    }
    return tracked;
  };
  /** Whether `p` settles within `ms` simulated ms. */
  const settlesWithin = async (p: Promise<unknown>, ms: number): Promise<boolean> => {
    let settled = false;
    p.then(
      () => {
        settled = true;
      },
      () => {
        settled = true;
      },
    );
    for (let i = 0; i < ms && !settled; i++) {
      clock.runUntil(clock.nowMs + 1);
      await new Promise((r) => setImmediate(r));
    }
    return settled;
  };
  return { clock, fs, settle, settlesWithin };
}

/** `/d` made durable, and in it `name` created with its entry durable: what a crash cannot take. */
async function durableFile(d: ReturnType<typeof disk>, name: string): Promise<number> {
  await d.fs.mkdir('/d');
  await d.settle(d.fs.fsyncDir('/'));
  const fd = await d.fs.open(`/d/${name}`, 'wx');
  await d.settle(d.fs.fsyncDir('/d'));
  return fd;
}

async function errCode(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code;
  }
}

test('SimFs: a write is read at once, and survives a crash only once its fdatasync has completed', async (t) => {
  const d = disk(1);
  const fd = await durableFile(d, 'f');
  await d.fs.writev(fd, [Buffer.from('hello ')], 0);
  t.is((await d.fs.readFile('/d/f')).toString(), 'hello ');
  await d.settle(d.fs.fdatasync(fd));
  await d.fs.writev(fd, [Buffer.from('world')], 6);
  const pending = d.fs.fdatasync(fd);
  d.fs.crash('/d', 'lost');
  t.false(await d.settlesWithin(pending, 100), 'a sync pending at the crash never completes');
  t.is((await d.fs.readFile('/d/f')).toString(), 'hello ', 'the unsynced write is lost');
  t.is(
    await errCode(d.fs.writev(fd, [Buffer.from('x')], 0)),
    'EBADF',
    "the dead process's descriptor is closed",
  );
  const again = await d.fs.open('/d/f', 'r+');
  await d.fs.writev(again, [Buffer.from('world')], 6);
  d.fs.crash('/d', 'kept');
  t.is((await d.fs.readFile('/d/f')).toString(), 'hello world', "'kept': the cache reached the medium");
});

test('SimFs: creating, renaming and removing an entry is durable only after its directory is fsynced', async (t) => {
  const d = disk(2);
  const fd = await durableFile(d, 'a');
  await d.fs.writev(fd, [Buffer.from('A')], 0);
  await d.settle(d.fs.fsync(fd));
  await d.fs.close(fd);
  const created = await d.fs.open('/d/new', 'wx');
  await d.settle(d.fs.fsync(created));
  await d.fs.rename('/d/a', '/d/b');
  t.deepEqual((await d.fs.readdir('/d')).sort(), ['b', 'new']);
  d.fs.crash('/d', 'kept');
  t.deepEqual(await d.fs.readdir('/d'), ['a'], 'no directory fsync: the old entries');
  t.is((await d.fs.readFile('/d/a')).toString(), 'A');
  await d.fs.rename('/d/a', '/d/b');
  await d.fs.rm('/d/nothing');
  await d.settle(d.fs.fsyncDir('/d'));
  d.fs.crash('/d');
  t.deepEqual(await d.fs.readdir('/d'), ['b']);
  await d.fs.rm('/d/b');
  d.fs.crash('/d');
  t.deepEqual(await d.fs.readdir('/d'), ['b'], 'a removal not fsynced comes back');
});

test('SimFs: a torn file keeps the new bytes up to a sector boundary and the old ones after it', async (t) => {
  const cuts = new Set<number>();
  for (let seed = 1; seed <= 10; seed++) {
    const d = disk(seed);
    const fd = await durableFile(d, 'f');
    await d.fs.writev(fd, [Buffer.alloc(4096, 1)], 0);
    await d.settle(d.fs.fdatasync(fd));
    await d.fs.writev(fd, [Buffer.alloc(2048, 2)], 1024);
    d.fs.crash('/d', 'torn');
    const b = await d.fs.readFile('/d/f');
    t.is(b.length, 4096);
    let cut = 1024;
    while (cut < 3072 && b[cut] === 2) cut++;
    t.is(cut % 512, 0, `seed ${seed}: cut at a sector boundary`);
    t.true(b.subarray(0, 1024).every((x) => x === 1) && b.subarray(cut).every((x) => x === 1));
    cuts.add(cut);
  }
  t.true(
    [...cuts].some((c) => c > 1024 && c < 3072),
    `cuts ${[...cuts]}: some inside the write`,
  );
});

test('SimFs: locks are held until released or their process crashes', async (t) => {
  const d = disk(3);
  await d.fs.mkdir('/m/s1');
  const lock = await d.fs.lock('/m/s1');
  const err = await t.throwsAsync(d.fs.lock('/m/s1'));
  t.true(SegmemError.is(err) && err.code === 'UNAVAILABLE');
  await lock.release();
  await d.fs.lock('/m/s1');
  d.fs.crash('/m/s1');
  await t.notThrowsAsync(d.fs.lock('/m/s1'));
});

test('SimFs faults: a bit flipped on the medium, a failed read, a full disk, no clones', async (t) => {
  const d = disk(4);
  const fd = await durableFile(d, 'f');
  await d.fs.writev(fd, [Buffer.from([0, 0, 0, 0])], 0);
  await d.settle(d.fs.fdatasync(fd));
  d.fs.flipBit('/d/f', 2, 1);
  t.deepEqual([...(await d.fs.readFile('/d/f'))], [0, 0, 2, 0]);
  d.fs.crash('/d');
  t.deepEqual([...(await d.fs.readFile('/d/f'))], [0, 0, 2, 0], 'on the medium');
  t.throws(() => d.fs.flipBit('/d/f', 4), { message: /not among the 4 durable bytes/ });

  d.fs.failNextRead('/d');
  t.is(await errCode(d.fs.readFile('/d/f')), 'EIO');
  t.is((await d.fs.readFile('/d/f')).length, 4, 'once');

  d.fs.full = true;
  t.is(await errCode(d.fs.open('/d/g', 'wx')), 'ENOSPC');
  const f = await d.fs.open('/d/f', 'r+');
  t.is(await errCode(d.fs.writev(f, [Buffer.from('x')], 0)), 'ENOSPC');
  t.is(await errCode(d.fs.mkdir('/d/sub')), 'ENOSPC');
  d.fs.full = false;
  t.is(await d.fs.writev(f, [Buffer.from('x')], 0), 1);
  t.is(await errCode(d.fs.cloneFile('/d/f', '/d/h')), 'ENOTSUP');
  t.is(await errCode(d.fs.open('/d/f', 'wx')), 'EEXIST');
  t.is(await errCode(d.fs.open('/d/none', 'r')), 'ENOENT');
  t.is(await errCode(d.fs.mkdir('/d/f')), 'EEXIST');
  t.is(await errCode(d.fs.mkdir('/d/f/x')), 'ENOTDIR');
});

function payloadOf(i: number, bytes = 16): Buffer {
  return Buffer.alloc(bytes, i + 1);
}

/** The object as member `node` holds it, once it leads and has applied its whole log. */
async function counterAfterRecovery(sim: RealSim, node: SegmemNode) {
  await sim.until(
    () => {
      const r = node.raftStatus?.();
      return r !== undefined && r.role === 'leader' && r.commitIndex === r.lastIndex;
    },
    10_000,
    'the member leading again',
  );
  // The leader applies what it committed on the next turns.
  await sim.run(50);
  const obj = node.sm.objectNamed('counter');
  return { version: obj?.version ?? 0, data: obj?.data ?? null };
}

/** A one-member group that acknowledged `writes` writes; returns what the last acknowledgement said. */
async function oneMemberWith(seed: number, writes: number, options: Partial<ClusterNodeOptions> = {}) {
  const sim = new RealSim(seed);
  sim.addresses.s1 = '10.0.0.1:7401';
  const node = await sim.open('s1', sim.addresses, options);
  await sim.until(() => node.status().leader, 5000, 'a leader');
  const writer = await Writer.open(sim, node);
  let version = 0;
  for (let i = 0; i < writes; i++) version = await writer.write(payloadOf(i));
  return { sim, node, writer, version, payload: payloadOf(writes - 1) };
}

test('a member crashes right after acknowledging writes: every acknowledged write is there after it restarts', async (t) => {
  for (const [seed, unsynced] of [
    [1, 'lost'],
    [2, undefined],
    [3, undefined],
  ] as const) {
    const { sim, version, payload } = await oneMemberWith(seed, 20);
    sim.crash('s1', unsynced);
    const node = await sim.open('s1');
    const after = await counterAfterRecovery(sim, node);
    t.is(after.version, version, `seed ${seed}: the version of the last acknowledged write`);
    t.deepEqual(after.data?.subarray(0, payload.length), payload, `seed ${seed}: its bytes`);
    await sim.stop();
  }
});

test('snapshots on the simulated disk: written as page files (the copy path), loaded after a crash', async (t) => {
  for (const seed of [1, 2]) {
    const { sim, version, payload } = await oneMemberWith(seed, 40, { snapshotEveryEntries: 20 });
    const lines = sim.logs.get('s1')!;
    await sim.until(() => lines.some((l) => /^snapshot at index \d+: copy/.test(l)), 5000, 'a snapshot');
    const snaps = (await sim.fs.readdir('/sim/s1/snap')).filter((n) => n.endsWith('.snap'));
    t.true(snaps.length > 0, `seed ${seed}: snapshot files ${snaps}`);
    sim.crash('s1');
    const node = await sim.open('s1', sim.addresses, { snapshotEveryEntries: 20 });
    const after = await counterAfterRecovery(sim, node);
    t.is(after.version, version, `seed ${seed}`);
    t.deepEqual(after.data?.subarray(0, payload.length), payload);
    await sim.stop();
  }
});

test('a torn unsynced WAL tail is cut and reported at restart; nothing acknowledged is lost', async (t) => {
  let torn = 0;
  for (let seed = 1; seed <= 12 && torn < 2; seed++) {
    const { sim, writer, version, payload } = await oneMemberWith(seed, 5);
    // A large write in the WAL's page cache, not yet synced, when the process dies: sectors of it reach
    // the medium, the rest does not.
    await writer.writeUnacknowledged(sim, payloadOf(99, 6000));
    sim.crash('s1', 'torn');
    const node = await sim.open('s1');
    const after = await counterAfterRecovery(sim, node);
    t.true(after.version >= version, `seed ${seed}: version ${after.version}, acknowledged ${version}`);
    if (after.version === version)
      t.deepEqual(after.data?.subarray(0, payload.length), payload, `seed ${seed}: the acknowledged bytes`);
    if (
      sim.logs
        .get('s1')!
        .some((l) => /^recovery: truncated torn WAL tail in .* \(\d+ bytes: torn record/.test(l))
    )
      torn++;
    await sim.stop();
  }
  t.is(torn, 2, 'two runs tore the record being written');
});

test('a bit flipped in a durable WAL record: a member of three heals and catches up; a lone member refuses', async (t) => {
  // A member of three: the others hold every committed entry.
  const sim = new RealSim(5);
  await sim.start(['s1', 's2', 's3']);
  await sim.until(() => sim.leaders().length === 1, 10_000, 'a leader');
  const writer = await Writer.open(sim, sim.nodes.get(sim.leaders()[0]!)!);
  for (let i = 0; i < 30; i++) await writer.write(payloadOf(i));
  sim.crash('s1', 'lost');
  const durable = sim.fs.durableBytes(SEGMENT)!;
  sim.fs.flipBit(SEGMENT, Math.floor(durable / 2), 3);
  const healed = await sim.open('s1');
  const lines = sim.logs.get('s1')!;
  t.true(
    lines.some((l) => /^recovery: healed: WAL damaged at .*: cut there, dropping WAL records/.test(l)),
    lines.join('\n'),
  );
  await sim.until(
    () => lines.some((l) => l.startsWith('recovery: caught up from the leader after the repair')),
    20_000,
    'the healed member catching up',
  );
  const digest = () => new Set([...sim.nodes.values()].map((n) => n.status().digest)).size === 1;
  await sim.until(digest, 5000, 'the members agreeing');
  t.is(healed.sm.objectNamed('counter')?.version, sim.nodes.get('s2')!.sm.objectNamed('counter')?.version);
  await sim.stop();

  // The only voter of its group has nobody to heal from: it refuses, as a single server does.
  const lone = await oneMemberWith(6, 30);
  lone.sim.crash('s1', 'lost');
  lone.sim.fs.flipBit(SEGMENT, Math.floor(lone.sim.fs.durableBytes(SEGMENT)! / 2), 3);
  const err = await t.throwsAsync(lone.sim.open('s1'));
  t.true(
    SegmemError.is(err) && err.code === 'UNAVAILABLE' && err.details?.reason === 'WAL_CORRUPT',
    String(err),
  );
});

test('a full disk stalls the WAL (onStall) and it resumes, losing nothing, once space is back', async (t) => {
  const clock = new SimClock(0);
  const env = new SimEnv(clock, new Prng(9));
  const fs = new SimFs(env.process(), new Prng(10), { fsyncMaxMs: 8 });
  const stalls: (string | null)[] = [];
  const run = async (ms: number) => {
    clock.runUntil(clock.nowMs + ms);
    await new Promise((r) => setImmediate(r));
  };
  const opening = Wal.open({
    dir: '/sim/w/wal',
    fsync: 'batch',
    fs,
    env,
    onStall: (s) => stalls.push(s ? (s.details?.reason as string) : null),
  });
  for (let i = 0; i < 10; i++) await run(10);
  const { wal } = await opening;
  const first = wal.append(Buffer.from('one'));
  const durableFirst = wal.waitDurable(first);
  for (let i = 0; i < 10; i++) await run(10);
  await durableFirst;
  fs.full = true;
  const second = wal.append(Buffer.from('two'));
  let durable = false;
  void wal.waitDurable(second).then(() => {
    durable = true;
  });
  for (let i = 0; i < 20; i++) await run(10);
  t.deepEqual(stalls, ['NO_SPACE']);
  t.false(durable);
  const refused = t.throws(() => wal.append(Buffer.from('three')));
  t.is((refused as SegmemError).details?.reason, 'NO_SPACE');
  fs.full = false;
  for (let i = 0; i < 300 && !durable; i++) await run(10);
  t.true(durable, 'the queued record became durable');
  t.deepEqual(stalls, ['NO_SPACE', null]);
  const closing = wal.close();
  for (let i = 0; i < 10; i++) await run(10);
  await closing;
  fs.crash('/sim/w', 'lost');
  const reopening = Wal.open({ dir: '/sim/w/wal', fsync: 'batch', fs, env });
  for (let i = 0; i < 10; i++) await run(10);
  const { records } = await reopening;
  t.deepEqual(
    records.map((r) => r.payload.toString()),
    ['one', 'two'],
  );
});

test('a WAL that skips one fdatasync loses an acknowledged write in a crash (the broken variant bites)', async (t) => {
  const { sim, writer, version, payload } = await oneMemberWith(4, 5);
  const lostVersion = await writer.write(payloadOf(50), () => sim.fs.skipFsync('/sim/s1/wal'));
  t.is(lostVersion, version + 1);
  sim.crash('s1', 'lost');
  const node = await sim.open('s1');
  const after = await counterAfterRecovery(sim, node);
  t.is(after.version, version, 'the write acknowledged after the skipped fdatasync is gone');
  t.deepEqual(after.data?.subarray(0, payload.length), payload);
  await sim.stop();
});

test('a failed read of the vote file at restart: the member rebuilds it from the WAL and goes on', async (t) => {
  const { sim, version, payload } = await oneMemberWith(7, 5);
  sim.crash('s1', 'lost');
  sim.fs.failNextRead('/sim/s1/vote');
  const node = await sim.open('s1');
  const lines = sim.logs.get('s1')!;
  t.true(
    lines.some((l) => /^recovery: cannot read \/sim\/s1\/vote: EIO: .*; rewritten from the WAL$/.test(l)),
    lines.join('\n'),
  );
  const after = await counterAfterRecovery(sim, node);
  t.is(after.version, version);
  t.deepEqual(after.data?.subarray(0, payload.length), payload);
  await sim.stop();
});

test('the WAL-started marker is durable once the first record is reported durable: after a crash, losing the log is refused', async (t) => {
  for (const fate of ['lost', 'kept', 'torn'] as const) {
    const d = disk(40);
    const marker = '/sim/w/wal-started';
    const opts = { dir: '/sim/w/wal', fsync: 'batch' as const, fs: d.fs, startedMarker: marker };
    const { wal } = await d.settle(Wal.open(opts));
    t.is(d.fs.durableBytes(marker), undefined, 'no marker before a record is durable');
    await d.settle(wal.waitDurable(wal.append(Buffer.from('one'))));
    // The crash comes right after the acknowledgement: the marker must survive it, whatever else is lost.
    d.fs.crash('/sim/w', fate);
    t.not(d.fs.durableBytes(marker), undefined, `${fate}: the marker survived`);
    const reopened = await d.settle(Wal.open(opts));
    t.deepEqual(
      reopened.records.map((r) => r.payload.toString()),
      ['one'],
    );
    await d.settle(reopened.wal.close());
    for (const name of await d.fs.readdir('/sim/w/wal')) await d.fs.rm(`/sim/w/wal/${name}`);
    await d.settle(d.fs.fsyncDir('/sim/w/wal'));
    d.fs.crash('/sim/w', fate);
    const err = await t.throwsAsync(d.settle(Wal.open(opts)));
    t.is((err as SegmemError).details?.reason, 'WAL_MISSING', fate);
  }
});
