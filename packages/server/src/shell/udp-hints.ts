/** Best-effort UDP copies of INVALIDATE pushes, so a client drops stale pages early; TCP still carries every one. */
import type { Socket as UdpSocket } from 'node:dgram';
import { encodeInvalidationDatagram, type InvalidationDatagramInput } from '@segmem/protocol';

export class UdpHints {
  constructor(private readonly socket: UdpSocket) {}

  /** The local port clients are told to expect hints from. */
  get port(): number {
    return this.socket.address().port;
  }

  send(msg: InvalidationDatagramInput, udpPort: number, address: string): void {
    this.socket.send(encodeInvalidationDatagram(msg), udpPort, address, () => {});
  }
}
