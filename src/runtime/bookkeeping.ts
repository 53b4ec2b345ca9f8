/**
 * The bookkeeping runtime: power state without a hypervisor. The App keeps power state in memory
 * (a hypervisor, i.e. the runner, would know it). With no hypervisor here,
 * this runner is the stand-in: it records which domains run in
 * BASE/running-domains (`NAME UUID` lines after a `boot BOOT_ID` line,
 * written atomically; the state lock serializes writers), and the runtime
 * marks them Running again when it next opens the state, so a domain started
 * by one tool, or by a daemon since restarted, is still running for the
 * next, as VMs outlive qubesd under a real hypervisor. After a reboot (the
 * kernel's boot id changed) nothing runs any more: the records are dropped,
 * and the next start of a domain picks up its uncommitted data (the crash
 * contract).
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { QubesApp } from '../domain/app.js';
import type { DomainRunner, RunnerDomain } from '../domain/runner.js';
import { writeFileAtomic } from '../files/files.js';

export const RUN_STATE_FILE = 'running-domains';
const BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';

async function bootId(): Promise<string> {
  try {
    return (await fs.readFile(BOOT_ID_FILE, 'utf8')).trim();
  } catch {
    return 'unknown';
  }
}

export interface RunState {
  readonly runner: DomainRunner;
  /** Marks the recorded domains Running in a freshly opened App; forgets records of domains gone. */
  restore(app: QubesApp): Promise<void>;
}

export function runState(baseDir: string): RunState {
  const file = path.join(baseDir, RUN_STATE_FILE);
  const read = async (): Promise<Map<string, string>> => {
    let text = '';
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const m = new Map<string, string>();
    const lines = text.split('\n');
    if (lines[0] !== `boot ${await bootId()}`) return m; // written before a reboot: nothing runs now
    for (const line of lines.slice(1)) {
      const [name, uuid] = line.split(' ');
      if (name && uuid) m.set(name, uuid);
    }
    return m;
  };
  const write = async (m: Map<string, string>): Promise<void> => {
    if (m.size === 0) {
      await fs.rm(file, { force: true });
      return;
    }
    await writeFileAtomic(file, `boot ${await bootId()}\n` + [...m].map(([n, u]) => `${n} ${u}\n`).join(''), 0o600);
  };
  const change = async (d: RunnerDomain, running: boolean): Promise<void> => {
    const m = await read();
    if (running) m.set(d.name, d.uuid);
    else m.delete(d.name);
    await write(m);
  };
  return {
    runner: {
      start: (d) => change(d, true),
      shutdown: (d) => change(d, false),
      kill: (d) => change(d, false),
    },
    async restore(app) {
      const m = await read();
      let stale = false;
      for (const [name, uuid] of m) {
        const d = app.findDomain(name);
        if (d && d.uuid === uuid && d.klass !== 'AdminVM') d.powerState = 'Running';
        else {
          m.delete(name);
          stale = true;
        }
      }
      if (stale) await write(m);
    },
  };
}
