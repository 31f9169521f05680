/**
 * The network between real members (a SegmemNode over a RaftLog) run under simulation. A member's links to
 * its peers are the shipped ones (shell/peers.ts: PeerTransport, re-dials with back-off, the cluster-secret
 * handshake), dialling over this network instead of TCP; the member dialled takes each connection into its
 * own connection handling (shell/connection.ts, with the TCP listener's handshake deadline), so the real
 * frames travel both ways: PEER_HELLO, PEER_CHALLENGE, PEER_PROOF, then one RAFT frame per message.
 *
 * What a socket writes at once (one write, or what it wrote between cork and uncork: whole messages) crosses
 * as one unit after a simulated latency. Handshake frames take the bare latency, in order; with jitter a
 * link's Raft messages may overtake each other, and some arrive twice: harsher than TCP, which the consensus
 * must tolerate anyway. Bytes that meet a partition break their connection on both sides (as a reset or a
 * keepalive failure would), and a dial across one fails after a connect timeout; a member that dies breaks
 * every connection it had. With `handshakeResetRate`, a handshake frame now and then resets its connection
 * instead of arriving: the link must re-dial and prove itself again.
 */
import { EventEmitter } from 'node:events';
import type { Env } from '@segmem/protocol';
import type { PeerTransportOptions } from '../cluster.js';
import type { SegmemNode, Wire } from '../node/index.js';
import type { Message, NodeId } from '../raft/types.js';
import { ServerConnection } from '../shell/connection.js';
import { PeerMessageType } from '../shell/peer-codec.js';
import { type PeerSocket, PeerTransport } from '../shell/peers.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS } from '../shell/tcp.js';

/** How long a dial across a partition waits before it fails (one to a member that is down is refused at once). */
const CONNECT_TIMEOUT_MS = 1000;

/** The accepting end of a connection: a member's connection handling. */
interface Accepted {
  receive(bytes: Buffer): void;
  disconnected(): void;
}

export class SimPeerNetwork {
  private readonly nodes = new Map<string, SegmemNode>();
  /** Who listens (or listened) at each address: a cut is between ids. */
  private readonly ids = new Map<string, NodeId>();
  /** Cut directions, as `fromId>toId`. */
  private readonly cuts = new Set<string>();
  private readonly open = new Set<SimPeerSocket>();
  /** Units handed to a connection, and those lost (the connection broke first). */
  sent = 0;
  lost = 0;
  duplicated = 0;
  /** Connections opened; connections broken by a partition, a crash or a handshake reset; handshake resets. */
  connections = 0;
  broken = 0;
  handshakeResets = 0;
  /** Dialers a member refused for failing to prove the cluster secret. */
  authFailures = 0;
  /** Chance that a handshake frame resets its connection instead of arriving. */
  handshakeResetRate = 0;
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

  /** How long one Raft message takes (a handshake frame takes the bare latency, so it arrives first). */
  delayMs(): number {
    return this.latencyMs + (this.jitterMs > 0 ? 1 + Math.floor(this.env.random() * this.jitterMs) : 0);
  }

  /** The member listening at `address` (host:port) takes connections from now on. */
  attach(address: string, node: SegmemNode): void {
    this.nodes.set(address, node);
    this.ids.set(address, node.id);
  }

  /** The member at `address` is gone: every connection to or from it breaks; dials to it fail. */
  detach(address: string): void {
    this.nodes.delete(address);
    for (const s of [...this.open]) if (s.toAddress === address || s.fromAddress === address) s.reset();
  }

  nodeAt(address: string): SegmemNode | undefined {
    return this.nodes.get(address);
  }

  idAt(address: string): NodeId {
    return this.ids.get(address) ?? address;
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

  /** Breaks every open connection (between members, or a stranger's) now and then: the links re-dial. */
  resetAll(): void {
    for (const s of [...this.open]) s.reset();
  }

  /**
   * A connection from process `from` (known as `fromAddress`, its timers and deliveries on `env`) to
   * `address`: a socket as shell/peers.ts uses one, emitting 'connect', 'data' and 'close'.
   */
  dial(from: NodeId, fromAddress: string, env: Env, address: string): PeerSocket {
    return new SimPeerSocket(this, from, fromAddress, env, address);
  }

  /** The `transport` option of openClusterNode: the shipped peer links, dialling over this network. */
  readonly transport = (opts: PeerTransportOptions): PeerTransport => {
    const self = opts.addresses[opts.self] ?? opts.self;
    return new ObservedTransport(this, opts, (address) => this.dial(opts.self, self, opts.env, address));
  };

  /** @internal */
  accept(address: string, socket: SimPeerSocket): Accepted | null {
    const node = this.nodes.get(address);
    if (!node) return null;
    this.open.add(socket);
    this.connections++;
    const wire: Wire = {
      write: (parts) => socket.toDialer(Buffer.concat(parts)),
      close: () => socket.hangUp(),
    };
    return new ServerConnection(node, wire, undefined, {
      handshakeTimeoutMs: DEFAULT_HANDSHAKE_TIMEOUT_MS,
      onPeerAuthFailure: () => this.authFailures++,
    });
  }

  /** @internal */
  forget(socket: SimPeerSocket): void {
    this.open.delete(socket);
  }
}

/** PeerTransport whose sends the network sees first (for the checkers). */
class ObservedTransport extends PeerTransport {
  constructor(
    private readonly network: SimPeerNetwork,
    private readonly opts: PeerTransportOptions,
    dial: (address: string) => PeerSocket,
  ) {
    super(
      opts.self,
      opts.clusterId,
      opts.addresses,
      [],
      opts.token,
      opts.env,
      opts.secret ?? null,
      undefined,
      opts.log,
      dial,
    );
  }

