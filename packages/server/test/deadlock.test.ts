import test from 'ava';
import type { Command, LockMode, Outcome } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';

const PAGE = 4096;

/** A state machine driven with consecutive indexes, with objects `names` created by a first session. */
function machine(names: string[]) {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
  let index = 0;
  const seqs = new Map<number, number>();
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const open = (): number => {
    const id = (run({ op: 'open', timeoutMs: 1000, clientName: null }).result as any).value.sessionId;
    seqs.set(id, 1);
    return id;
  };
  const seq = (s: number) => {
    const n = seqs.get(s)!;
    seqs.set(s, n + 1);
    return n;
  };
  const admin = open();
  for (const name of names)
    run({ op: 'create', sessionId: admin, seq: seq(admin), name, size: 8, ifNotExists: false });
  const acquire = (s: number, name: string, mode: LockMode) => {
    const n = seq(s);
    return { seq: n, out: run({ op: 'acquire', sessionId: s, seq: n, name, mode }) };
  };
  const release = (s: number, name: string, mode: LockMode, token: number) =>
    run({ op: 'release', sessionId: s, seq: seq(s), name, mode, token, ranges: [], data: null });
  const del = (s: number, name: string) => {
    const n = seq(s);
    return { seq: n, out: run({ op: 'delete', sessionId: s, seq: n, name }) };
  };
  return { sm, run, open, acquire, release, del };
}

const tokenOf = (o: Outcome): number => (o.result as any).value.granted.token;
const queued = (o: Outcome): boolean => o.result.ok && (o.result.value as any)?.queued === true;
const code = (o: Outcome): string | undefined => (o.result.ok ? undefined : o.result.code);

test('a cycle of two sessions: the acquire that closes it gets DEADLOCK naming both objects, the other proceeds', (t) => {
  const { open, acquire, release } = machine(['A', 'B']);
  const [s1, s2] = [open(), open()];
  const a = tokenOf(acquire(s1, 'A', 'write').out);
  const b = tokenOf(acquire(s2, 'B', 'write').out);
  t.true(queued(acquire(s1, 'B', 'write').out), 's1 waits for B');
  const closing = acquire(s2, 'A', 'write').out;
  t.is(code(closing), 'DEADLOCK');
  t.regex((closing.result as any).message, /"A" -> "B"/);
  // s2 gives B back (as a client that met DEADLOCK does): s1's queued acquire is granted.
  const after = release(s2, 'B', 'write', b);
  t.like(
    after.effects.find((e) => e.kind === 'grant'),
    { kind: 'grant', sessionId: s1 },
  );
  release(s1, 'A', 'write', a);
});

test('a cycle of three sessions: only the youngest acquire (the one closing it) fails', (t) => {
  const { sm, open, acquire } = machine(['A', 'B', 'C']);
  const [s1, s2, s3] = [open(), open(), open()];
  acquire(s1, 'A', 'write');
  acquire(s2, 'B', 'read');
  acquire(s3, 'C', 'write');
  t.true(queued(acquire(s1, 'B', 'write').out));
  t.true(queued(acquire(s2, 'C', 'read').out));
  const closing = acquire(s3, 'A', 'read').out;
  t.is(code(closing), 'DEADLOCK');
  t.regex((closing.result as any).message, /"A" -> "B" -> "C"/);
  t.is(sm.lockStats().waiters, 2, 'the two older waits are still queued');
});

test('FIFO edges count: a writer queued ahead closes a cycle through the queue itself', (t) => {
  const { open, acquire } = machine(['A', 'B']);
  const [s1, s2, s3] = [open(), open(), open()];
  acquire(s3, 'A', 'write'); // s3 holds A and waits for nothing
  acquire(s2, 'B', 'write');
  t.true(queued(acquire(s1, 'A', 'write').out), 's1 waits for s3 on A');
  t.true(queued(acquire(s1, 'B', 'write').out), 's1 waits for s2 on B');
  // s2 queues on A behind s1's write: it waits for s1, which waits for s2.
  t.is(code(acquire(s2, 'A', 'read').out), 'DEADLOCK');
});

test('no false positive: readers queued together do not wait for each other', (t) => {
  const { open, acquire } = machine(['A', 'C']);
  const [s1, s2, u] = [open(), open(), open()];
  acquire(u, 'A', 'write'); // u holds A, waits for nothing
  acquire(s2, 'C', 'read'); // s2 reads C
  t.true(queued(acquire(s1, 'A', 'read').out), 's1 reads A after u');
  t.true(queued(acquire(s1, 'C', 'write').out), 's1 writes C after s2 reads it');
  // s2's read of A queues behind s1's read of A: reads share, so s2 does not wait for s1. No cycle.
  t.true(queued(acquire(s2, 'A', 'read').out));
});

