/**
 * One client connection: turns received bytes into frames, frames into requests, and requests into
 * calls on the node; answers each request by its requestId (answers may come out of order: a
 * blocked ACQUIRE does not hold back the requests behind it).
 *
 * A frame that breaks the framing (bad length, version, header) gets an ERROR with requestId 0 and
 * the connection is closed; a well-framed request with a bad field gets an ERROR for that request
 * only. Neither changes any state.
 *
 * Bounds before trust: until the connection has logged in (a HELLO accepted, its token checked; or a
 * PEER_HELLO accepted) a frame may be at most MAX_HANDSHAKE_FRAME_BYTES, any error answers and closes,
 * and, with a handshake deadline, the connection is closed when it has not logged in by then. After the
 * login MAX_FRAME_BYTES applies.
 *
 * Bounds on what a client makes the server hold: answers queued on the wire and not yet sent are at most
 * `maxQueuedAnswerBytes` (plus one answer). Beyond that the connection decodes no further request and
 * produces no large answer (grants, READ_PAGES: through `whenRoom`) until the wire drains; the socket stops
 * being read meanwhile. Requests in flight, with answers waiting for room, are at most MAX_INFLIGHT_REQUESTS
 * (MAX_PAGE_READER_INFLIGHT_REQUESTS on a page-reader connection, which has no session).
 *
 * Bounds on what all connections hold together: the bytes received and not yet decoded and the answers
 * not yet sent are counted in the memory budget (node/budget.ts) as they change. A client connection
 * starting a frame larger than MAX_HANDSHAKE_FRAME_BYTES that the budget has no room for (`mayReceive`)
 * stops being read until it has; a frame once let in is read to its end. Small requests (a release without
 * bytes, a delete, a goodbye) keep flowing, so clients can still make room. Another member's link is never
 * paused: its traffic is what the leader admitted, and a snapshot arriving in pieces is bounded on its own.
 */
import {
  type Changed,
  decodeRequest,
  type EnvTimer,
  encodeChanged,
  encodeError,
  encodeInvalidate,
  encodeOk,
  encodeProbed,
  encodeRevoke,
  type Frame,
  FrameDecoder,
  type Invalidate,
  MAX_FRAME_BYTES,
  MAX_HANDSHAKE_FRAME_BYTES,
  MAX_INFLIGHT_REQUESTS,
  MAX_PAGE_READER_INFLIGHT_REQUESTS,
  MAX_QUEUED_ANSWER_BYTES,
  MAX_REQUEST_HEADER_ELEMENTS,
  type OkBodyInput,
  PROTOCOL_VERSION,
  type Probed,
  type Request,
  type RequestType,
  type Revoke,
  SegmemError,
} from '@segmem/protocol';
import { ANONYMOUS, type Principal } from '../node/access.js';
import type { Holding } from '../node/budget.js';
import type { Port, SegmemNode, Wire } from '../node/index.js';
import { FROZEN_WAIT_MS, isFrozen } from '../node/moves.js';
import type { Message } from '../raft/types.js';
import { checkPeerProof, newNonce, type PeerHandshake, peerProof } from './peer-auth.js';
import {
  decodePeerHello,
  decodePeerProof,
  decodeRaftMessage,
  encodePeerChallenge,
  PeerMessageType,
  SnapshotPieces,
} from './peer-codec.js';

export interface ConnectionHooks {
  /** Stop reading from the transport (too many requests in flight, or too many answer bytes unsent). */
  pause(): void;
  resume(): void;
}

export interface ConnectionOptions {
  /**
   * Close the connection when it has not logged in this long after it was made (the node's Env timers).
   * Default 0: no deadline (an in-process connection); the TCP listener passes its own (by default
   * DEFAULT_HANDSHAKE_TIMEOUT_MS).
   */
  handshakeTimeoutMs?: number;
  /** Told when the handshake deadline closes the connection (for a counter). */
  onHandshakeTimeout?: () => void;
  /** Told when a peer fails to prove the cluster secret and is refused (for a counter). */
  onPeerAuthFailure?: () => void;
  /** Default MAX_QUEUED_ANSWER_BYTES (see the module comment). */
  maxQueuedAnswerBytes?: number;
  /** An in-process connection (embedded mode): logs in without credentials, with every right. */
  inProcess?: boolean;
}

