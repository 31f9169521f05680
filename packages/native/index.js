'use strict';
// Loads the compiled addon. Never throws: when the addon is missing (no compiler at install time),
// fails to load, or is disabled with SEGMEM_DISABLE_NATIVE=1, `native` is null and `loadError` says why.

const path = require('node:path');

let native = null;
let loadError = null;

if (process.env.SEGMEM_DISABLE_NATIVE === '1') {
  loadError = new Error('@segmem/native: disabled by SEGMEM_DISABLE_NATIVE=1');
} else {
  try {
    native = require(path.join(__dirname, 'build', 'Release', 'segmem_native.node'));
  } catch (err) {
    loadError = err instanceof Error ? err : new Error(String(err));
  }
}

module.exports = { native, loadError };
