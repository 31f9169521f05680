/**
 * The memory budget's arithmetic (node/budget.ts): what it counts, whom it refuses, and when a connection
 * waiting for room to receive a large frame may go on.
 */
import { SegmemError } from '@segmem/protocol';
import test from 'ava';
import {
  MemoryBudget,
  RECEIVE_RESERVE_BYTES,
  RUNTIME_ALLOWANCE_BYTES,
  SESSION_HELD_BYTES,
  SESSION_RESERVE_BYTES,
} from '../src/node/budget.js';
import { SimClock, SimEnv } from '../src/sim/env.js';
import { Prng } from '../src/sim/prng.js';

const MiB = 1024 * 1024;

function budget(limit: number | null, state: { bytes: number; sessions: number; frozen: number }) {
  const clock = new SimClock();
  const env = new SimEnv(clock, new Prng(1));
  const b = new MemoryBudget(
    limit,
    { stateBytes: () => state.bytes, sessions: () => state.sessions, frozenCopyBytes: () => state.frozen },
    env,
  );
  return { b, clock };
}

test('every part counts: sessions, frozen copies beyond what exports reserved, connections, snapshots arriving', (t) => {
  const state = { bytes: 10 * MiB, sessions: 4, frozen: 0 };
  const { b } = budget(512 * MiB, state);
  const base = RUNTIME_ALLOWANCE_BYTES + 10 * MiB + 4 * SESSION_HELD_BYTES;
  t.is(b.usedBytes(), base);
  const exported = b.admitExport(10 * MiB, 'an export');
  t.is(b.usedBytes(), base + 10 * MiB);
  state.frozen = 4 * MiB; // within what the export reserved
  t.is(b.usedBytes(), base + 10 * MiB);
  exported();
  t.is(b.usedBytes(), base + 4 * MiB, 'a periodic snapshot copies what it keeps alive');
  state.frozen = 0;
  const received = b.holding('received');
  const unsent = b.holding('unsent');
  const arriving = b.holding('receiving_snapshots');
  received.set(3 * MiB);
  unsent.set(2 * MiB);
  arriving.set(16 * MiB);
  received.set(1 * MiB); // shrinks as frames are decoded
  t.is(b.usedBytes(), base + 19 * MiB);
  t.like(b.counted(), { received: MiB, unsent: 2 * MiB, receiving_snapshots: 16 * MiB });
  const c = b.counted();
  t.is(
    Object.values(c).reduce((x, y) => x + y, 0),
    b.usedBytes(),
  );
  received.release();
  received.release();
  received.set(5 * MiB); // after release: ignored
  unsent.release();
  arriving.release();
  t.is(b.usedBytes(), base);
});

test('a new session is refused with UNAVAILABLE naming the budget when it does not fit', (t) => {
  const state = { bytes: 0, sessions: 0, frozen: 0 };
  const limit = 256 * MiB;
  const { b } = budget(limit, state);
  b.admitSession();
  state.bytes = limit - RUNTIME_ALLOWANCE_BYTES - SESSION_HELD_BYTES + 1;
  const err = t.throws(() => b.admitSession(), { instanceOf: SegmemError, code: 'UNAVAILABLE' });
  t.like(err!.details, { budget: 'max-memory', limitBytes: limit, neededBytes: SESSION_HELD_BYTES });
  t.regex(err!.message, /memory budget full: a new session needs 256 KiB/);
  // Without a limit: counted, never refused.
  const off = budget(null, { bytes: 10 * limit, sessions: 1000, frozen: 0 }).b;
  off.admitSession();
  t.true(off.mayReceive(64 * MiB, 0));
  t.is(off.snapshotBoundBytes, null);
});

test('data leaves room for new sessions: growth and exports stop short of the limit by the session reserve', (t) => {
  const limit = 256 * MiB;
  const room = limit - RUNTIME_ALLOWANCE_BYTES - SESSION_RESERVE_BYTES;
  const state = { bytes: room - MiB, sessions: 0, frozen: 0 };
  const { b } = budget(limit, state);
  b.admitGrowth(MiB, 'an object')();
  const err = t.throws(() => b.admitGrowth(MiB + 1, 'an object'), {
    instanceOf: SegmemError,
    code: 'NO_SPACE',
  });
  t.regex(err!.message, /16 MiB of it kept for new sessions/);
  t.throws(() => b.admitExport(MiB + 1, 'an export'), { code: 'UNAVAILABLE' });
  // Data has filled its share: sessions still get in, 64 of them, so clients can connect and delete.
  state.bytes = room;
  for (let i = 0; i < SESSION_RESERVE_BYTES / SESSION_HELD_BYTES; i++) {
    b.admitSession();
    state.sessions++;
  }
  t.throws(() => b.admitSession(), { code: 'UNAVAILABLE' });
});

test('a large frame goes on when it fits the budget or the receive reserve, and a waiter wakes once it does', (t) => {
  const limit = 256 * MiB;
  const state = { bytes: limit - RUNTIME_ALLOWANCE_BYTES - MiB, sessions: 0, frozen: 0 };
  const { b, clock } = budget(limit, state);
  t.is(b.snapshotBoundBytes, limit - RUNTIME_ALLOWANCE_BYTES);
  t.true(b.mayReceive(MiB, 0), 'fits the budget');
  t.true(b.mayReceive(8 * MiB, 0), 'does not fit the budget, fits the reserve');
  const others = b.holding('received');
  others.set(RECEIVE_RESERVE_BYTES - 4 * MiB);
  t.false(b.mayReceive(8 * MiB, 0), 'neither');
  t.true(b.mayReceive(8 * MiB, 4 * MiB), 'what the connection holds of it already counts as its own');
  let woke = 0;
  b.whenRoom(
    () => b.mayReceive(8 * MiB, 0),
    () => woke++,
  );
  const cancelled = b.whenRoom(
    () => true,
    () => t.fail('a cancelled wait is not called'),
  );
  cancelled();
  t.is(b.waitingForRoom, 1);
  clock.runUntil(clock.nowMs + 200);
  t.is(woke, 0, 'no room yet');
  others.set(RECEIVE_RESERVE_BYTES - 8 * MiB);
  clock.runUntil(clock.nowMs + 100);
  t.is(woke, 1);
  t.is(b.waitingForRoom, 0);
  clock.runUntil(clock.nowMs + 1000);
  t.is(woke, 1, 'once');
});
