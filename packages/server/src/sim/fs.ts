/**
 * A simulated disk with a page cache, for cluster members run under simulation ({@link StorageFs}): a
 * write lands in the cache at once; an fdatasync or fsync completes after 0..fsyncMaxMs of simulated time
 * and only then makes the file's bytes (as they were when it was called) durable; creating, renaming or
 * removing a directory entry becomes durable with the next fsync of its directory. `crash(root)` is the
 * death of the process using the files under `root`: what was not durable is lost, kept or torn, its
 * descriptors and locks go, and its pending syncs never complete. Faults the simulator switches on: a bit
 * flipped on the medium, a failed read, a full disk, an fdatasync that does nothing.
 *
 * Deterministic: every delay and draw comes from the Env and the Prng it is given.
 *
 * @module
 */
import { posix } from 'node:path';
import { type Env, SegmemError } from '@segmem/protocol';
import { type DirLock, dirInUse, type FileStat, type OpenFlags, type StorageFs } from '../storage/fs.js';
import type { Prng } from './prng.js';

const SECTOR_BYTES = 512;

/** What happens to a file's bytes that were not durable when its process crashed. */
export type UnsyncedFate = 'lost' | 'kept' | 'torn';

/** Files are stored in chunks of this many bytes (a multiple of the sector); a missing chunk is a hole. */
const CHUNK_BYTES = 64 * 1024;

/** A sparse byte array: a snapshot's page image is gigabytes long and mostly holes. */
class Bytes {
  /** Chunk index -> its bytes. Bytes past `length` in a chunk are zero. */
  readonly chunks = new Map<number, Buffer>();
  length = 0;

  clone(): Bytes {
    const c = new Bytes();
    for (const [i, chunk] of this.chunks) c.chunks.set(i, Buffer.from(chunk));
    c.length = this.length;
    return c;
  }

  /** Copies up to `n` bytes at `position` into `into` at `offset`; returns how many (0 past the end). */
  read(position: number, into: Uint8Array, offset: number, n: number): number {
    const count = Math.max(0, Math.min(n, this.length - position));
    for (let done = 0; done < count; ) {
      const at = position + done;
      const off = at % CHUNK_BYTES;
      const step = Math.min(CHUNK_BYTES - off, count - done);
      const chunk = this.chunks.get(Math.floor(at / CHUNK_BYTES));
      if (chunk) into.set(chunk.subarray(off, off + step), offset + done);
      else into.fill(0, offset + done, offset + done + step);
      done += step;
    }
    return count;
  }

  toBuffer(): Buffer {
    const b = Buffer.alloc(this.length);
    this.read(0, b, 0, this.length);
    return b;
  }

  /** Writes `src` at `position`; calls `touched` with each chunk changed. */
  write(position: number, src: Uint8Array, touched?: (chunk: number) => void): void {
    for (let done = 0; done < src.byteLength; ) {
      const at = position + done;
      const index = Math.floor(at / CHUNK_BYTES);
      const off = at % CHUNK_BYTES;
      const step = Math.min(CHUNK_BYTES - off, src.byteLength - done);
      let chunk = this.chunks.get(index);
      if (!chunk) {
        chunk = Buffer.alloc(CHUNK_BYTES);
        this.chunks.set(index, chunk);
      }
      chunk.set(src.subarray(done, done + step), off);
      touched?.(index);
      done += step;
    }
    this.length = Math.max(this.length, position + src.byteLength);
  }

  /** Sets the length: a longer file reads zeros past the old end (a hole). Calls `touched` as `write`. */
  setLength(n: number, touched?: (chunk: number) => void): void {
    if (n < this.length) {
      for (const [index, chunk] of this.chunks) {
        const start = index * CHUNK_BYTES;
        if (start >= n) this.chunks.delete(index);
        else if (start + CHUNK_BYTES > n) chunk.fill(0, n - start);
        else continue;
        touched?.(index);
      }
    }
    this.length = n;
  }

  byteAt(i: number): number {
    return this.chunks.get(Math.floor(i / CHUNK_BYTES))?.[i % CHUNK_BYTES] ?? 0;
  }

