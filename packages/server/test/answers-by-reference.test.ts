/**
 * Answers by reference: a large grant or READ_PAGES answer carries views of the object's buffer, and a
 * write applied while such an answer is still unsent replaces the buffer instead of changing the bytes
 * under the answer. Once the answer is sent, writes go in place again.
 */
import { type OkBodyInput, type RequestType, SegmemError } from '@segmem/protocol';
import test from 'ava';
import { StateMachine } from '../src/core/state-machine.js';
import { ADMIN, type Principal } from '../src/node/access.js';
import type { Port } from '../src/node/port.js';
import { answerWithPages, objectRecord } from '../src/node/util.js';

const PAGE = 4096;
const PAGES = 64; // 256 KiB: over the size below which answers are copied

/** What a connection was asked to send, as the node handed it over. */
class RecordingPort implements Port {
  readonly udpPort = null;
  readonly remoteAddress = undefined;
  closed = false;
  principal: Principal = ADMIN;
  readonly sent: { payload: readonly Uint8Array[]; onSent: (() => void) | undefined }[] = [];
  ok<T extends RequestType>(
    _type: T,
    _requestId: number,
    _body: OkBodyInput<T>,
    payload?: Uint8Array | readonly Uint8Array[],
    onSent?: () => void,
  ): void {
    const parts = payload === undefined ? [] : Array.isArray(payload) ? payload : [payload as Uint8Array];
    this.sent.push({ payload: parts, onSent });
  }
  error(_requestId: number, err: SegmemError): void {
    throw err;
  }
  whenRoom(produce: () => void): void {
    produce();
  }
  hasRoom(): boolean {
    return true;
  }
  invalidate(): void {}
  revoke(): void {}
  changed(): void {}
  probed(): void {}
  close(): void {}
}

function machineWithObject(): { sm: StateMachine; write: (fill: number) => void } {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: 4 * PAGES * PAGE });
  let index = 0;
  let seq = 0;
  const apply = (cmd: Parameters<StateMachine['apply']>[1]) => {
    const r = sm.apply(++index, cmd).result;
    if (!r.ok) throw new SegmemError(r.code, r.message);
    return r.value as { granted?: { token: number } };
  };
  apply({ op: 'open', timeoutMs: 1000, clientName: 'test' });
  apply({ op: 'create', sessionId: 1, seq: ++seq, name: 'o', size: PAGES * PAGE, ifNotExists: false });
  const write = (fill: number) => {
    const { granted } = apply({ op: 'acquire', sessionId: 1, seq: ++seq, name: 'o', mode: 'write' });
    const data = Buffer.alloc(PAGES * PAGE, fill);
    apply({
      op: 'release',
      sessionId: 1,
      seq: ++seq,
      name: 'o',
      mode: 'write',
      token: granted!.token,
      ranges: [[0, data.length]],
      data,
    });
  };
  return { sm, write };
}

function answer(sm: StateMachine, port: Port, pages: number[]): void {
  const obj = sm.objectNamed('o')!;
  answerWithPages(port, 'READ_PAGES', 1, { object: objectRecord(obj), pages }, sm, obj, pages);
}

test('a write while a large answer is unsent leaves the answer as it was; once sent, writes go in place', (t) => {
  const { sm, write } = machineWithObject();
  write(1);
  const port = new RecordingPort();
  const before = sm.objectNamed('o')!.data!;
  // Pages 0..9 and 20..63: two runs, two views of the object's own buffer.
  answer(sm, port, [
    ...Array.from({ length: 10 }, (_, p) => p),
    ...Array.from({ length: 44 }, (_, p) => p + 20),
  ]);
  const [first] = port.sent;
  t.is(first!.payload.length, 2);
  for (const part of first!.payload) t.is(part.buffer, before.buffer, 'a view, not a copy');
  t.is(sm.pinnedObjectCount(), 1);

  write(2);
  const after = sm.objectNamed('o')!.data!;
  t.not(after, before, 'the write replaced the pinned buffer');
  t.true(
    first!.payload.every((part) => part.every((b) => b === 1)),
    'the unsent answer still carries the bytes it was built from',
  );
  t.true(after.every((b) => b === 2));

  first!.onSent!();
  first!.onSent!(); // once only counts
  t.is(sm.pinnedObjectCount(), 0);
  write(3);
  t.is(sm.objectNamed('o')!.data, after, 'with nothing unsent, a write changes the buffer in place');
});

test('small answers, and answers of less than half the object, are copies and pin nothing; a never-written object is sent as zeros', (t) => {
  const { sm, write } = machineWithObject();
  const port = new RecordingPort();
  answer(sm, port, [0, 1, 2]);
  t.true(port.sent[0]!.payload[0]!.every((b) => b === 0));
  t.is(port.sent[0]!.payload[0]!.length, 3 * PAGE);
  write(7);
  answer(sm, port, [5]);
  const [part] = port.sent[1]!.payload;
  t.not(part!.buffer, sm.objectNamed('o')!.data!.buffer, 'a copy');
  t.is(port.sent[1]!.onSent, undefined);
  t.is(sm.pinnedObjectCount(), 0);
  t.true(part!.every((b) => b === 7));
  // 31 of 64 pages, 124 KiB: over the copy size, but a view would keep twice its bytes alive.
  answer(
    sm,
    port,
    Array.from({ length: 31 }, (_, p) => p),
  );
  t.is(port.sent[2]!.onSent, undefined);
  t.not(port.sent[2]!.payload[0]!.buffer, sm.objectNamed('o')!.data!.buffer, 'a copy');
  t.is(sm.pinnedObjectCount(), 0);
});
