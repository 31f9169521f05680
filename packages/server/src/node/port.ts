/**
 * How the node answers a client connection without knowing frames: it hands over what to say, and the
 * connection (shell/connection.ts) encodes it.
 */
import type {
  Changed,
  Invalidate,
  OkBodyInput,
  Probed,
  RequestType,
  Revoke,
  SegmemError,
} from '@segmem/protocol';
import type { Principal } from './access.js';

/** The transport under one connection: TCP socket or an in-process pipe. */
export interface Wire {
  /**
   * Queues `parts` for sending; `onSent` is called once they left the process (or will never be sent: the wire
   * closed), after which the parts' buffers are no longer read.
   */
  write(parts: Buffer[], onSent?: () => void): void;
  close(): void;
  /** Remote address for UDP hints (TCP only). */
  readonly remoteAddress?: string | undefined;
  /** Bytes written and not yet handed to the operating system (absent: the wire never holds any back). */
  readonly unsentBytes?: number;
  /** Calls `cb` once, when the bytes held back have gone out (soon, if none are). */
  onDrained?(cb: () => void): void;
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
  /**
   * Answers request `requestId` with OK; `payload` travels beside the header, never copied into it. `onSent`
   * is called once the payload's buffers are no longer read (sent, or dropped with the connection).
   */
  ok<T extends RequestType>(
    type: T,
    requestId: number,
    body: OkBodyInput<T>,
    payload?: Uint8Array | readonly Uint8Array[],
    onSent?: () => void,
  ): void;
  /**
   * Runs `produce` (which answers) once the connection has room for another answer: at once, or when enough
   * of what it queued has been sent (answers in the order asked). Never, if the connection closes first.
   * Large answers are produced through this, so a client that does not read cannot make the server build them.
   */
  whenRoom(produce: () => void): void;
  /** Whether an answer produced now goes out at once (nothing waits for room): whenRoom would run it now. */
  hasRoom(): boolean;
  /** Answers request `requestId` with an ERROR (counted by code). */
  error(requestId: number, err: SegmemError): void;
  /** Pushes an INVALIDATE to the session on this connection. */
  invalidate(msg: Invalidate): void;
  /** Pushes a REVOKE to the session on this connection. */
  revoke(msg: Revoke): void;
  /** Pushes a CHANGED (objects this session watches changed) to the session on this connection. */
  changed(msg: Changed): void;
  /** Pushes a PROBED (a probe of a cycle of waits across shard groups) to the session on this connection. */
  probed(msg: Probed): void;
  /** Closes the connection from the server's side; the client then reconnects (and finds the leader). */
  close(): void;
}
