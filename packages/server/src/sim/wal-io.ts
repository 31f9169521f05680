/**
 * The WAL's file operations (storage/wal.ts's `WalIo` seam) in memory, for a member run under simulation:
 * a write lands at once; an fdatasync completes after a delay of simulated time drawn from the Env, and
 * only then counts the file's bytes as synced (`syncedBytes`, kept for the crashes to come: what a crash
 * would keep). Recovery still reads the real directory, so such a member starts empty.
 */
import type { Env } from '@segmem/protocol';
import type { VoteFileIo, VoteFileRead, VoteState } from '../storage/vote-file.js';
import type { WalIo } from '../storage/wal.js';

interface SimFile {
  bytes: Buffer;
  /** Bytes written (the file's size). */
  length: number;
  /** Bytes covered by a completed fdatasync. */
  syncedBytes: number;
}

function errno(code: string, message: string): Error {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

export class SimWalIo implements WalIo {
  readonly files = new Map<string, SimFile>();
  private readonly descriptors = new Map<number, SimFile>();
  private nextFd = 3;
  /** fdatasyncs completed. */
  syncs = 0;

  /** `fsyncMaxMs`: an fdatasync takes a uniform 0..fsyncMaxMs of simulated time. */
  constructor(
    private readonly env: Env,
    private readonly fsyncMaxMs: number,
  ) {}

  // Own properties, not methods: the WAL copies the seam's functions out of the object it is given.
  readonly open = async (path: string, flags: 'wx' | 'r+'): Promise<number> => {
    let file = this.files.get(path);
    if (flags === 'wx') {
      if (file) throw errno('EEXIST', `file already exists, open '${path}'`);
      file = { bytes: Buffer.alloc(0), length: 0, syncedBytes: 0 };
      this.files.set(path, file);
    } else if (!file) throw errno('ENOENT', `no such file, open '${path}'`);
    const fd = this.nextFd++;
    this.descriptors.set(fd, file);
    return fd;
  };

  readonly writev = async (fd: number, buffers: Uint8Array[], position: number): Promise<number> => {
    const file = this.file(fd);
    let total = 0;
    for (const b of buffers) total += b.byteLength;
    const end = position + total;
    if (end > file.bytes.length) {
      const grown = Buffer.alloc(Math.max(end, file.bytes.length * 2));
      file.bytes.copy(grown, 0, 0, file.length);
      file.bytes = grown;
    }
    let at = position;
    for (const b of buffers) {
      file.bytes.set(b, at);
      at += b.byteLength;
    }
    file.length = Math.max(file.length, end);
    return total;
  };

  readonly fdatasync = (fd: number): Promise<void> => {
    const file = this.file(fd);
    const upTo = file.length;
    const delayMs = Math.floor(this.env.random() * (this.fsyncMaxMs + 1));
    return new Promise((resolve) => {
      this.env.setTimeout(() => {
        file.syncedBytes = Math.max(file.syncedBytes, upTo);
        this.syncs++;
        resolve();
      }, delayMs);
    });
  };

  readonly close = async (fd: number): Promise<void> => {
    this.file(fd);
    this.descriptors.delete(fd);
  };

  readonly fsyncDir = async (_dir: string): Promise<void> => {};

  private file(fd: number): SimFile {
    const file = this.descriptors.get(fd);
    if (!file) throw errno('EBADF', `bad file descriptor ${fd}`);
    return file;
  }
}

/**
 * The vote file (storage/vote-file.ts) in memory. A write is durable at once: it resolves on the same
 * turn, so opening a member (which writes it) needs no simulated time to pass.
 */
export class SimVoteIo implements VoteFileIo {
  private readonly files = new Map<string, VoteState>();

  readonly read = async (dir: string): Promise<VoteFileRead> => {
    const state = this.files.get(dir);
    return state ? { state: { ...state } } : { missing: true };
  };

  readonly write = async (dir: string, state: VoteState): Promise<void> => {
    this.files.set(dir, { ...state });
  };
}