export class ServerConnection implements Port {
  /** The client's UDP port for invalidation hints, from its HELLO (null: none asked for). */
  udpPort: number | null = null;
  closed = false;
  /** Who the HELLO logged in as; every request is checked against its rights (node/access.ts). */
  principal: Principal = ANONYMOUS;
  readonly inProcess: boolean;
  private readonly decoder = new FrameDecoder({
    maxFrameBytes: MAX_HANDSHAKE_FRAME_BYTES,
    maxHeaderElements: MAX_REQUEST_HEADER_ELEMENTS,
  });
  /** Set once a HELLO or PEER_HELLO was accepted; until then the handshake bounds apply. */
  private loggedIn = false;
  private handshakeTimer: EnvTimer | null = null;
  private sessionId = 0;
  private helloPending = false;
  /** Set by a HELLO with pageReader: no session; only READ_PAGES, STATUS and KEEPALIVE are served. */
  private pageReader = false;
  private inflight = 0;
  /** Requests in flight reached their bound: decode no more until half of them are answered. */
  private tooManyInflight = false;
  /** Whether the hooks were told to pause. */
  private paused = false;
  private readonly maxQueuedAnswerBytes: number;
  /** Answers waiting for the wire to drain below maxQueuedAnswerBytes, oldest first. */
  private readonly roomWaiters: (() => void)[] = [];
  /** Frames left undecoded until there is room (or fewer requests in flight). */
  private decodeHeld = false;
  private drainAsked = false;
  /** What this connection's buffers count in the memory budget. */
  private readonly receivedHeld: Holding;
  private readonly unsentHeld: Holding;
  /** Set while the connection is not read until the memory budget has room: cancels the wait. */
  private memoryWait: (() => void) | null = null;
  /** The frame being received was let in by the budget (read to its end whatever comes meanwhile). */
  private frameLetIn = false;

  constructor(
    private readonly node: SegmemNode,
    readonly wire: Wire,
    private readonly hooks: ConnectionHooks = { pause() {}, resume() {} },
    private readonly opts: ConnectionOptions = {},
  ) {
    this.maxQueuedAnswerBytes = opts.maxQueuedAnswerBytes ?? MAX_QUEUED_ANSWER_BYTES;
    this.receivedHeld = node.budget.holding('received');
    this.unsentHeld = node.budget.holding('unsent');
    const receiving = node.budget.holding('receiving_snapshots');
    this.snapshotPieces = new SnapshotPieces({
      maxTotalBytes: () => node.budget.snapshotBoundBytes,
      holding: (bytes) => receiving.set(bytes),
    });
    this.receiving = receiving;
    this.inProcess = opts.inProcess === true;
    const timeoutMs = opts.handshakeTimeoutMs ?? 0;
    if (timeoutMs > 0) {
      this.handshakeTimer = node.env.setTimeout(() => {
        this.handshakeTimer = null;
        if (this.loggedIn || this.closed) return;
        opts.onHandshakeTimeout?.();
        this.fatal(
          0,
          new SegmemError('TIMEOUT', `no login (HELLO) within ${timeoutMs} ms of connecting; closing`),
        );
      }, timeoutMs);
    }
  }

