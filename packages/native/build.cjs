#!/usr/bin/env node
// Builds the @segmem/native addon with node-gyp (run by `npm install` through the package's install script).
//
// - Uses the headers of the running Node (--nodedir), so node-gyp never downloads anything.
// - No toolchain (C++ compiler, make, python3), no Node headers, or not Linux: prints a warning and exits 0;
//   the client then falls back to plain Buffers.
// - A toolchain exists but the build fails, or the built addon does not load: exits non-zero.
// - SEGMEM_SKIP_NATIVE_BUILD=1 skips the build (same fallback).
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = __dirname;

function warn(reason) {
  process.stderr.write(
    `\n@segmem/native: WARNING: the native addon was not built: ${reason}.\n` +
      '@segmem/native: segmem will work without it (plain Buffers, no page protection, no fault diagnostics).\n\n',
  );
  process.exit(0);
}

/** True when `cmd --version` can be spawned (the program exists). */
function exists(cmd) {
  const r = spawnSync(cmd, ['--version'], { stdio: 'ignore', shell: false });
  return !r.error;
}

function firstWord(s) {
  return s.trim().split(/\s+/)[0];
}

function missingTools() {
  const missing = [];
  const cxx = process.env.CXX ? firstWord(process.env.CXX) : null;
  if (cxx ? !exists(cxx) : !exists('c++') && !exists('g++') && !exists('clang++')) {
    missing.push(`C++ compiler (${cxx ?? 'c++, g++ or clang++'})`);
  }
  const make = process.env.MAKE ? firstWord(process.env.MAKE) : 'make';
  if (!exists(make)) missing.push(make);
  const python = process.env.PYTHON || process.env.npm_config_python;
  if (python ? !exists(python) : !exists('python3') && !exists('python')) missing.push(python || 'python3');
  return missing;
}

function main() {
  if (process.env.SEGMEM_SKIP_NATIVE_BUILD === '1') warn('SEGMEM_SKIP_NATIVE_BUILD=1 is set');
  if (process.platform !== 'linux') warn(`the addon supports Linux only (this is ${process.platform})`);

  const nodedir = path.resolve(process.execPath, '../..');
  if (!fs.existsSync(path.join(nodedir, 'include', 'node', 'node_api.h'))) {
    warn(`the Node.js headers were not found under ${path.join(nodedir, 'include', 'node')}`);
  }

  let missing = missingTools();
  if (missing.length > 0) warn(`missing build tools: ${missing.join(', ')}`);

  let nodeGyp;
  try {
    nodeGyp = require.resolve('node-gyp/bin/node-gyp.js');
  } catch {
    warn('node-gyp is not installed (it is a devDependency of the segmem workspace)');
  }

  // binding.gyp runs `node -p ...` to find node-addon-api: make that the running node.
  const env = { ...process.env };
  const pathKey = Object.keys(env).find((k) => k.toUpperCase() === 'PATH') ?? 'PATH';
  env[pathKey] = [path.dirname(process.execPath), env[pathKey]].filter(Boolean).join(path.delimiter);

  const args = [nodeGyp, 'rebuild', `--nodedir=${nodedir}`, '--release', '--jobs=max'];
  const r = spawnSync(process.execPath, args, { cwd: here, env, stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    // A tool that vanished meanwhile, or was found but cannot run, is still "no toolchain".
    missing = missingTools();
    if (missing.length > 0) warn(`missing build tools: ${missing.join(', ')}`);
    const how = r.error ? r.error.message : r.signal ? `signal ${r.signal}` : `exit code ${r.status}`;
    process.stderr.write(
      `\n@segmem/native: ERROR: node-gyp failed (${how}); see the compiler output above.\n`,
    );
    process.exit(r.status || 1);
  }

  const built = path.join(here, 'build', 'Release', 'segmem_native.node');
  const { native, loadError } = require('./index.js');
  if (!native) {
    process.stderr.write(`\n@segmem/native: ERROR: built ${built} but it does not load: ${loadError}\n`);
    process.exit(1);
  }
  process.stdout.write(`@segmem/native: built ${path.relative(process.cwd(), built) || built}\n`);
}

main();
