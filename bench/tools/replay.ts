// The floor of a tool call: node started, and the tool's own requests sent
// again over the socket, one connection each, in order, waiting for each
// reply; nothing loaded but node:net and node:fs. Used by the "tools" bench
// scenario: `node replay.js SOCKET FILE`, FILE holding `LENGTH\nBYTES` per
// recorded connection (LENGTH 0: a probe, connected and closed). A
// CloneTo's payload (a one-time token) is the reply of the CloneFrom before it.
import { readFileSync } from 'node:fs';
import * as net from 'node:net';

const [socketPath, file] = process.argv.slice(2) as [string, string];
const data = readFileSync(file);
const requests: Buffer[] = [];
for (let at = 0; at < data.length; ) {
  const nl = data.indexOf(10, at);
  const len = Number(data.subarray(at, nl).toString('latin1'));
  requests.push(data.subarray(nl + 1, nl + 1 + len));
  at = nl + 1 + len;
}

function call(req: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: socketPath, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    sock.on('connect', () => sock.end(req));
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('end', () => resolve(Buffer.concat(chunks)));
    sock.on('error', reject);
  });
}

let token: Buffer | null = null;
for (let req of requests) {
  const header = req.subarray(0, req.indexOf(0) + 1);
  if (token && header.toString('latin1').startsWith('admin.vm.volume.CloneTo')) req = Buffer.concat([header, token]);
  const reply = await call(req);
  if (reply[0] !== 0x30 && req.length > 0) throw new Error(`replayed call failed: ${header.toString('latin1')} -> ${reply.toString('latin1')}`);
  if (header.toString('latin1').startsWith('admin.vm.volume.CloneFrom')) token = reply.subarray(2);
}
