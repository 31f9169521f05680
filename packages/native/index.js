'use strict';
// Loads the addon through node-gyp-build: a local source build (build/Release, see build.cjs --source)
// if there is one, else the prebuilt binary for this platform shipped in prebuilds/. Never throws: when
// there is neither, the binary fails to load, or SEGMEM_DISABLE_NATIVE=1 is set, `native` is null and
// `loadError` says why.

let native = null;
let loadError = null;

if (process.env.SEGMEM_DISABLE_NATIVE === '1') {
  loadError = new Error('@segmem/native: disabled by SEGMEM_DISABLE_NATIVE=1');
} else {
  try {
    native = require('node-gyp-build')(__dirname);
  } catch (err) {
    loadError = err instanceof Error ? err : new Error(String(err));
  }
}

module.exports = { native, loadError };
