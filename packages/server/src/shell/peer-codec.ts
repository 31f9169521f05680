/**
 * Server-to-server frames, on the same port and framing as clients (docs/protocol.md, "Peer messages"):
 *   0x80 PEER_HELLO  { clusterId, from, to, nonce }   first frame of a peer connection (the dialer's)
 *   0x83 PEER_CHALLENGE { nonce, proof }            the acceptor's answer: its nonce and its proof
 *   0x84 PEER_PROOF  { proof }                       the dialer's proof; only then may RAFT frames follow
 *   0x81 RAFT        one consensus message; entry data and snapshot bytes travel in the raw payload,
 *                    their lengths in the header, so page bytes are never msgpack-encoded.
 *   0x82 RAFT_PIECE  { index, term, offset, total } and up to 16 MiB of a snapshot's bytes: a snapshot
 *                    larger than that goes as pieces, in order, then its RAFT frame with `pieces: true`
 *                    and no bytes of its own (a frame may not exceed 64 MiB; a snapshot may). The
 *                    receiver refuses a `total` past its memory budget's room and holds only the
 *                    bytes that arrived (its buffer grows with them), counted in its budget.
 * Peers validate every field like clients do: a peer is just another process on the network.
 */
import { constants as bufferConstants } from 'node:buffer';
import {
  arrayField,
  boolField,
  encodeFrame,
  type Frame,
  invalidArgument,
  isPlainMap,
  MAX_TOKEN_BYTES,
  optionalField,
  SegmemError,
  stringField,
  uintField,
} from '@segmem/protocol';
import {
  type Entry,
  entryBytes,
  entryParts,
  type Message,
  type MessageType,
  type NodeId,
  type Snapshot,
} from '../raft/types.js';

export const PeerMessageType = {
  PEER_HELLO: 0x80,
  RAFT: 0x81,
  RAFT_PIECE: 0x82,
  PEER_CHALLENGE: 0x83,
  PEER_PROOF: 0x84,
} as const;

/**
 * Terms and indexes above this are refused as hostile instead of adopted: a group electing a leader every
 * millisecond would need thousands of years to reach it, while one adopted 2^53-1 leaves no term to
 * campaign in.
 */
export const MAX_PEER_TERM = 2 ** 48;
export const MAX_PEER_INDEX = 2 ** 48;

/** Snapshots larger than this travel in pieces of this size. */
export const SNAPSHOT_PIECE_BYTES = 16 * 1024 * 1024;

/** Every Raft message type a peer may send (the fuzzers draw from this list too). */
export const RAFT_MESSAGE_TYPES: readonly MessageType[] = [
  'preVote',
  'preVoteResp',
  'vote',
  'voteResp',
  'append',
  'appendResp',
  'heartbeat',
  'heartbeatResp',
  'snapshot',
  'timeoutNow',
];
const MESSAGE_TYPES: ReadonlySet<string> = new Set<string>(RAFT_MESSAGE_TYPES);

const NODE_ID = /^[A-Za-z0-9._-]{1,64}$/;

function nodeId(value: unknown, field: string): NodeId {
  const s = stringField(value, field, 1, 64);
  if (!NODE_ID.test(s)) throw invalidArgument(`${field} must be a server id of [A-Za-z0-9._-]`);
  return s;
}

export interface PeerHello {
  clusterId: string;
  from: NodeId;
  to: NodeId;
  /**
   * Only between members that run without a cluster secret (unit tests on the simulated clock): the cluster's
   * `token` setting, presented like a client's. With a secret, members send none.
   */
  token: string | null;
  /** The dialer's fresh random nonce (PEER_NONCE_BYTES); absent only without a cluster secret. */
  nonce?: Buffer;
}

const HEX_32 = /^[0-9a-f]{64}$/;

/** A 32-byte nonce or proof, carried as lowercase hex. */
function hex32(value: unknown, field: string): Buffer {
  if (typeof value !== 'string' || !HEX_32.test(value))
    throw invalidArgument(`${field} must be 32 bytes as 64 lowercase hex digits`, { field });
  return Buffer.from(value, 'hex');
}

