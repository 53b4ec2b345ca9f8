// The baseline of the api-load scenario: a server on the same kind of Unix
// socket with the same framing as qubesd (one call per connection, request
// read to the client's half-close, reply `0` NUL RESULT, then close), doing
// nothing else. `bench.Echo+N` answers N bytes. Usage: node echo-server.js SOCKET
// (prints `ready` when listening; SIGTERM stops it).
import * as fs from 'node:fs';
import * as net from 'node:net';

const socketPath = process.argv[2];
if (!socketPath) {
  process.stderr.write('usage: echo-server SOCKET\n');
  process.exit(2);
}
const replies = new Map<number, Buffer>();
const replyOf = (n: number): Buffer => {
  let r = replies.get(n);
  if (!r) replies.set(n, (r = Buffer.concat([Buffer.from('0\0'), Buffer.alloc(n, 0x78)])));
  return r;
};
const server = net.createServer({ allowHalfOpen: true }, (sock) => {
  const chunks: Buffer[] = [];
  sock.on('data', (c: Buffer) => chunks.push(c));
  sock.on('end', () => {
    const req = Buffer.concat(chunks);
    const nul = req.indexOf(0);
    const method = req.subarray(0, nul < 0 ? req.length : nul).toString('latin1').split(' ')[0] ?? '';
    const plus = method.indexOf('+');
    const n = plus < 0 ? 0 : Math.min(1 << 20, Number(method.slice(plus + 1)) || 0);
    sock.end(replyOf(n));
  });
  sock.on('error', () => sock.destroy());
});
try {
  fs.unlinkSync(socketPath);
} catch {
  // not there
}
server.listen(socketPath, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
