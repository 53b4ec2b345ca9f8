/**
 * Power state for the embedded transport. The App keeps power state in
 * memory (the hypervisor, i.e. the runner, would know it), and a tool
 * running without a daemon lives only for one command: `qvm-start work`
 * would be forgotten by the next tool, and `qvm-shutdown work` would find
 * it Halted and never commit its volumes. So the embedded transport gives
 * the runtime a runner that records which domains it started, in
 * BASE/cli-running (`NAME UUID` lines, written atomically; the state lock,
 * held by the tool, serializes writers), and marks them Running again when
 * the next tool opens the state.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import type { QubesApp } from '../../domain/app.js';
import type { DomainRunner, RunnerDomain } from '../../domain/runner.js';
import { writeFileAtomic } from '../../files/files.js';

export const RUN_STATE_FILE = 'cli-running';

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
    for (const line of text.split('\n')) {
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
    await writeFileAtomic(file, [...m].map(([n, u]) => `${n} ${u}\n`).join(''));
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
