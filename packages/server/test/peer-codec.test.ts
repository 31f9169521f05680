/**
 * Server-to-server frames: a consensus message survives encoding, and a snapshot larger than a frame
 * travels in pieces that are put back together, in order, or refused.
 */
import { encodeFrame, FrameDecoder, type SegmemError, systemEnv } from '@segmem/protocol';
import test from 'ava';
import type { Message } from '../src/raft/types.js';
import { checkPeerProof, newNonce, type PeerHandshake, peerProof } from '../src/shell/peer-auth.js';
import {
  decodePeerChallenge,
  decodePeerHello,
  decodeRaftMessage,
  encodePeerChallenge,
  encodePeerHello,
  encodeRaftMessage,
  MAX_PEER_TERM,
  PeerMessageType,
  SNAPSHOT_PIECE_BYTES,
  SnapshotPieces,
} from '../src/shell/peer-codec.js';

function snapshotMessage(bytes: number): Message {
  const data = Buffer.allocUnsafe(bytes);
  for (let i = 0; i < bytes; i += 4096) data.writeUInt32LE(i, i);
  return {
    type: 'snapshot',
    from: 's1',
    to: 's2',
    term: 3,
    snapshot: { meta: { index: 77, term: 3, members: ['s1', 's2', 's3'] }, data },
  };
}

/** What the receiving side of a peer link does with the frames of a byte stream. */
function receive(parts: Buffer[], chunkBytes = 1 << 20): Message[] {
  const stream = Buffer.concat(parts);
  const decoder = new FrameDecoder();
  const pieces = new SnapshotPieces();
  const out: Message[] = [];
  for (let at = 0; at < stream.length; at += chunkBytes) {
    for (const frame of decoder.push(stream.subarray(at, at + chunkBytes))) {
      if (frame.type === PeerMessageType.RAFT_PIECE) pieces.add(frame);
      else out.push(decodeRaftMessage(frame, pieces));
    }
  }
  return out;
}

test('a snapshot larger than a frame travels in pieces and arrives whole', (t) => {
  const msg = snapshotMessage(2 * SNAPSHOT_PIECE_BYTES + 12_345 + 65 * 1024 * 1024); // over the 64 MiB frame limit
  const parts = encodeRaftMessage(msg);
  const [got] = receive(parts, 7 * 1024 * 1024 + 3);
  t.deepEqual(got!.snapshot!.meta, msg.snapshot!.meta);
  t.true(got!.snapshot!.data.equals(msg.snapshot!.data));
  t.is(got!.term, 3);
  // A small snapshot stays one frame; both kinds can follow each other on one link.
  const small = snapshotMessage(1000);
  const both = receive([...encodeRaftMessage(small), ...parts, ...encodeRaftMessage(small)]);
  t.is(both.length, 3);
  t.true(both[1]!.snapshot!.data.equals(msg.snapshot!.data));
  t.true(both[2]!.snapshot!.data.equals(small.snapshot!.data));
});

test('snapshot pieces: a total past the limit is refused before anything is held; the buffer grows with what arrived', (t) => {
  const msg = snapshotMessage(5 * SNAPSHOT_PIECE_BYTES + 999);
  const frames = new FrameDecoder().push(Buffer.concat(encodeRaftMessage(msg)));
  t.is(frames.length, 7); // 6 pieces and the message
  const held: number[] = [];
  const refusing = new SnapshotPieces({
    maxTotalBytes: () => 5 * SNAPSHOT_PIECE_BYTES,
    holding: (bytes) => held.push(bytes),
  });
  const err = t.throws(() => refusing.add(frames[0]!), { code: 'NO_SPACE' });
  t.regex(err!.message, /snapshot 77 \(term 3\) of 83887079 bytes refused: larger than the 83886080 bytes/);
  t.like((err as SegmemError).details, { budget: 'max-memory', neededBytes: 83887079 });
  t.deepEqual(held, [0], 'nothing held for it');

  held.length = 0;
  const pieces = new SnapshotPieces({ maxTotalBytes: () => null, holding: (bytes) => held.push(bytes) });
  for (const f of frames.slice(0, 6)) pieces.add(f);
  const M = SNAPSHOT_PIECE_BYTES;
  // Doubling from the first piece, up to the total: never the announced total before the bytes came.
  t.deepEqual(held, [0, M, 2 * M, 4 * M, 5 * M + 999]);
  const got = decodeRaftMessage(frames[6]!, pieces);
  t.true(got.snapshot!.data.equals(msg.snapshot!.data));
  t.is(got.snapshot!.data.length, msg.snapshot!.data.length);
  t.is(held[held.length - 1], 0, 'the bytes taken are no longer counted as arriving');

  // A piece announcing a huge total holds only what it carried.
  held.length = 0;
  const liar = new SnapshotPieces({ maxTotalBytes: () => null, holding: (bytes) => held.push(bytes) });
  const [lie] = new FrameDecoder().push(
    Buffer.concat(
      encodeFrame(
        PeerMessageType.RAFT_PIECE,
        1,
        0,
        { index: 9, term: 1, offset: 0, total: 3 * 1024 * 1024 * 1024 },
        Buffer.alloc(1000),
      ),
    ),
  );
  liar.add(lie!);
  t.deepEqual(held, [0, 1000]);
  liar.drop();
  t.deepEqual(held, [0, 1000, 0]);
});

