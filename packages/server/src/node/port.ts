/**
 * How the node answers a client connection without knowing frames: it hands over what to say, and the
 * connection (shell/connection.ts) encodes it.
 */
import type { Changed, Invalidate, OkBodyInput, RequestType, Revoke, SegmemError } from '@segmem/protocol';
import type { Principal } from './access.js';

/** The transport under one connection: TCP socket or an in-process pipe. */
export interface Wire {
  write(parts: Buffer[]): void;
  close(): void;
  /** Remote address for UDP hints (TCP only). */
  readonly remoteAddress?: string | undefined;
}

/** What the node needs of a client connection to answer it. */
export interface Port {
  /** The client's UDP port for invalidation hints, from its HELLO (null: none asked for). */
  readonly udpPort: number | null;
  /** Where UDP hints go (TCP only). */
  readonly remoteAddress: string | undefined;
  /** Once set, the connection is gone (or being dropped): answers to it are not written. */
  closed: boolean;
  /** Who the connection logged in as (set by HELLO; anonymous before). */
  principal: Principal;
  /** An in-process connection (embedded mode): no credentials, every right. */
  readonly inProcess?: boolean;
  /** Answers request `requestId` with OK; `payload` travels beside the header, never copied into it. */
  ok<T extends RequestType>(
    type: T,
    requestId: number,
    body: OkBodyInput<T>,
    payload?: Uint8Array | readonly Uint8Array[],
  ): void;
  /** Answers request `requestId` with an ERROR (counted by code). */
  error(requestId: number, err: SegmemError): void;
  /** Pushes an INVALIDATE to the session on this connection. */
  invalidate(msg: Invalidate): void;
  /** Pushes a REVOKE to the session on this connection. */
  revoke(msg: Revoke): void;
  /** Pushes a CHANGED (objects this session watches changed) to the session on this connection. */
  changed(msg: Changed): void;
  /** Closes the connection from the server's side; the client then reconnects (and finds the leader). */
  close(): void;
}
