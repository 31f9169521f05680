#!/usr/bin/env node
// Builds the @segmem/native addon. Not an install script: npm 11 does not run a registry package's
// install script without the user's approval, so the published package must load without one. Instead:
//
//   node build.cjs              prebuilds/linux-<arch>/@segmem+native.glibc.node for this machine, with
//                               prebuildify (run by `npm ci` / `npm install` at the repository root).
//                               No toolchain: a warning, exit 0 (the tests then run without the addon).
//   node build.cjs --pack       the same before `npm pack` (prepack), but a prebuild that cannot be
//                               made or does not load is an error: the tarball must carry one.
//   node build.cjs --arch arm64 cross-builds prebuilds/linux-arm64/... with aarch64-linux-gnu-g++
//                               (Debian: apt-get install g++-aarch64-linux-gnu; CC/CXX override it).
//   node build.cjs --source     the fallback on a platform without a prebuild: compiles build/Release/
//                               segmem_native.node with node-gyp (the workspace's, or the copy bundled
//                               with npm), which node-gyp-build then loads in preference to prebuilds/.
//   --force                     rebuild a prebuild even when it is newer than the sources.
//
// Headers come from the running Node (--nodedir), so nothing is downloaded.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const here = __dirname;
const nodedir = path.resolve(process.execPath, '../..');
/** Inputs of the compiled addon: a prebuild older than one of these is rebuilt. */
const sources = ['binding.gyp', ...fs.readdirSync(path.join(here, 'src')).map((f) => path.join('src', f))];
/** ELF e_machine of each architecture we build, to check a cross-built file is what it claims. */
const elfMachine = { x64: 0x3e, arm64: 0xb7 };
const crossToolchains = { arm64: 'aarch64-linux-gnu' };
/** The oldest glibc Node 20's own Linux binaries run on: a prebuild must not need a newer one. */
const maxGlibc = [2, 28];

function parseArgs(argv) {
  const opts = { pack: false, source: false, force: false, arch: os.arch() };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--pack') opts.pack = true;
    else if (a === '--source') opts.source = true;
    else if (a === '--force') opts.force = true;
    else if (a === '--arch' && argv[i + 1]) opts.arch = argv[++i];
    else fail(`unknown argument ${a}; usage: node build.cjs [--pack | --source | --arch arm64] [--force]`);
  }
  if (!elfMachine[opts.arch]) fail(`unsupported --arch ${opts.arch} (supported: x64, arm64)`);
  return opts;
}

function fail(message) {
  process.stderr.write(`\n@segmem/native: ERROR: ${message}\n`);
  process.exit(1);
}

/** Without a toolchain a development install goes on without the addon; a pack or cross build cannot. */
function noToolchain(reason, strict) {
  if (strict) fail(`the native addon cannot be built: ${reason}`);
  process.stderr.write(
    `\n@segmem/native: WARNING: the native addon was not built: ${reason}.\n` +
      '@segmem/native: segmem will work without it (plain Buffers, no page protection, no fault diagnostics).\n\n',
  );
  process.exit(0);
}

/** True when `cmd --version` can be spawned (the program exists). */
function exists(cmd) {
  return !spawnSync(cmd, ['--version'], { stdio: 'ignore', shell: false }).error;
}

function firstWord(s) {
  return s.trim().split(/\s+/)[0];
}

function missingTools(env, cross) {
  const missing = [];
  const cxx = env.CXX ? firstWord(env.CXX) : null;
  if (cxx ? !exists(cxx) : !exists('c++') && !exists('g++') && !exists('clang++')) {
    missing.push(`C++ compiler (${cxx ?? 'c++, g++ or clang++'})`);
  }
  if (cross && !exists(env.PREBUILD_STRIP_BIN)) missing.push(env.PREBUILD_STRIP_BIN);
  const make = env.MAKE ? firstWord(env.MAKE) : 'make';
  if (!exists(make)) missing.push(make);
  const python = env.PYTHON || env.npm_config_python;
  if (python ? !exists(python) : !exists('python3') && !exists('python')) missing.push(python || 'python3');
  return missing;
}

/** node-gyp: the workspace's devDependency, else the copy npm bundles (so a user's fallback needs no download). */
function findNodeGyp() {
  const npmDirs = [
    process.env.npm_execpath && path.resolve(path.dirname(process.env.npm_execpath), '..'),
    path.join(nodedir, 'lib', 'node_modules', 'npm'),
  ].filter(Boolean);
  for (const paths of [[here], ...npmDirs.map((d) => [d])]) {
    try {
      return require.resolve('node-gyp/bin/node-gyp.js', { paths });
    } catch {}
  }
  return null;
}

