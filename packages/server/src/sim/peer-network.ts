/**
 * The network between real members (a SegmemNode over a RaftLog) run under simulation. A member's link to
 * a peer is an in-process connection into that peer's own connection handling (shell/connection.ts), so
 * the real frames travel: PEER_HELLO first (checked by the peer: cluster id, token), then one RAFT frame
 * per message (shell/peer-codec.ts). A message arrives after a simulated latency; with jitter the messages
 * of one link may overtake each other, and some may arrive twice: harsher than a TCP connection, which the
 * consensus must tolerate anyway (its messages are retried and may cross a reconnection). A link to a
 * member that is not attached, or that is cut off, loses what is sent, and the Raft core's retries carry
 * the state across once it is back (as with the TCP links of shell/peers.ts).
 */
import type { Env } from '@segmem/protocol';
import type { PeerTransportOptions } from '../cluster.js';
import type { PeerSender } from '../log/raft-driver.js';
import type { SegmemNode, Wire } from '../node/index.js';
import type { Message, NodeId } from '../raft/types.js';
import { ServerConnection } from '../shell/connection.js';
import { encodePeerHello, encodeRaftMessage } from '../shell/peer-codec.js';

export class SimPeerNetwork {
  private readonly nodes = new Map<string, SegmemNode>();
  /** Cut links, as `fromId>toId`. */
  private readonly cuts = new Set<string>();
  /** Frames handed to a link, and those lost (no peer there, or cut off). */
  sent = 0;
  lost = 0;
  duplicated = 0;
  /** Sees every message a member sends, as it sends it (a checker's view of what members claim). */
  onSend: ((from: NodeId, msg: Message) => void) | null = null;

  /**
   * `latencyMs`: how long a message takes from one member to another, plus up to `jitterMs`; a message
   * arrives a second time with probability `duplicateRate`.
   */
  constructor(
    readonly env: Env,
    readonly latencyMs: number,
    readonly jitterMs = 0,
    readonly duplicateRate = 0,
  ) {}

  /** How long one message takes (the handshake takes the bare latency, so it arrives first). */
  delayMs(): number {
    return this.latencyMs + (this.jitterMs > 0 ? 1 + Math.floor(this.env.random() * this.jitterMs) : 0);
  }

  /** The member listening at `address` (host:port) takes connections from now on. */
  attach(address: string, node: SegmemNode): void {
    this.nodes.set(address, node);
  }

  /** The member at `address` is gone: links to it lose what they send until one is attached again. */
  detach(address: string): void {
    this.nodes.delete(address);
  }

  nodeAt(address: string): SegmemNode | undefined {
    return this.nodes.get(address);
  }

  cut(from: NodeId, to: NodeId): void {
    this.cuts.add(`${from}>${to}`);
  }

  heal(): void {
    this.cuts.clear();
  }

  isCut(from: NodeId, to: NodeId): boolean {
    return this.cuts.has(`${from}>${to}`);
  }

  /** The `transport` option of openClusterNode: this member's links over this network. */
  readonly transport = (opts: PeerTransportOptions): SimPeerTransport => new SimPeerTransport(this, opts);
}

/** One member's links to its peers. */
export class SimPeerTransport implements PeerSender {
  private readonly links = new Map<NodeId, SimLink>();

  constructor(
    private readonly network: SimPeerNetwork,
    private readonly opts: PeerTransportOptions,
  ) {}

  setMembers(members: NodeId[]): void {
    for (const id of members) {
      const address = this.opts.addresses[id];
      if (id === this.opts.self || this.links.has(id) || !address) continue;
      const hello = encodePeerHello({
        clusterId: this.opts.clusterId,
        from: this.opts.self,
        to: id,
        token: this.opts.token,
      });
      this.links.set(id, new SimLink(this.network, this.opts.self, id, address, Buffer.concat(hello)));
    }
    for (const [id, link] of this.links) {
      if (!members.includes(id)) {
        link.close();
        this.links.delete(id);
      }
    }
  }

  addAddress(id: NodeId, address: string): void {
    this.opts.addresses[id] = address;
  }

  addressOf(id: NodeId): string | undefined {
    return this.opts.addresses[id];
  }

  send(msg: Message): void {
    this.network.onSend?.(this.opts.self, msg);
    this.links.get(msg.to)?.send(Buffer.concat(encodeRaftMessage(msg)));
  }

  close(): void {
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }
}

/** A connection from one member to another: opened on first use, and again after the peer went away. */
class SimLink {
  private conn: ServerConnection | null = null;
  private target: SegmemNode | null = null;
  private closed = false;

  constructor(
    private readonly network: SimPeerNetwork,
    private readonly from: NodeId,
    private readonly to: NodeId,
    private readonly address: string,
    private readonly hello: Buffer,
  ) {}

  send(bytes: Buffer): void {
    const net = this.network;
    net.sent++;
    const node = net.nodeAt(this.address);
    if (this.closed || !node || net.isCut(this.from, this.to)) {
      net.lost++;
      return;
    }
    if (this.target !== node || !this.conn || this.conn.closed) {
      // A new connection (the peer restarted, or closed the last one): the hello goes first again.
      const wire: Wire = { write: () => {}, close: () => conn.disconnected() };
      const conn = new ServerConnection(node, wire);
      this.conn = conn;
      this.target = node;
      this.deliver(conn, node, this.hello, net.latencyMs);
    }
    this.deliver(this.conn, node, bytes, net.delayMs());
    if (net.duplicateRate > 0 && net.env.random() < net.duplicateRate) {
      net.duplicated++;
      this.deliver(this.conn, node, bytes, net.delayMs());
    }
  }

  private deliver(conn: ServerConnection, node: SegmemNode, bytes: Buffer, delayMs: number): void {
    const net = this.network;
    net.env.setTimeout(() => {
      // Lost on the way if the peer went away or the link was cut meanwhile.
      if (this.closed || net.nodeAt(this.address) !== node || net.isCut(this.from, this.to)) {
        net.lost++;
        return;
      }
      conn.receive(bytes);
    }, delayMs);
  }

  close(): void {
    this.closed = true;
    this.conn?.disconnected();
    this.conn = null;
  }
}
