/**
 * The shared logs of the segment's replicated state: for each named log, its retained records in
 * sequence order, its bounds and its retention. Part of the pure state machine: no clock or I/O.
 *
 * Records are kept in chunks, one per applied batch (a batch's bytes are copied once, so a log never
 * pins the larger network or WAL buffer its batch arrived in); sequence numbers start at 0 and are
 * contiguous within a log.
 */
import { DEFAULT_LOG_MAX_BYTES } from '@segmem/protocol';

interface Chunk {
  /** Sequence number of the chunk's first record. */
  readonly first: number;
  /** End offset in `data` of each record (record i spans ends[i-1]..ends[i]). */
  readonly ends: Uint32Array;
  readonly data: Buffer;
}

export interface LogState {
  readonly name: string;
  /** Retention: the oldest records are dropped while the retained bytes exceed this. */
  readonly maxBytes: number;
  /** Oldest retained sequence number (= next when nothing is retained). */
  first: number;
  /** Sequence number of the next record appended. */
  next: number;
  /** Bytes of the retained records. */
  bytes: number;
  /** Chunks covering first..next-1 in order; the head chunk may start before `first`. */
  readonly chunks: Chunk[];
}

export interface LogRead {
  first: number;
  next: number;
  bytes: number;
  /** Sequence number of the first record returned. */
  from: number;
  sizes: number[];
  /** The records' bytes, as views into the log's chunks (no copy). */
  parts: Buffer[];
}

function recordBytes(chunk: Chunk, i: number): number {
  return chunk.ends[i]! - (i === 0 ? 0 : chunk.ends[i - 1]!);
}

function recordAt(chunk: Chunk, i: number): Buffer {
  return chunk.data.subarray(i === 0 ? 0 : chunk.ends[i - 1]!, chunk.ends[i]!);
}

export class SharedLogs {
  private readonly logs = new Map<string, LogState>();
  /** Bytes of every log's retained records together (the memory budget counts them). */
  private retained = 0;

  /** Bytes of the records all logs retain: a running sum, the same on every replica. */
  get retainedBytes(): number {
    return this.retained;
  }

  get(name: string): LogState | undefined {
    return this.logs.get(name);
  }