export function encodePeerHello(hello: PeerHello): Buffer[] {
  const { nonce, ...rest } = hello;
  return encodeFrame(
    PeerMessageType.PEER_HELLO,
    1,
    0,
    nonce ? { ...rest, nonce: nonce.toString('hex') } : rest,
  );
}

export function decodePeerHello(frame: Frame): PeerHello {
  const h = frame.header;
  if (!isPlainMap(h)) throw invalidArgument('peer hello header must be a map');
  const hello: PeerHello = {
    clusterId: stringField(h.clusterId, 'clusterId', 1, 255),
    from: nodeId(h.from, 'from'),
    to: nodeId(h.to, 'to'),
    token: optionalField(h.token, 'token', (v, f) => stringField(v, f, 0, MAX_TOKEN_BYTES)),
  };
  const nonce = optionalField(h.nonce, 'nonce', hex32);
  if (nonce) hello.nonce = nonce;
  return hello;
}

/** The acceptor's answer to a PEER_HELLO: its nonce and its proof of the secret. */
export interface PeerChallenge {
  nonce: Buffer;
  proof: Buffer;
}

export function encodePeerChallenge(c: PeerChallenge): Buffer[] {
  return encodeFrame(PeerMessageType.PEER_CHALLENGE, 1, 0, {
    nonce: c.nonce.toString('hex'),
    proof: c.proof.toString('hex'),
  });
}

export function decodePeerChallenge(frame: Frame): PeerChallenge {
  const h = frame.header;
  if (!isPlainMap(h)) throw invalidArgument('peer challenge header must be a map');
  return { nonce: hex32(h.nonce, 'nonce'), proof: hex32(h.proof, 'proof') };
}

export function encodePeerProof(proof: Buffer): Buffer[] {
  return encodeFrame(PeerMessageType.PEER_PROOF, 1, 0, { proof: proof.toString('hex') });
}

export function decodePeerProof(frame: Frame): Buffer {
  const h = frame.header;
  if (!isPlainMap(h)) throw invalidArgument('peer proof header must be a map');
  return hex32(h.proof, 'proof');
}

/** The frames of one consensus message (several for a large snapshot), as parts to write in order. */
export function encodeRaftMessage(m: Message, groupId = 0): Buffer[] {
  const parts: Buffer[] = [];
  let entries: [number, number, number, number][] | undefined;
  if (m.entries && m.entries.length > 0) {
    entries = m.entries.map((e) => {
      parts.push(...entryParts(e));
      return [e.term, e.index, e.type === 'conf' ? 1 : 0, entryBytes(e)];
    });
  }
  let snapshot: [number, number, NodeId[], number] | undefined;
  const frames: Buffer[] = [];
  let pieces = false;
  if (m.snapshot) {
    const { meta, data } = m.snapshot;
    snapshot = [meta.index, meta.term, meta.members, data.length];
    if (data.length > SNAPSHOT_PIECE_BYTES) {
      // Views of the snapshot's bytes, not copies; the frames leave one after the other on one link.
      pieces = true;
      for (let offset = 0; offset < data.length; offset += SNAPSHOT_PIECE_BYTES) {
        const piece = data.subarray(offset, Math.min(data.length, offset + SNAPSHOT_PIECE_BYTES));
        const head = { index: meta.index, term: meta.term, offset, total: data.length };
        frames.push(...encodeFrame(PeerMessageType.RAFT_PIECE, 1, groupId, head, piece));
      }
    } else parts.push(data);
  }
  const header: Record<string, unknown> = { type: m.type, from: m.from, to: m.to, term: m.term };
  if (m.logIndex !== undefined) header.logIndex = m.logIndex;
  if (m.logTerm !== undefined) header.logTerm = m.logTerm;
  if (m.commit !== undefined) header.commit = m.commit;
  if (m.reject !== undefined) header.reject = m.reject;
  if (m.hintIndex !== undefined) header.hintIndex = m.hintIndex;
  if (m.hintTerm !== undefined) header.hintTerm = m.hintTerm;
  if (m.context !== undefined) header.context = m.context;
  if (entries) header.entries = entries;
  if (snapshot) header.snapshot = snapshot;
  if (pieces) header.pieces = true;
  // Entry data and snapshot bytes follow the header as they are: no copy, no re-encoding.
  frames.push(...encodeFrame(PeerMessageType.RAFT, 1, groupId, header, parts));
  return frames;
}

