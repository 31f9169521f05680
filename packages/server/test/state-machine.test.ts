import test from 'ava';
import fc from 'fast-check';
import { PageAllocator } from '../src/core/allocator.js';
import { type Command, decodeCommand, encodeCommand, type Outcome } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';

const PAGE = 4096;

/** Drives a state machine with consecutive indexes, as the log would. */
function machine(segmentPages = 1024) {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: segmentPages * PAGE });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const open = (): number =>
    (run({ op: 'open', timeoutMs: 1000, clientName: null }).result as any).value.sessionId;
  return { sm, run, open };
}

function value(o: Outcome): any {
  if (!o.result.ok) throw new Error(`expected ok, got ${o.result.code}: ${o.result.message}`);
  return o.result.value;
}

test('create allocates page-aligned, zero-versioned objects and reuses freed space', (t) => {
  const { run, open } = machine(8);
  const s = open();
  const a = value(
    run({ op: 'create', sessionId: s, seq: 1, name: 'a', size: 5000, ifNotExists: false }),
  ).object;
  const b = value(run({ op: 'create', sessionId: s, seq: 2, name: 'b', size: 4, ifNotExists: false })).object;
  t.is(a.address, 0);
  t.is(b.address, 2 * PAGE);
  t.is(a.version, 1);
  value(run({ op: 'delete', sessionId: s, seq: 3, name: 'a' }));
  const c = value(
    run({ op: 'create', sessionId: s, seq: 4, name: 'c', size: 8192, ifNotExists: false }),
  ).object;
  t.is(c.address, 0, 'freed pages are reused');
  const full = run({
    op: 'create',
    sessionId: s,
    seq: 5,
    name: 'd',
    size: 6 * PAGE,
    ifNotExists: false,
  }).result;
  t.like(full, { ok: false, code: 'NO_SPACE' });
  const dup = run({ op: 'create', sessionId: s, seq: 6, name: 'b', size: 4, ifNotExists: false }).result;
  t.like(dup, { ok: false, code: 'ALREADY_EXISTS' });
  const again = value(run({ op: 'create', sessionId: s, seq: 7, name: 'b', size: 4, ifNotExists: true }));
  t.false(again.created);
  t.is(again.object.id, b.id);
});

test('readers share, a writer waits for them, and FIFO keeps later readers behind a waiting writer', (t) => {
  const { run, open } = machine();
  const [s1, s2, s3, s4] = [open(), open(), open(), open()];
  value(run({ op: 'create', sessionId: s1, seq: 1, name: 'x', size: 8, ifNotExists: false }));
  const r1 = value(run({ op: 'acquire', sessionId: s1, seq: 2, name: 'x', mode: 'read' }));
  const r2 = value(run({ op: 'acquire', sessionId: s2, seq: 1, name: 'x', mode: 'read' }));
  t.truthy(r1.granted);
  t.truthy(r2.granted);
  t.true(r2.granted.token > r1.granted.token, 'tokens increase');
  t.deepEqual(value(run({ op: 'acquire', sessionId: s3, seq: 1, name: 'x', mode: 'write' })), {
    queued: true,
  });
  t.deepEqual(
    value(run({ op: 'acquire', sessionId: s4, seq: 1, name: 'x', mode: 'read' })),
    { queued: true },
    'a reader arriving behind a waiting writer waits (writers do not starve)',
  );
  let out = run({
    op: 'release',
    sessionId: s1,
    seq: 3,
    name: 'x',
    mode: 'read',
    token: r1.granted.token,
    ranges: [],
    data: null,
  });
  t.deepEqual(out.effects, []);
  out = run({
    op: 'release',
    sessionId: s2,
    seq: 2,
    name: 'x',
    mode: 'read',
    token: r2.granted.token,
    ranges: [],
    data: null,
  });
  t.is(out.effects.length, 1);
  const g = out.effects[0]!;
  t.like(g, { kind: 'grant', sessionId: s3, seq: 1 });
  const wToken = (g as any).grant.token;
  out = run({
    op: 'release',
    sessionId: s3,
    seq: 2,
    name: 'x',
    mode: 'write',
    token: wToken,
    ranges: [[2, 3]],
    data: Buffer.from([7, 8, 9]),
  });
  t.is(value(out).version, 2);
  t.like(
    out.effects.find((e) => e.kind === 'grant'),
    { sessionId: s4, seq: 1 },
  );
  const inval = out.effects.find((e) => e.kind === 'invalidate') as any;
  t.deepEqual(inval.sessionIds.sort(), [s1, s2].sort(), 'sessions that cached the old version are told');
});

