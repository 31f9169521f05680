/**
 * The client's local copy of the segment. With the native addon: one sparse, file-backed mmap of the
 * whole segment whose pages start with no access rights; an acquire opens the object's pages for
 * reading or writing and a release closes them again, so a stray access crashes loudly naming the
 * object. Without the addon: one plain Buffer per object and no protection (with a warning).
 *
 * This is the only module that loads the addon; the rest of the client receives its functions here.
 */
import { randomBytes } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type Access = 'none' | 'read' | 'write';

interface NativeBinding {
  pageSize(): number;
  map(path: string, bytes: number): number;
  buffer(id: number, offset: number, length: number): Buffer;
  protect(id: number, offset: number, length: number, mode: 0 | 1 | 2): void;
  discard(id: number, offset: number, length: number): void;
  label(id: number, offset: number, length: number, name: string): void;
  unlabel(id: number, offset: number): void;
  close(id: number): void;
  installFaultHandler(): void;
}

let loaded: { native: NativeBinding | null; loadError: Error | null } | undefined;

function loadNative(): { native: NativeBinding | null; loadError: Error | null } {
  if (!loaded) {
    try {
      // index.js itself honours SEGMEM_DISABLE_NATIVE=1 and reports why the addon did not load.
      loaded = createRequire(import.meta.url)('@segmem/native');
    } catch (err) {
      loaded = { native: null, loadError: err as Error };
    }
  }
  return loaded!;
}

let warned = false;

export interface MappedSegment {
  /** True when page rights guard the objects (the native addon is loaded). */
  readonly protectedPages: boolean;
  /** A Buffer over the object's bytes in the local segment (the same memory every time). */
  bytes(address: number, size: number, name: string): Buffer;
  setAccess(address: number, size: number, access: Access): void;
  /** Makes the object's local bytes zero again (a fresh copy, or one whose cache is dropped). */
  zero(address: number, size: number): void;
  /** The object no longer exists here: forget its name and free its memory. */
  forget(address: number, size: number): void;
  close(): void;
}

export function openMappedSegment(opts: {
  segmentBytes: number;
  pageBytes: number;
  cacheDir?: string;
}): MappedSegment {
  const { native, loadError } = loadNative();
  if (native && native.pageSize() === opts.pageBytes) return new NativeSegment(native, opts);
  if (!warned) {
    warned = true;
    const why = native
      ? `the OS page size ${native.pageSize()} differs from the segment's ${opts.pageBytes}`
      : `the native addon could not load (${loadError?.message ?? 'unknown reason'})`;
    process.emitWarning(`segmem: ${why}; objects are plain Buffers without page protection`, {
      code: 'SEGMEM_NO_PAGE_PROTECTION',
    });
  }
  return new BufferSegment();
}

class NativeSegment implements MappedSegment {
  readonly protectedPages = true;
  private readonly id: number;
  private readonly views = new Map<number, Buffer>(); // address -> Buffer over the object
  private readonly pageBytes: number;

  constructor(
    private readonly native: NativeBinding,
    opts: { segmentBytes: number; pageBytes: number; cacheDir?: string },
  ) {
    this.pageBytes = opts.pageBytes;
    native.installFaultHandler();
    const path = join(
      opts.cacheDir ?? tmpdir(),
      `segmem-${process.pid}-${randomBytes(6).toString('hex')}.segment`,
    );
    this.id = native.map(path, opts.segmentBytes);
    // The mapping keeps the file alive; unlinking now means nothing is left behind, even after a crash.
    unlinkSync(path);
  }

  bytes(address: number, size: number, name: string): Buffer {
    let view = this.views.get(address);
    if (!view || view.length !== size) {
      view = this.native.buffer(this.id, address, size);
      this.views.set(address, view);
      this.native.label(this.id, address, this.span(size), name);
    }
    return view;
  }

  setAccess(address: number, size: number, access: Access): void {
    this.native.protect(this.id, address, this.span(size), access === 'none' ? 0 : access === 'read' ? 1 : 2);
  }

  zero(address: number, size: number): void {
    this.native.discard(this.id, address, this.span(size));
  }

  forget(address: number, size: number): void {
    if (this.views.delete(address)) this.native.unlabel(this.id, address);
    this.native.protect(this.id, address, this.span(size), 0);
    this.native.discard(this.id, address, this.span(size));
  }

  close(): void {
    this.views.clear();
    this.native.close(this.id);
  }

  private span(size: number): number {
    return Math.ceil(size / this.pageBytes) * this.pageBytes;
  }
}

/** The local copy without the addon (also the simulator's: no page rights, no file). */
export class BufferSegment implements MappedSegment {
  readonly protectedPages = false;
  private readonly objects = new Map<number, Buffer>();

  bytes(address: number, size: number): Buffer {
    let buf = this.objects.get(address);
    if (!buf || buf.length !== size) {
      buf = Buffer.alloc(size);
      this.objects.set(address, buf);
    }
    return buf;
  }

  setAccess(): void {}

  zero(address: number): void {
    this.objects.get(address)?.fill(0);
  }

  forget(address: number): void {
    this.objects.delete(address);
  }

  close(): void {
    this.objects.clear();
  }
}

/** `mapped` for one group's segment: the sharded segment unmaps it, once, after every group closed. */
export function sharedMapping(mapped: MappedSegment): MappedSegment {
  return {
    get protectedPages() {
      return mapped.protectedPages;
    },
    bytes: (address, size, name) => mapped.bytes(address, size, name),
    setAccess: (address, size, access) => mapped.setAccess(address, size, access),
    zero: (address, size) => mapped.zero(address, size),
    forget: (address, size) => mapped.forget(address, size),
    close: () => {},
  };
}
