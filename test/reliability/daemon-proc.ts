// The daemon of the campaigns' daemon runs: the real admin daemon
// (startDaemon, as qubesd runs it) on BASE, listening on SOCKET, with the
// campaign's small volume sizes (qubesd itself has no option for them).
// Failpoints and their power-cut action come from the environment, as for
// qubesd. SIGTERM stops it as qubesd stops: calls finish, the state is saved.
//
// Usage: node daemon-proc.js BASE SOCKET
import { silentLog } from '../../src/admin/dispatch.js';
import { startDaemon } from '../../src/daemon/daemon.js';
import { PRIVATE_SIZE, ROOT_SIZE } from './child.js';

const [base, socketPath] = process.argv.slice(2);
const daemon = await startDaemon({ baseDir: base!, socketPath: socketPath!, log: silentLog, runtime: { sizes: { root: ROOT_SIZE, private: PRIVATE_SIZE } } });
process.stderr.write('listening\n');
process.on('SIGTERM', () => {
  daemon.stop().then(
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`stop failed: ${(e as Error).message}\n`);
      process.exit(1);
    },
  );
});
