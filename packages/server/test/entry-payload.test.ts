/**
 * A write release's page bytes travel from the client's frame to the log, the WAL and the peers as the same
 * buffer: the command's head is encoded apart and the data is never copied into one record.
 */

import { FrameDecoder } from '@segmem/protocol';
import test from 'ava';
import { type Command, decodeCommand, encodeCommand, encodeCommandHead } from '../src/core/commands.js';
import { MemoryStorage } from '../src/raft/memory-storage.js';
import { RaftNode } from '../src/raft/node.js';
import { entryBytes, type Message } from '../src/raft/types.js';
import { decodeRaftMessage, encodeRaftMessage } from '../src/shell/peer-codec.js';

function release(data: Buffer): Command {
  return {
    op: 'release',
    sessionId: 7,
    seq: 3,
    name: 'obj',
    mode: 'write',
    token: 11,
    ranges: [[0, data.length]],
    data,
  };
}

test('a large write is proposed, stored and sent as the buffer it came in, and decodes as one record would', (t) => {
  const data = Buffer.alloc(256 * 1024, 0xab);
  const { head, data: kept } = encodeCommandHead(release(data));
  t.is(kept, data, 'the page bytes are not copied');
  t.deepEqual(Buffer.concat([head, data]), Buffer.concat(encodeCommand(release(data))));

  const raft = new RaftNode({
    id: 's1',
    storage: new MemoryStorage(['s1']),
    electionTicks: 10,
    heartbeatTicks: 1,
    rand: () => 0.5,
  });
  raft.campaign();
  raft.ready();
  raft.advance();
  const at = raft.propose(head, kept);
  const rd = raft.ready();
  const entry = rd.entries.find((e) => e.index === at.index)!;
  t.is(entry.payload, data, 'the log entry holds the same buffer');
  t.is(entryBytes(entry), head.length + data.length);

  // To a peer: the buffer is one of the parts written, and the peer gets the record whole.
  const msg: Message = {
    type: 'append',
    from: 's1',
    to: 's2',
    term: 1,
    logIndex: 0,
    logTerm: 0,
    commit: 0,
    entries: [entry],
  };
  const parts = encodeRaftMessage(msg);
  t.true(parts.includes(data));
  const [frame] = new FrameDecoder().push(Buffer.concat(parts));
  const received = decodeRaftMessage(frame!);
  const whole = received.entries![0]!;
  t.is(whole.payload, undefined);
  t.deepEqual(decodeCommand(whole.data), decodeCommand(entry.data, entry.payload));
});

test('a small write that is a view of a much larger buffer is copied, so the log does not keep the larger one alive', (t) => {
  const socketRead = Buffer.alloc(64 * 1024, 1);
  const small = socketRead.subarray(100, 200);
  const { data } = encodeCommandHead(release(small));
  t.not(data, small);
  t.deepEqual(data, small);
  t.is(data!.buffer.byteLength < socketRead.buffer.byteLength, true);
});

test('a head with bytes after its header is refused when the data is held apart', (t) => {
  const [prefix, body] = encodeCommand(release(Buffer.from('xy')));
  const record = Buffer.concat([prefix!, body!, Buffer.from('xy')]);
  t.throws(() => decodeCommand(record, Buffer.from('xy')), { message: /bytes after its header/ });
  t.deepEqual((decodeCommand(record) as { data: Buffer }).data, Buffer.from('xy'));
});
