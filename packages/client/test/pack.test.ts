/**
 * What a user gets from the published packages: `npm pack` of every workspace package, installed with
 * `npm install <tarballs>` into a fresh app outside the repository by an npm that finds no compiler, make
 * or python on its PATH. The app must run embedded and against the installed `segmem-server`, with the
 * prebuilt native addon loaded (page protection on) and nothing compiled at install time.
 */
import { execFile, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  lstatSync,
  readdirSync,
  readFileSync,
  realpathSync,
  symlinkSync,
} from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { arch, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';
import { fixturesDir, runNode, startServerProcess, tempDir } from './helpers.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const packages = ['@segmem/protocol', '@segmem/native', '@segmem/server', '@segmem/client'];
const compilerTools = ['cc', 'c++', 'gcc', 'g++', 'clang', 'clang++', 'make', 'python3', 'python'];
const execFileAsync = promisify(execFile);

interface PackResult {
  name: string;
  filename: string;
  size: number;
  unpackedSize: number;
  files: { path: string }[];
}

/** npm's own CLI script: the one running this test under `npm test`, else the `npm` on PATH. */
function npmCli(): string {
  if (process.env.npm_execpath && /npm-cli\.js$/.test(process.env.npm_execpath))
    return process.env.npm_execpath;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'npm'))) return realpathSync(join(dir, 'npm'));
  }
  throw new Error('npm not found on PATH');
}

/**
 * The environment of a user's shell, not of the `npm test` running this file: npm's variables
 * (npm_config_local_prefix would point npm back at the repository) are dropped.
 */
function userEnv(path: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^npm_/i.test(k) && k !== 'INIT_CWD' && k !== 'SEGMEM_DISABLE_NATIVE') env[k] = v;
  }
  env.PATH = path;
  return env;
}

/** Bytes of the files under `dir`: as listed (apparent) and as allocated on disk (what `du` counts). */
function treeBytes(dir: string): { apparent: number; disk: number } {
  let apparent = 0;
  let disk = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const st = lstatSync(path);
    disk += st.blocks * 512;
    if (entry.isDirectory()) {
      const sub = treeBytes(path);
      apparent += sub.apparent;
      disk += sub.disk;
    } else apparent += st.size;
  }
  return { apparent, disk };
}