test('snapshot pieces out of order, missing, or announced without pieces are refused', (t) => {
  const msg = snapshotMessage(3 * SNAPSHOT_PIECE_BYTES + 10);
  const decoder = new FrameDecoder();
  const frames = decoder.push(Buffer.concat(encodeRaftMessage(msg)));
  t.is(frames.length, 5); // 4 pieces and the message
  const run = (order: number[]) => {
    const pieces = new SnapshotPieces();
    for (const i of order) {
      const f = frames[i]!;
      if (f.type === PeerMessageType.RAFT_PIECE) pieces.add(f);
      else decodeRaftMessage(f, pieces);
    }
  };
  t.notThrows(() => run([0, 1, 2, 3, 4]));
  t.throws(() => run([0, 2]), { message: /expected/ });
  t.throws(() => run([1]), { message: /belongs to no snapshot/ });
  t.throws(() => run([0, 1, 2, 4]), { message: /did not all arrive/ });
  t.throws(() => decodeRaftMessage(frames[4]!), { message: /in pieces where none are expected/ });
  // A restart of the sequence (the leader sent the snapshot again) replaces what came before.
  t.notThrows(() => run([0, 1, 0, 1, 2, 3, 4]));
});

test('terms and indexes above 2^48 are refused at the boundary, not handed to the core', (t) => {
  const ok = receive(
    encodeRaftMessage({ type: 'heartbeat', from: 's1', to: 's2', term: MAX_PEER_TERM, commit: 5 }),
  );
  t.is(ok[0]!.term, MAX_PEER_TERM);
  for (const m of [
    { type: 'heartbeat', from: 's1', to: 's2', term: MAX_PEER_TERM + 1 },
    { type: 'heartbeat', from: 's1', to: 's2', term: Number.MAX_SAFE_INTEGER },
    { type: 'append', from: 's1', to: 's2', term: 1, logIndex: 2 ** 50 },
    { type: 'appendResp', from: 's1', to: 's2', term: 1, hintTerm: 2 ** 49 },
    {
      type: 'snapshot',
      from: 's1',
      to: 's2',
      term: 1,
      snapshot: { meta: { index: 2 ** 52, term: 1, members: ['s1'] }, data: Buffer.alloc(1) },
    },
  ] as Message[]) {
    t.throws(() => receive(encodeRaftMessage(m)), { code: 'INVALID_ARGUMENT' }, JSON.stringify(m));
  }
});

test('the handshake frames round-trip; a proof holds only for its role, nonces, ids, cluster and secret', (t) => {
  const nonce = newNonce(systemEnv);
  const frames = new FrameDecoder().push(
    Buffer.concat(encodePeerHello({ clusterId: 'c', from: 's1', to: 's2', token: null, nonce })),
  );
  t.deepEqual(decodePeerHello(frames[0]!).nonce, nonce);
  const secret = Buffer.alloc(32, 7);
  const h: PeerHandshake = {
    clusterId: 'c',
    dialer: 's1',
    acceptor: 's2',
    dialerNonce: nonce,
    acceptorNonce: newNonce(systemEnv),
  };
  const proof = peerProof(secret, 'acceptor', h);
  const [challenge] = new FrameDecoder().push(
    Buffer.concat(encodePeerChallenge({ nonce: h.acceptorNonce, proof })),
  );
  t.deepEqual(decodePeerChallenge(challenge!), { nonce: h.acceptorNonce, proof });
  t.true(checkPeerProof(secret, 'acceptor', h, proof));
  t.false(checkPeerProof(secret, 'dialer', h, proof), 'not as the other role');
  t.false(checkPeerProof(Buffer.alloc(32, 8), 'acceptor', h, proof), 'not under another secret');
  t.false(
    checkPeerProof(secret, 'acceptor', { ...h, acceptorNonce: newNonce(systemEnv) }, proof),
    'not with another nonce',
  );
  t.false(checkPeerProof(secret, 'acceptor', { ...h, dialer: 's3' }, proof), 'not for another peer');
  t.false(checkPeerProof(secret, 'acceptor', { ...h, clusterId: 'd' }, proof), 'not in another cluster');
  t.false(checkPeerProof(secret, 'acceptor', h, proof.subarray(1)), 'a short proof');
  const [bad] = new FrameDecoder().push(
    Buffer.concat(
      encodePeerHello({ clusterId: 'c', from: 's1', to: 's2', token: null, nonce: Buffer.alloc(31) }),
    ),
  );
  t.throws(() => decodePeerHello(bad!), { code: 'INVALID_ARGUMENT', message: /nonce must be 32 bytes/ });
});
