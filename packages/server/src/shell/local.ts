/**
 * An in-process connection to a node, for the client's embedded mode: the same frames and the same
 * request handling as TCP, without the kernel. Each side's writes are delivered in order on a
 * microtask, concatenated, so both ends see exactly the byte stream a socket would carry.
 */
import type { SegmemNode, Wire } from '../node/index.js';
import { ServerConnection } from './connection.js';

export interface LocalEnd {
  /** Client → server bytes. */
  write(parts: Buffer[]): void;
  /** Server → client bytes arrive here. */
  onData: (chunk: Buffer) => void;
  onClose: () => void;
  close(): void;
}

class Pipe {
  private parts: Buffer[] = [];
  /** Told once their parts were delivered (copied into the chunk the other side gets). */
  private sent: (() => void)[] = [];
  private scheduled = false;
  constructor(private readonly deliver: (chunk: Buffer) => void) {}

  write(parts: Buffer[], onSent?: () => void): void {
    for (const p of parts) this.parts.push(p);
    if (onSent) this.sent.push(onSent);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    const parts = this.parts;
    this.parts = [];
    const sent = this.sent;
    if (sent.length > 0) this.sent = [];
    // Parts may be views of the server's state (answers by reference): the other side gets a copy.
    const chunk = parts.length === 1 && sent.length === 0 ? parts[0]! : Buffer.concat(parts);
    for (const done of sent) done();
    if (parts.length > 0) this.deliver(chunk);
  }
}

export function connectLocal(node: SegmemNode): LocalEnd {
  let open = true;
  const end: LocalEnd = {
    write: (parts) => {
      if (open) toServer.write(parts);
    },
    onData: () => {},
    onClose: () => {},
    close: () => shut(),
  };
  const toClient = new Pipe((chunk) => {
    if (open) end.onData(chunk);
  });
  const wire: Wire = {
    write: (parts, onSent) => {
      if (open) toClient.write(parts, onSent);
      else onSent?.();
    },
    close: () => queueMicrotask(shut),
  };
  const conn = new ServerConnection(node, wire, undefined, { inProcess: true });
  const toServer = new Pipe((chunk) => conn.receive(chunk));
  function shut(): void {
    if (!open) return;
    open = false;
    conn.disconnected();
    end.onClose();
  }
  return end;
}
