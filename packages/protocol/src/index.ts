export * from './datagram.js';
export * from './env.js';
export * from './errors.js';
export * from './frame.js';
export * from './limits.js';
export * from './messages.js';
export * from './msgpack.js';
export * from './validate.js';
