/**
 * Frame codec. Every message on a segmem TCP connection is one frame (little-endian):
 *
 * | offset | size | field                                                                     |
 * |-------:|-----:|---------------------------------------------------------------------------|
 * | 0      | 4    | frameBytes u32: bytes after this field = 12 + headerBytes + payloadBytes   |
 * | 4      | 1    | version u8 (PROTOCOL_VERSION)                                             |
 * | 5      | 1    | type u8 (message type code)                                               |
 * | 6      | 4    | requestId u32 (0 for pushes and connection-level errors)                  |
 * | 10     | 2    | groupId u16 (shard group)                                                 |
 * | 12     | 4    | headerBytes u32 (<= frameBytes - 12)                                      |
 * | 16     | ...  | header: one msgpack map                                                   |
 * | ...    | ...  | payload: raw bytes, the rest of the frame (page bytes, never msgpack)     |
 */
import { invalidArgument, protocolError, SegmemError } from './errors.js';
import { MAX_FRAME_BYTES, PROTOCOL_VERSION } from './limits.js';
import { decodeHeader, encodeHeader } from './msgpack.js';

/** Bytes of the length field. */
export const FRAME_LENGTH_BYTES = 4;
/** Bytes after the length field and before the header: version, type, requestId, groupId, headerBytes. */
export const FRAME_FIXED_BYTES = 12;
/** Bytes before the header: length field plus fixed fields. */
export const FRAME_PREFIX_BYTES = FRAME_LENGTH_BYTES + FRAME_FIXED_BYTES;
/** Largest value a u32 length field can hold; `maxFrameBytes` options cannot exceed it. */
export const MAX_U32 = 0xffffffff;

export interface Frame {
  version: number;
  type: number;
  requestId: number;
  groupId: number;
  header: Record<string, unknown>;
  /** The raw payload: a view into the received bytes (no copy when the frame arrived within one chunk). */
  payload: Buffer;
}

/** A zero-length payload (read releases, grants without pages). */
export const EMPTY_PAYLOAD: Buffer = Buffer.alloc(0);

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function checkFixedFields(type: number, requestId: number, groupId: number): void {
  if (!(Number.isInteger(type) && type >= 0 && type <= 0xff)) {
    throw invalidArgument(`frame type must be an integer 0..255; got ${type}`);
  }
  if (!(Number.isInteger(requestId) && requestId >= 0 && requestId <= MAX_U32)) {
    throw invalidArgument(`requestId must be an integer 0..${MAX_U32}; got ${requestId}`);
  }
  if (!(Number.isInteger(groupId) && groupId >= 0 && groupId <= 0xffff)) {
    throw invalidArgument(`groupId must be an integer 0..65535; got ${groupId}`);
  }
}

/**
 * Encodes a frame as `[prefix + header]` or `[prefix + header, payload]`: the payload is never copied, so a
 * socket can `cork()`, write both and `uncork()`. Throws INVALID_ARGUMENT when a fixed field is out of range or
 * the frame would exceed `maxFrameBytes`. The header is not validated here (decoders validate).
 */
export function encodeFrame(
  type: number,
  requestId: number,
  groupId: number,
  header: object,
  payload?: Uint8Array | readonly Uint8Array[],
  maxFrameBytes: number = MAX_FRAME_BYTES,
): Buffer[] {
  checkFixedFields(type, requestId, groupId);
  let head: Buffer;
  try {
    head = encodeHeader(header, FRAME_PREFIX_BYTES);
  } catch (err) {
    throw invalidArgument(`frame header cannot be encoded: ${(err as Error)?.message ?? String(err)}`);
  }
  const headerBytes = head.length - FRAME_PREFIX_BYTES;
  // A payload may come in parts (e.g. several log entries): they follow the header as they are, uncopied.
  const parts: readonly Uint8Array[] =
    payload === undefined ? [] : Array.isArray(payload) ? payload : [payload as Uint8Array];
  let payloadBytes = 0;
  for (const p of parts) payloadBytes += p.byteLength;
  const frameBytes = FRAME_FIXED_BYTES + headerBytes + payloadBytes;
  if (frameBytes > maxFrameBytes) {
    throw invalidArgument(
      `frame of ${frameBytes} bytes (header ${headerBytes}, payload ${payloadBytes}) exceeds the limit of ${maxFrameBytes} bytes`,
      { frameBytes, maxFrameBytes },
    );
  }
  head.writeUInt32LE(frameBytes, 0);
  head[4] = PROTOCOL_VERSION;
  head[5] = type;
  head.writeUInt32LE(requestId, 6);
  head.writeUInt16LE(groupId, 10);
  head.writeUInt32LE(headerBytes, 12);
  if (payloadBytes === 0) return [head];
  const out = [head];
  for (const p of parts) if (p.byteLength > 0) out.push(toBuffer(p));
  return out;
}

