/**
 * Small durable-file helpers shared by the storage layer.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/** fsyncs a directory, making the creation, removal or renaming of its entries durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Creates `dir` and any missing parents. With `sync`, each new directory's entry is made durable by
 * fsyncing its parent. Resolves with whether anything was created.
 */
export async function mkdirDurable(dir: string, sync = true): Promise<boolean> {
  const target = resolve(dir);
  const first = await fsp.mkdir(target, { recursive: true });
  if (first === undefined) return false;
  if (sync) {
    for (let d = target; ; d = dirname(d)) {
      await fsyncDir(dirname(d));
      if (d === resolve(first) || dirname(d) === d) break;
    }
  }
  return true;
}

/**
 * Replaces `file` atomically: the data goes to a temporary file in the same directory, which is fsynced,
 * renamed over `file`, and the directory is fsynced. A crash leaves either the old or the new content
 * (and possibly a stray `.<name>.tmp-*` file, which readers ignore).
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(file);
  const tmp = join(dir, `.${basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await fsp.open(tmp, 'wx', 0o644);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
  await handle.close();
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
  await fsyncDir(dir);
}

/** The `code` of a Node.js system error (`'ENOENT'`, ...), or undefined. */
export function errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** A short human-readable reason for an error, for messages. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
