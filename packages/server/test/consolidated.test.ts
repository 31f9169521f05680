import test from 'ava';
import type { Command, Outcome } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';
import { decodeConsolidated, encodeConsolidated } from '../src/storage/consolidated.js';

const PAGE = 4096;

function machine() {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 64 * PAGE });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const s = (
    run({ op: 'open', timeoutMs: 1000, clientName: null }).result as { value: { sessionId: number } }
  ).value.sessionId;
  return { sm, run, s };
}

test('a consolidated snapshot keeps content only, leaves zero pages out, and restores it exactly', async (t) => {
  const { sm, run, s } = machine();
  run({ op: 'create', sessionId: s, seq: 1, name: 'a', size: 4 * PAGE, ifNotExists: false });
  const grant = run({ op: 'acquire', sessionId: s, seq: 2, name: 'a', mode: 'write' });
  const token = (grant.result as { value: { granted: { token: number } } }).value.granted.token;
  run({
    op: 'release',
    sessionId: s,
    seq: 3,
    name: 'a',
    mode: 'write',
    token,
    ranges: [[PAGE + 5, 3]],
    data: Buffer.from('xyz'),
  });
  run({ op: 'create', sessionId: s, seq: 4, name: 'b', size: 10, ifNotExists: false });
  run({ op: 'acquire', sessionId: s, seq: 5, name: 'b', mode: 'read' }); // a lock: not content
  run({
    op: 'append',
    sessionId: s,
    seq: 6,
    name: 'log',
    sizes: [2, 0],
    maxBytes: null,
    data: Buffer.from('hi'),
  });

  const parts = await encodeConsolidated(sm.exportContent(), {
    clusterId: 'c1',
    createdAt: '2026-11-23T00:00:00.000Z',
    groups: [[0, 9, 2]],
  });
  const file = Buffer.concat(parts);
  t.true(file.length < 2 * PAGE, `only the one written page is stored (${file.length} bytes)`);
  const decoded = decodeConsolidated(file, 'test.segsnap');
  t.like(decoded.header, { clusterId: 'c1', groups: [[0, 9, 2]], objectCount: 2, logCount: 1 });

  const restored = StateMachine.fromContent(decoded.content, 1);
  t.deepEqual(restored.exportContent(), sm.exportContent());
  t.is(restored.objectNamed('a')!.data!.toString('latin1', PAGE + 5, PAGE + 8), 'xyz');
  t.is(restored.objectNamed('b')!.readers, 0, 'locks are not part of a snapshot');
  t.is(restored.sessionIds().length, 0, 'nor are sessions');
  // The same content gives the same bytes and digest, whatever the header says.
  const again = decodeConsolidated(
    Buffer.concat(
      await encodeConsolidated(restored.exportContent(), { clusterId: 'c2', createdAt: 'x', groups: [] }),
    ),
    'again',
  );
  t.is(again.contentDigest, decoded.contentDigest);

  // Damage anywhere is caught.
  for (const at of [3, 40, file.length >> 1, file.length - 10]) {
    const bad = Buffer.from(file);
    bad[at]! ^= 1;
    t.throws(() => decodeConsolidated(bad, 'bad'), { code: 'INVALID_ARGUMENT' } as never);
  }
  t.throws(() => decodeConsolidated(file.subarray(0, file.length - 1), 'short'), { message: /cut short/ });
});