test('releases are fenced by token and a stale or repeated release is LOCK_LOST', (t) => {
  const { run, open } = machine();
  const s = open();
  value(run({ op: 'create', sessionId: s, seq: 1, name: 'x', size: 4, ifNotExists: false }));
  const g = value(run({ op: 'acquire', sessionId: s, seq: 2, name: 'x', mode: 'write' })).granted;
  const bad = run({
    op: 'release',
    sessionId: s,
    seq: 3,
    name: 'x',
    mode: 'write',
    token: g.token + 1,
    ranges: [],
    data: null,
  });
  t.like(bad.result, { ok: false, code: 'LOCK_LOST' });
  value(
    run({
      op: 'release',
      sessionId: s,
      seq: 4,
      name: 'x',
      mode: 'write',
      token: g.token,
      ranges: [],
      data: null,
    }),
  );
  const twice = run({
    op: 'release',
    sessionId: s,
    seq: 5,
    name: 'x',
    mode: 'write',
    token: g.token,
    ranges: [],
    data: null,
  });
  t.like(twice.result, { ok: false, code: 'LOCK_LOST' });
});

test('a retried command (same session and seq) is applied once', (t) => {
  const { sm, run, open } = machine();
  const s = open();
  value(run({ op: 'create', sessionId: s, seq: 1, name: 'x', size: 4, ifNotExists: false }));
  const g = value(run({ op: 'acquire', sessionId: s, seq: 2, name: 'x', mode: 'write' })).granted;
  const rel: Command = {
    op: 'release',
    sessionId: s,
    seq: 3,
    name: 'x',
    mode: 'write',
    token: g.token,
    ranges: [[0, 1]],
    data: Buffer.from([1]),
  };
  t.is(value(run(rel)).version, 2);
  t.is(value(run(rel)).version, 2, 'the retry answers the first result');
  t.is(sm.stat('x')!.version, 2, 'and changes nothing');
  t.like(run({ op: 'create', sessionId: s, seq: 1, name: 'x', size: 4, ifNotExists: false }).result, {
    ok: true,
  });
});

test('closing a session releases its locks, drops its waiters and discards nothing that was written', (t) => {
  const { sm, run, open } = machine();
  const [a, b] = [open(), open()];
  value(run({ op: 'create', sessionId: a, seq: 1, name: 'x', size: 4, ifNotExists: false }));
  value(run({ op: 'acquire', sessionId: a, seq: 2, name: 'x', mode: 'write' }));
  t.deepEqual(value(run({ op: 'acquire', sessionId: b, seq: 1, name: 'x', mode: 'write' })), {
    queued: true,
  });
  const out = run({ op: 'expire', sessionIds: [a] });
  t.like(
    out.effects.find((e) => e.kind === 'grant'),
    { sessionId: b },
  );
  t.is(sm.stat('x')!.version, 1, 'the unreleased write never happened');
  t.false(sm.hasSession(a));
  t.like(run({ op: 'acquire', sessionId: a, seq: 3, name: 'x', mode: 'read' }).result, {
    ok: false,
    code: 'LOCK_LOST',
  });
});

test('cancel removes a waiter, and a cancelled writer at the head lets readers through', (t) => {
  const { run, open } = machine();
  const [a, b, c] = [open(), open(), open()];
  value(run({ op: 'create', sessionId: a, seq: 1, name: 'x', size: 4, ifNotExists: false }));
  value(run({ op: 'acquire', sessionId: a, seq: 2, name: 'x', mode: 'read' }));
  value(run({ op: 'acquire', sessionId: b, seq: 1, name: 'x', mode: 'write' }));
  value(run({ op: 'acquire', sessionId: c, seq: 1, name: 'x', mode: 'read' }));
  const out = run({ op: 'cancel', sessionId: b, seq: 1, reason: 'TIMEOUT' });
  t.deepEqual(value(out), { cancelled: true });
  t.like(out.effects[0], { kind: 'fail', sessionId: b, code: 'TIMEOUT' });
  t.like(out.effects[1], { kind: 'grant', sessionId: c });
  t.deepEqual(value(run({ op: 'cancel', sessionId: b, seq: 1, reason: 'TIMEOUT' })), { cancelled: false });
});

