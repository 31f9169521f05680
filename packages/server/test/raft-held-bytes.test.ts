/** What a Raft member's in-memory log holds, as the memory budget counts it (MemoryStorage.heldBytes). */
import test from 'ava';
import { MemoryStorage } from '../src/raft/memory-storage.js';
import type { Entry } from '../src/raft/types.js';

function entry(index: number, term: number, bytes: number, payloadBytes = 0): Entry {
  return {
    index,
    term,
    type: 'normal',
    data: Buffer.alloc(bytes),
    ...(payloadBytes > 0 ? { payload: Buffer.alloc(payloadBytes) } : {}),
  };
}

test('heldBytes follows appends, overwrites, compaction and snapshot installs', (t) => {
  const s = new MemoryStorage(['a']);
  t.is(s.heldBytes(), 0);
  s.append([entry(1, 1, 100), entry(2, 1, 200, 50), entry(3, 1, 300)]);
  t.is(s.heldBytes(), 650);
  // An entry at an index already stored replaces it and everything after it.
  s.append([entry(2, 2, 10)]);
  t.is(s.heldBytes(), 110);
  s.append([entry(3, 2, 1000)]);
  t.is(s.heldBytes(), 1110);
  // Compaction drops the entries it covers and keeps the snapshot's bytes.
  s.compact(2, Buffer.alloc(5000));
  t.is(s.heldBytes(), 5000 + 1000);
  t.is(s.clone().heldBytes(), 6000);
  s.applySnapshot({ meta: { index: 10, term: 3, members: ['a'] }, data: Buffer.alloc(7000) });
  t.is(s.heldBytes(), 7000);
});