/** What a receiver of snapshot pieces allows and counts (the server's memory budget). */
export interface SnapshotPiecesLimits {
  /** The largest snapshot accepted (null: only the Buffer limit); read at each snapshot's first piece. */
  maxTotalBytes(): number | null;
  /** Says how many bytes the buffer being filled takes now (0 once taken or dropped). */
  holding(bytes: number): void;
}

/**
 * Collects the pieces of a large snapshot from one peer link, in order; {@link decodeRaftMessage} takes
 * the bytes when the snapshot's RAFT frame follows. Anything out of order is a protocol error; a snapshot
 * announced larger than the limits allow is refused (`NO_SPACE`) before anything is held for it. The
 * buffer grows with the bytes that arrived (doubling, up to the announced total), so a total announced
 * but never sent reserves nothing.
 */
export class SnapshotPieces {
  private bytes: Buffer | null = null;
  private index = 0;
  private term = 0;
  private total = 0;
  private received = 0;

  constructor(
    private readonly limits: SnapshotPiecesLimits = { maxTotalBytes: () => null, holding: () => {} },
  ) {}

  add(frame: Frame): void {
    const h = frame.header;
    if (!isPlainMap(h)) throw invalidArgument('raft piece header must be a map');
    const index = uintField(h.index, 'index');
    const term = uintField(h.term, 'term');
    const offset = uintField(h.offset, 'offset');
    const total = uintField(h.total, 'total', 1, bufferConstants.MAX_LENGTH);
    if (offset === 0) {
      this.drop();
      const max = this.limits.maxTotalBytes();
      if (max !== null && total > max) {
        throw new SegmemError(
          'NO_SPACE',
          `snapshot ${index} (term ${term}) of ${total} bytes refused: larger than the ${max} bytes of ` +
            'state the memory budget (--max-memory) allows a member to hold',
          { budget: 'max-memory', limitBytes: max, neededBytes: total },
        );
      }
      this.index = index;
      this.term = term;
      this.total = total;
    } else if (!this.bytes || index !== this.index || term !== this.term || total !== this.total) {
      throw invalidArgument(`snapshot piece at ${offset} belongs to no snapshot being received`);
    }
    if (offset !== this.received) {
      throw invalidArgument(`snapshot piece at ${offset}, expected ${this.received}`);
    }
    const end = offset + frame.payload.length;
    if (end > total) throw invalidArgument('snapshot piece runs past its total');
    this.reserve(end);
    this.received += frame.payload.copy(this.bytes!, offset);
  }

  /** Room for `end` bytes: the buffer doubles (at most to the total), keeping what arrived. */
  private reserve(end: number): void {
    const capacity = this.bytes?.length ?? 0;
    if (end <= capacity && this.bytes) return;
    const grown = Buffer.allocUnsafe(Math.min(this.total, Math.max(end, capacity * 2)));
    this.bytes?.copy(grown, 0, 0, this.received);
    this.bytes = grown;
    this.limits.holding(grown.length);
  }

  /** Forgets a snapshot being received (the link closed, or a new one starts). */
  drop(): void {
    this.bytes = null;
    this.received = 0;
    this.total = 0;
    this.limits.holding(0);
  }

