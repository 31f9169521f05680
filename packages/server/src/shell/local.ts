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
  private scheduled = false;
  constructor(private readonly deliver: (chunk: Buffer) => void) {}

  write(parts: Buffer[]): void {
    for (const p of parts) this.parts.push(p);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    const parts = this.parts;
    this.parts = [];
    if (parts.length > 0) this.deliver(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
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
    write: (parts) => {
      if (open) toClient.write(parts);
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