function buildEnv(arch) {
  const env = { ...process.env };
  // binding.gyp runs `node -p ...` to find node-addon-api, and prebuildify spawns node-gyp's script
  // through its shebang: both must find the running node.
  const pathKey = Object.keys(env).find((k) => k.toUpperCase() === 'PATH') ?? 'PATH';
  env[pathKey] = [path.dirname(process.execPath), env[pathKey]].filter(Boolean).join(path.delimiter);
  env.npm_config_nodedir = nodedir; // node-gyp reads its --nodedir from here when prebuildify runs it
  env.npm_config_loglevel ??= 'warn'; // node-gyp's "gyp info" lines; the compiler's output still shows
  env.PREBUILD_STRIP_BIN = 'strip';
  const triple = arch !== os.arch() ? crossToolchains[arch] : undefined;
  if (arch !== os.arch()) {
    if (!triple) fail(`no cross toolchain known for ${arch}`);
    env.CC ??= `${triple}-gcc`;
    env.CXX ??= `${triple}-g++`;
    env.LINK ??= env.CXX;
    env.AR ??= `${triple}-ar`;
    env.PREBUILD_STRIP_BIN = `${triple}-strip`;
  }
  return env;
}

function prebuildDir(arch) {
  return path.join(here, 'prebuilds', `linux-${arch}`);
}

function prebuildFiles(arch) {
  try {
    return fs
      .readdirSync(prebuildDir(arch))
      .filter((f) => f.endsWith('.node'))
      .map((f) => path.join(prebuildDir(arch), f));
  } catch {
    return [];
  }
}

function isFresh(files) {
  if (files.length === 0) return false;
  const builtMs = Math.min(...files.map((f) => fs.statSync(f).mtimeMs));
  return sources.every((s) => fs.statSync(path.join(here, s)).mtimeMs <= builtMs);
}

function checkElf(file, arch) {
  const header = Buffer.alloc(20);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, header, 0, header.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  const machine = header.readUInt16LE(18);
  if (header.toString('latin1', 0, 4) !== '\x7fELF' || machine !== elfMachine[arch]) {
    fail(`${file} is not a ${arch} ELF shared object (e_machine 0x${machine.toString(16)})`);
  }
}

/**
 * The newest glibc symbol version `file` needs ("GLIBC_2.33" for fstat on glibc 2.33+): a binary built
 * on a new distribution may not load on an older one, which then falls back to plain Buffers.
 */
function checkGlibc(file, strict) {
  const versions = [
    ...fs
      .readFileSync(file)
      .toString('latin1')
      .matchAll(/GLIBC_(\d+)\.(\d+)/g),
  ].map((m) => [Number(m[1]), Number(m[2])]);
  const newest = versions.reduce((a, b) => (b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]) ? b : a), [0, 0]);
  if (newest[0] > maxGlibc[0] || (newest[0] === maxGlibc[0] && newest[1] > maxGlibc[1])) {
    const message = `${rel(file)} needs glibc ${newest.join('.')}, newer than the ${maxGlibc.join('.')} Node 20 runs on`;
    if (strict) fail(`${message}; build it on an older distribution or avoid the new symbol`);
    process.stderr.write(`@segmem/native: WARNING: ${message}\n`);
  }
  return newest.join('.');
}

/** Loads a host binary the way index.js will, and checks it answers. */
function checkLoads(file) {
  try {
    const addon = require(file);
    if (typeof addon.pageSize() !== 'number') throw new Error('pageSize() did not return a number');
  } catch (err) {
    fail(`built ${file} but it does not load: ${err instanceof Error ? err.message : err}`);
  }
}

function rel(file) {
  return path.relative(process.cwd(), file) || file;
}

