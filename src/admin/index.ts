/** The admin API: wire protocol, method dispatch, socket server, client and events. */
export * from './protocol/index.js';
export * from './dispatch.js';
export * from './method-shape.js';
export * from './method-list.js';
export * from './policy.js';
export * from './events.js';
export * from './connection.js';
export * from './server.js';
export * from './peer.js';
export * from './client.js';
