/**
 * What the memory budget counts beyond the state, with real server processes and raw sockets: a snapshot
 * a member announces in pieces (refused past the budget before anything is held), the bytes connections
 * receive and queue (a connection starting a large frame the budget has no room for is not read until it
 * has), and sessions (a new one is refused when the budget is full).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeError, encodeFrame, encodeRequest, MessageType } from '@segmem/protocol';
import { readClusterSecretFile } from '@segmem/server/internal/secret-file';
import { PeerMessageType } from '@segmem/server/internal/shell/peer-codec';
import test from 'ava';
import { connect, SegmemError, type Segment } from '../src/index.js';
import {
  bump,
  converged,
  procStatusKiB,
  RawConnection,
  rawPeer,
  startServerProcess,
  TestCluster,
  tempDir,
  waitFor,
} from './helpers.js';

const MiB = 1024 * 1024;
const BUDGET = 256 * MiB;

/** The metrics a server logged (`--metrics 127.0.0.1:0`), scraped. */
async function scrape(stderr: string): Promise<string> {
  const at = /metrics on http:\/\/(\S+)\/metrics/.exec(stderr);
  if (!at) throw new Error('the server logged no metrics address');
  return (await fetch(`http://${at[1]}/metrics`)).text();
}

function gauge(text: string, name: string, labels = ''): number {
  const m = new RegExp(`^${name}${labels.replace(/[{}]/g, '\\$&')} (\\d+)$`, 'm').exec(text);
  if (!m) throw new Error(`no ${name}${labels} in the metrics`);
  return Number(m[1]);
}

/** Creates objects of `size` until the budget refuses one (bounded); returns how many were made. */
async function fill(seg: Segment, prefix: string, size: number, most: number): Promise<number> {
  for (let i = 0; i < most; i++) {
    try {
      await seg.create(`${prefix}${i}`, size);
    } catch (err) {
      if (SegmemError.is(err, 'NO_SPACE')) return i;
      throw err;
    }
  }
  throw new Error(`${most} objects of ${size} bytes fit: the budget never refused`);
}