  override send(msg: Message): void {
    this.network.onSend?.(this.opts.self, msg);
    super.send(msg);
  }
}

/** Whether a unit starts with a Raft frame (the type is byte 5 of a frame). */
function isRaftUnit(bytes: Buffer): boolean {
  return bytes[5] === PeerMessageType.RAFT || bytes[5] === PeerMessageType.RAFT_PIECE;
}

/** The dialling end of a connection over the simulated network. */
class SimPeerSocket extends EventEmitter implements PeerSocket {
  /** Nothing is ever held back: a unit leaves as it is written (or uncorked). */
  readonly writableLength = 0;
  writableCorked = 0;
  private held: Buffer[] = [];
  private state: 'connecting' | 'open' | 'closed' = 'connecting';
  /** The dialer heard 'close'. */
  private closed = false;
  private server: Accepted | null = null;
  private readonly to: NodeId;
  /** When the last bytes each way arrive: what is not jittered keeps its order. */
  private upAtMs = 0;
  private downAtMs = 0;

  constructor(
    private readonly net: SimPeerNetwork,
    private readonly from: NodeId,
    readonly fromAddress: string,
    private readonly env: Env,
    readonly toAddress: string,
  ) {
    super();
    this.to = net.idAt(toAddress);
    // One round trip to connect; a connect timeout across a partition or to nobody.
    net.env.setTimeout(() => {
      if (this.state !== 'connecting') return;
      if (net.isCut(from, this.to) || net.isCut(this.to, from)) {
        this.state = 'closed';
        net.env.setTimeout(() => this.onDialer(() => this.closeDialer()), CONNECT_TIMEOUT_MS);
        return;
      }
      if (!net.nodeAt(toAddress)) {
        // Its machine is up, its process is not: refused at once.
        this.state = 'closed';
        this.onDialer(() => this.closeDialer());
        return;
      }
      this.server = net.accept(toAddress, this);
      this.state = 'open';
      this.onDialer(() => this.emit('connect'));
    }, 2 * net.latencyMs);
  }

  write(chunk: Buffer): boolean {
    if (this.writableCorked > 0) this.held.push(chunk);
    else this.send(chunk);
    return true;
  }

  cork(): void {
    this.writableCorked++;
  }

  uncork(): void {
    if (this.writableCorked === 0 || --this.writableCorked > 0 || this.held.length === 0) return;
    const unit = Buffer.concat(this.held);
    this.held = [];
    this.send(unit);
  }

  /** The dialer closes the connection: the member hears it after the latency. */
  destroy(): void {
    if (this.state === 'closed') return;
    const server = this.server;
    this.state = 'closed';
    this.net.forget(this);
    if (server) this.net.env.setTimeout(() => server.disconnected(), this.net.latencyMs);
    this.onDialer(() => this.closeDialer());
  }

  /** The connection breaks on both sides now (a partition, a crash, a reset). */
  reset(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.net.forget(this);
    this.net.broken++;
    this.server?.disconnected();
    this.onDialer(() => this.closeDialer());
  }

  /** Dialer -> member: one unit of whole frames. */
  private send(bytes: Buffer): void {
    const net = this.net;
    if (this.state !== 'open') return;
    net.sent++;
    const raft = isRaftUnit(bytes);
    const arrive = (atMs: number) =>
      net.env.setTimeout(() => {
        if (this.state !== 'open') {
          net.lost++;
          return;
        }
        if (net.isCut(this.from, this.to)) {
          net.lost++;
          this.reset();
          return;
        }
        if (!raft && this.resetHandshake()) return;
        this.server!.receive(bytes);
      }, atMs - net.env.now());
    if (raft) {
      arrive(net.env.now() + net.delayMs());
      if (net.duplicateRate > 0 && net.env.random() < net.duplicateRate) {
        net.duplicated++;
        arrive(net.env.now() + net.delayMs());
      }
    } else {
      this.upAtMs = Math.max(net.env.now() + net.latencyMs, this.upAtMs);
      arrive(this.upAtMs);
    }
  }

  /** Member -> dialer (a PEER_CHALLENGE, or an ERROR before it hangs up): in order, after the latency. */
  toDialer(bytes: Buffer): void {
    const net = this.net;
    if (this.state !== 'open') return;
    this.downAtMs = Math.max(net.env.now() + net.latencyMs, this.downAtMs);
    net.env.setTimeout(() => {
      if (this.state !== 'open') return;
      if (net.isCut(this.to, this.from)) {
        this.reset();
        return;
      }
      if (this.resetHandshake()) return;
      this.onDialer(() => {
        if (this.state === 'open') this.emit('data', bytes);
      });
    }, this.downAtMs - net.env.now());
  }

  /** The member hangs up: the dialer hears it after what was sent before. */
  hangUp(): void {
    const net = this.net;
    if (this.state !== 'open') return;
    this.downAtMs = Math.max(net.env.now() + net.latencyMs, this.downAtMs);
    net.env.setTimeout(() => this.reset(), this.downAtMs - net.env.now());
  }

  /** The handshake reset fault: true if this frame reset the connection instead of arriving. */
  private resetHandshake(): boolean {
    const net = this.net;
    if (net.handshakeResetRate === 0 || net.env.random() >= net.handshakeResetRate) return false;
    net.handshakeResets++;
    this.reset();
    return true;
  }

  /** What the dialer hears runs in its own process (none once that process died). */
  private onDialer(fn: () => void): void {
    this.env.setTimeout(fn, 0);
  }

  /** Tells the dialer once that the connection closed. */
  private closeDialer(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close');
  }
}
