/**
 * Links to the other members of the group. Each server dials every peer and sends its own messages on
 * that outgoing connection; it receives theirs on the connections they dialled (accepted by the same
 * listener as clients, recognised by a PEER_HELLO first frame).
 *
 * Raft tolerates lost messages, so nothing here queues without bound: while a link is down or its
 * socket is backed up, messages to that peer are dropped and the core's retries (heartbeats, append
 * retries) carry the state across once the link is back. Each link re-dials on its own, with capped,
 * jittered back-off, so a restarted peer is found again without any topology change.
 *
 * With a cluster secret a link carries nothing until both ends proved they hold it (shell/peer-auth.ts):
 * PEER_HELLO with our nonce, the peer's PEER_CHALLENGE with its nonce and proof, which we check, then our
 * PEER_PROOF. A peer whose proof fails is dropped and counted; its link re-dials like any other.
 *
 * A link speaks to a {@link PeerSocket}: a node:net or node:tls socket, or the simulator's (its network
 * carries the same frames, so the simulation runs this code, handshake and re-dials included).
 */
import { isIP, connect as netConnect } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import {
  type Env,
  type EnvTimer,
  type Frame,
  FrameDecoder,
  isPlainMap,
  MAX_HANDSHAKE_FRAME_BYTES,
  MessageType,
} from '@segmem/protocol';
import type { Message, NodeId } from '../raft/types.js';
import { checkPeerProof, newNonce, type PeerHandshake, peerProof } from './peer-auth.js';
import {
  decodePeerChallenge,
  encodePeerHello,
  encodePeerProof,
  encodeRaftMessage,
  PeerMessageType,
} from './peer-codec.js';
import { parseHostPort } from './tcp.js';

/** What a link needs of its connection: the part of a node:net Socket it uses. */
export interface PeerSocket {
  write(chunk: Buffer): unknown;
  cork(): void;
  uncork(): void;
  destroy(): void;
  readonly writableLength: number;
  readonly writableCorked: number;
  on(event: 'connect' | 'secureConnect' | 'close', listener: () => void): unknown;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  once(event: 'connect', listener: () => void): unknown;
}

/** Opens a connection to a member's address (host:port); it emits 'connect' once it is up. */
export type PeerDial = (address: string) => PeerSocket;

/** What a link needs to open: who we are, who the peer is, and the secret to prove (none: no proof). */
interface LinkIdentity {
  clusterId: string;
  self: NodeId;
  token: string | null;
  secret: Buffer | null;
  /** Told once per failure streak why the link is refused, and when it works again. */
  log: ((line: string) => void) | undefined;
  /** Counts a peer that failed to prove the secret. */
  onAuthFailure: () => void;
  /** How links connect (none: TCP, or TLS with the link's options). */
  dial: PeerDial | undefined;
}

/** Drop messages to a peer whose socket already holds this many unsent bytes. */
const MAX_UNSENT_BYTES = 32 * 1024 * 1024;

class PeerLink {
  private socket: PeerSocket | null = null;
  /** True once the handshake is through: only then are messages written. */
  private connected = false;
  private closed = false;
  private delayMs = 20;
  private timer: EnvTimer | null = null;
  /** The last reason this link failed, logged once until it works again. */
  private lastFailure: string | null = null;
  dropped = 0;

  constructor(
    readonly id: NodeId,
    private readonly address: string,
    private readonly who: LinkIdentity,
    private readonly env: Env,
    private readonly tls?: ConnectionOptions,
    /** Told why a TLS handshake with this peer failed (once per reason until a link comes up). */
    private readonly onTlsError?: (message: string) => void,
  ) {
    this.dial();
  }
  private lastTlsError = '';

