/**
 * A cluster member reaches the disk only through its StorageFs (storage/fs.ts), so the simulator can run it
 * over a disk that crashes: no module a member loads (cluster.ts and everything it imports, followed
 * through relative imports) imports `node:fs` except the real implementation (storage/fs.ts, files.ts) and
 * the few files listed in ALLOW, each with its reason. An offender is reported as path:line.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const SRC = join(REPO, 'packages/server/src');
/** Where a member's code starts. */
const ENTRY = join(SRC, 'cluster.ts');

const ALLOW: { path: string; why: string }[] = [
  { path: 'packages/server/src/storage/fs.ts', why: 'the real StorageFs' },
  { path: 'packages/server/src/storage/files.ts', why: "the real StorageFs's primitives, with fault points" },
  {
    path: 'packages/server/src/storage/faults.ts',
    why: 'the fault harness writes its trace to stderr (fd 2), not to a file of the data directory',
  },
  {
    path: 'packages/server/src/config.ts',
    why: 'loadConfigFile reads the file the command line names; a member uses only the parsers',
  },
];

const FS_IMPORT = /(?:from\s+|import\s*\(\s*|import\s+|require\s*\(\s*)['"](?:node:)?fs(?:\/promises)?['"]/;
const RELATIVE_IMPORT = /(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g;

/** Every source file `entry` loads through relative imports, itself included. */
function moduleGraph(entry: string): string[] {
  const seen = new Set<string>();
  const stack = [entry];
  while (stack.length > 0) {
    const file = stack.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(RELATIVE_IMPORT)) {
      const target = resolve(dirname(file), m[1]!.replace(/\.js$/, '.ts'));
      if (existsSync(target)) stack.push(target);
    }
  }
  return [...seen].sort();
}

function offenders(files: string[]): string[] {
  const allowed = new Set(ALLOW.map((a) => a.path));
  const out: string[] = [];
  for (const file of files) {
    const rel = relative(REPO, file);
    if (allowed.has(rel)) continue;
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (FS_IMPORT.test(line)) out.push(`${rel}:${i + 1}: ${line.trim()}`);
      });
  }
  return out;
}

test("no module a cluster member loads imports node:fs: the disk is the member's StorageFs", (t) => {
  const files = moduleGraph(ENTRY);
  // The graph is the member's: its storage, log and node layers are in it.
  for (const part of ['storage/wal.ts', 'storage/datadir.ts', 'storage/raft-storage.ts', 'node/node.ts'])
    t.true(files.includes(join(SRC, part)), `${part} is on the member's path`);
  t.deepEqual(offenders(files), [], 'take a StorageFs (storage/fs.ts) instead');
});

test('the scan finds an import of node:fs and names its line', (t) => {
  // Every module of src/cli reads real files (entry points): the scan must see them when asked to.
  const cli = join(SRC, 'cli/up.ts');
  const found = offenders([cli]);
  t.true(found.length > 0);
  t.regex(found[0]!, /^packages\/server\/src\/cli\/up\.ts:\d+: import .* from 'node:fs';$/);
});

test('every allow-list entry names a file on the member path that still imports node:fs', (t) => {
  const files = moduleGraph(ENTRY);
  for (const a of ALLOW) {
    const file = join(REPO, a.path);
    t.true(files.includes(file), `${a.path} is not on the member's path: drop it`);
    t.true(FS_IMPORT.test(readFileSync(file, 'utf8')), `${a.path} no longer imports node:fs: drop it`);
  }
});