async function prebuild(opts) {
  const strict = opts.pack || opts.arch !== os.arch();
  if (process.platform !== 'linux')
    noToolchain(`prebuilds are made on Linux only (this is ${process.platform})`, strict);
  if (!opts.force && isFresh(prebuildFiles(opts.arch))) {
    for (const f of prebuildFiles(opts.arch)) process.stderr.write(`@segmem/native: up to date: ${rel(f)}\n`);
    return;
  }
  if (process.env.SEGMEM_SKIP_NATIVE_BUILD === '1') noToolchain('SEGMEM_SKIP_NATIVE_BUILD=1 is set', strict);
  if (!fs.existsSync(path.join(nodedir, 'include', 'node', 'node_api.h'))) {
    noToolchain(`the Node.js headers were not found under ${path.join(nodedir, 'include', 'node')}`, strict);
  }
  const env = buildEnv(opts.arch);
  const missing = missingTools(env, opts.arch !== os.arch());
  if (missing.length > 0) noToolchain(`missing build tools: ${missing.join(', ')}`, strict);
  const nodeGyp = findNodeGyp();
  if (!nodeGyp) noToolchain('node-gyp is not installed (a devDependency of the segmem workspace)', strict);
  let prebuildify;
  try {
    prebuildify = require('prebuildify');
  } catch {
    noToolchain('prebuildify is not installed (a devDependency of the segmem workspace)', strict);
  }

  // The old binary goes first, so a failed build cannot leave it looking fresh.
  for (const f of prebuildFiles(opts.arch)) fs.rmSync(f);
  const options = {
    cwd: here,
    arch: opts.arch,
    platform: 'linux',
    napi: true,
    strip: true,
    stripBin: env.PREBUILD_STRIP_BIN,
    tagLibc: true,
    libc: 'glibc',
    nodeGyp,
    targets: [{ runtime: 'node', target: process.versions.node }],
  };
  // prebuildify hands its child processes this process's environment (plus its PREBUILD_* variables).
  Object.assign(process.env, env);
  const err = await new Promise((resolve) => prebuildify(options, resolve));
  if (err) fail(`prebuildify failed (${err.message}); see the compiler output above`);
  const built = prebuildFiles(opts.arch);
  if (built.length !== 1) fail(`expected one prebuild in ${prebuildDir(opts.arch)}, found ${built.length}`);
  checkElf(built[0], opts.arch);
  const glibc = checkGlibc(built[0], strict);
  if (opts.arch === os.arch()) checkLoads(built[0]);
  const bytes = fs.statSync(built[0]).size;
  process.stderr.write(`@segmem/native: built ${rel(built[0])} (${bytes} bytes, needs glibc ${glibc})\n`);
}

/** Before `npm pack`: every prebuild that will ship (prebuilds/ is in `files`) must be current and sound. */
function checkShipped() {
  let dirs = [];
  try {
    dirs = fs.readdirSync(path.join(here, 'prebuilds'));
  } catch {}
  for (const dir of dirs) {
    const arch = /^linux-(\w+)$/.exec(dir)?.[1];
    if (!arch || !elfMachine[arch]) fail(`prebuilds/${dir} is not a platform this package builds; remove it`);
    const files = prebuildFiles(arch);
    if (files.length !== 1) fail(`prebuilds/${dir} should hold one .node file, not ${files.length}`);
    if (!isFresh(files)) {
      fail(
        `${rel(files[0])} is older than the sources: rebuild it (node build.cjs --arch ${arch}) or delete it`,
      );
    }
    checkElf(files[0], arch);
    const glibc = checkGlibc(files[0], true);
    process.stderr.write(`@segmem/native: ships ${rel(files[0])} (needs glibc ${glibc})\n`);
  }
}

function sourceBuild() {
  if (process.platform !== 'linux') fail(`the addon supports Linux only (this is ${process.platform})`);
  if (!fs.existsSync(path.join(nodedir, 'include', 'node', 'node_api.h'))) {
    fail(`the Node.js headers were not found under ${path.join(nodedir, 'include', 'node')}`);
  }
  const env = buildEnv(os.arch());
  const missing = missingTools(env, false);
  if (missing.length > 0) fail(`missing build tools: ${missing.join(', ')}`);
  const nodeGyp = findNodeGyp();
  if (!nodeGyp) fail('node-gyp was found neither in node_modules nor inside npm');
  const args = [nodeGyp, 'rebuild', `--nodedir=${nodedir}`, '--release', '--jobs=max'];
  const r = spawnSync(process.execPath, args, { cwd: here, env, stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    const how = r.error ? r.error.message : r.signal ? `signal ${r.signal}` : `exit code ${r.status}`;
    fail(`node-gyp failed (${how}); see the compiler output above`);
  }
  const built = path.join(here, 'build', 'Release', 'segmem_native.node');
  checkLoads(built);
  process.stderr.write(`@segmem/native: built ${rel(built)}; it is loaded in preference to prebuilds/\n`);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.source) return sourceBuild();
  await prebuild(opts);
  if (opts.pack) checkShipped();
}

main();
