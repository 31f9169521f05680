/** The server node: SegmemNode and the seams its users implement or configure. */
export type { NodeOptions } from './context.js';
export { type RaftStatus, SegmemNode } from './node.js';
export type { Port, Wire } from './port.js';
