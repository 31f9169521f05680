/**
 * The network shell: a TCP listener whose connections feed ServerConnection, and a UDP socket on the
 * same port for invalidation hints.
 *
 * Connections are bounded before anyone logs in: at most `maxConnections` open at once and at most
 * `maxConnectionsPerAddress` from one remote address (one more gets an UNAVAILABLE error frame and is
 * closed at once), and each must log in within `handshakeTimeoutMs` (see ServerConnection).
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import { encodeError, parseHostPort, SegmemError } from '@segmem/protocol';
import type { SegmemNode } from '../node/index.js';
import { ServerConnection } from './connection.js';
import { acceptTls, type ServerTls } from './tls.js';

/** A connection that has not logged in (HELLO or PEER_HELLO accepted) this long after it was accepted is closed. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * A connection the server closes (after an error answer) keeps reading, and dropping, what the peer still
 * sends for at most this long: closing a socket with unread bytes resets it, and a reset can destroy the
 * error answer before the peer reads it. Still counted against the connection limits meanwhile.
 */
const CLOSE_LINGER_MS = 1000;
/**
 * The bytes a TLS connection starts with: a handshake record (0x16, the ClientHello), record version 3.x
 * (3.1 to 3.4). A segmem frame before login never starts so: its first 4 bytes are a length below 64 KiB,
 * so its third byte is 0.
 */
const TLS_HANDSHAKE_RECORD = 0x16;
const TLS_START_BYTES = 3;
function startsTls(b: Buffer): boolean {
  return (
    b[0] === TLS_HANDSHAKE_RECORD &&
    (b.length < 2 || b[1] === 3) &&
    (b.length < 3 || (b[2]! >= 1 && b[2]! <= 4))
  );
}
/** Said, in the clear, to a connection that does not start with a TLS handshake on a TLS port. */
const TLS_REQUIRED_MESSAGE =
  'this server requires TLS and the connection is plain TCP (clients: the tls option of connect; segmem commands: --tls-ca)';
/** Connections open at once (clients and other members' links); one more is refused. */
export const DEFAULT_MAX_CONNECTIONS = 1024;
/** Connections open at once from one remote address; one more is refused. */
export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64;

export interface ListenOptions {
  /** Default DEFAULT_HANDSHAKE_TIMEOUT_MS; 0: no deadline. */
  handshakeTimeoutMs?: number;
  /** Default DEFAULT_MAX_CONNECTIONS. */
  maxConnections?: number;
  /** Default DEFAULT_MAX_CONNECTIONS_PER_ADDRESS. */
  maxConnectionsPerAddress?: number;
  /**
   * Accept only TLS connections (clients and members alike); none: plain TCP. The TLS handshake counts
   * against `handshakeTimeoutMs` and the connection limits, as everything before login does.
   */
  tls?: ServerTls;
}

/** Connections the listener closed before they logged in, by why. */
export interface RefusedConnections {
  /** `maxConnections` were open already. */
  serverLimit: number;
  /** `maxConnectionsPerAddress` from the same address were open already. */
  addressLimit: number;
  /** Not logged in within `handshakeTimeoutMs`. */
  handshakeTimeout: number;
  /** A peer link that did not prove the cluster secret (shell/peer-auth.ts). */
  peerAuth: number;
  /** A plain connection on a TLS port (its first bytes start no TLS handshake). */
  tlsRequired: number;
}

export { parseHostPort };

export interface Listener {
  readonly address: string;
  /** Bytes read from, and handed to, the connections accepted so far (clients and other members' links). */
  readonly receivedBytes: number;
  readonly sentBytes: number;
  /** Connections open now. */
  readonly openConnections: number;
  readonly refused: Readonly<RefusedConnections>;
  close(): Promise<void>;
}

