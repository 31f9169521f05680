/** The README's demo and the examples keep working: they are what a newcomer runs first. */
import { execFile } from 'node:child_process';
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';
import { connect } from '../src/index.js';
import { runNode, startServerProcess, tempDir } from './helpers.js';

const execFileAsync = promisify(execFile);

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

test('npm run demo: the counter program, the multi-process counter, contention, failover and log-writers demos all pass', async (t) => {
  // The demo alone uses about 25 s of CPU (its servers and clients beside): 71 s on a loaded 2-core machine.
  const { done } = runNode(resolve(root, 'examples/demo.mjs'), [], {
    timeoutMs: 170_000,
    env: { SEGMEM_SERVERS: '' },
  });
  const exit = await done;
  t.is(exit.code, 0, exit.stderr);
  t.regex(exit.stdout, /compteur = 1035/);
  t.regex(exit.stdout, /compteur = 2035 \(expected 2035\)/);
  t.regex(exit.stdout, /each alone: yes/);
  t.regex(exit.stdout, /failover: \d+ increments acknowledged, compteur = \d+: exact/);
  t.regex(exit.stdout, /log-writers: every record exactly once, each writer in order: yes/);
  t.regex(exit.stdout, /demo: all checks passed/);
});

/** The README's JavaScript blocks, in order: what a newcomer pastes into a file first. */
function readmeBlocks(): string[] {
  const readme = readFileSync(resolve(root, 'README.md'), 'utf8');
  return [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

/** Runs `code` as an ES module in `dir` (its cwd, so ./segmem-data lands there), importing the workspace packages. */
async function runModule(dir: string, code: string, env: Record<string, string> = {}) {
  const file = join(dir, 'example.mjs');
  writeFileSync(file, code);
  try {
    const { stdout } = await execFileAsync(process.execPath, [file], {
      cwd: dir,
      env: { ...process.env, SEGMEM_SERVERS: '', ...env },
      timeout: 30_000,
    });
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { code?: number; signal?: string; stdout: string; stderr: string };
    return { code: e.code ?? null, signal: e.signal, stdout: e.stdout, stderr: e.stderr };
  }
}

test("README's examples run as written: embedded, and the compat API embedded and against a server (and exits)", async (t) => {
  const blocks = readmeBlocks();
  t.is(blocks.length, 2, 'the Segment example and the compat example');
  const [segmentExample, compatExample] = blocks as [string, string];
  const dir = tempDir();
  symlinkSync(resolve(root, 'node_modules'), join(dir.path, 'node_modules'), 'dir');
  try {
    const first = await runModule(dir.path, segmentExample);
    t.is(first.code, 0, first.stderr);
    t.is(first.stdout, '1035 2\n', 'what its comment says, on a first run');

    const embedded = tempDir();
    symlinkSync(resolve(root, 'node_modules'), join(embedded.path, 'node_modules'), 'dir');
    const server = await startServerProcess({ dataDir: join(dir.path, 'server') });
    try {
      const local = await runModule(embedded.path, compatExample);
      t.is(local.code, 0, local.stderr);
      // Connected to a server, the program must still end by itself once it is done.
      const remote = await runModule(embedded.path, compatExample, { SEGMEM_SERVERS: server.address });
      t.is(remote.code, 0, `${remote.signal ?? ''} ${remote.stderr}`);
      const seg = await connect({ servers: [server.address] });
      t.is(await seg.read('compteur', (h) => h.bytes.readInt32LE(0)), 23 * 45);
      await seg.close();
    } finally {
      await server.stop();
      embedded.cleanup();
    }
  } finally {
    dir.cleanup();
  }
});
