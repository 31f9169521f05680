/**
 * Links to the other members of the group. Each server dials every peer and sends its own messages on
 * that outgoing connection; it receives theirs on the connections they dialled (accepted by the same
 * listener as clients, recognised by a PEER_HELLO first frame).
 *
 * Raft tolerates lost messages, so nothing here queues without bound: while a link is down or its
 * socket is backed up, messages to that peer are dropped and the core's retries (heartbeats, append
 * retries) carry the state across once the link is back. Each link re-dials on its own, with capped,
 * jittered back-off, so a restarted peer is found again without any topology change.
 */
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import type { Env, EnvTimer } from '@segmem/protocol';
import type { Message, NodeId } from '../raft/types.js';
import { encodePeerHello, encodeRaftMessage } from './peer-codec.js';
import { parseHostPort } from './tcp.js';

/** Drop messages to a peer whose socket already holds this many unsent bytes. */
const MAX_UNSENT_BYTES = 32 * 1024 * 1024;

class PeerLink {
  private socket: Socket | null = null;
  private connected = false;
  private closed = false;
  private delayMs = 20;
  private timer: EnvTimer | null = null;
  dropped = 0;

  constructor(
    readonly id: NodeId,
    private readonly address: string,
    private readonly hello: Buffer[],
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
    const { host, port } = parseHostPort(this.address, `address of peer ${this.id}`);
    // With TLS the hello waits for the handshake (and the peer's certificate checked against the CA).
    const socket = this.tls
      ? tlsConnect({ ...this.tls, host, port, ...(isIP(host) ? {} : { servername: host }) })
      : netConnect({ host, port, noDelay: true });
    socket.setNoDelay(true);
    this.socket = socket;
    let tcpConnected = false;
    if (this.tls) socket.once('connect', () => (tcpConnected = true));
    socket.on(this.tls ? 'secureConnect' : 'connect', () => {
      this.connected = true;
      this.delayMs = 20;
      this.lastTlsError = '';
      socket.cork();
      for (const p of this.hello) socket.write(p);
      socket.uncork();
    });
    // Peers answer nothing on this connection; drain whatever comes (e.g. an ERROR before a close).
    socket.on('data', () => {});
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

  constructor(
    private readonly self: NodeId,
    private readonly clusterId: string,
    private readonly addresses: Record<NodeId, string>,
    members: NodeId[],
    private readonly token: string | null,
    /** Timers and randomness of the re-dial back-off. */
    private readonly env: Env,
    /** Dial members over TLS with these options; none: plain TCP. */
    private readonly tls?: ConnectionOptions,
    /** Receives one line when a TLS handshake with a member fails. */
    private readonly log?: (line: string) => void,
  ) {
    this.setMembers(members);
  }

  /** Opens links to new members and closes links to removed ones. */
  setMembers(members: NodeId[]): void {
    for (const id of members) {
      if (id === this.self || this.links.has(id)) continue;
      const address = this.addresses[id];
      if (!address) continue; // no known address: the operator adds it with the member
      this.links.set(
        id,
        new PeerLink(
          id,
          address,
          encodePeerHello({ clusterId: this.clusterId, from: this.self, to: id, token: this.token }),
          this.env,
          this.tls,
          (message) => this.log?.(`TLS handshake with member ${id} at ${address} failed: ${message}`),
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
