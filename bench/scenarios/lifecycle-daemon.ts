// Scenario "lifecycle-daemon": the lifecycle scenario's AppVM start+stop
// (root snapshot, private origin keeping 1 revision, volatile; 10 GiB
// volumes with 1 GiB of data) through the admin daemon: admin.vm.Start +
// admin.vm.Shutdown over the socket of an in-process startDaemon, against the
// same cycle called on the daemon's own App (the library cycle) and one round
// trip (admin.vm.CurrentState), all interleaved on the same domain in the
// same process.
import * as path from 'node:path';
import { AdminClient } from '../../src/admin/client.js';
import { silentLog } from '../../src/admin/dispatch.js';
import { startDaemon, type Daemon } from '../../src/daemon/daemon.js';
import { GiB, MiB } from '../daemon-util.js';
import { scratchXfs } from '../scratch-fs.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';
import { scatter } from './lifecycle.js';

export const lifecycleDaemon: Scenario = {
  name: 'lifecycle-daemon',
  describe: 'AppVM start+stop through the daemon (admin.vm.Start + admin.vm.Shutdown over the socket) vs the library cycle and one round trip',
  async run(opts) {
    const cycles = opts.quick ? 3 : 25;
    const size = opts.quick ? 256 * MiB : 10 * GiB;
    const data = opts.quick ? 16 * MiB : GiB;
    const rttCalls = 20;
    const scratch = await scratchXfs('lifecycle-daemon', opts.quick ? 2 : 8);
    let daemon: Daemon | undefined;
    try {
      const base = path.join(scratch.dir, 'qubes');
      const sock = path.join(scratch.dir, 'qubesd.sock');
      daemon = await startDaemon({
        baseDir: base,
        socketPath: sock,
        log: silentLog,
        runtime: { storageConf: null, sizes: { root: size, private: size } },
      });
      const app = daemon.runtime.app;
      const client = new AdminClient({ socketPath: sock, timeoutMs: 120_000 });
      await client.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
      await client.call('admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=work label=red');
      const poolDir = String(app.pool('default').config()['dir_path']);
      await scatter(path.join(poolDir, 'vm-templates/tpl/root.img'), data, 1);
      await scatter(path.join(poolDir, 'appvms/work/private.img'), data, 2);
      await app.start('work');
      await app.shutdown('work'); // the first revision, as in steady state

      const libraryCycle = async () => {
        await app.start('work');
        await app.shutdown('work');
      };
      const daemonCycle = async () => {
        await client.call('admin.vm.Start', 'work');
        await client.call('admin.vm.Shutdown', 'work');
      };
      const lib: number[] = [];
      const dmn: number[] = [];
      const rtt: number[] = [];
      const kinds = [
        () => timeMs(libraryCycle).then((t) => lib.push(t)),
        () => timeMs(daemonCycle).then((t) => dmn.push(t)),
        async () => {
          // the median of a burst of round trips, one sample per cycle
          const s: number[] = [];
          for (let i = 0; i < rttCalls; i++) s.push(await timeMs(() => client.call('admin.vm.CurrentState', 'work')));
          rtt.push(figure('', '', s).median);
        },
      ];
      for (let i = 0; i < cycles; i++) {
        // interleaved, rotating which goes first, so drift hits all alike
        for (let k = 0; k < kinds.length; k++) await kinds[(i + k) % kinds.length]!();
      }
      if ((await client.call('admin.vm.CurrentState', 'work')).toString().indexOf('power_state=Halted') < 0)
        throw new Error('lifecycle-daemon: work is not halted after the cycles');
      const fLib = figure('lifecycle-daemon.library', 'ms', lib, { note: 'app.start + app.shutdown on the daemon\'s App' });
      const fRtt = figure('lifecycle-daemon.round-trip', 'ms', rtt, { note: `admin.vm.CurrentState; each sample the median of ${rttCalls}` });
      const fDmn = withBaseline(figure('lifecycle-daemon.daemon', 'ms', dmn, { note: 'admin.vm.Start + admin.vm.Shutdown over the socket' }), fLib);
      const bound = 1.3 * fLib.median + fRtt.median;
      const check: Figure = {
        ...figure('lifecycle-daemon.daemon-vs-bound', 'ms', dmn),
        ratio: fDmn.median / bound,
        baseline: `1.3 x library + 1 round trip = ${bound.toFixed(1)} ms`,
        target: 'ratio <= 1.0',
      };
      const over: Figure = figure('lifecycle-daemon.overhead-per-call', 'ms', dmn.map((d, i) => (d - (lib[i] ?? fLib.median)) / 2), {
        note: '(daemon cycle - library cycle of the same round) / 2 calls',
      });
      return {
        figures: [fLib, fRtt, fDmn, check, over],
        notes: [
          `filesystem: ${scratch.kind}; daemon in this process (startDaemon, log off), client AdminClient over its Unix socket`,
          `${cycles} cycles each, volumes ${size / MiB} MiB with ${data / MiB} MiB of data, pool default (revisions_to_keep=1)`,
        ],
      };
    } finally {
      await daemon?.stop();
      await scratch.cleanup();
    }
  },
};
