import { SegmemError } from '@segmem/protocol';

/**
 * A shard group's range of the segment: the group id and the bytes whose addresses its state machine hands
 * out. A cluster configured without groups is group 0 over the whole segment.
 */
export interface GroupRange {
  /** 0: the one group of a cluster configured without groups. */
  readonly id: number;
  /** First byte of the range (page-aligned): addresses are absolute, in the whole segment. */
  readonly start: number;
  /** Bytes in the range (page-aligned). */
  readonly bytes: number;
}

/** The group of a cluster configured without groups. */
export function wholeSegment(segmentBytes: number): GroupRange {
  return { id: 0, start: 0, bytes: segmentBytes };
}

export function sameGroupRange(a: GroupRange, b: GroupRange): boolean {
  return a.id === b.id && a.start === b.start && a.bytes === b.bytes;
}

/** `group 2 (bytes [1073741824, 2147483648))`, or `group 0 (the whole segment of N bytes)`. */
export function describeGroupRange(g: GroupRange): string {
  return `group ${g.id} (bytes [${g.start}, ${g.start + g.bytes}))`;
}

/** Why `group` cannot be a range of a segment of `segmentBytes`; null when it can. */
export function groupRangeProblem(group: GroupRange, pageBytes: number, segmentBytes: number): string | null {
  const { id, start, bytes } = group;
  if (!Number.isInteger(id) || id < 0 || id > 65535) return `group id ${id} must be an integer 0..65535`;
  if (!Number.isSafeInteger(start) || start < 0 || start % pageBytes !== 0)
    return `group ${id}'s range must start at a multiple of ${pageBytes}; got ${start}`;
  if (!Number.isSafeInteger(bytes) || bytes < pageBytes || bytes % pageBytes !== 0)
    return `group ${id}'s range must hold a positive multiple of ${pageBytes} bytes; got ${bytes}`;
  if (start + bytes > segmentBytes)
    return `group ${id}'s range [${start}, ${start + bytes}) ends past the segment (${segmentBytes} bytes)`;
  return null;
}

/**
 * A state restored from `dir`'s snapshot serves `held`: a server configured for another group or range is
 * refused (INVALID_ARGUMENT naming both), before anything is applied to it.
 */
export function checkRestoredGroup(held: GroupRange, wanted: GroupRange, dir: string): void {
  if (sameGroupRange(held, wanted)) return;
  throw new SegmemError(
    'INVALID_ARGUMENT',
    `the snapshot in ${dir} holds ${describeGroupRange(held)}, but this server is configured as ${describeGroupRange(wanted)}; a server keeps its group and range (start it with the config it was created with)`,
    { dir, group: held, configured: wanted },
  );
}
