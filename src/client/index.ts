/**
 * The client library: the admin API as typed calls (QubesClient), over a
 * qubesd socket or embedded in this process, with derived views (pool usage
 * rows). The qvm-* tools are built on it; so can any other program.
 */
export * from './client.js';
export * from './transport.js';
export type { ConnectOptions } from './connect.js';
export * from './usage.js';
export * from './replies.js';
export { QubesDaemonCommunicationError } from '../admin/client.js';