  private dial(): void {
    if (this.closed) return;
    const socket = this.who.dial ? this.who.dial(this.address) : this.connect();
    this.socket = socket;
    const { clusterId, self, token, secret } = this.who;
    const nonce = secret ? newNonce(this.env) : undefined;
    const decoder = new FrameDecoder({ maxFrameBytes: MAX_HANDSHAKE_FRAME_BYTES, maxHeaderElements: 16 });
    let tcpConnected = false;
    if (this.tls) socket.once('connect', () => (tcpConnected = true));
    socket.on(this.tls ? 'secureConnect' : 'connect', () => {
      this.lastTlsError = '';
      const hello = encodePeerHello({
        clusterId,
        from: self,
        to: this.id,
        token: secret ? null : token,
        ...(nonce ? { nonce } : {}),
      });
      socket.cork();
      for (const p of hello) socket.write(p);
      socket.uncork();
      if (!secret) this.established();
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        decoder.feed(chunk);
        for (let frame = decoder.next(); frame !== null; frame = decoder.next()) {
          if (!this.onFrame(frame, socket, nonce)) return;
        }
      } catch (err) {
        this.fail(socket, `peer link to ${this.id} at ${this.address}: ${(err as Error).message}`);
      }
    });
    socket.on('error', (err: Error) => {
      // A misconfigured certificate or CA shows nowhere else: the link just never comes up.
      if (!this.tls || !tcpConnected || this.connected || err.message === this.lastTlsError) return;
      this.lastTlsError = err.message;
      this.onTlsError?.(err.message);
    });
    socket.on('close', () => {
      this.connected = false;
      this.socket = null;
      if (this.closed) return;
      this.timer = this.env.setTimeout(() => this.dial(), this.delayMs * (0.5 + this.env.random()));
      this.delayMs = Math.min(this.delayMs * 2, 1000);
    });
  }

  /** A TCP connection to the peer, or TLS with the link's options. */
  private connect(): PeerSocket {
    const { host, port } = parseHostPort(this.address, `address of peer ${this.id}`);
    // With TLS the hello waits for the handshake (and the peer's certificate checked against the CA).
    const socket = this.tls
      ? tlsConnect({ ...this.tls, host, port, ...(isIP(host) ? {} : { servername: host }) })
      : netConnect({ host, port, noDelay: true });
    socket.setNoDelay(true);
    return socket;
  }

  /** One frame from the peer; false once the socket was given up. */
  private onFrame(frame: Frame, socket: PeerSocket, nonce: Buffer | undefined): boolean {
    if (frame.type === MessageType.ERROR) {
      const h = frame.header;
      const why = isPlainMap(h) && typeof h.message === 'string' ? h.message : 'no reason given';
      this.fail(socket, `peer ${this.id} at ${this.address} refused this member: ${why}`);
      return false;
    }
    const secret = this.who.secret;
    if (frame.type !== PeerMessageType.PEER_CHALLENGE || !secret || !nonce || this.connected) {
      // Peers answer nothing else on this connection.
      this.fail(socket, `peer ${this.id} at ${this.address} sent an unexpected frame (type ${frame.type})`);
      return false;
    }
    const challenge = decodePeerChallenge(frame);
    const handshake: PeerHandshake = {
      clusterId: this.who.clusterId,
      dialer: this.who.self,
      acceptor: this.id,
      dialerNonce: nonce,
      acceptorNonce: challenge.nonce,
    };
    if (!checkPeerProof(secret, 'acceptor', handshake, challenge.proof)) {
      this.who.onAuthFailure();
      this.fail(
        socket,
        `peer ${this.id} at ${this.address} did not prove the cluster secret: a different secret, or not a member`,
      );
      return false;
    }
    for (const p of encodePeerProof(peerProof(secret, 'dialer', handshake))) socket.write(p);
    this.established();
    return true;
  }

  private established(): void {
    this.connected = true;
    this.delayMs = 20;
    if (this.lastFailure !== null) this.who.log?.(`peer link to ${this.id} at ${this.address} works again`);
    this.lastFailure = null;
  }

  private fail(socket: PeerSocket, why: string): void {
    if (why !== this.lastFailure) this.who.log?.(why);
    this.lastFailure = why;
    socket.destroy();
  }

  /** Writes a message's parts; false if it was dropped. */
  send(parts: Buffer[]): boolean {
    const s = this.socket;
    if (!s || !this.connected || s.writableLength > MAX_UNSENT_BYTES) {
      this.dropped++;
      return false;
    }
    if (parts.length === 1) s.write(parts[0]!);
    else {
      s.cork();
      for (const p of parts) s.write(p);
      s.uncork();
    }
    return true;
  }

  /** Holds writes until uncork(): the messages of one Ready leave in one system call. */
  cork(): void {
    if (this.connected) this.socket?.cork();
  }

  uncork(): void {
    if (this.socket && this.socket.writableCorked > 0) this.socket.uncork();
  }

  close(): void {
    this.closed = true;
    this.env.clearTimeout(this.timer);
    this.socket?.destroy();
  }
}

export class PeerTransport {
  private readonly links = new Map<NodeId, PeerLink>();
  /** Bytes of Raft messages handed to peer sockets, and messages dropped (link down or backed up). */
  sentBytes = 0;
  droppedMessages = 0;
  /** Peers we dialled that failed to prove the cluster secret. */
  authFailures = 0;
  private readonly who: LinkIdentity;

  constructor(
    self: NodeId,
    clusterId: string,
    private readonly addresses: Record<NodeId, string>,
    members: NodeId[],
    token: string | null,
    /** Timers and randomness of the re-dial back-off. */
    private readonly env: Env,
    /** The cluster secret both ends of a link prove; null: links without proof (tests of old peers only). */
    secret: Buffer | null = null,
    /** Dial members over TLS with these options; none: plain TCP. */
    private readonly tls?: ConnectionOptions,
    log?: (line: string) => void,
    /** How links connect; none: TCP (or TLS with `tls`). The simulator passes its network's. */
    dial?: PeerDial,
  ) {
    this.who = {
      clusterId,
      self,
      token,
      secret,
      log,
      onAuthFailure: () => this.authFailures++,
      dial,
    };
    this.setMembers(members);
  }

  /** Opens links to new members and closes links to removed ones. */
  setMembers(members: NodeId[]): void {
    for (const id of members) {
      if (id === this.who.self || this.links.has(id)) continue;
      const address = this.addresses[id];
      if (!address) continue; // no known address: the operator adds it with the member
      this.links.set(
        id,
        new PeerLink(id, address, this.who, this.env, this.tls, (message) =>
          this.who.log?.(`TLS handshake with member ${id} at ${address} failed: ${message}`),
        ),
      );
    }
    for (const [id, link] of this.links) {
      if (!members.includes(id)) {
        link.close();
        this.links.delete(id);
      }
    }
  }

  addAddress(id: NodeId, address: string): void {
    this.addresses[id] = address;
  }

  addressOf(id: NodeId): string | undefined {
    return this.addresses[id];
  }

  send(msg: Message): void {
    const link = this.links.get(msg.to);
    if (!link) return;
    const parts = encodeRaftMessage(msg);
    if (!link.send(parts)) this.droppedMessages++;
    else for (const p of parts) this.sentBytes += p.length;
  }

  /** Batches the sends that follow until {@link flush} (one write per peer instead of one per message). */
  cork(): void {
    for (const link of this.links.values()) link.cork();
  }

  flush(): void {
    for (const link of this.links.values()) link.uncork();
  }

  close(): void {
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }
}