  /** The complete bytes of the snapshot at (index, term), once; throws if they are not all here. */
  take(index: number, term: number, length: number): Buffer {
    const bytes = this.bytes;
    if (
      !bytes ||
      index !== this.index ||
      term !== this.term ||
      length !== this.total ||
      this.received !== length
    ) {
      throw invalidArgument(`snapshot ${index} (term ${term}) announced in pieces that did not all arrive`);
    }
    // Complete, the buffer is exactly the total (it grows to it at most); the log counts it from now on.
    this.bytes = null;
    this.limits.holding(0);
    return bytes;
  }
}

export function decodeRaftMessage(frame: Frame, pieces?: SnapshotPieces): Message {
  const h = frame.header;
  const type = stringField(h.type, 'type', 1, 32);
  if (!MESSAGE_TYPES.has(type)) throw invalidArgument(`unknown raft message type ${JSON.stringify(type)}`);
  const m: Message = {
    type: type as MessageType,
    from: nodeId(h.from, 'from'),
    to: nodeId(h.to, 'to'),
    term: uintField(h.term, 'term', 0, MAX_PEER_TERM),
  };
  // Every index and term a message names is held to the same bound (context is an opaque counter).
  const opt = (name: keyof Message) =>
    optionalField(h[name], name, (v, f) =>
      uintField(v, f, 0, name === 'context' ? undefined : MAX_PEER_INDEX),
    );
  const logIndex = opt('logIndex');
  if (logIndex !== null) m.logIndex = logIndex;
  const logTerm = opt('logTerm');
  if (logTerm !== null) m.logTerm = logTerm;
  const commit = opt('commit');
  if (commit !== null) m.commit = commit;
  const hintIndex = opt('hintIndex');
  if (hintIndex !== null) m.hintIndex = hintIndex;
  const hintTerm = opt('hintTerm');
  if (hintTerm !== null) m.hintTerm = hintTerm;
  const context = opt('context');
  if (context !== null) m.context = context;
  const reject = optionalField(h.reject, 'reject', boolField);
  if (reject !== null) m.reject = reject;
  let at = 0;
  const take = (n: number, field: string): Buffer => {
    if (at + n > frame.payload.length) throw invalidArgument(`${field} runs past the payload`);
    const out = frame.payload.subarray(at, at + n);
    at += n;
    return out;
  };
  if (h.entries !== undefined && h.entries !== null) {
    m.entries = arrayField(h.entries, 'entries').map((raw, i): Entry => {
      const f = `entries[${i}]`;
      const a = arrayField(raw, f);
      if (a.length !== 4) throw invalidArgument(`${f} must be [term, index, type, length]`);
      const kind = uintField(a[2], `${f}.type`, 0, 1);
      return {
        term: uintField(a[0], `${f}.term`, 0, MAX_PEER_TERM),
        index: uintField(a[1], `${f}.index`, 1, MAX_PEER_INDEX),
        type: kind === 1 ? 'conf' : 'normal',
        data: take(uintField(a[3], `${f}.length`), f),
      };
    });
  }
  if (h.snapshot !== undefined && h.snapshot !== null) {
    const a = arrayField(h.snapshot, 'snapshot');
    if (a.length !== 4) throw invalidArgument('snapshot must be [index, term, members, length]');
    const members = arrayField(a[2], 'snapshot.members').map((v, i) => nodeId(v, `snapshot.members[${i}]`));
    const index = uintField(a[0], 'snapshot.index', 0, MAX_PEER_INDEX);
    const term = uintField(a[1], 'snapshot.term', 0, MAX_PEER_TERM);
    const length = uintField(a[3], 'snapshot.length');
    const inPieces = optionalField(h.pieces, 'pieces', boolField) === true;
    if (inPieces && !pieces) throw invalidArgument('a snapshot in pieces where none are expected');
    const snap: Snapshot = {
      meta: { index, term, members },
      data: inPieces ? pieces!.take(index, term, length) : take(length, 'snapshot'),
    };
    m.snapshot = snap;
  }
  if (at !== frame.payload.length)
    throw invalidArgument('payload longer than the entries and snapshot it carries');
  if (!isPlainMap(h)) throw invalidArgument('raft header must be a map');
  return m;
}
