/**
 * TLS on the listen port, the socket side: a server-side TLS socket over each accepted connection (its
 * material is loaded and checked at start by tls-files.ts). Clients and members share the port, so with
 * TLS on, members dial each other over TLS too, with `peerOptions`.
 */
import type { Socket } from 'node:net';
import { type ConnectionOptions, type SecureContext, TLSSocket } from 'node:tls';

/**
 * The loaded TLS material: how to accept connections and how to dial other members. A reload (SIGHUP,
 * tls-files.ts) replaces `context`, `certificate` and the contents of `peerOptions` in place: the listener
 * reads `context` at each accept and peer links spread `peerOptions` at each dial, so new connections use
 * the new material and open ones keep theirs.
 */
export interface ServerTls {
  context: SecureContext;
  readonly requireClientCert: boolean;
  /** tls.connect options for this server's links to other members. */
  readonly peerOptions: ConnectionOptions;
  /** The server certificate in use, for log lines. */
  certificate: { serialNumber: string; validTo: string; fingerprint256: string };
}

/** Starts the server side of TLS on an accepted socket; the handshake runs before any data event. */
export function acceptTls(socket: Socket, tls: ServerTls): TLSSocket {
  return new TLSSocket(socket, {
    isServer: true,
    secureContext: tls.context,
    requestCert: tls.requireClientCert,
    rejectUnauthorized: tls.requireClientCert,
  });
}