test('a session queues a write behind its own read grant (another task of its process)', (t) => {
  const { run, open } = machine();
  const a = open();
  value(run({ op: 'create', sessionId: a, seq: 1, name: 'x', size: 4, ifNotExists: false }));
  const w = value(run({ op: 'acquire', sessionId: a, seq: 2, name: 'x', mode: 'read' })).granted;
  t.deepEqual(value(run({ op: 'acquire', sessionId: a, seq: 3, name: 'x', mode: 'write' })), {
    queued: true,
  });
  const out = run({
    op: 'release',
    sessionId: a,
    seq: 4,
    name: 'x',
    mode: 'read',
    token: w.token,
    ranges: [],
    data: null,
  });
  t.like(out.effects[0], { kind: 'grant', sessionId: a, seq: 3 });
});

test('grants name only the pages changed since the cached version', (t) => {
  const { sm, run, open } = machine();
  const a = open();
  const obj = value(
    run({ op: 'create', sessionId: a, seq: 1, name: 'big', size: 10 * PAGE, ifNotExists: false }),
  ).object;
  const g = value(run({ op: 'acquire', sessionId: a, seq: 2, name: 'big', mode: 'write' })).granted;
  value(
    run({
      op: 'release',
      sessionId: a,
      seq: 3,
      name: 'big',
      mode: 'write',
      token: g.token,
      ranges: [[3 * PAGE + 5, 1]],
      data: Buffer.from([1]),
    }),
  );
  const o = sm.objectNamed('big')!;
  t.deepEqual(sm.pagesSince(o, obj.id, 1), [3]);
  t.deepEqual(sm.pagesSince(o, obj.id, 2), []);
  t.deepEqual(sm.pagesSince(o, 0, 0), [3], 'a fresh cache needs only written pages');
  t.is(o.data![3 * PAGE + 5], 1);
});

test('replaying the same log gives the same state, and a snapshot restores it exactly (determinism)', (t) => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          s: fc.integer({ min: 1, max: 3 }),
          kind: fc.integer({ min: 0, max: 5 }),
          obj: fc.integer({ min: 0, max: 2 }),
          off: fc.integer({ min: 0, max: 99 }),
        }),
        { maxLength: 60 },
      ),
      (steps) => {
        const log: Command[] = [];
        for (let i = 0; i < 3; i++) log.push({ op: 'open', timeoutMs: 1000, clientName: null });
        let seq = 1;
        const tokens = new Map<string, number>();
        const first = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
        let index = 0;
        const run = (cmd: Command) => {
          log.push(cmd);
          const round = decodeCommand(Buffer.concat(encodeCommand(cmd)));
          return first.apply(++index, round);
        };
        for (let i = 0; i < 3; i++) first.apply(++index, log[i]!);
        for (const st of steps) {
          const name = `o${st.obj}`;
          const s = st.s;
          if (st.kind === 0)
            run({ op: 'create', sessionId: s, seq: seq++, name, size: 100, ifNotExists: true });
          else if (st.kind === 1) run({ op: 'delete', sessionId: s, seq: seq++, name });
          else if (st.kind <= 3) {
            const o = run({
              op: 'acquire',
              sessionId: s,
              seq: seq++,
              name,
              mode: st.kind === 2 ? 'read' : 'write',
            });
            const g = o.result.ok ? (o.result.value as any).granted : undefined;
            if (g) tokens.set(`${s}/${name}`, g.token);
          } else if (st.kind === 4) {
            const token = tokens.get(`${s}/${name}`) ?? 1;
            run({
              op: 'release',
              sessionId: s,
              seq: seq++,
              name,
              mode: 'write',
              token,
              ranges: [[st.off, 1]],
              data: Buffer.from([st.off]),
            });
          } else
            run({
              op: 'release',
              sessionId: s,
              seq: seq++,
              name,
              mode: 'read',
              token: tokens.get(`${s}/${name}`) ?? 1,
              ranges: [],
              data: null,
            });
        }
        const second = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
        for (const [i, cmd] of log.entries()) second.apply(i + 1, cmd);
        const dump = (sm: StateMachine) =>
          sm.list('').map((r) => ({ ...r, data: sm.objectNamed(r.name)!.data?.toString('hex') ?? null }));
        const same =
          JSON.stringify(dump(first)) === JSON.stringify(dump(second)) && first.digest() === second.digest();
        // A snapshot restores the exact state, and the restored machine goes on identically.
        const restored = StateMachine.restore(first.snapshot());
        const tail: Command = {
          op: 'create',
          sessionId: 1,
          seq: 100_000,
          name: 'after',
          size: 10,
          ifNotExists: false,
        };
        restored.apply(restored.appliedIndex + 1, tail);
        first.apply(first.appliedIndex + 1, tail);
        return same && restored.digest() === first.digest() && restored.freePages === first.freePages;
      },
    ),
  );
  t.pass();
});

