/**
 * `@segmem/native`: the client's native addon (Linux). Maps a segment file into memory with `mmap`,
 * changes page protections with `mprotect`, writes pages back with `msync`, frees pages and file blocks,
 * and installs a SIGSEGV/SIGBUS handler that explains an illegal access to a mapped segment before
 * aborting the process.
 *
 * Offsets and lengths are byte counts given as non-negative safe integers (`number`); a mapping id is the
 * small positive integer returned by {@link NativeBinding.map}. Invalid arguments throw a `TypeError`
 * (wrong type) or a `RangeError` (bad value, out of bounds, unknown id); a failed system call throws an
 * `Error` whose message has the errno text and which carries `code` (e.g. `'ENOENT'`) and `errno`.
 */

/** Page protection for {@link NativeBinding.protect}: 0 = no access, 1 = read only, 2 = read/write. */
export type ProtectMode = 0 | 1 | 2;

/** An `Error` thrown for a failed system call. */
export interface NativeSystemError extends Error {
  /** The errno name, e.g. `'ENOENT'`. */
  code?: string;
  /** The errno number. */
  errno: number;
}

export interface NativeBinding {
  /** The system page size in bytes (`sysconf(_SC_PAGESIZE)`). */
  pageSize(): number;

  /**
   * Opens or creates `path` (mode 0600), sets its size to `bytes` with `ftruncate` (sparse; an existing
   * file of another size is extended or truncated) and maps it shared with no access (`PROT_NONE`).
   * Returns the mapping id (1, 2, ...). `bytes` must be a positive multiple of {@link pageSize}; sizes
   * of 4 GiB and more are fine. Ids are not reused (at most 1024 mappings per process).
   */
  map(path: string, bytes: number): number;

  /** The address of the mapping's first byte (for diagnostics and tests; works on closed mappings too). */
  address(id: number): bigint;

  /**
   * A Buffer over the mapping's bytes `[offset, offset + length)`, without copying. Accessing it is
   * subject to the current protection of its pages. A zero `length` returns an ordinary empty Buffer.
   * Throws on a closed mapping. `length` is limited by `buffer.constants.MAX_LENGTH`.
   */
  buffer(id: number, offset: number, length: number): Buffer;

  /**
   * Sets the protection of the pages `[offset, offset + length)`: `offset` must be a multiple of the page
   * size, `length` is rounded up to whole pages. The mode is also recorded per page so that the fault
   * handler can tell "not acquired" (0) from "held read-only" (1).
   */
  protect(id: number, offset: number, length: number, mode: ProtectMode): void;

  /** Writes the pages covering `[offset, offset + length)` back to the file (`msync(MS_SYNC)`). */
  sync(id: number, offset: number, length: number): void;

  /**
   * Frees the memory and the file blocks of the pages `[offset, offset + length)` (hole punching;
   * `offset` page aligned, `length` rounded up to whole pages). Afterwards they read as zeros.
   */
  discard(id: number, offset: number, length: number): void;

  /**
   * Names the object stored at `[offset, offset + length)`, for fault messages. A second label at the same
   * `(id, offset)` replaces the first; when labels overlap the narrowest one wins. Names are truncated to
   * {@link maxLabelNameBytes} UTF-8 bytes. At most {@link maxLabels} labels exist at once (RangeError beyond).
   */
  label(id: number, offset: number, length: number, name: string): void;

  /** Removes the label that starts at `offset`; returns whether there was one. */
  unlabel(id: number, offset: number): boolean;

  /** The name of the label the fault handler would report for `offset`, or null. */
  labelAt(id: number, offset: number): string | null;

  /**
   * Closes a mapping: discards all its pages (memory and, unless `keepFileData` is true, the file's
   * blocks too), replaces the range by an inaccessible reservation (the address range stays reserved, so
   * a Buffer still pointing there faults into the handler, which reports "the segment was closed"),
   * closes the file descriptor and removes the mapping's labels. Returns false if it was already closed.
   */
  close(id: number, keepFileData?: boolean): boolean;

  /**
   * Installs the SIGSEGV/SIGBUS handler (once per process; returns true the first time, false after) and
   * an alternate signal stack for the calling thread if it has none. A fault inside a mapping writes one
   * line to stderr (`segmem: illegal access at address 0x..., segment offset N, object "name": ...`) and
   * aborts (SIGABRT). Faults elsewhere, and signals sent with kill(2), go to the previously installed
   * handler (Node's, which handles WebAssembly traps) or get the default action.
   */
  installFaultHandler(): boolean;

  /** Capacity of the label table (65536). */
  readonly maxLabels: number;

  /** Longest label name kept, in UTF-8 bytes (255). */
  readonly maxLabelNameBytes: number;

  /**
   * CRC-32C (Castagnoli) of `bytes[start, end)`, continuing from `initial` (0 to start), as an unsigned
   * 32-bit number: the same function as the server's `storage/crc32c.ts`, which uses this for long inputs.
   * TypeError for a non-Uint8Array, RangeError for a bad range or an `initial` over 32 bits.
   */
  crc32c(bytes: Uint8Array, initial: number, start: number, end: number): number;

  /** Whether {@link crc32c} uses the CPU's CRC32 instruction (SSE4.2); otherwise a table in C. */
  readonly crc32cHardware: boolean;
}

/** The loaded addon, or null when it is not built, cannot load, or `SEGMEM_DISABLE_NATIVE=1` is set. */
export declare const native: NativeBinding | null;

/** Why {@link native} is null; null when it loaded. */
export declare const loadError: Error | null;
