/**
 * Scheduled consolidated snapshots (seed 003): every `intervalMs`, whichever member leads at that moment
 * acts as the coordinator and writes the whole cluster's content at one consistent point into a file of
 * `dir` (the format of `segmem snapshot --out`, see storage/consolidated.ts), then deletes all but the
 * `keep` newest. Followers skip the tick, so one file per interval is written cluster-wide while the
 * leadership is stable. A tick with nothing applied since the last file writes nothing.
 *
 * @module
 */
import { join } from 'node:path';
import type { Env, EnvTimer } from '@segmem/protocol';
import type { ConsolidatedExport } from '../storage/consolidated.js';
import { errorMessage } from '../storage/files.js';
import { mkdirDurable, nodeFs, type StorageFs, writeFileAtomic } from '../storage/fs.js';

/** `consolidated-<20-digit index>-<UTC time>.segsnap`: names sort in snapshot order. */
const FILE_NAME = /^consolidated-(\d{20})-\d{8}T\d{6}Z\.segsnap$/;

export function consolidatedFileName(index: number, createdAt: string): string {
  const stamp = createdAt.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `consolidated-${String(index).padStart(20, '0')}-${stamp}.segsnap`;
}

export interface ConsolidatedScheduleOptions {
  dir: string;
  intervalMs: number;
  /** How many files to keep (the newest); at least 1. */
  keep: number;
  /** Clock and timers. */
  env: Env;
  log?: (line: string) => void;
  /** @internal The file system `dir` is on (default: the real one). */
  fs?: StorageFs;
}

/** What the schedule needs of the node. */
export interface Coordinator {
  isLeader(): boolean;
  consolidate(): Promise<ConsolidatedExport>;
}

export class ConsolidatedSchedule {
  private timer: EnvTimer | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  /** Index of the newest file in `dir` (read at the first tick), so a restart does not rewrite it. */
  private lastIndex: number | null = null;
  private readonly fs: StorageFs;

  constructor(
    private readonly node: Coordinator,
    private readonly opts: ConsolidatedScheduleOptions,
  ) {
    this.fs = opts.fs ?? nodeFs;
  }

  start(): void {
    if (this.stopped || this.timer) return;
    this.timer = this.opts.env.setTimeout(() => {
      this.timer = null;
      this.running = this.tick()
        .then(() => {})
        .finally(() => {
          this.running = null;
          this.start();
        });
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  /** Stops the schedule; resolves once a file being written is done (or abandoned). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.opts.env.clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** One round: written (the file's path), skipped (null), or a logged failure (null). */
  async tick(): Promise<string | null> {
    if (this.stopped || !this.node.isLeader()) return null;
    try {
      await mkdirDurable(this.fs, this.opts.dir);
      const names = await this.files();
      this.lastIndex ??= names.length > 0 ? Number(FILE_NAME.exec(names[names.length - 1]!)![1]) : 0;
      const started = this.opts.env.now();
      const ex = await this.node.consolidate();
      let file: string;
      try {
        if (ex.index <= this.lastIndex) return null; // nothing new since the last file
        file = join(this.opts.dir, consolidatedFileName(ex.index, ex.createdAt));
        await writeFileAtomic(this.fs, file, ex.parts, 'consolidated');
      } finally {
        ex.release();
      }
      this.lastIndex = ex.index;
      this.opts.log?.(
        `consolidated snapshot at index ${ex.index} (term ${ex.term}): ${ex.bytes} bytes to ${file} in ${(this.opts.env.now() - started).toFixed(0)} ms`,
      );
      const all = await this.files();
      for (const name of all.slice(0, Math.max(0, all.length - this.opts.keep)))
        await this.fs.rm(join(this.opts.dir, name), 'consolidated.unlink');
      return file;
    } catch (err) {
      // The next tick tries again; the files already written stay as they are.
      this.opts.log?.(`consolidated snapshot into ${this.opts.dir} failed: ${errorMessage(err)}`);
      return null;
    }
  }

  /**
   * The snapshot files of `dir`, oldest first. Temp files a crash left behind (`.consolidated-*.tmp-*`)
   * are left alone: the directory may be shared by members, and one may be writing.
   */
  private async files(): Promise<string[]> {
    return (await this.fs.readdir(this.opts.dir)).filter((n) => FILE_NAME.test(n)).sort();
  }
}