const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(2)} MB`;

test('the packed packages install without a compiler into a fresh app, which runs embedded and against the installed segmem-server with the prebuilt addon', async (t) => {
  const hostPrebuilds = join(repoRoot, 'packages/native/prebuilds', `linux-${arch()}`);
  if (!existsSync(hostPrebuilds) && process.env.SEGMEM_ALLOW_NO_NATIVE === '1') {
    t.pass(`no prebuild in ${hostPrebuilds} (no toolchain at npm ci), allowed by SEGMEM_ALLOW_NO_NATIVE`);
    return;
  }
  const work = tempDir('segmem-pack-', tmpdir());
  const npm = npmCli();
  try {
    // 1. Pack, as a release would: prepack builds what dist/ and prebuilds/ lack.
    const tarballs = join(work.path, 'tarballs');
    await mkdir(tarballs);
    const packStarted = Date.now();
    const packed = await execFileAsync(
      process.execPath,
      [npm, 'pack', ...packages.flatMap((p) => ['-w', p]), '--pack-destination', tarballs, '--json'],
      { cwd: repoRoot, env: userEnv(process.env.PATH ?? ''), timeout: 120_000, maxBuffer: 64 << 20 },
    );
    const packMs = Date.now() - packStarted;
    // Lifecycle scripts may print before npm's JSON.
    const results = JSON.parse(packed.stdout.slice(packed.stdout.search(/^\[/m))) as PackResult[];
    t.deepEqual(results.map((r) => r.name).sort(), [...packages].sort());
    const byName = new Map(results.map((r) => [r.name, r]));
    for (const r of results) {
      const paths = r.files.map((f) => f.path);
      t.false(
        paths.some(
          (p) => /(^|\/)test\//.test(p) || (/\.ts$/.test(p) && !/\.d\.ts$/.test(p)) || /\.map$/.test(p),
        ),
        `${r.name} ships no tests, TypeScript sources or source maps: ${paths.join(' ')}`,
      );
    }
    const paths = (name: string) => byName.get(name)!.files.map((f) => f.path);
    for (const name of packages) {
      t.true(paths(name).includes('LICENSE'), `${name} ships the license`);
      t.true(paths(name).includes('README.md'), `${name} ships a README`);
    }
    t.true(paths('@segmem/client').includes('dist/src/index.js'));
    t.true(paths('@segmem/client').includes('dist/src/compat.d.ts'));
    t.false(
      paths('@segmem/client').some((p) => /\.(node|gyp|cc)$/.test(p)),
      'the client carries no copy of the addon',
    );
    t.true(paths('@segmem/server').includes('bin/segmem-server.mjs'));
    t.true(paths('@segmem/server').includes('dist/src/cli/server-main.js'));
    t.true(
      paths('@segmem/native').some((p) => p.startsWith(`prebuilds/linux-${arch()}/`) && p.endsWith('.node')),
      `@segmem/native ships a linux-${arch()} prebuild: ${paths('@segmem/native').join(' ')}`,
    );
    t.false(paths('@segmem/native').some((p) => p.startsWith('build/')));

    // 2. A fresh app outside the repository, and a PATH with node and npm only.
    const bin = join(work.path, 'bin');
    const app = join(work.path, 'app');
    await mkdir(bin);
    await mkdir(app);
    symlinkSync(process.execPath, join(bin, 'node'));
    symlinkSync(npm, join(bin, 'npm'));
    const env = userEnv(bin);
    for (const tool of compilerTools) {
      const r = spawnSync(tool, ['--version'], { env, stdio: 'ignore' });
      t.is(
        (r.error as NodeJS.ErrnoException | undefined)?.code,
        'ENOENT',
        `${tool} is not on the install's PATH`,
      );
    }
    await writeFile(
      join(app, 'package.json'),
      JSON.stringify({ name: 'outside-app', private: true, type: 'module' }),
    );
    const installStarted = Date.now();
    const installed = await execFileAsync(
      join(bin, 'npm'),
      [
        'install',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        ...results.map((r) => join(tarballs, r.filename)),
      ],
      { cwd: app, env, timeout: 120_000, maxBuffer: 64 << 20 },
    );
    const installMs = Date.now() - installStarted;
    const modules = join(app, 'node_modules');
    for (const name of packages) {
      const pkg = JSON.parse(readFileSync(join(modules, name, 'package.json'), 'utf8')) as {
        exports: Record<string, string | { types: string; default: string }>;
      };
      for (const [sub, target] of Object.entries(pkg.exports)) {
        for (const file of typeof target === 'string' ? [target] : [target.types, target.default]) {
          // A subpath pattern (the internal/* of the simulator) names a folder of files: the folder is installed.
          const path = file.includes('*') ? file.slice(0, file.indexOf('*')) : file;
          t.true(existsSync(join(modules, name, path)), `${name} export ${sub}: ${file} is installed`);
        }
      }
    }
    t.false(existsSync(join(modules, '@segmem/native/build')), 'nothing was compiled at install time');

    // 3. The app, embedded. SEGMEM_DISABLE_NATIVE from the caller's shell would hide what is checked here.
    const appEnv = { PATH: bin, SEGMEM_DISABLE_NATIVE: '' };
    copyFileSync(join(fixturesDir, 'packed-app.mjs'), join(app, 'app.mjs'));
    const embedded = await runNode(join(app, 'app.mjs'), ['embedded', join(work.path, 'embedded')], {
      env: appEnv,
    }).done;
    t.is(embedded.code, 0, embedded.stderr);
    const embeddedResult = JSON.parse(embedded.stdout) as {
      counter: number;
      protectedPages: boolean;
      addon: string;
    };
    t.is(embeddedResult.counter, 2);
    t.true(
      embeddedResult.protectedPages,
      `the addon loaded (page protection on); stderr: ${embedded.stderr}`,
    );
    t.true(
      embeddedResult.addon.startsWith(
        join(realpathSync(modules), '@segmem/native/prebuilds', `linux-${arch()}`),
      ),
      `the prebuilt binary is the one loaded: ${embeddedResult.addon}`,
    );

    // 4. The app against the installed server, started as a user would from the app directory.
    const server = await startServerProcess({
      bin: join(modules, '.bin/segmem-server'),
      dataDir: join(work.path, 'server-data'),
      env: appEnv,
    });
    try {
      const remote = await runNode(join(app, 'app.mjs'), ['connect', server.address], { env: appEnv }).done;
      t.is(remote.code, 0, remote.stderr);
      const remoteResult = JSON.parse(remote.stdout) as { counter: number; protectedPages: boolean };
      t.is(remoteResult.counter, 2);
      t.true(
        remoteResult.protectedPages,
        `the addon loaded in the connected client; stderr: ${remote.stderr}`,
      );
    } finally {
      t.is(await server.stop(), 0, `segmem-server exits 0 on SIGTERM; stderr: ${server.stderr()}`);
    }

    const size = treeBytes(modules);
    t.log(
      `install: ${mb(size.disk)} on disk (${mb(size.apparent)} in files) in node_modules; npm install ${installMs} ms, npm pack ${packMs} ms`,
    );
    t.log(
      `tarballs: ${results.map((r) => `${r.name} ${mb(r.size)} (${mb(r.unpackedSize)} unpacked)`).join(', ')}`,
    );
    const warnings = installed.stderr.split('\n').filter((l) => /warn/i.test(l));
    if (warnings.length > 0) t.log(`npm install warnings:\n${warnings.join('\n')}`);
  } finally {
    work.cleanup();
  }
});