  /** The logs' names, sorted. */
  names(): string[] {
    return [...this.logs.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  has(name: string): boolean {
    return this.logs.has(name);
  }

  get size(): number {
    return this.logs.size;
  }

  /**
   * Appends one batch (creating the log with retention `maxBytes` when it does not exist); returns the
   * first sequence number. The caller has checked that `sizes` add up to `data`'s length.
   */
  append(name: string, sizes: number[], data: Buffer | null, maxBytes: number | null): number {
    let log = this.logs.get(name);
    if (!log) {
      log = { name, maxBytes: maxBytes ?? DEFAULT_LOG_MAX_BYTES, first: 0, next: 0, bytes: 0, chunks: [] };
      this.logs.set(name, log);
    }
    const ends = new Uint32Array(sizes.length);
    let end = 0;
    for (let i = 0; i < sizes.length; i++) {
      end += sizes[i]!;
      ends[i] = end;
    }
    const own = Buffer.allocUnsafeSlow(end);
    if (data && end > 0) data.copy(own, 0, 0, end);
    const first = log.next;
    log.chunks.push({ first, ends, data: own });
    log.next += sizes.length;
    log.bytes += end;
    this.retained += end;
    // Retention drops the oldest records, never the batch just appended (it stays readable at least once).
    this.dropWhile(log, (seq) => log.bytes > log.maxBytes && seq < first);
    return first;
  }

  /**
   * Records copied from another group's log (a slot move): the log is created starting at `first`, and a
   * piece already held (its records below `next`) is skipped, so a retried copy changes nothing. Returns
   * false, changing nothing, when the piece does not continue the log (a gap). The caller has checked that
   * `sizes` add up to `data`'s length.
   */
  importRecords(name: string, maxBytes: number, first: number, sizes: number[], data: Buffer): boolean {
    const log = this.logs.get(name);
    if (!log) {
      this.logs.set(name, { name, maxBytes, first, next: first, bytes: 0, chunks: [] });
    } else if (first + sizes.length <= log.next) return true;
    else if (first !== log.next) return false;
    if (sizes.length > 0) this.append(name, sizes, data, maxBytes);
    return true;
  }

  /** Drops records before `before` (clamped to the log's bounds); returns the new first sequence number. */
  truncate(log: LogState, before: number): number {
    this.dropWhile(log, (seq) => seq < before);
    return log.first;
  }

  delete(name: string): boolean {
    const log = this.logs.get(name);
    if (log) this.retained -= log.bytes;
    return this.logs.delete(name);
  }

  private dropWhile(log: LogState, drop: (seq: number) => boolean): void {
    while (log.first < log.next && drop(log.first)) {
      const chunk = log.chunks[0]!;
      const i = log.first - chunk.first;
      const n = recordBytes(chunk, i);
      log.bytes -= n;
      this.retained -= n;
      log.first++;
      if (i === chunk.ends.length - 1) log.chunks.shift();
    }
  }

  /**
   * Records from `from` (at most `maxBytes` of them, but at least one when any exists). The caller has
   * checked `from` against the log's bounds.
   */
  read(log: LogState, from: number, maxBytes: number, maxRecords: number): LogRead {
    const out: LogRead = {
      first: log.first,
      next: log.next,
      bytes: log.bytes,
      from,
      sizes: [],
      parts: [],
    };
    if (maxBytes === 0) return out;
    let c = this.chunkIndex(log, from);
    let total = 0;
    for (let seq = from; seq < log.next && out.sizes.length < maxRecords; ) {
      const chunk = log.chunks[c]!;
      const i = seq - chunk.first;
      const n = recordBytes(chunk, i);
      if (out.sizes.length > 0 && total + n > maxBytes) break;
      out.sizes.push(n);
      out.parts.push(recordAt(chunk, i));
      total += n;
      seq++;
      if (i === chunk.ends.length - 1) c++;
    }
    return out;
  }

  /** Index of the chunk holding `seq` (first <= seq < next): binary search over the chunks' first numbers. */
  private chunkIndex(log: LogState, seq: number): number {
    let lo = 0;
    let hi = log.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (log.chunks[mid]!.first <= seq) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Canonical form for snapshots: each log as [name, maxBytes, first, next, sizes (u32 LE), data], by name. */
  snapshot(): unknown[] {
    const out: unknown[] = [];
    const names = [...this.logs.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const name of names) {
      const log = this.logs.get(name)!;
      const count = log.next - log.first;
      const sizes = Buffer.alloc(count * 4);
      const data = Buffer.allocUnsafe(log.bytes);
      let at = 0;
      if (count > 0) {
        const read = this.read(log, log.first, Number.MAX_SAFE_INTEGER, count);
        for (let i = 0; i < count; i++) {
          sizes.writeUInt32LE(read.sizes[i]!, i * 4);
          at += read.parts[i]!.copy(data, at);
        }
      }
      out.push([name, log.maxBytes, log.first, log.next, sizes, data]);
    }
    return out;
  }

  /**
   * {@link snapshot}'s form without copying the records: each log's head `[name, maxBytes, first, next,
   * sizes]`, then its retained bytes as views into its chunks. A chunk never changes once appended
   * (retention and truncation only drop chunks), so the views keep what was retained now.
   */
  freeze(): { head: unknown[]; bytes: number; parts: Buffer[] }[] {
    const out: { head: unknown[]; bytes: number; parts: Buffer[] }[] = [];
    const names = [...this.logs.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const name of names) {
      const log = this.logs.get(name)!;
      const sizes = Buffer.alloc((log.next - log.first) * 4);
      const parts: Buffer[] = [];
      let n = 0;
      for (const chunk of log.chunks) {
        // The head chunk may hold records before `first` that retention dropped already.
        const from = Math.max(0, log.first - chunk.first);
        for (let i = from; i < chunk.ends.length; i++) sizes.writeUInt32LE(recordBytes(chunk, i), 4 * n++);
        parts.push(chunk.data.subarray(from === 0 ? 0 : chunk.ends[from - 1]!, chunk.ends.at(-1) ?? 0));
      }
      out.push({ head: [name, log.maxBytes, log.first, log.next, sizes], bytes: log.bytes, parts });
    }
    return out;
  }

  /** Rebuilds the logs from {@link snapshot}'s form. */
  static restore(entries: unknown[]): SharedLogs {
    const logs = new SharedLogs();
    for (const e of entries) {
      const [name, maxBytes, first, next, sizes, data] = e as [
        string,
        number,
        number,
        number,
        Buffer,
        Buffer,
      ];
      const count = next - first;
      const ends = new Uint32Array(count);
      let end = 0;
      for (let i = 0; i < count; i++) {
        end += sizes.readUInt32LE(i * 4);
        ends[i] = end;
      }
      const chunks: Chunk[] = count > 0 ? [{ first, ends, data: Buffer.from(data) }] : [];
      logs.logs.set(name, { name, maxBytes, first, next, bytes: end, chunks });
      logs.retained += end;
    }
    return logs;
  }
}
