/**
 * The stable public API of `@segmem/server`: {@link startServer}, its options and the server it returns.
 * Import it from the package root (`import { startServer } from '@segmem/server'`). The package root also
 * exports the building blocks that the client's embedded mode and the tests use; those are not a stable
 * API and are left out of the API reference, which is generated from this file.
 *
 * @module
 */
export type { RunningServer, StartServerOptions } from './index.js';
export { startServer } from './index.js';
export type { FsyncPolicy } from './storage/wal.js';