export async function listen(
  node: SegmemNode,
  listenAddress: string,
  opts: ListenOptions = {},
): Promise<Listener> {
  const { host, port } = parseHostPort(listenAddress, 'listen address');
  const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const maxPerAddress = opts.maxConnectionsPerAddress ?? DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
  const sockets = new Set<Socket>();
  /** Open connections by remote address. */
  const perAddress = new Map<string, number>();
  const refused: RefusedConnections = {
    serverLimit: 0,
    addressLimit: 0,
    handshakeTimeout: 0,
    peerAuth: 0,
    tlsRequired: 0,
  };
  /** Refused connections still lingering; beyond maxConnections more are dropped without an answer. */
  let refusedOpen = 0;
  let receivedBytes = 0;
  let sentBytes = 0;
  const tls = opts.tls;
  const server: Server = createServer({ noDelay: true }, (accepted) => {
    const remote = accepted.remoteAddress ?? '';
    const fromRemote = perAddress.get(remote) ?? 0;
    if (sockets.size >= maxConnections || fromRemote >= maxPerAddress) {
      const socket: Socket = tls ? acceptTls(accepted, tls) : accepted;
      const serverFull = sockets.size >= maxConnections;
      if (serverFull) refused.serverLimit++;
      else refused.addressLimit++;
      socket.on('error', () => {});
      if (refusedOpen >= maxConnections) {
        socket.destroy(); // a flood of connections: no answer, no descriptor kept
        return;
      }
      refusedOpen++;
      socket.once('close', () => refusedOpen--);
      refuse(
        node,
        socket,
        serverFull
          ? `this server has ${sockets.size} connections open, its limit (--max-connections ${maxConnections})`
          : `${fromRemote} connections from ${remote} are open, the limit per address (--max-connections-per-address ${maxPerAddress})`,
      );
      return;
    }
    // With TLS, the accepted socket until its first bytes show a TLS handshake, then the TLS socket over it.
    // The connection (its limits, its handshake deadline) counts from accept all the same.
    let socket: Socket = accepted;
    let secured = !tls;
    sockets.add(socket);
    perAddress.set(remote, fromRemote + 1);
    accepted.setNoDelay(true);
    const conn = new ServerConnection(
      node,
      {
        // A client that does not read: the connection holds its answers and its requests past
        // maxQueuedAnswerBytes of unsent bytes (see ServerConnection), reading on once the socket drains.
        write(parts, onSent) {
          // Nothing in the clear on a TLS port (a handshake deadline that passed before any byte came).
          if (socket.destroyed || !secured) {
            onSent?.();
            return;
          }
          // The callback of the last write runs once every part left (or with an error, the socket destroyed).
          const last = parts.length - 1;
          if (last === 0) {
            socket.write(parts[0]!, onSent && (() => onSent()));
            sentBytes += parts[0]!.length;
          } else {
            socket.cork();
            for (let i = 0; i <= last; i++) {
              const p = parts[i]!;
              socket.write(p, i === last && onSent ? () => onSent() : undefined);
              sentBytes += p.length;
            }
            socket.uncork();
          }
        },
        get unsentBytes() {
          return socket.writableLength;
        },
        onDrained(cb) {
          // 'drain' comes only after a write was told to wait; otherwise there is nothing to wait for.
          if (socket.writableNeedDrain && !socket.destroyed) socket.once('drain', cb);
          else queueMicrotask(cb);
        },
        close() {
          closeGently(node, socket);
        },
        remoteAddress: remote,
      },
      { pause: () => socket.pause(), resume: () => socket.resume() },
      {
        handshakeTimeoutMs,
        onHandshakeTimeout: () => refused.handshakeTimeout++,
        onPeerAuthFailure: () => refused.peerAuth++,
      },
    );
    const onClose = () => {
      sockets.delete(socket);
      const left = (perAddress.get(remote) ?? 1) - 1;
      if (left > 0) perAddress.set(remote, left);
      else perAddress.delete(remote);
      conn.disconnected();
    };
    const serve = () => {
      socket.on('data', (chunk: Buffer) => {
        receivedBytes += chunk.length;
        conn.receive(chunk);
      });
      socket.on('error', () => {});
      socket.on('close', onClose);
    };
    if (!tls) {
      serve();
      return;
    }
    accepted.on('error', () => {});
    accepted.on('close', onClose);
    // The first bytes are looked at, not consumed: a TLS handshake is handed back to the TLS socket whole.
    const peek = () => {
      if (lingering.has(accepted)) {
        // Closed before any byte came (the handshake deadline): what still arrives is dropped unread.
        accepted.off('readable', peek);
        accepted.resume();
        return;
      }
      // Null until that many bytes came (fewer at the end: then what there is).
      const first: Buffer | null = accepted.read(TLS_START_BYTES);
      if (first === null) return;
      accepted.off('readable', peek);
      if (!startsTls(first)) {
        refused.tlsRequired++;
        refuse(node, accepted, TLS_REQUIRED_MESSAGE, { reason: 'TLS_REQUIRED' });
        return;
      }
      accepted.unshift(first);
      accepted.off('close', onClose);
      sockets.delete(accepted);
      socket = acceptTls(accepted, tls);
      sockets.add(socket);
      secured = true;
      serve();
    };
    accepted.on('readable', peek);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address();
  const boundPort = typeof bound === 'object' && bound ? bound.port : port;
  let udp: UdpSocket | null = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      udp!.once('error', reject);
      udp!.bind(boundPort, host, () => {
        udp!.off('error', reject);
        resolve();
      });
    });
    udp.on('error', () => {});
    node.setUdp(udp);
  } catch {
    udp.close();
    udp = null; // hints are best-effort: TCP pushes still carry every invalidation
  }
  const address = `${host.includes(':') ? `[${host}]` : host}:${boundPort}`;
  return {
    address,
    get receivedBytes() {
      return receivedBytes;
    },
    get sentBytes() {
      return sentBytes;
    },
    get openConnections() {
      return sockets.size;
    },
    refused,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      node.setUdp(null);
      udp?.close();
    },
  };
}

/** Answers a connection refused before login with one UNAVAILABLE error frame and closes it. */
function refuse(node: SegmemNode, socket: Socket, why: string, details?: Record<string, unknown>): void {
  const parts = encodeError(0, new SegmemError('UNAVAILABLE', `connection refused: ${why}`, details));
  socket.cork();
  for (const p of parts) socket.write(p);
  socket.uncork();
  closeGently(node, socket);
}

const lingering = new WeakSet<Socket>();

/**
 * Ends the socket (FIN after what was written) and drops whatever still arrives until the peer closes too,
 * or CLOSE_LINGER_MS pass: then the descriptor goes, with the answer delivered rather than lost to a reset.
 */
function closeGently(node: SegmemNode, socket: Socket): void {
  if (socket.destroyed || lingering.has(socket)) return;
  lingering.add(socket);
  socket.end();
  socket.resume();
  const timer = node.env.setTimeout(() => socket.destroy(), CLOSE_LINGER_MS);
  socket.once('close', () => node.env.clearTimeout(timer));
}