  setByteAt(i: number, value: number): void {
    this.write(i, Uint8Array.of(value));
  }

  /** The chunks whose bytes differ between `a` and `b` (a hole equals zeros), in order. */
  static differing(a: Bytes, b: Bytes): number[] {
    const out: number[] = [];
    for (const index of new Set([...a.chunks.keys(), ...b.chunks.keys()])) {
      const x = a.chunks.get(index);
      const y = b.chunks.get(index);
      const same = x && y ? x.equals(y) : (x ?? y)!.every((v) => v === 0);
      if (!same) out.push(index);
    }
    return out.sort((p, q) => p - q);
  }
}

/** A sync called and not yet completed: it applies in call order, after the ones before it on its node. */
interface PendingSync {
  done: boolean;
  cancelled: boolean;
  apply: () => void;
  resolve: () => void;
}

interface SimFile {
  kind: 'file';
  /** The bytes as the page cache holds them: what reads see. */
  data: Bytes;
  /** The bytes on the medium: what survives a crash. */
  durable: Bytes;
  /** The chunks changed since the last sync was called. */
  dirty: Set<number>;
  pending: PendingSync[];
}

interface SimDir {
  kind: 'dir';
  children: Map<string, SimNode>;
  /** The entries as the medium holds them. */
  durable: Map<string, SimNode>;
  pending: PendingSync[];
}

type SimNode = SimFile | SimDir;

interface Descriptor {
  file: SimFile;
  path: string;
  writable: boolean;
}

function errno(code: string, message: string): Error {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

function newDir(): SimDir {
  return { kind: 'dir', children: new Map(), durable: new Map(), pending: [] };
}

function under(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith('/') ? root : `${root}/`);
}

export interface SimFsOptions {
  /** An fdatasync, fsync or directory fsync takes a uniform 0..fsyncMaxMs of simulated time. */
  fsyncMaxMs: number;
}

export class SimFs implements StorageFs {
  private readonly root: SimDir = newDir();
  private readonly descriptors = new Map<number, Descriptor>();
  private nextFd = 3;
  /** Locked directory -> a holder the error names. */
  private readonly locks = new Map<string, { pid: number }>();
  private nextPid = 1000;
  private readonly failReads: string[] = [];
  private readonly skipSyncs: string[] = [];
  /** While set, writes and file creations fail with ENOSPC. */
  full = false;
  /** Syncs (file and directory) completed. */
  syncs = 0;

  constructor(
    private readonly env: Env,
    private readonly prng: Prng,
    private readonly opts: SimFsOptions,
  ) {
    this.root.durable = this.root.children;
  }

  // --- StorageFs ---

  async open(path: string, flags: OpenFlags): Promise<number> {
    const p = posix.resolve(path);
    let node = this.lookup(p);
    if (flags === 'wx') {
      if (node) throw errno('EEXIST', `file already exists, open '${p}'`);
      const parent = this.parentDir(p);
      if (this.full) throw errno('ENOSPC', `no space left on device, open '${p}'`);
      node = { kind: 'file', data: new Bytes(), durable: new Bytes(), dirty: new Set(), pending: [] };
      parent.children.set(posix.basename(p), node);
    } else if (!node) throw errno('ENOENT', `no such file or directory, open '${p}'`);
    if (node.kind !== 'file') throw errno('EISDIR', `illegal operation on a directory, open '${p}'`);
    const fd = this.nextFd++;
    this.descriptors.set(fd, { file: node, path: p, writable: flags !== 'r' });
    return fd;
  }

  async writev(fd: number, buffers: Uint8Array[], position: number): Promise<number> {
    const d = this.descriptor(fd);
    if (!d.writable) throw errno('EBADF', `bad file descriptor ${fd} (read only)`);
    if (this.full) throw errno('ENOSPC', `no space left on device, write '${d.path}'`);
    const file = d.file;
    let at = position;
    for (const b of buffers) {
      file.data.write(at, b, (chunk) => file.dirty.add(chunk));
      at += b.byteLength;
    }
    return at - position;
  }