/** {@link encodeFrame} as one contiguous Buffer (copies the payload; for UDP and tests). */
export function encodeFrameToBuffer(
  type: number,
  requestId: number,
  groupId: number,
  header: object,
  payload?: Uint8Array,
  maxFrameBytes: number = MAX_FRAME_BYTES,
): Buffer {
  const parts = encodeFrame(type, requestId, groupId, header, payload, maxFrameBytes);
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/** Total bytes of the parts {@link encodeFrame} returned. */
export function frameLength(parts: readonly Uint8Array[]): number {
  let n = 0;
  for (const part of parts) n += part.byteLength;
  return n;
}

function checkFrameBytes(frameBytes: number, maxFrameBytes: number): void {
  if (frameBytes < FRAME_FIXED_BYTES) {
    throw protocolError(`frame length ${frameBytes} is below the minimum of ${FRAME_FIXED_BYTES}`, {
      frameBytes,
    });
  }
  if (frameBytes > maxFrameBytes) {
    throw protocolError(`frame length ${frameBytes} exceeds the limit of ${maxFrameBytes} bytes`, {
      frameBytes,
      maxFrameBytes,
    });
  }
}

/** Checks version and headerBytes of the prefix at `buf[base..base+16)`. */
function checkPrefix(buf: Buffer, base: number, frameBytes: number): number {
  const version = buf[base + 4];
  if (version !== PROTOCOL_VERSION) {
    throw protocolError(
      `unsupported protocol version ${version} in frame (this side speaks version ${PROTOCOL_VERSION})`,
      { version, expected: PROTOCOL_VERSION },
    );
  }
  const headerBytes = buf.readUInt32LE(base + 12);
  if (headerBytes > frameBytes - FRAME_FIXED_BYTES) {
    throw protocolError(
      `frame header of ${headerBytes} bytes does not fit in a frame of ${frameBytes} bytes after the fixed fields`,
      { headerBytes, frameBytes },
    );
  }
  return headerBytes;
}

/** Decodes the complete frame at `buf[base .. base + 4 + frameBytes)`. */
function decodeFrameAt(
  buf: Buffer,
  base: number,
  frameBytes: number,
  maxHeaderElements = Number.POSITIVE_INFINITY,
): Frame {
  const headerBytes = checkPrefix(buf, base, frameBytes);
  const headerStart = base + FRAME_PREFIX_BYTES;
  const headerEnd = headerStart + headerBytes;
  let header: Record<string, unknown>;
  try {
    header = decodeHeader(buf, headerStart, headerEnd, maxHeaderElements);
  } catch (err) {
    if (SegmemError.is(err)) {
      const requestId = buf.readUInt32LE(base + 6);
      const type = buf[base + 5];
      throw protocolError(`${err.message} in frame type 0x${type.toString(16)} requestId ${requestId}`, {
        ...err.details,
        type,
        requestId,
      });
    }
    throw err;
  }
  return {
    version: buf[base + 4],
    type: buf[base + 5],
    requestId: buf.readUInt32LE(base + 6),
    groupId: buf.readUInt16LE(base + 10),
    header,
    payload: buf.subarray(headerEnd, base + FRAME_LENGTH_BYTES + frameBytes),
  };
}

/**
 * Decodes a buffer that holds exactly one frame (a UDP datagram, a test vector).
 * Throws PROTOCOL for anything {@link FrameDecoder} would refuse, and for missing or extra bytes.
 */
export function decodeFrame(buf: Buffer, maxFrameBytes: number = MAX_FRAME_BYTES): Frame {
  if (buf.length < FRAME_PREFIX_BYTES) {
    throw protocolError(`a frame needs at least ${FRAME_PREFIX_BYTES} bytes; got ${buf.length}`);
  }
  const frameBytes = buf.readUInt32LE(0);
  checkFrameBytes(frameBytes, maxFrameBytes);
  if (frameBytes + FRAME_LENGTH_BYTES !== buf.length) {
    throw protocolError(`frame length ${frameBytes} + 4 does not match the ${buf.length} bytes given`);
  }
  return decodeFrameAt(buf, 0, frameBytes);
}

export interface FrameDecoderOptions {
  /** Largest frame accepted (the length field's value); default MAX_FRAME_BYTES. */
  maxFrameBytes?: number;
  /**
   * Most array elements and map entries in one frame's header (all containers together); default no limit
   * beyond the header rules. A server passes MAX_REQUEST_HEADER_ELEMENTS.
   */
  maxHeaderElements?: number;
}

function checkMaxFrameBytes(max: number): number {
  if (!(Number.isInteger(max) && max >= FRAME_FIXED_BYTES && max <= MAX_U32)) {
    throw invalidArgument(`maxFrameBytes must be an integer ${FRAME_FIXED_BYTES}..${MAX_U32}; got ${max}`);
  }
  return max;
}

/**
 * Streaming frame decoder: `push()` each received chunk, get back the frames it completed; or `feed()` a
 * chunk and take the frames one by one with `next()`, which lets the caller change `maxFrameBytes` between
 * frames (a server raises it once a connection has logged in, so the frame after the login already gets it).
 *
 * - Frames may be split or coalesced arbitrarily across chunks.
 * - The length field is checked against `maxFrameBytes` as soon as its 4 bytes arrive, before any of the body
 *   is buffered; version and headerBytes as soon as the 16-byte prefix arrives.
 * - Chunks are kept in a list and only a frame that spans chunks is copied (once, into a buffer of its exact
 *   size); a frame within one chunk is decoded in place, its `payload` a view of that chunk.
 * - Any bad frame throws `SegmemError('PROTOCOL')`; from then on the decoder drops what it buffered and every
 *   `push()`, `feed()` and `next()` throws again (the connection must be closed: its byte stream has lost its
 *   framing).
 */
export class FrameDecoder {
  #maxFrameBytes: number;
  readonly #maxHeaderElements: number;
  #chunks: Buffer[] = [];
  /** Read position in #chunks[0]. */
  #offset = 0;
  #buffered = 0;
  /** frameBytes of the frame in progress once its length field was read; -1 before. */
  #frameBytes = -1;
  #prefixChecked = false;
  #failure: SegmemError | undefined;
  #scratch = Buffer.alloc(FRAME_PREFIX_BYTES);

  constructor(opts: FrameDecoderOptions = {}) {
    this.#maxFrameBytes = checkMaxFrameBytes(opts.maxFrameBytes ?? MAX_FRAME_BYTES);
    this.#maxHeaderElements = opts.maxHeaderElements ?? Number.POSITIVE_INFINITY;
  }

  /** Largest frame accepted from now on. */
  get maxFrameBytes(): number {
    return this.#maxFrameBytes;
  }

  /**
   * Changes the limit for the frames not yet started; a frame whose length field was already read keeps
   * the limit it was checked against.
   */
  set maxFrameBytes(max: number) {
    this.#maxFrameBytes = checkMaxFrameBytes(max);
  }

  /** Bytes received and not yet returned as frames. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /**
   * Bytes of the frame being received, length prefix included, once its length was read (by {@link next});
   * 0 before.
   */
  get pendingFrameBytes(): number {
    return this.#frameBytes < 0 ? 0 : FRAME_LENGTH_BYTES + this.#frameBytes;
  }

  /** The error that stopped this decoder, if any. */
  get failure(): SegmemError | undefined {
    return this.#failure;
  }

  push(chunk: Buffer): Frame[] {
    this.feed(chunk);
    const frames: Frame[] = [];
    for (let frame = this.next(); frame !== null; frame = this.next()) frames.push(frame);
    return frames;
  }

  /** Adds a received chunk; {@link next} decodes the frames in it. */
  feed(chunk: Buffer): void {
    this.#checkNotFailed();
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /**
   * The next complete frame, or null until more bytes arrive. A length prefix over the limit throws as soon
   * as its 4 bytes are buffered, so a caller that calls this until null never buffers more of such a frame.
   */
  next(): Frame | null {
    this.#checkNotFailed();
    try {
      return this.#nextFrame();
    } catch (err) {
      this.#failure = SegmemError.is(err) ? err : protocolError(`frame decoder failed: ${String(err)}`);
      this.#chunks = [];
      this.#offset = 0;
      this.#buffered = 0;
      throw this.#failure;
    }
  }

  #checkNotFailed(): void {
    if (this.#failure !== undefined) {
      throw protocolError(`frame decoder stopped after an earlier error: ${this.#failure.message}`);
    }
  }

  #nextFrame(): Frame | null {
    if (this.#buffered < FRAME_LENGTH_BYTES) return null;
    let frameBytes = this.#frameBytes;
    if (frameBytes < 0) {
      frameBytes = this.#peekPrefix(FRAME_LENGTH_BYTES).readUInt32LE(this.#peekBase);
      checkFrameBytes(frameBytes, this.#maxFrameBytes);
      this.#frameBytes = frameBytes;
    }
    if (!this.#prefixChecked) {
      if (this.#buffered < FRAME_PREFIX_BYTES) return null;
      checkPrefix(this.#peekPrefix(FRAME_PREFIX_BYTES), this.#peekBase, frameBytes);
      this.#prefixChecked = true;
    }
    const total = FRAME_LENGTH_BYTES + frameBytes;
    if (this.#buffered < total) return null;
    this.#frameBytes = -1;
    this.#prefixChecked = false;
    return this.#take(total, frameBytes);
  }

  #peekBase = 0;

  /** A buffer holding the first `n` (<= 16) buffered bytes at #peekBase: the head chunk, or a copy in scratch. */
  #peekPrefix(n: number): Buffer {
    const head = this.#chunks[0];
    if (head.length - this.#offset >= n) {
      this.#peekBase = this.#offset;
      return head;
    }
    let copied = 0;
    let offset = this.#offset;
    for (let i = 0; copied < n; i++) {
      const chunk = this.#chunks[i];
      const count = Math.min(chunk.length - offset, n - copied);
      chunk.copy(this.#scratch, copied, offset, offset + count);
      copied += count;
      offset = 0;
    }
    this.#peekBase = 0;
    return this.#scratch;
  }

  /** Removes the next `total` bytes (one whole frame) from the buffer and decodes them. */
  #take(total: number, frameBytes: number): Frame {
    const head = this.#chunks[0];
    const offset = this.#offset;
    this.#buffered -= total;
    if (head.length - offset >= total) {
      if (head.length - offset === total) {
        this.#chunks.shift();
        this.#offset = 0;
      } else {
        this.#offset = offset + total;
      }
      return decodeFrameAt(head, offset, frameBytes, this.#maxHeaderElements);
    }
    const buf = Buffer.allocUnsafe(total);
    let copied = 0;
    let consumed = 0;
    let at = offset;
    while (copied < total) {
      const chunk = this.#chunks[consumed];
      const count = Math.min(chunk.length - at, total - copied);
      chunk.copy(buf, copied, at, at + count);
      copied += count;
      at += count;
      if (at === chunk.length) {
        consumed++;
        at = 0;
      }
    }
    this.#chunks.splice(0, consumed);
    this.#offset = at;
    return decodeFrameAt(buf, 0, frameBytes, this.#maxHeaderElements);
  }
}