test('a member refuses a snapshot announced past its budget before holding it, says why, and the group serves on', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path, 'batch', () => ['--max-memory', '256MiB']);
  try {
    const seg = await connect({ servers: cluster.addresses });
    try {
      await seg.create('counter', 8);
      await bump(seg, 'counter', 1);
      const leader = await waitFor(() => cluster.leader(), 'a leader');
      const follower = cluster.members.find((m) => m.id !== leader.id)!;
      const pid = follower.server!.proc.pid!;
      const meta = JSON.parse(readFileSync(join(follower.dataDir, 'meta.json'), 'utf8'));
      const peakBefore = procStatusKiB(pid, 'VmHWM');
      // A member gone wrong (it holds the secret) announces a 3 GiB snapshot, then sends 320 MiB of it.
      const rogue = await rawPeer(
        follower.address,
        { clusterId: meta.clusterId, from: leader.id, to: follower.id },
        readClusterSecretFile(cluster.secretFile),
      );
      const piece = Buffer.alloc(16 * MiB, 7);
      const total = 3 * 1024 * MiB;
      for (let i = 0; i < 20; i++) {
        const head = { index: 1_000_000, term: 1, offset: i * piece.length, total };
        rogue.write(encodeFrame(PeerMessageType.RAFT_PIECE, 1, 0, head, piece));
      }
      const answer = await rogue.next();
      t.is(answer?.type, MessageType.ERROR, 'the member answered the first piece with an error');
      const refused = decodeError(answer!);
      t.is(refused.code, 'NO_SPACE');
      t.regex(refused.message, /snapshot 1000000 \(term 1\) of 3221225472 bytes refused/);
      t.like(refused.details, { budget: 'max-memory', neededBytes: total });
      await rogue.closed;
      await waitFor(
        () =>
          new RegExp(
            `peer link from ${leader.id} closed: snapshot 1000000 \\(term 1\\) of 3221225472 bytes refused`,
          ).test(follower.server!.stderr()),
        'the follower to log why it closed the link',
      );
      const grewMiB = (procStatusKiB(pid, 'VmHWM') - peakBefore) / 1024;
      t.log(`the follower's peak resident memory grew by ${grewMiB.toFixed(1)} MiB`);
      // One piece (16 MiB) is received whole before its header is read, and copied out of the socket's chunks.
      t.true(
        grewMiB < 100,
        `the follower held none of the 320 MiB sent (peak grew ${grewMiB.toFixed(1)} MiB)`,
      );
      // The group, that follower included, goes on.
      await bump(seg, 'counter', 1);
      await converged(cluster);
      t.is(await seg.read('counter', (h) => h.view.getUint32(0, true)), 2);
      t.is(follower.server!.proc.exitCode, null, 'the follower runs on');
    } finally {
      await seg.close();
    }
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('with the budget full, new sessions are refused, large frames wait for room unread, and connections are counted', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({
    dataDir: dir.path,
    fsync: 'none',
    extra: ['--max-memory', '256MiB', '--metrics', '127.0.0.1:0'],
  });
  const seg = await connect({ servers: [server.address] });
  const raws: RawConnection[] = [];
  /** Sessions opened after the data filled its share of the budget. */
  const reserveRaws: RawConnection[] = [];
  try {
    // Ten sessions on raw sockets (they send no keepalives: a long timeout), opened while there is room.
    for (let i = 0; i < 10; i++) {
      const raw = await RawConnection.open(server.address);
      raws.push(raw);
      await raw.hello({ sessionTimeoutMs: 300_000 });
    }
    // Fill the budget: objects of 1 MiB, then of 64 KiB, until refused.
    const big = await fill(seg, 'big', MiB, 200);
    const small = await fill(seg, 'small', 64 * 1024, 100);
    t.log(`${big} objects of 1 MiB and ${small} of 64 KiB fill the budget`);

    // Data stops short of the limit by the session reserve: a client can still connect (to delete), until
    // new sessions have used the reserve too.
    const late = await connect({ servers: [server.address] });
    t.is((await late.stat('big0')).size, MiB);
    await late.close();
    // Each session's connection is closed once it is open (the session lives on, for its timeout), so the
    // limit of connections per address does not come first.
    let inReserve = 0;
    for (let i = 0; i <= 64; i++) {
      const raw = await RawConnection.open(server.address);
      reserveRaws.push(raw);
      const admitted = await raw.hello({ sessionTimeoutMs: 300_000 }).then(
        () => true,
        (err: unknown) => {
          if (SegmemError.is(err, 'UNAVAILABLE') && err.details?.budget === 'max-memory') return false;
          throw err;
        },
      );
      raw.close();
      if (!admitted) break;
      inReserve++;
    }
    t.log(`${inReserve} new sessions fit in the reserve after the data filled its share`);
    t.true(inReserve >= 32, `${inReserve} sessions`);
    // A new session does not fit now: refused at once with the budget named, nothing changed.
    const sessionsBefore = gauge(await scrape(server.stderr()), 'segmem_sessions');
    const refused = await t.throwsAsync(connect({ servers: [server.address] }), { code: 'UNAVAILABLE' });
    t.like((refused as SegmemError).details, { budget: 'max-memory', limitBytes: BUDGET });
    t.regex(refused!.message, /memory budget full: a new session needs 256 KiB/);
    let text = await scrape(server.stderr());
    t.is(gauge(text, 'segmem_sessions'), sessionsBefore);
    // The parts add up to what the budget counts; the sessions are among them.
    const parts = [...text.matchAll(/^segmem_memory_counted_bytes\{part="(\w+)"\} (\d+)$/gm)];
    t.true(parts.length >= 8, `${parts.length} parts`);
    t.is(
      parts.reduce((sum, m) => sum + Number(m[2]), 0),
      gauge(text, 'segmem_memory_used_bytes'),
    );
    t.is(
      gauge(text, 'segmem_memory_counted_bytes', '{part="sessions"}'),
      (sessionsBefore as number) * 256 * 1024,
    );

    // Eight appends of just under 8 MiB, each sent but for its last byte: let in (the 64 MiB reserve for
    // frames being received) although the budget is full, and counted while held.
    const frames = raws.map((_, i) => {
      const records = Array.from({ length: 8 }, (_, r) => Buffer.alloc(r === 0 ? MiB - 64 * 1024 : MiB, i));
      const req = {
        type: 'LOG_APPEND' as const,
        seq: 1,
        name: `log${i}`,
        sizes: records.map((r) => r.length),
        maxBytes: null,
        payload: Buffer.concat(records),
      };
      return Buffer.concat(encodeRequest(req, 99));
    });
    const frameBytes = frames[0]!.length;
    for (let i = 0; i < 8; i++) {
      raws[i]!.socket.write(frames[i]!.subarray(0, frameBytes - 1));
      await waitFor(
        async () =>
          gauge(await scrape(server.stderr()), 'segmem_memory_counted_bytes', '{part="received"}') >=
          (i + 1) * (frameBytes - 1),
        `frame ${i + 1} to be received but for its last byte`,
      );
    }
    // The ninth finds neither room in the budget nor in the reserve: its connection is not read.
    raws[8]!.socket.write(frames[8]!.subarray(0, frameBytes - 1));
    await waitFor(
      async () => gauge(await scrape(server.stderr()), 'segmem_memory_paused_connections') === 1,
      'the ninth connection to be paused',
    );
    text = await scrape(server.stderr());
    const received = gauge(text, 'segmem_memory_counted_bytes', '{part="received"}');
    t.true(
      received < 8 * frameBytes + MiB,
      `the paused connection holds less than 1 MiB of its frame (${received - 8 * (frameBytes - 1)} bytes)`,
    );
    t.true(gauge(text, 'segmem_memory_used_bytes') > BUDGET, 'the frames let in are counted past the limit');
    // The others are still served (a small request on the paused budget: a read of the counter objects).
    t.is((await seg.stat('big0')).size, MiB);

    // The first append completes: answered (the budget has no room for it), its bytes freed; the ninth
    // connection is read again and its frame arrives.
    raws[0]!.socket.write(frames[0]!.subarray(frameBytes - 1));
    const answer = await raws[0]!.next('the first append answered');
    t.is(answer?.type, MessageType.ERROR);
    t.is(decodeError(answer!).code, 'NO_SPACE');
    await waitFor(
      async () => gauge(await scrape(server.stderr()), 'segmem_memory_paused_connections') === 0,
      'the ninth connection to be read again',
    );
    await waitFor(
      async () =>
        gauge(await scrape(server.stderr()), 'segmem_memory_counted_bytes', '{part="received"}') >=
        8 * (frameBytes - 1),
      'the rest of the ninth frame to arrive',
    );
    // Room made: the appends waiting complete, and new sessions fit again.
    for (let i = 0; i < big; i++) await seg.delete(`big${i}`);
    for (const i of [1, 8]) {
      raws[i]!.socket.write(frames[i]!.subarray(frameBytes - 1));
      const ok = await raws[i]!.next(`append ${i + 1} answered`);
      t.is(ok?.type, MessageType.OK, `append ${i + 1} succeeded once there was room`);
      if (ok?.type === MessageType.ERROR) t.log(decodeError(ok).message);
    }
    const again = await connect({ servers: [server.address] });
    await again.close();
  } finally {
    for (const raw of [...raws, ...reserveRaws]) raw.close();
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});