  async read(
    fd: number,
    into: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<number> {
    const d = this.descriptor(fd);
    this.maybeFailRead(d.path);
    return d.file.data.read(position, into, offset, length);
  }

  fdatasync(fd: number): Promise<void> {
    return this.syncFile(fd, true);
  }

  fsync(fd: number): Promise<void> {
    return this.syncFile(fd, false);
  }

  async ftruncate(fd: number, length: number): Promise<void> {
    const d = this.descriptor(fd);
    if (!d.writable) throw errno('EBADF', `bad file descriptor ${fd} (read only)`);
    const file = d.file;
    file.data.setLength(length, (chunk) => file.dirty.add(chunk));
  }

  async close(fd: number): Promise<void> {
    this.descriptor(fd);
    this.descriptors.delete(fd);
  }

  async readFile(path: string): Promise<Buffer> {
    const p = posix.resolve(path);
    const node = this.lookup(p);
    if (!node) throw errno('ENOENT', `no such file or directory, open '${p}'`);
    if (node.kind !== 'file') throw errno('EISDIR', `illegal operation on a directory, read '${p}'`);
    this.maybeFailRead(p);
    return node.data.toBuffer();
  }

  async readdir(dir: string): Promise<string[]> {
    return [...this.dirAt(posix.resolve(dir)).children.keys()];
  }

  async stat(path: string): Promise<FileStat> {
    const p = posix.resolve(path);
    const node = this.lookup(p);
    if (!node) throw errno('ENOENT', `no such file or directory, stat '${p}'`);
    if (node.kind === 'dir') return { size: 4096, isDirectory: true, isFile: false, allocatedBytes: 4096 };
    const size = node.data.length;
    return { size, isDirectory: false, isFile: true, allocatedBytes: node.data.chunks.size * CHUNK_BYTES };
  }

  async mkdir(dir: string): Promise<string | undefined> {
    const p = posix.resolve(dir);
    let at = this.root;
    let first: string | undefined;
    let path = '';
    const names = p.split('/').filter(Boolean);
    for (const [i, name] of names.entries()) {
      path += `/${name}`;
      const next = at.children.get(name);
      if (next?.kind === 'file') {
        if (i === names.length - 1) throw errno('EEXIST', `file already exists, mkdir '${p}'`);
        throw errno('ENOTDIR', `not a directory, mkdir '${p}'`);
      }
      if (next) {
        at = next;
        continue;
      }
      if (this.full) throw errno('ENOSPC', `no space left on device, mkdir '${p}'`);
      const created = newDir();
      at.children.set(name, created);
      first ??= path;
      at = created;
    }
    return first;
  }

  async rename(from: string, to: string): Promise<void> {
    const f = posix.resolve(from);
    const t = posix.resolve(to);
    const node = this.lookup(f);
    if (!node) throw errno('ENOENT', `no such file or directory, rename '${f}' -> '${t}'`);
    const target = this.parentDir(t);
    if (this.lookup(t)?.kind === 'dir')
      throw errno('EISDIR', `illegal operation on a directory, rename '${t}'`);
    this.parentDir(f).children.delete(posix.basename(f));
    target.children.set(posix.basename(t), node);
  }

  async rm(path: string): Promise<void> {
    const p = posix.resolve(path);
    const node = this.lookup(p);
    if (!node) return;
    if (node.kind === 'dir') throw errno('EISDIR', `is a directory, rm '${p}'`);
    this.parentDir(p).children.delete(posix.basename(p));
  }

  fsyncDir(dir: string): Promise<void> {
    let node: SimDir;
    try {
      node = this.dirAt(posix.resolve(dir));
    } catch (err) {
      return Promise.reject(err);
    }
    const entries = new Map(node.children);
    return this.queueSync(node, () => {
      node.durable = entries;
    });
  }

  async cloneFile(from: string, to: string): Promise<void> {
    throw errno('ENOTSUP', `operation not supported on the simulated disk, copyfile '${from}' -> '${to}'`);
  }

  async realpath(path: string): Promise<string> {
    const p = posix.resolve(path);
    if (!this.lookup(p)) throw errno('ENOENT', `no such file or directory, realpath '${p}'`);
    return p;
  }

  async lock(dir: string): Promise<DirLock> {
    const key = posix.resolve(dir);
    const held = this.locks.get(key);
    if (held) throw dirInUse(key, { pid: held.pid, hostname: 'simulated' });
    const mine = { pid: this.nextPid++ };
    this.locks.set(key, mine);
    return {
      stale: undefined,
      release: async () => {
        if (this.locks.get(key) === mine) this.locks.delete(key);
      },
    };
  }

  tempSuffix(): string {
    return `1-${this.prng.u32().toString(16).padStart(8, '0')}`;
  }

  // --- what the simulator does to the disk ---

  /**
   * The process using the files under `root` dies. Each file's bytes that were not durable are lost, kept
   * or torn (kept up to a random sector boundary), drawn per file unless `unsynced` says which; directory
   * entries not made durable revert; its descriptors close, its locks are released, and its pending syncs
   * never complete. (The caller kills the process's Env, so none of its code runs on; a continuation already
   * queued that uses a descriptor meets EBADF.)
   */
  crash(root: string, unsynced?: UnsyncedFate): void {
    const r = posix.resolve(root);
    for (const [fd, d] of this.descriptors) if (under(d.path, r)) this.descriptors.delete(fd);
    for (const key of [...this.locks.keys()]) if (under(key, r)) this.locks.delete(key);
    const node = this.lookup(r);
    if (!node) return;
    if (node.kind === 'file') this.crashFile(node, unsynced);
    else this.crashDir(node, unsynced);
  }

  /** Flips one bit of the byte at `byteOffset` of `path`'s durable bytes (damage on the medium). */
  flipBit(path: string, byteOffset: number, bit = 0): void {
    const p = posix.resolve(path);
    const node = this.lookup(p);
    if (node?.kind !== 'file') throw errno('ENOENT', `no such file, flipBit '${p}'`);
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset >= node.durable.length)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `byte ${byteOffset} is not among the ${node.durable.length} durable bytes of ${p}`,
      );
    const mask = 1 << (bit & 7);
    // The cache holds the same byte unless it was rewritten since: it reads the medium again.
    const was = node.durable.byteAt(byteOffset);
    if (byteOffset < node.data.length && node.data.byteAt(byteOffset) === was)
      node.data.setByteAt(byteOffset, was ^ mask);
    node.durable.setByteAt(byteOffset, was ^ mask);
  }

  /** The next read of a file under `pathPrefix` fails with EIO. */
  failNextRead(pathPrefix: string): void {
    this.failReads.push(posix.resolve(pathPrefix));
  }

  /** The next fdatasync of a file under `pathPrefix` resolves as usual but makes nothing durable. */
  skipFsync(pathPrefix: string): void {
    this.skipSyncs.push(posix.resolve(pathPrefix));
  }

  /** The durable bytes of `path` (undefined: no such file), for a simulator choosing where to flip bits. */
  durableBytes(path: string): number | undefined {
    const node = this.lookup(posix.resolve(path));
    return node?.kind === 'file' ? node.durable.length : undefined;
  }

  // --- internals ---

  private syncFile(fd: number, data: boolean): Promise<void> {
    let d: Descriptor;
    try {
      d = this.descriptor(fd);
    } catch (err) {
      return Promise.reject(err);
    }
    const file = d.file;
    const skip = data ? this.takePrefix(this.skipSyncs, d.path) : false;
    // A skipped sync takes nothing to the medium: its bytes stay for the next one to sync.
    if (skip) return this.queueSync(file, () => {});
    const length = file.data.length;
    const chunks = [...file.dirty].map((i) => {
      const chunk = file.data.chunks.get(i);
      return [i, chunk ? Buffer.from(chunk) : null] as const;
    });
    file.dirty.clear();
    return this.queueSync(file, () => {
      const durable = file.durable;
      durable.setLength(length);
      for (const [i, chunk] of chunks) {
        if (chunk) durable.chunks.set(i, chunk);
        else durable.chunks.delete(i);
      }
    });
  }

  private queueSync(node: SimNode, apply: () => void): Promise<void> {
    return new Promise((resolve) => {
      const sync: PendingSync = { done: false, cancelled: false, apply, resolve };
      node.pending.push(sync);
      this.env.setTimeout(
        () => {
          sync.done = true;
          while (node.pending[0]?.done) {
            const s = node.pending.shift()!;
            if (s.cancelled) continue;
            s.apply();
            this.syncs++;
            s.resolve();
          }
        },
        this.prng.int(0, this.opts.fsyncMaxMs),
      );
    });
  }

  private crashDir(dir: SimDir, unsynced: UnsyncedFate | undefined): void {
    this.cancelPending(dir);
    dir.children = new Map(dir.durable);
    for (const child of dir.children.values()) {
      if (child.kind === 'dir') this.crashDir(child, unsynced);
      else this.crashFile(child, unsynced);
    }
  }

  private crashFile(file: SimFile, unsynced: UnsyncedFate | undefined): void {
    this.cancelPending(file);
    file.dirty.clear();
    const { data, durable } = file;
    const differing = Bytes.differing(data, durable);
    if (differing.length === 0 && data.length === durable.length) return;
    const fate = unsynced ?? this.prng.pick<UnsyncedFate>(['lost', 'kept', 'torn']);
    let result: Bytes;
    if (fate === 'lost') result = durable.clone();
    else if (fate === 'kept') result = data.clone();
    else {
      // The new bytes reach the medium up to a sector boundary at or after the first one that differs.
      let firstDiff = Math.min(data.length, durable.length);
      const first = differing[0];
      if (first !== undefined) {
        let at = first * CHUNK_BYTES;
        while (data.byteAt(at) === durable.byteAt(at)) at++;
        firstDiff = Math.min(firstDiff, at);
      }
      const lo = Math.floor(firstDiff / SECTOR_BYTES);
      const hi = Math.ceil(Math.max(data.length, durable.length) / SECTOR_BYTES);
      const cut = this.prng.int(lo, hi) * SECTOR_BYTES;
      result = durable.clone();
      for (const i of differing) {
        const start = i * CHUNK_BYTES;
        if (start >= cut) break;
        const end = Math.min(cut, start + CHUNK_BYTES);
        const part = Buffer.alloc(end - start);
        data.read(start, part, 0, end - start);
        result.write(start, part);
      }
      result.setLength(cut >= data.length ? data.length : Math.max(durable.length, cut));
    }
    file.data = result;
    file.durable = result.clone();
  }

  private cancelPending(node: SimNode): void {
    for (const s of node.pending) s.cancelled = true;
    node.pending = [];
  }

  private takePrefix(list: string[], path: string): boolean {
    const i = list.findIndex((prefix) => under(path, prefix));
    if (i < 0) return false;
    list.splice(i, 1);
    return true;
  }

  private maybeFailRead(path: string): void {
    if (this.takePrefix(this.failReads, path)) throw errno('EIO', `i/o error, read '${path}'`);
  }

  private descriptor(fd: number): Descriptor {
    const d = this.descriptors.get(fd);
    if (!d) throw errno('EBADF', `bad file descriptor ${fd}`);
    return d;
  }

  private lookup(path: string): SimNode | undefined {
    let at: SimNode = this.root;
    for (const name of path.split('/').filter(Boolean)) {
      if (at.kind !== 'dir') return undefined;
      const next: SimNode | undefined = at.children.get(name);
      if (!next) return undefined;
      at = next;
    }
    return at;
  }

  private dirAt(path: string): SimDir {
    const node = this.lookup(path);
    if (!node) throw errno('ENOENT', `no such file or directory, scandir '${path}'`);
    if (node.kind !== 'dir') throw errno('ENOTDIR', `not a directory, scandir '${path}'`);
    return node;
  }

  private parentDir(path: string): SimDir {
    const parent = this.lookup(posix.dirname(path));
    if (!parent) throw errno('ENOENT', `no such file or directory '${path}'`);
    if (parent.kind !== 'dir') throw errno('ENOTDIR', `not a directory '${path}'`);
    return parent;
  }
}
