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

/** A growable byte array. */
class Bytes {
  buf: Buffer;
  length: number;

  constructor(from?: Buffer) {
    this.buf = from ? Buffer.from(from) : Buffer.alloc(0);
    this.length = this.buf.length;
  }

  view(): Buffer {
    return this.buf.subarray(0, this.length);
  }

  setLength(n: number): void {
    if (n > this.buf.length) {
      const grown = Buffer.alloc(Math.max(n, this.buf.length * 2));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    } else if (n > this.length) {
      this.buf.fill(0, this.length, n);
    }
    this.length = n;
  }

  write(position: number, src: Uint8Array): void {
    if (position + src.byteLength > this.length) this.setLength(position + src.byteLength);
    this.buf.set(src, position);
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
  /** The lowest offset changed since the last sync was called (Infinity: none). */
  dirtyFrom: number;
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
      node = { kind: 'file', data: new Bytes(), durable: new Bytes(), dirtyFrom: Infinity, pending: [] };
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
    let at = position;
    for (const b of buffers) {
      d.file.data.write(at, b);
      at += b.byteLength;
    }
    if (at > position) d.file.dirtyFrom = Math.min(d.file.dirtyFrom, position);
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
    const data = d.file.data;
    const n = Math.max(0, Math.min(length, data.length - position));
    if (n > 0) into.set(data.buf.subarray(position, position + n), offset);
    return n;
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
    file.dirtyFrom = Math.min(file.dirtyFrom, file.data.length, length);
    file.data.setLength(length);
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
    return Buffer.from(node.data.view());
  }

  async readdir(dir: string): Promise<string[]> {
    return [...this.dirAt(posix.resolve(dir)).children.keys()];
  }

  async stat(path: string): Promise<FileStat> {
    const p = posix.resolve(path);
    const node = this.lookup(p);
    if (!node) throw errno('ENOENT', `no such file or directory, stat '${p}'`);
    const size = node.kind === 'file' ? node.data.length : 4096;
    return { size, isDirectory: node.kind === 'dir', isFile: node.kind === 'file', allocatedBytes: size };
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
    if (byteOffset < node.data.length && node.data.buf[byteOffset] === node.durable.buf[byteOffset])
      node.data.buf[byteOffset]! ^= mask;
    node.durable.buf[byteOffset]! ^= mask;
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
    const from = file.dirtyFrom;
    const length = file.data.length;
    const bytes = from < length ? Buffer.from(file.data.buf.subarray(from, length)) : null;
    file.dirtyFrom = Infinity;
    return this.queueSync(file, () => {
      file.durable.setLength(length);
      if (bytes) file.durable.write(from, bytes);
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
    file.dirtyFrom = Infinity;
    const data = file.data.view();
    const durable = file.durable.view();
    if (data.equals(durable)) return;
    const fate = unsynced ?? this.prng.pick<UnsyncedFate>(['lost', 'kept', 'torn']);
    let result: Buffer;
    if (fate === 'lost') result = Buffer.from(durable);
    else if (fate === 'kept') result = Buffer.from(data);
    else {
      let firstDiff = 0;
      const common = Math.min(data.length, durable.length);
      while (firstDiff < common && data[firstDiff] === durable[firstDiff]) firstDiff++;
      const lo = Math.floor(firstDiff / SECTOR_BYTES);
      const hi = Math.ceil(Math.max(data.length, durable.length) / SECTOR_BYTES);
      const cut = this.prng.int(lo, hi) * SECTOR_BYTES;
      const length = cut >= data.length ? data.length : Math.max(durable.length, cut);
      result = Buffer.alloc(length);
      durable.copy(result, 0, 0, Math.min(durable.length, length));
      data.copy(result, 0, 0, Math.min(cut, data.length, length));
    }
    file.data = new Bytes(result);
    file.durable = new Bytes(result);
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