test('allocator: allocation and free keep free space exact and extents merged', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 9 })), { maxLength: 200 }),
      (ops) => {
        const a = new PageAllocator(100);
        const live: [number, number][] = [];
        for (const [alloc, n] of ops) {
          if (alloc || live.length === 0) {
            const start = a.allocate(n);
            if (start >= 0) live.push([start, n]);
          } else {
            const [start, count] = live.splice(n % live.length, 1)[0]!;
            a.release(start, count);
          }
        }
        const used = live.reduce((s, [, n]) => s + n, 0);
        const ext = a.extents();
        for (let i = 1; i < ext.length; i++)
          if (ext[i - 1]!.start + ext[i - 1]!.count >= ext[i]!.start) return false;
        return a.freePages === 100 - used;
      },
    ),
  );
  t.throws(() => {
    const a = new PageAllocator(10);
    const s = a.allocate(2);
    a.release(s, 2);
    a.release(s, 2);
  });
});

test('after a restart, session ids continue above the floor, so ids lost with an unsynced tail are never reissued', (t) => {
  const { run, open } = machine();
  const a = open();
  run({ op: 'restart', sessionIdFloor: 5_000_000 });
  const b = open();
  t.true(b >= 5_000_000 && b !== a);
  run({ op: 'restart', sessionIdFloor: 10 }); // a floor below the counter changes nothing
  t.true(open() > b);
});

test('shared logs: batches are numbered contiguously, retried appends apply once, snapshots keep the records', (t) => {
  const { sm, run, open } = machine();
  const s = open();
  const batch = (seq: number, records: string[], maxBytes: number | null = null): Command => ({
    op: 'append',
    sessionId: s,
    seq,
    name: 'events',
    sizes: records.map((r) => Buffer.byteLength(r)),
    maxBytes,
    data: Buffer.from(records.join('')),
  });
  t.deepEqual(value(run(batch(1, ['a', 'bb', '']))), { first: 0, count: 3 });
  t.deepEqual(value(run(batch(2, ['ccc']))), { first: 3, count: 1 });
  // A retry of seq 2 (after a failover) answers the first result and appends nothing.
  t.deepEqual(value(run(batch(2, ['ccc']))), { first: 3, count: 1 });
  const round = encodeCommand(batch(3, ['dddd']));
  t.deepEqual(value(run(decodeCommand(Buffer.concat(round)))), { first: 4, count: 1 });

  const read = (m: StateMachine, from: number | null, maxBytes = 1 << 20) => {
    const r = m.readLog('events', from, maxBytes, 1000);
    if (!r.ok) throw new Error(r.message);
    return { ...r.read, parts: r.read.parts.map((p) => p.toString()) };
  };
  t.deepEqual(read(sm, null).parts, ['a', 'bb', '', 'ccc', 'dddd']);
  t.deepEqual(read(sm, 1, 3).parts, ['bb', ''], 'maxBytes bounds an answer');
  t.deepEqual(read(sm, 3, 1).parts, ['ccc'], 'but an answer always carries one record');
  t.deepEqual(read(sm, 5).sizes, [], 'reading at the end answers no records');
  t.like(sm.readLog('events', 6, 10, 10), { ok: false, code: 'INVALID_ARGUMENT' });
  t.like(sm.readLog('nope', 0, 10, 10), { ok: false, code: 'NOT_FOUND' });

  // Snapshots carry the logs; a restored machine is identical and goes on identically.
  t.deepEqual(value(run({ op: 'truncate', sessionId: s, seq: 4, name: 'events', before: 2 })), { first: 2 });
  const restored = StateMachine.restore(sm.snapshot());
  t.is(restored.digest(), sm.digest());
  t.deepEqual(read(restored, null), read(sm, null));
  const next = batch(5, ['eeeee']);
  t.deepEqual(restored.apply(restored.appliedIndex + 1, next).result, run(next).result);
  t.is(restored.digest(), sm.digest());
  t.like(sm.readLog('events', 1, 10, 10), { ok: false, code: 'NOT_FOUND', first: 2 });
  // Names are shared with objects.
  t.like(run({ op: 'create', sessionId: s, seq: 6, name: 'events', size: 4, ifNotExists: false }).result, {
    ok: false,
    code: 'ALREADY_EXISTS',
  });
});
