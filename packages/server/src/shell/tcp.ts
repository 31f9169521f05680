/**
 * The network shell: a TCP listener whose connections feed ServerConnection, and a UDP socket on the
 * same port for invalidation hints.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import { parseHostPort } from '@segmem/protocol';
import type { SegmemNode } from '../node/index.js';
import { ServerConnection } from './connection.js';

/** Pause reading from a socket whose unsent answers exceed this (a client that does not read). */
const MAX_UNSENT_BYTES = 16 * 1024 * 1024;

export { parseHostPort };

export interface Listener {
  readonly address: string;
  /** Bytes read from, and handed to, the connections accepted so far (clients and other members' links). */
  readonly receivedBytes: number;
  readonly sentBytes: number;
  close(): Promise<void>;
}

export async function listen(node: SegmemNode, listenAddress: string): Promise<Listener> {
  const { host, port } = parseHostPort(listenAddress, 'listen address');
  const sockets = new Set<Socket>();
  let receivedBytes = 0;
  let sentBytes = 0;
  const server: Server = createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    const conn = new ServerConnection(
      node,
      {
        write(parts) {
          if (socket.destroyed) return;
          if (parts.length === 1) {
            socket.write(parts[0]!);
            sentBytes += parts[0]!.length;
          } else {
            socket.cork();
            for (const p of parts) {
              socket.write(p);
              sentBytes += p.length;
            }
            socket.uncork();
          }
          if (socket.writableLength > MAX_UNSENT_BYTES && !socket.isPaused()) {
            socket.pause();
            socket.once('drain', () => socket.resume());
          }
        },
        close() {
          socket.end();
          socket.destroySoon?.();
        },
        remoteAddress: socket.remoteAddress,
      },
      { pause: () => socket.pause(), resume: () => socket.resume() },
    );
    socket.on('data', (chunk: Buffer) => {
      receivedBytes += chunk.length;
      conn.receive(chunk);
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      sockets.delete(socket);
      conn.disconnected();
    });
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