test('no false positive: a read of an object others only read is granted, whatever its holders wait for', (t) => {
  const { open, acquire } = machine(['A', 'B']);
  const [s1, s2] = [open(), open()];
  acquire(s1, 'A', 'read');
  acquire(s2, 'B', 'write');
  t.true(queued(acquire(s1, 'B', 'read').out));
  t.true(acquire(s2, 'A', 'read').out.result.ok && !queued(acquire(s2, 'A', 'read').out));
});

test('same session: an acquire of an object it holds for write is DEADLOCK at once', (t) => {
  const { open, acquire } = machine(['A']);
  const s = open();
  acquire(s, 'A', 'write');
  t.is(code(acquire(s, 'A', 'write').out), 'DEADLOCK');
  t.is(code(acquire(s, 'A', 'read').out), 'DEADLOCK');
});

test('same session: write while holding read is DEADLOCK when another session holds or waits, queued otherwise', (t) => {
  const { open, acquire, release } = machine(['A', 'B']);
  const [s1, s2] = [open(), open()];
  const r = tokenOf(acquire(s1, 'A', 'read').out);
  const r2 = tokenOf(acquire(s2, 'A', 'read').out);
  t.is(code(acquire(s1, 'A', 'write').out), 'DEADLOCK', 'another session holds A');
  release(s2, 'A', 'read', r2);
  const w = acquire(s1, 'A', 'write');
  t.true(queued(w.out), 'alone: it waits for its own read (another task of the process)');
  const grant = release(s1, 'A', 'read', r).effects.find((e) => e.kind === 'grant');
  t.like(grant, { sessionId: s1, seq: w.seq });
  // B: s1 reads, s2 waits to write: s1's write is refused at once.
  acquire(s1, 'B', 'read');
  t.true(queued(acquire(s2, 'B', 'write').out));
  t.is(code(acquire(s1, 'B', 'write').out), 'DEADLOCK', 'another session waits for B');
});

test('same session: a second read shares past a queued writer instead of closing a cycle', (t) => {
  const { open, acquire } = machine(['A']);
  const [s1, s2] = [open(), open()];
  acquire(s1, 'A', 'read');
  t.true(queued(acquire(s2, 'A', 'write').out));
  const again = acquire(s1, 'A', 'read').out;
  t.true(again.result.ok && (again.result.value as any).granted !== undefined);
});

test('delete waits for the holders like a writer, then fails the acquires queued behind it', (t) => {
  const { sm, open, acquire, release, del } = machine(['A']);
  const [s1, s2, s3] = [open(), open(), open()];
  const w = tokenOf(acquire(s1, 'A', 'write').out);
  const d = del(s2, 'A');
  t.true(queued(d.out));
  t.truthy(sm.stat('A'), 'still there while held');
  const behind = acquire(s3, 'A', 'read');
  t.true(queued(behind.out));
  // A restored copy carries the queued delete.
  const copy = StateMachine.restore(sm.snapshot());
  t.is(copy.digest(), sm.digest());
  const out = release(s1, 'A', 'write', w);
  t.like(
    out.effects.find((e) => e.kind === 'deleted'),
    { sessionId: s2, seq: d.seq },
  );
  t.like(
    out.effects.find((e) => e.kind === 'fail'),
    { sessionId: s3, seq: behind.seq, code: 'NOT_FOUND' },
  );
  t.is(sm.stat('A'), undefined);
  // The restored copy applies the same.
  const again = copy.apply(sm.appliedIndex, {
    op: 'release',
    sessionId: s1,
    seq: 99,
    name: 'A',
    mode: 'write',
    token: w,
    ranges: [],
    data: null,
  });
  t.truthy(again.effects.find((e) => e.kind === 'deleted'));
  t.is(copy.stat('A'), undefined);
});

test('a delete from a holder is DEADLOCK; a cancelled delete leaves the object', (t) => {
  const { sm, run, open, acquire, del } = machine(['A']);
  const [s1, s2] = [open(), open()];
  acquire(s1, 'A', 'read');
  t.is(code(del(s1, 'A').out), 'DEADLOCK');
  const d = del(s2, 'A');
  t.true(queued(d.out));
  const c = run({ op: 'cancel', sessionId: s2, seq: d.seq, reason: 'TIMEOUT' });
  t.like(c.effects[0], { kind: 'fail', code: 'TIMEOUT' });
  t.regex((c.effects[0] as any).message, /delete of "A" timed out/);
  t.truthy(sm.stat('A'));
});

test('a snapshot with a queued delete is refused by the format it would be misread under', (t) => {
  const { sm, open, acquire, del } = machine(['A']);
  const [s1, s2] = [open(), open()];
  acquire(s1, 'A', 'read');
  del(s2, 'A');
  const bytes = sm.snapshot();
  t.notThrows(() => StateMachine.restore(bytes));
});
