/**
 * BARRIER's hold (node/write-hold.ts) on the simulated clock: content changes wait while any session
 * holds and go once the last hold ends (released, or by itself at its bound); other commands never wait;
 * a hold answers only after the changes proposed before it are applied; a release answers for the
 * releasing session's own hold only.
 */
import test from 'ava';
import type { Command, Outcome } from '../src/core/commands.js';
import { changesContent, WriteHold } from '../src/node/write-hold.js';
import { SimClock, SimEnv } from '../src/sim/env.js';
import { Prng } from '../src/sim/prng.js';

const write: Command = {
  op: 'release',
  sessionId: 1,
  seq: 1,
  name: 'a',
  mode: 'write',
  token: 1,
  ranges: [],
  data: null,
};
const readRelease: Command = { ...write, mode: 'read' };
const acquire: Command = { op: 'acquire', sessionId: 1, seq: 2, name: 'a', mode: 'write' };

/** A log whose proposals resolve when the test says so, in order. */
function fakeLog() {
  const proposed: { cmd: Command; apply: () => void }[] = [];
  const propose = (cmd: Command) =>
    new Promise<Outcome>((resolve) =>
      proposed.push({
        cmd,
        apply: () => resolve({ result: { ok: true, value: null }, effects: [] }),
      }),
    );
  return { proposed, propose };
}

/** Lets every pending promise continuation run. */
const settle = () => new Promise<void>((r) => setImmediate(r));

test('which commands change content', (t) => {
  t.deepEqual(
    [
      write,
      readRelease,
      acquire,
      { op: 'create', sessionId: 1, seq: 3, name: 'b', size: 1, ifNotExists: false },
    ].map((c) => changesContent(c as Command)),
    [true, false, false, true],
  );
});

test('content changes wait while a hold is on and go when it is released; other commands do not wait', async (t) => {
  const clock = new SimClock();
  const hold = new WriteHold(new SimEnv(clock, new Prng(1)));
  const log = fakeLog();
  await hold.hold(7, 2000);
  t.deepEqual(hold.state(7), { held: true, remainingMs: 2000 });
  void hold.propose(write, log.propose);
  void hold.propose(acquire, log.propose);
  void hold.propose(readRelease, log.propose);
  await settle();
  t.deepEqual(
    log.proposed.map((p) => p.cmd),
    [acquire, readRelease],
    'only the write release waits',
  );
  t.false(hold.release(8), "another session's release ends nothing");
  t.true(hold.release(7));
  await settle();
  t.deepEqual(log.proposed.at(-1)!.cmd, write, 'proposed once released');
  t.false(hold.release(7), 'released twice: no hold was on');
});

test('a hold ends by itself at its bound, and a late release says so', async (t) => {
  const clock = new SimClock();
  const hold = new WriteHold(new SimEnv(clock, new Prng(1)));
  const log = fakeLog();
  await hold.hold(1, 500);
  void hold.propose(write, log.propose);
  clock.runUntil(499);
  await settle();
  t.is(log.proposed.length, 0);
  t.is(hold.remainingMs(), 1);
  clock.runUntil(500);
  await settle();
  t.is(log.proposed.length, 1, 'proposed once the hold ended by itself');
  t.false(hold.held);
  t.false(hold.release(1));
});

test('changes wait for every session holding; a hold answers after what was proposed before it', async (t) => {
  const clock = new SimClock();
  const hold = new WriteHold(new SimEnv(clock, new Prng(1)));
  const log = fakeLog();
  void hold.propose(write, log.propose);
  let answered = false;
  const held = hold.hold(1, 5000).then(() => (answered = true));
  await settle();
  t.false(answered, 'the write proposed before the hold is not applied yet');
  log.proposed[0]!.apply();
  await held;
  t.true(answered);
  await hold.hold(2, 5000);
  void hold.propose(write, log.propose);
  t.true(hold.release(1));
  await settle();
  t.is(log.proposed.length, 1, "session 2's hold still holds the write back");
  hold.releaseAll();
  await settle();
  t.is(log.proposed.length, 2);
});
