// The 100-byte log record shared by every mechanism (the C programs build the same bytes, see lw.h), and
// the verifier that reads a log back and says whether anything was lost, torn, duplicated or reordered.
//
//   0 magic u32 | 4 writer u32 | 8 per-writer seq u64 | 16 monotonic ns at append start u64 |
//   24..96 padding derived from (writer, seq) | 96 FNV-1a 32 of bytes 0..96   (little-endian)

export const REC_SIZE = 100;
export const REC_MAGIC = 0x3152474c; // "LGR1"
const MMAP_HEADER = 4096;
const MMAP_MAGIC = 0x50414d4d474f4c31n;

export function fnv1a(buf, start, end) {
  let h = 0x811c9dc5;
  for (let i = start; i < end; i++) h = Math.imul(h ^ buf[i], 16777619) >>> 0;
  return h >>> 0;
}

/** Builds the record of `writer`'s `seq`-th append, stamped with `tsNs` (a bigint, monotonic ns). */
export function encodeRecord(writer, seq, tsNs) {
  const r = Buffer.allocUnsafe(REC_SIZE);
  r.writeUInt32LE(REC_MAGIC, 0);
  r.writeUInt32LE(writer, 4);
  r.writeBigUInt64LE(BigInt(seq), 8);
  r.writeBigUInt64LE(tsNs, 16);
  for (let i = 24; i < 96; i++) r[i] = (writer * 31 + seq * 7 + i) & 0xff;
  r.writeUInt32LE(fnv1a(r, 0, 96), 96);
  return r;
}

/** The record at `off` if its magic and checksum hold, else null. */
export function decodeRecord(buf, off) {
  if (off + REC_SIZE > buf.length || buf.readUInt32LE(off) !== REC_MAGIC) return null;
  if (fnv1a(buf, off, off + 96) !== buf.readUInt32LE(off + 96)) return null;
  return {
    writer: buf.readUInt32LE(off + 4),
    seq: Number(buf.readBigUInt64LE(off + 8)),
    tsNs: buf.readBigUInt64LE(off + 16),
  };
}

/**
 * Checks records in log order. `expected`: Map writer -> number of appends that writer reported as done
 * (acknowledged); a writer killed by a crash test has no entry and its records only have to form a prefix.
 * Every acknowledged record must be there exactly once, each writer's records in its own order.
 */
export class LogChecker {
  constructor(expected, writerIds) {
    this.expected = expected;
    this.writerIds = new Set(writerIds); // every writer of the run, killed ones included
    this.next = new Map(); // writer -> next seq expected
    this.records = 0;
    this.torn = 0; // records whose bytes are damaged or cut (each damaged region counts once)
    this.tornBytes = 0;
    this.holes = 0; // mmap slots reserved but never completed
    this.dup = 0;
    this.gaps = 0; // a writer's seq jumped forward: records missing in the middle
    this.foreign = 0; // a record from a writer id that was not in the run
    this.seqErrors = 0; // segmem: log sequence numbers not contiguous, or not the ones append returned
  }

  add(rec) {
    this.records++;
    if (!this.writerIds.has(rec.writer)) {
      this.foreign++;
      return;
    }
    const want = this.next.get(rec.writer) ?? 0;
    if (rec.seq === want) this.next.set(rec.writer, want + 1);
    else if (rec.seq < want) this.dup++;
    else {
      this.gaps += rec.seq - want;
      this.next.set(rec.writer, rec.seq + 1);
    }
  }

  /** Final counts. lost = acknowledged records not found. */
  result() {
    let lost = 0;
    const perWriter = {};
    for (const [w, n] of this.expected) {
      const found = this.next.get(w) ?? 0;
      if (found < n) lost += n - found;
    }
    for (const [w, n] of this.next) perWriter[w] = n;
    const ok =
      lost === 0 &&
      this.torn === 0 &&
      this.holes === 0 &&
      this.dup === 0 &&
      this.gaps === 0 &&
      this.foreign === 0 &&
      this.seqErrors === 0;
    return {
      ok,
      records: this.records,
      lost,
      torn: this.torn,
      tornBytes: this.tornBytes,
      holes: this.holes,
      dup: this.dup,
      gaps: this.gaps,
      foreign: this.foreign,
      seqErrors: this.seqErrors,
      perWriter,
    };
  }
}

/**
 * A plain append-only file of records. A damaged region (a half record left by a crash, bytes from two
 * writers mixed) is skipped by scanning for the next record whose magic and checksum hold.
 */
export function checkFileLog(buf, checker, onRecord) {
  let off = 0;
  while (off < buf.length) {
    const rec = decodeRecord(buf, off);
    if (rec) {
      checker.add(rec);
      onRecord?.(rec, off);
      off += REC_SIZE;
      continue;
    }
    let next = off + 1;
    while (next < buf.length && !decodeRecord(buf, next)) next++;
    checker.torn++;
    checker.tornBytes += next - off;
    off = next;
  }
  return checker;
}

/** An mmap slot log (lw_mmap.c): header page with the tail, then 100-byte slots; magic 0 = never completed. */
export function checkMmapLog(buf, checker, onRecord) {
  if (buf.length < MMAP_HEADER || buf.readBigUInt64LE(0) !== MMAP_MAGIC) throw new Error('not an mmap log');
  const capacity = Number(buf.readBigUInt64LE(8));
  const tail = Math.min(Number(buf.readBigUInt64LE(64)), capacity);
  checker.slots = tail;
  for (let i = 0; i < tail; i++) {
    const off = MMAP_HEADER + i * REC_SIZE;
    if (buf.readUInt32LE(off) === 0) {
      checker.holes++;
      continue;
    }
    const rec = decodeRecord(buf, off);
    if (!rec) {
      checker.torn++;
      checker.tornBytes += REC_SIZE;
      continue;
    }
    checker.add(rec);
    onRecord?.(rec, off);
  }
  return checker;
}
