/**
 * The byte ranges a write release ships (RELEASE's `ranges` and payload): found by comparing an object's
 * bytes with the copy taken at acquire (the client's write handles, the `segmem put` command). Whole pages are compared with memcmp (Buffer.equals); only pages that differ
 * are scanned byte by byte, so a one-word change in a large object costs one page scan and ships
 * a few bytes.
 */
export type Range = [offset: number, length: number];

/** Ranges closer than this are merged: a range costs ~10 header bytes, so tiny gaps are cheaper to send. */
const MERGE_GAP_BYTES = 16;

/** Where `current` differs from `twin` (same length), page by page, merged across gaps of a few bytes. */
export function changedRanges(current: Buffer, twin: Buffer, pageBytes: number): Range[] {
  const size = current.length;
  const ranges: Range[] = [];
  for (let start = 0; start < size; start += pageBytes) {
    const end = Math.min(size, start + pageBytes);
    if (current.subarray(start, end).equals(twin.subarray(start, end))) continue;
    let first = start;
    while (current[first] === twin[first]) first++;
    let last = end - 1;
    while (current[last] === twin[last]) last--;
    const prev = ranges[ranges.length - 1];
    if (prev && first - (prev[0] + prev[1]) <= MERGE_GAP_BYTES) prev[1] = last + 1 - prev[0];
    else ranges.push([first, last + 1 - first]);
  }
  return ranges;
}

/** The bytes of `ranges`, concatenated (the RELEASE payload). */
export function gatherRanges(bytes: Buffer, ranges: Range[]): Buffer {
  if (ranges.length === 1) {
    const [offset, length] = ranges[0]!;
    return Buffer.from(bytes.subarray(offset, offset + length));
  }
  let total = 0;
  for (const [, length] of ranges) total += length;
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const [offset, length] of ranges) {
    bytes.copy(out, at, offset, offset + length);
    at += length;
  }
  return out;
}
