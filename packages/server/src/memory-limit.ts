/**
 * The memory budget a server gets without `--max-memory` (node/budget.ts): a share of its cgroup's memory
 * limit, or of the machine's memory. Read once at start by `startServer`, outside a member's code, which
 * touches the disk only through its StorageFs.
 */
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { MIN_MAX_MEMORY_BYTES } from './node/budget.js';

/** Without `--max-memory`, the budget is this share of the cgroup's memory limit, or of the machine's memory. */
export const DEFAULT_MAX_MEMORY_SHARE = 0.75;
/** A cgroup "limit" at or above this is the kernel's way of saying none (v1 writes 2^63 rounded to a page). */
const NO_CGROUP_LIMIT = 2 ** 60;

/** Where the default budget came from, for the server's log. */
export interface DefaultBudget {
  limitBytes: number;
  source: string;
}

/**
 * The memory limit of this process's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`), or null when it
 * has none or it cannot be read.
 */
export function cgroupMemoryLimit(
  read: (path: string) => string = (p) => readFileSync(p, 'utf8'),
): { bytes: number; file: string } | null {
  let lines: string[];
  try {
    lines = read('/proc/self/cgroup').split('\n');
  } catch {
    return null;
  }
  const candidates: string[] = [];
  for (const line of lines) {
    const [, controllers, path] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (path === undefined) continue;
    if (controllers === '') {
      candidates.push(`/sys/fs/cgroup${path === '/' ? '' : path}/memory.max`);
    } else if (controllers!.split(',').includes('memory')) {
      candidates.push(`/sys/fs/cgroup/memory${path === '/' ? '' : path}/memory.limit_in_bytes`);
      // In a cgroup namespace the hierarchy is mounted at the process's own cgroup.
      candidates.push('/sys/fs/cgroup/memory/memory.limit_in_bytes');
    }
  }
  for (const file of candidates) {
    let text: string;
    try {
      text = read(file).trim();
    } catch {
      continue;
    }
    if (text === 'max') return null;
    const bytes = Number(text);
    if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes >= NO_CGROUP_LIMIT) return null;
    return { bytes, file };
  }
  return null;
}

/** The budget when none is given: 3/4 of the cgroup limit if there is one, else of the machine's memory. */
export function defaultMaxMemory(): DefaultBudget {
  const cgroup = cgroupMemoryLimit();
  const machine = totalmem();
  const base = cgroup && cgroup.bytes < machine ? cgroup.bytes : machine;
  const limitBytes = Math.max(MIN_MAX_MEMORY_BYTES, Math.floor(base * DEFAULT_MAX_MEMORY_SHARE));
  const source =
    cgroup && cgroup.bytes < machine ? `the cgroup limit in ${cgroup.file}` : "the machine's memory";
  return { limitBytes, source };
}
