// Scenario "web": qubes-storage-web in Debian's headless Chromium (through
// playwright-core) at 10,000 AppVMs against the same page at 100, in one
// run: the page usable (pools, chart, the first page of domains rendered)
// from navigation, how many table rows the DOM holds, a filter by name, a
// page of the default pool's volumes (two calls per volume), and the web
// program's start (one admin.vm.ListDetails). --quick (5 and 10 domains, no warm-up)
// skips itself with a message where there is no chromium.
import { spawn } from 'node:child_process';
import { accessSync, constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openRuntime } from '../../src/daemon/runtime.js';
import { mapLimit, MiB, startChildQubesd } from '../daemon-util.js';
import { figure, timeMs, withBaseline, type Figure } from '../stats.js';
import type { Scenario } from '../run.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const WEB = path.resolve(here, '../../src/web/qubes-storage-web.js');
const CHROMIUM = process.env['QS_CHROMIUM'] ?? '/usr/bin/chromium';

async function buildState(base: string, appvms: number): Promise<void> {
  const rt = await openRuntime({ baseDir: base, createDefaultPool: true, storageConf: null, sizes: { root: MiB, private: MiB } });
  try {
    await rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
    const names = Array.from({ length: appvms }, (_, i) => `w${String(i).padStart(5, '0')}`);
    await mapLimit(names, 16, (name) => rt.app.createDomain({ klass: 'AppVM', name, label: 'red', template: 'tpl' }));
  } finally {
    await rt.close();
  }
}

/** Spawns the web program; resolves with its address, token, start time (spawn to its address line) and a stop. */
async function startWeb(socket: string, stateDir: string): Promise<{ url: string; startMs: number; stop(): Promise<void> }> {
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [WEB, '--listen', '127.0.0.1:0', '--socket', socket, '--state-dir', stateDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /open (\S+)\n/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('exit', (code) => reject(new Error(`qubes-storage-web exited ${code}: ${out}`)));
  });
  const startMs = Number(process.hrtime.bigint() - t0) / 1e6;
  return {
    url,
    startMs,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

export const web: Scenario = {
  name: 'web',
  describe: 'qubes-storage-web in headless Chromium: page usable at 10,000 domains against 100, DOM rows, filter, a volumes page, start',
  async run(opts) {
    try {
      accessSync(CHROMIUM, fsc.X_OK);
    } catch {
      const why = `web: no chromium at ${CHROMIUM} (Debian package chromium; QS_CHROMIUM names another)`;
      if (opts.quick) return { figures: [], notes: [`${why}: skipped in --quick mode`] };
      throw new Error(why);
    }
    const { chromium } = await import('playwright-core');
    const sizes = opts.quick ? [5, 10] : [100, 10000];
    const reps = opts.quick ? 1 : 7;
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-bench-web-'));
    const figures: Figure[] = [];
    const per: Record<string, Figure>[] = [];
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
    try {
      for (const n of sizes) {
        const base = path.join(dir, `n${n}`);
        await buildState(base, n);
        const sock = path.join(base, 'bench.sock');
        const daemon = await startChildQubesd(base, sock, path.join(dir, `qubesd-${n}.log`));
        const w = await startWeb(sock, path.join(dir, `state-${n}`));
        const f: Record<string, Figure> = {};
        try {
          const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
          const usable: number[] = [];
          const filter: number[] = [];
          const volumes: number[] = [];
          let rows = 0;
          const warm = opts.quick ? 0 : 1;
          for (let r = 1 - warm; r < reps + 1; r++) {
            const ms = await timeMs(async () => {
              await page.goto(w.url);
              await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
            });
            if (r === 0) continue; // the browser's first start of the page (its cache, compile) is not counted
            usable.push(ms);
            rows = await page.evaluate(() => document.querySelectorAll('tr').length);
            const last = `w${String(n - 1).padStart(5, '0')}`;
            filter.push(
              await timeMs(async () => {
                await page.fill('#domains-filter', last);
                await page.waitForSelector(`#domains tr[data-domain="${last}"]`, { timeout: 60_000 });
              }),
            );
            // The default pool's first page of volumes (name order): up to 50 volumes, Info + ListSnapshots each, read again.
            await page.waitForSelector('#volumes tbody tr', { timeout: 60_000 });
            await page.evaluate(() => (document.getElementById('volumes-range')!.textContent = ''));
            volumes.push(
              await timeMs(async () => {
                await page.click('#pools .pool[data-pool="default"]');
                await page.waitForFunction(() => /^1-/.test(document.getElementById('volumes-range')!.textContent ?? ''), undefined, { timeout: 60_000 });
              }),
            );
          }
          await page.close();
          f['usable'] = figure(`web.${n}.page-usable`, 'ms', usable, { note: 'navigation (token URL, redirect) to pools, chart and first 100 domains rendered', ...(n >= 10000 ? { target: '< 1000 ms' } : {}) });
          f['rows'] = figure(`web.${n}.table-rows`, 'rows', [rows], { note: `all <tr> in the DOM with ${n + 2} domains (paged: 100 domains, 50 volumes, 2 heads)` });
          f['filter'] = figure(`web.${n}.filter`, 'ms', filter, { note: 'type a name into the filter to its row shown (150 ms debounce included)' });
          f['volumes'] = figure(`web.${n}.volumes-page`, 'ms', volumes, { note: 'first page of (up to) 50 volumes of pool default, read again: 2 admin calls each' });
          f['start'] = figure(`web.${n}.program-start`, 'ms', [w.startMs], { note: 'spawn of qubes-storage-web to its address line (events, ListDetails, one sample)' });
          per.push(f);
        } finally {
          await w.stop();
          await daemon.stop();
        }
      }
    } finally {
      await browser.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
    const [small, big] = per as [Record<string, Figure>, Record<string, Figure>];
    for (const k of ['usable', 'filter', 'volumes', 'start']) figures.push(small[k]!, withBaseline(big[k]!, small[k]!));
    figures.push(small['rows']!, big['rows']!);
    return { figures, notes: [`${sizes.join(' and ')} AppVMs; reps ${reps}; Chromium ${browser.version()}`] };
  },
};
