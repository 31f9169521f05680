/**
 * Page allocator for the segment's address space: first fit over a sorted list of free extents,
 * with neighbouring extents merged on free so space is reused. Pure and deterministic.
 */
export interface Extent {
  start: number; // first page
  count: number; // pages
}

export class PageAllocator {
  readonly totalPages: number;
  /** Free extents, sorted by start, never adjacent (always merged). */
  private free: Extent[];
  private freePagesCount: number;

  /** `totalPages` pages from page `firstPage` on (a group's range of the segment); pages are absolute. */
  constructor(totalPages: number, firstPage = 0) {
    if (!Number.isSafeInteger(totalPages) || totalPages < 1)
      throw new RangeError('totalPages must be a positive integer');
    if (!Number.isSafeInteger(firstPage) || firstPage < 0)
      throw new RangeError('firstPage must be a non-negative integer');
    this.totalPages = totalPages;
    this.free = [{ start: firstPage, count: totalPages }];
    this.freePagesCount = totalPages;
  }

  get freePages(): number {
    return this.freePagesCount;
  }

  /** Returns the first page of `count` contiguous free pages, or -1 when no extent is large enough. */
  allocate(count: number): number {
    for (let i = 0; i < this.free.length; i++) {
      const extent = this.free[i]!;
      if (extent.count < count) continue;
      const start = extent.start;
      if (extent.count === count) this.free.splice(i, 1);
      else {
        extent.start += count;
        extent.count -= count;
      }
      this.freePagesCount -= count;
      return start;
    }
    return -1;
  }

  /** Marks pages as used (recovery of a known layout). Throws if any page is already used. */
  reserve(start: number, count: number): void {
    const i = this.free.findIndex((e) => e.start <= start && start + count <= e.start + e.count);
    if (i < 0) throw new Error(`allocator invariant: pages ${start}+${count} are not free`);
    const e = this.free[i]!;
    const pieces: Extent[] = [];
    if (start > e.start) pieces.push({ start: e.start, count: start - e.start });
    const end = start + count;
    if (end < e.start + e.count) pieces.push({ start: end, count: e.start + e.count - end });
    this.free.splice(i, 1, ...pieces);
    this.freePagesCount -= count;
  }

  release(start: number, count: number): void {
    // Binary search for the insertion point.
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.free[mid]!.start < start) lo = mid + 1;
      else hi = mid;
    }
    const prev = lo > 0 ? this.free[lo - 1] : undefined;
    const next = lo < this.free.length ? this.free[lo] : undefined;
    if ((prev && prev.start + prev.count > start) || (next && start + count > next.start)) {
      throw new Error(`allocator invariant: double free of pages ${start}+${count}`);
    }
    const joinsPrev = prev !== undefined && prev.start + prev.count === start;
    const joinsNext = next !== undefined && start + count === next.start;
    if (joinsPrev && joinsNext) {
      prev.count += count + next.count;
      this.free.splice(lo, 1);
    } else if (joinsPrev) prev.count += count;
    else if (joinsNext) {
      next.start = start;
      next.count += count;
    } else this.free.splice(lo, 0, { start, count });
    this.freePagesCount += count;
  }

  extents(): readonly Extent[] {
    return this.free;
  }
}
