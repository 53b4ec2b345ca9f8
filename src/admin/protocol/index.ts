/** The admin API wire protocol: bytes in, bytes out, and validation of untrusted fields. */
export * from './header.js';
export * from './reply.js';
export * from './validate.js';
export * from './export-stream.js';