  /** The HELLO or PEER_HELLO was accepted: the normal frame limit applies from the next frame on. */
  private logIn(): void {
    this.loggedIn = true;
    this.decoder.maxFrameBytes = MAX_FRAME_BYTES;
    this.clearHandshakeTimer();
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer) {
      this.node.env.clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
    }
  }

  get remoteAddress(): string | undefined {
    return this.wire.remoteAddress;
  }

  ok<T extends RequestType>(
    type: T,
    requestId: number,
    body: OkBodyInput<T>,
    payload?: Uint8Array | readonly Uint8Array[],
    onSent?: () => void,
  ): void {
    let parts: Buffer[];
    try {
      parts = encodeOk(type, requestId, body, payload);
    } catch (err) {
      onSent?.();
      throw err;
    }
    this.answer(parts, onSent);
  }

  whenRoom(produce: () => void): void {
    if (this.closed) return;
    if (this.hasRoom()) {
      produce();
      return;
    }
    this.roomWaiters.push(produce);
    this.askDrain();
    this.updatePause();
  }

  hasRoom(): boolean {
    return this.roomWaiters.length === 0 && this.wireHasRoom();
  }

  private wireHasRoom(): boolean {
    return (this.wire.unsentBytes ?? 0) < this.maxQueuedAnswerBytes;
  }

  private askDrain(): void {
    if (this.drainAsked || !this.wire.onDrained) return;
    this.drainAsked = true;
    this.wire.onDrained(() => {
      this.drainAsked = false;
      this.drained();
    });
  }

  /** The wire sent what it held: produce the answers that waited, then decode again. */
  private drained(): void {
    if (this.closed) return;
    let produced = 0;
    while (produced < this.roomWaiters.length && this.wireHasRoom()) {
      try {
        this.roomWaiters[produced++]!();
      } catch (err) {
        // A producer answers its own failures; one that throws must not strand the others.
        this.node.metrics.failed(asSegmemError(err).code);
      }
    }
    this.roomWaiters.splice(0, produced);
    if (this.roomWaiters.length > 0) this.askDrain();
    this.updatePause();
    this.decodeFrames();
  }

  /** Tells the memory budget what this connection's buffers hold now (two reads, no scan). */
  private countHeld(): void {
    this.receivedHeld.set(this.decoder.bufferedBytes);
    this.unsentHeld.set(this.wire.unsentBytes ?? 0);
  }

  /** Stop decoding requests: the wire holds too much unsent, answers wait for room, or too many are in flight. */
  private mustHold(): boolean {
    if (this.peer) return false; // another member's link: its messages are never answered here
    return this.tooManyInflight || !this.hasRoom();
  }

  /** Pauses or resumes the transport to match mustHold (requests in flight count answers waiting for room). */
  private updatePause(): void {
    const limit = this.pageReader ? MAX_PAGE_READER_INFLIGHT_REQUESTS : MAX_INFLIGHT_REQUESTS;
    const pending = this.inflight + this.roomWaiters.length;
    if (pending >= limit) this.tooManyInflight = true;
    else if (pending < limit / 2) this.tooManyInflight = false;
    const hold = this.mustHold();
    if (hold && !this.wireHasRoom()) this.askDrain();
    const pause = hold || this.memoryWait !== null;
    if (pause !== this.paused) {
      this.paused = pause;
      if (pause) this.hooks.pause();
      else this.hooks.resume();
    }
  }

  /**
   * A large frame started: let it in if the memory budget has room for it, else stop reading until it has
   * (a client's link only, see the module comment).
   */
  private admitFrame(): void {
    if (this.frameLetIn || this.memoryWait || this.peer || this.peerPending || this.closed) return;
    const frameBytes = this.decoder.pendingFrameBytes;
    if (frameBytes <= MAX_HANDSHAKE_FRAME_BYTES) return;
    const budget = this.node.budget;
    const hasRoom = () => budget.mayReceive(frameBytes, this.decoder.bufferedBytes);
    if (hasRoom()) {
      this.frameLetIn = true;
      return;
    }
    this.memoryWait = budget.whenRoom(hasRoom, () => {
      this.memoryWait = null;
      this.frameLetIn = true;
      if (!this.closed) this.updatePause();
    });
    this.updatePause();
  }

  error(requestId: number, err: SegmemError): void {
    this.answerError(requestId, err);
  }

  invalidate(msg: Invalidate): void {
    this.answer(encodeInvalidate(msg));
  }

  revoke(msg: Revoke): void {
    this.answer(encodeRevoke(msg));
  }

  changed(msg: Changed): void {
    this.answer(encodeChanged(msg));
  }

  probed(msg: Probed): void {
    this.answer(encodeProbed(msg));
  }

  /** Closes from the server's side (a deposed leader, an expired session): the client reconnects. */
  close(): void {
    this.closed = true;
    this.wire.close();
  }

  /** Bytes received from the transport. */
  receive(chunk: Buffer): void {
    if (this.closed) return;
    // Bytes from a session are a sign of life: a frame that takes longer than the session timeout to
    // arrive (a large write on a slow link or a loaded machine) holds up the keepalives queued behind it.
    if (this.sessionId !== 0) this.node.touch(this.sessionId);
    // One frame at a time: a login handled here raises the frame limit before the next length is checked.
    try {
      this.decoder.feed(chunk);
    } catch (err) {
      this.fatal(0, err);
      return;
    }
    this.decodeFrames();
    this.admitFrame();
  }

  /** Decodes and handles the frames received, until none is left or the connection must hold. */
  private decodeFrames(): void {
    this.decodeReceived();
    this.countHeld();
  }

  private decodeReceived(): void {
    if (this.decodeHeld && this.mustHold()) return;
    this.decodeHeld = false;
    while (!this.closed) {
      if (this.mustHold()) {
        this.decodeHeld = true;
        this.updatePause();
        return;
      }
      let frame: Frame | null;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.fatal(0, err);
        return;
      }
      if (frame === null) return;
      this.frameLetIn = false;
      this.handle(frame);
    }
  }

  /** The transport closed. */
  disconnected(): void {
    if (this.closed) return;
    this.closed = true;
    this.clearHandshakeTimer();
    this.roomWaiters.length = 0;
    this.memoryWait?.();
    this.memoryWait = null;
    this.snapshotPieces.drop();
    this.receiving.release();
    this.receivedHeld.release();
    this.unsentHeld.release();
    if (this.sessionId) this.node.detach(this, this.sessionId);
  }

  /** Set once a PEER_HELLO (and, with a cluster secret, the peer's proof) turned this into a member's link. */
  private peer: ((msg: Message) => void) | null = null;
  /** Between our PEER_CHALLENGE and the dialer's PEER_PROOF: what the proof must cover. */
  private peerPending: { handshake: PeerHandshake; secret: Buffer; handler: (msg: Message) => void } | null =
    null;
  /** A large snapshot arriving in pieces on this peer link, and what it counts in the memory budget. */
  private readonly snapshotPieces: SnapshotPieces;
  private readonly receiving: Holding;
  /** The member that dialled this link (set once its PEER_HELLO was accepted). */
  private peerName = '';

  /**
   * A peer link: PEER_HELLO (the dialer's nonce), our PEER_CHALLENGE (our nonce and proof), its PEER_PROOF,
   * then RAFT frames. Nothing but the next handshake frame is accepted before the proof checked out.
   */
  private handlePeer(frame: Frame): void {
    try {
      if (this.peer) {
        if (frame.type === PeerMessageType.RAFT_PIECE) this.snapshotPieces.add(frame);
        else if (frame.type === PeerMessageType.RAFT)
          this.peer(decodeRaftMessage(frame, this.snapshotPieces));
        else throw new SegmemError('PROTOCOL', `unexpected frame type ${frame.type} on a peer link`);
      } else if (this.peerPending) {
        const { handshake, secret, handler } = this.peerPending;
        if (frame.type !== PeerMessageType.PEER_PROOF)
          this.refusePeer(`peer ${handshake.dialer}: sent frame type ${frame.type} before its proof`);
        const proof = decodePeerProof(frame);
        if (!this.node.acceptsUnprovenPeers && !checkPeerProof(secret, 'dialer', handshake, proof))
          this.refusePeer(`peer ${handshake.dialer}: its proof of the cluster secret does not match`);
        this.peerPending = null;
        this.peer = handler;
        this.logIn();
      } else {
        const hello = decodePeerHello(frame);
        const handler = this.node.acceptPeer(hello);
        this.peerName = hello.from;
        const secret = this.node.peerSecret;
        if (!secret) {
          this.peer = handler;
          this.logIn();
          return;
        }
        if (!hello.nonce)
          this.refusePeer(
            `peer ${hello.from}: no nonce; members prove the cluster secret (--cluster-secret-file)`,
          );
        const handshake: PeerHandshake = {
          clusterId: hello.clusterId,
          dialer: hello.from,
          acceptor: this.node.id,
          dialerNonce: hello.nonce,
          acceptorNonce: newNonce(this.node.env),
        };
        this.peerPending = { handshake, secret, handler };
        this.answer(
          encodePeerChallenge({
            nonce: handshake.acceptorNonce,
            proof: peerProof(secret, 'acceptor', handshake),
          }),
        );
      }
    } catch (err) {
      // A member's link closing is worth a line: the group may be stuck until it is fixed.
      if (this.peer) this.node.note(`peer link from ${this.peerName} closed: ${asSegmemError(err).message}`);
      this.fatal(frame.requestId, err);
    }
  }

  /** A peer that did not prove the secret: counted, then refused (the caller's catch closes the link). */
  private refusePeer(why: string): never {
    this.opts.onPeerAuthFailure?.();
    throw new SegmemError('UNAUTHORIZED', why);
  }

  private handle(frame: Frame): void {
    if (
      this.peer ||
      this.peerPending ||
      (this.sessionId === 0 && !this.helloPending && frame.type === PeerMessageType.PEER_HELLO)
    ) {
      this.handlePeer(frame);
      return;
    }
    let req: Request;
    try {
      req = decodeRequest(frame);
    } catch (err) {
      // Before the login every error ends the connection: a stranger gets one answer, not a conversation.
      if (SegmemError.is(err, 'PROTOCOL') || !this.loggedIn) this.fatal(frame.requestId, err);
      else this.answerError(frame.requestId, err);
      return;
    }
    if (this.pageReader) {
      this.track(this.dispatchPageReader(frame.requestId, req), frame.requestId);
      return;
    }
    if (this.sessionId === 0) {
      if (req.type !== 'HELLO' || this.helloPending) {
        this.fatal(
          frame.requestId,
          new SegmemError('PROTOCOL', `expected HELLO as the first request; got ${req.type}`),
        );
        return;
      }
      if (req.protocol !== PROTOCOL_VERSION) {
        this.fatal(
          frame.requestId,
          new SegmemError(
            'PROTOCOL',
            `protocol version ${req.protocol} is not supported; this server speaks ${PROTOCOL_VERSION}`,
          ),
        );
        return;
      }
      if (req.pageReader) {
        const loggedIn = () => {
          this.helloPending = false;
          this.pageReader = true;
          this.logIn();
        };
        try {
          const checking = this.node.helloPageReader(this, frame.requestId, req);
          if (checking) {
            // A password is being checked: frames before the answer are refused as for a session's HELLO.
            this.helloPending = true;
            checking.then(loggedIn, (err) => this.fatal(frame.requestId, err));
          } else loggedIn();
        } catch (err) {
          this.fatal(frame.requestId, err);
        }
        return;
      }
      this.helloPending = true;
      this.udpPort = req.udpPort ?? null;
      this.node.hello(this, frame.requestId, req).then(
        (sessionId) => {
          this.helloPending = false;
          if (this.closed) this.node.detach(this, sessionId);
          else {
            this.sessionId = sessionId;
            this.logIn();
          }
        },
        (err) => this.fatal(frame.requestId, err),
      );
      return;
    }
    if (req.type === 'HELLO') {
      this.answerError(
        frame.requestId,
        new SegmemError('PROTOCOL', 'HELLO was already sent on this connection'),
      );
      return;
    }
    this.node.touch(this.sessionId);
    this.track(this.dispatch(frame.requestId, req), frame.requestId, req);
  }

  /** A page-reader connection (any member, no session): reads pages or the member's status, nothing else. */
  private async dispatchPageReader(requestId: number, req: Request): Promise<void> {
    if (req.type === 'READ_PAGES') {
      await this.node.readPages(this, requestId, req);
      return;
    }
    if (req.type === 'STATUS') {
      this.answer(encodeOk('STATUS', requestId, await this.node.statusReport(this.principal)));
      return;
    }
    if (req.type === 'KEEPALIVE') {
      this.answer(encodeOk('KEEPALIVE', requestId, {}));
      return;
    }
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `a page-reader connection serves only READ_PAGES and STATUS; got ${req.type}`,
    );
  }

  private async dispatch(requestId: number, req: Exclude<Request, { type: 'HELLO' }>): Promise<void> {
    const node = this.node;
    const sid = this.sessionId;
    node.requireLeader();
    // A name another shard group owns is redirected before anything else looks at it (rights included:
    // the owning group's rules decide).
    if ('name' in req) node.requireSlot(req.name);
    node.authorize(this.principal, req);
    switch (req.type) {
      case 'KEEPALIVE':
        if (req.lease) await node.leaseBarrier();
        this.answer(encodeOk('KEEPALIVE', requestId, {}));
        return;
      case 'CREATE': {
        const r = await node.moves.whenUnfrozen(req.name, FROZEN_WAIT_MS, false, () => node.create(sid, req));
        this.answer(encodeOk('CREATE', requestId, { object: r.object!, created: r.created }));
        return;
      }
      case 'DELETE':
        await node.moves.whenUnfrozen(req.name, req.timeoutMs ?? null, req.timeoutMs != null, (timeoutMs) =>
          node.delete(
            this,
            sid,
            requestId,
            timeoutMs === (req.timeoutMs ?? null) ? req : { ...req, timeoutMs },
          ),
        );
        this.answer(encodeOk('DELETE', requestId, {}));
        return;
      case 'STAT':
        this.answer(encodeOk('STAT', requestId, { object: await node.stat(req.name) }));
        return;
      case 'LIST':
        this.answer(encodeOk('LIST', requestId, { objects: await node.list(req.prefix, this.principal) }));
        return;
      case 'ACQUIRE':
        await node.moves.whenUnfrozen(req.name, req.timeoutMs, req.timeoutMs !== null, (timeoutMs) =>
          // The request itself unless a freeze used up part of its time (no copy per acquire).
          node.acquire(this, sid, requestId, timeoutMs === req.timeoutMs ? req : { ...req, timeoutMs }),
        );
        return;
      case 'RELEASE':
        this.answer(encodeOk('RELEASE', requestId, await node.release(sid, req)));
        return;
      case 'CANCEL': {
        const cancelled = await node.cancel(sid, req.requestId, req.reason, this);
        this.answer(encodeOk('CANCEL', requestId, { cancelled }));
        return;
      }
      case 'VALIDATE':
        this.answer(encodeOk('VALIDATE', requestId, { stale: await node.validate(req.objects) }));
        return;
      case 'GOODBYE':
        await node.goodbye(sid);
        this.answer(encodeOk('GOODBYE', requestId, {}));
        return;
      case 'MEMBERSHIP':
        this.answer(encodeOk('MEMBERSHIP', requestId, await node.membership(req.op, req.id, req.address)));
        return;
      case 'LOG_APPEND':
        this.answer(
          encodeOk(
            'LOG_APPEND',
            requestId,
            await node.moves.whenUnfrozen(req.name, FROZEN_WAIT_MS, false, () => node.logAppend(sid, req)),
          ),
        );
        return;
      case 'LOG_READ':
        await node.logRead(this, requestId, req);
        return;
      case 'LOG_TRUNCATE':
        this.answer(
          encodeOk('LOG_TRUNCATE', requestId, {
            first: await node.moves.whenUnfrozen(req.name, FROZEN_WAIT_MS, false, () =>
              node.logTruncate(sid, req),
            ),
          }),
        );
        return;
      case 'READ_PAGES':
        await node.readPages(this, requestId, req);
        return;
      case 'SNAPSHOT':
        this.answer(encodeOk('SNAPSHOT', requestId, await node.snapshotExport(sid)));
        return;
      case 'SNAPSHOT_READ':
        this.answer(
          encodeOk(
            'SNAPSHOT_READ',
            requestId,
            { offset: req.offset },
            node.snapshotRead(req, sid, this.principal),
          ),
        );
        return;
      case 'STATUS':
        this.answer(encodeOk('STATUS', requestId, await node.statusReport(this.principal)));
        return;
      case 'USERS':
        this.answer(encodeOk('USERS', requestId, await node.users(sid, req)));
        return;
      case 'WATCH':
        this.answer(encodeOk('WATCH', requestId, await node.watch(sid, req.name)));
        return;
      case 'UNWATCH':
        this.answer(encodeOk('UNWATCH', requestId, { removed: node.unwatch(sid, req.objectId) }));
        return;
      case 'SLOTS':
        this.answer(encodeOk('SLOTS', requestId, node.slots()));
        return;
      case 'BARRIER':
        this.answer(encodeOk('BARRIER', requestId, await node.barrier(sid, req)));
        return;
      case 'PROBE':
        this.answer(encodeOk('PROBE', requestId, { pushed: node.probe(sid, req) }));
        return;
      case 'MOVE':
        this.answer(encodeOk('MOVE', requestId, await node.moves.move(req)));
        return;
      case 'MOVE_READ': {
        const { body, parts, sent } = await node.moves.read(req);
        try {
          this.answer(encodeOk('MOVE_READ', requestId, body, parts), sent);
        } catch (err) {
          sent();
          throw err;
        }
        return;
      }
    }
  }

  /**
   * Counts requests in flight for back-pressure and turns a failure into an ERROR answer. A change refused
   * because its slot was frozen after the node's check (`req` given) is dispatched again: it then waits for
   * the move (node/moves.ts).
   */
  private track(work: Promise<void>, requestId: number, req?: Exclude<Request, { type: 'HELLO' }>): void {
    this.inflight++;
    this.updatePause();
    work
      .catch((err: unknown) => {
        if (req && isFrozen(err) && !this.closed) this.track(this.dispatch(requestId, req), requestId, req);
        // A MOVED refusal that came back from the log gains the slot table here, where every failure passes.
        else this.answerError(requestId, this.node.withSlotTable(err));
      })
      .finally(() => {
        this.inflight--;
        if (this.closed) return;
        this.updatePause();
        if (this.decodeHeld) this.decodeFrames();
      });
  }

  private answer(parts: Buffer[], onSent?: () => void): void {
    if (this.closed) {
      onSent?.();
      return;
    }
    // Counted while queued: again once these bytes left (the socket's queue shrank by then).
    this.wire.write(parts, () => {
      onSent?.();
      this.countHeld();
    });
    this.countHeld();
  }

  private answerError(requestId: number, err: unknown): void {
    const e = asSegmemError(err);
    this.node.metrics.failed(e.code);
    this.answer(encodeError(requestId, e));
  }

  /** The byte stream cannot be trusted any more: say why, then close. */
  private fatal(requestId: number, err: unknown): void {
    if (this.closed) return;
    this.clearHandshakeTimer();
    const e = asSegmemError(err);
    this.node.metrics.failed(e.code);
    this.wire.write(encodeError(requestId, e));
    this.disconnected();
    this.wire.close();
  }
}

export function asSegmemError(err: unknown): SegmemError {
  if (SegmemError.is(err)) return err;
  return new SegmemError('UNAVAILABLE', `internal error: ${(err as Error)?.message ?? String(err)}`);
}
