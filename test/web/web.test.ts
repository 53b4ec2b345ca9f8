/**
 * qubes-storage-web in headless Chromium against a real qubesd (its own
 * process, real socket, bookkeeping runtime) whose pools are on the small
 * ext4 test filesystem, held by this file alone (nothing else writes there
 * meanwhile, so its usage holds still between the tool's reading and the
 * page's). Expected values come from the tools (`qvm-pool usage --format
 * json`, `qvm-volume info`), never from the web program. A screenshot per
 * test goes to test-output/web/ (printed).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { AdminClient } from '../../src/admin/client.js';
import { run, toolEnv } from '../cli/helpers.js';
import { holdFs, releaseFs, SMALL_FILESYSTEMS } from '../helpers/small-fs.js';
import { chromiumOrSkip, outputDir, spawnNode, startDaemon, startWeb, WEB, type Proc, type Web } from './helpers.js';

const browserBin = chromiumOrSkip();
const small = SMALL_FILESYSTEMS.find((s) => s.name === 'small-ext4')!;
const skip = browserBin.skip || (small.root ? false : 'QS_TEST_SMALL_EXT4 not set: run through scripts/with-test-fs.sh as root');

interface UsageJson {
  pool: string;
  data_size: number | null;
  data_usage: number | null;
  data_percent: number | null;
  metadata_size?: number | null;
  metadata_usage?: number | null;
  metadata_percent?: number | null;
  above_threshold: boolean;
}

/** What the page shows of each pool: its driver, and per part the percent text, the bytes line and the colour class. */
type Shown = Record<string, { driver: string; parts: Record<string, { percent: string; bytes: string; cls: string; colour: string }> }>;

function shownPools(page: Page): Promise<Shown> {
  return page.evaluate(() => {
    const out: Record<string, { driver: string; parts: Record<string, { percent: string; bytes: string; cls: string; colour: string }> }> = {};
    for (const card of document.querySelectorAll<HTMLElement>('#pools .pool')) {
      const parts: Record<string, { percent: string; bytes: string; cls: string; colour: string }> = {};
      for (const p of card.querySelectorAll<HTMLElement>('.part')) {
        parts[p.dataset['part']!] = {
          percent: p.querySelector('.percent')!.textContent!,
          bytes: p.querySelector('.bytes')!.textContent!,
          cls: ['ok', 'above', 'unknown'].find((c) => p.classList.contains(c)) ?? '',
          colour: getComputedStyle(p.querySelector('.fill')!).backgroundColor,
        };
      }
      out[card.dataset['pool']!] = { driver: card.querySelector('.driver')!.textContent!, parts };
    }
    return out;
  });
}

/** The page as the tools' figures say it must be (colours aside). */
function expectedFromTools(rows: UsageJson[], drivers: Record<string, string>): Record<string, { driver: string; parts: Record<string, { percent: string; bytes: string; cls: string }> }> {
  const pc = (n: number | null | undefined) => (n === null || n === undefined ? '-' : `${n.toFixed(1)}%`);
  const by = (n: number | null | undefined) => (n === null || n === undefined ? '-' : String(n));
  const out: Record<string, { driver: string; parts: Record<string, { percent: string; bytes: string; cls: string }> }> = {};
  for (const r of rows) {
    const parts: Record<string, { percent: string; bytes: string; cls: string }> = {};
    for (const part of ['data', 'metadata'] as const) {
      if (!(`${part}_size` in r)) continue;
      const percent = r[`${part}_percent`];
      // The tool flags the row when any part is above; here each part alone.
      const above = percent !== null && percent !== undefined && percent > threshold;
      parts[part] = { percent: pc(percent), bytes: `${by(r[`${part}_usage`])} of ${by(r[`${part}_size`])} bytes`, cls: percent === null || percent === undefined ? 'unknown' : above ? 'above' : 'ok' };
    }
    out[r.pool] = { driver: drivers[r.pool]!, parts };
  }
  return out;
}

function withoutColours(s: Shown): ReturnType<typeof expectedFromTools> {
  return Object.fromEntries(
    Object.entries(s).map(([pool, v]) => [pool, { driver: v.driver, parts: Object.fromEntries(Object.entries(v.parts).map(([k, p]) => [k, { percent: p.percent, bytes: p.bytes, cls: p.cls }])) }]),
  );
}

let threshold = 0;
const GREEN = 'rgb(45, 164, 78)';
const RED = 'rgb(207, 34, 46)';

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    // The event stream never ends: its status is enough.
    req.on('response', (res) => {
      if (res.headers['content-type']?.startsWith('text/event-stream')) {
        resolve({ status: res.statusCode ?? 0, body: '' });
        req.destroy();
      }
    });
  });
}

describe('qubes-storage-web in Chromium [small-ext4]', { skip }, () => {
  let base = '';
  let sockDir = '';
  let stateDir = '';
  let shots = '';
  let env: NodeJS.ProcessEnv = {};
  let daemon: Proc | undefined;
  let web: Web | undefined;
  let browser: Browser | undefined;
  let page: Page;

  const tool = async (name: string, args: string[], okCodes = [0]) => {
    const r = await run(name, args, env);
    assert.ok(okCodes.includes(r.code ?? -1), `${name} ${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
    return r.stdout;
  };
  const usageJson = async (): Promise<UsageJson[]> => JSON.parse(await tool('qvm-pool', ['usage', '--format', 'json', '--threshold', String(threshold)], [0, 3])) as UsageJson[];
  const drivers = async (): Promise<Record<string, string>> =>
    Object.fromEntries((JSON.parse(await tool('qvm-pool', ['list', '--format', 'json'])) as { name: string; driver: string }[]).map((p) => [p.name, p.driver]));
  const shot = (name: string, p: Page = page) => p.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

  /** Waits until the page shows what the tools say (it updates by itself), then compares once more for the message. */
  async function pageMatchesTools(): Promise<void> {
    const expected = expectedFromTools(await usageJson(), await drivers());
    await page
      .waitForFunction(
        (exp) => {
          for (const [pool, v] of Object.entries(exp)) {
            const card = document.querySelector<HTMLElement>(`#pools .pool[data-pool="${pool}"]`);
            if (!card || card.querySelector('.driver')!.textContent !== v.driver) return false;
            for (const [part, f] of Object.entries(v.parts)) {
              const el = card.querySelector<HTMLElement>(`.part[data-part="${part}"]`);
              if (!el || el.querySelector('.percent')!.textContent !== f.percent || el.querySelector('.bytes')!.textContent !== f.bytes || !el.classList.contains(f.cls)) return false;
            }
          }
          return document.querySelectorAll('#pools .pool').length === Object.keys(exp).length;
        },
        expected,
        { timeout: 20_000 },
      )
      .catch(() => undefined);
    assert.deepEqual(withoutColours(await shownPools(page)), expected);
  }

  before(async () => {
    await holdFs(small.root!);
    shots = await outputDir();
    console.log(`# screenshots in ${shots}`);
    base = await fs.mkdtemp(path.join(small.root!, 'web-'));
    sockDir = await fs.mkdtemp(path.join(os.tmpdir(), 'qs-w-'));
    stateDir = path.join(sockDir, 'state');
    const socket = path.join(sockDir, 's');
    daemon = await startDaemon(base, socket);
    env = toolEnv(base, socket);
    await tool('qvm-pool', ['add', 'vault', 'file-reflink', '-o', `dir_path=${path.join(base, 'vault')}`, '-o', 'setup_check=False']);
    await tool('qvm-create', ['--class', 'TemplateVM', '--label', 'black', 'tpl']);
    await tool('qvm-create', ['--template', 'tpl', '--label', 'red', 'work']);
    await tool('qvm-create', ['--class', 'StandaloneVM', '--label', 'blue', '-P', 'vault', 'filler']);
    // A threshold a little above what the filesystem uses now: the fill below crosses it.
    const vault = (await usageJson()).find((r) => r.pool === 'vault')!;
    threshold = Math.ceil(vault.data_percent!) + 2;
    assert.ok(threshold <= 90, `the small filesystem is already ${vault.data_percent}% used`);
    web = await startWeb(socket, stateDir, ['--threshold', String(threshold), '--sample-interval', '0.5']);
    browser = await chromium.launch({ executablePath: browserBin.path!, headless: true, args: ['--no-sandbox'] });
    page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const res = await page.goto(`${web.base}/?token=${web.token}`);
    assert.equal(res?.status(), 200);
    assert.equal(new URL(page.url()).search, '', 'the token leaves the address bar');
    await page.waitForSelector('body[data-ready="true"]');
  });

  after(async () => {
    await browser?.close();
    await web?.stop();
    await daemon?.stop();
    if (sockDir) await fs.rm(sockDir, { recursive: true, force: true });
    if (base) await fs.rm(base, { recursive: true, force: true });
    if (small.root) await releaseFs(small.root);
  });

  it("shows each pool's driver, size and usage as qvm-pool usage --format json gives them", async () => {
    try {
      await pageMatchesTools();
      const shown = await shownPools(page);
      assert.deepEqual(Object.keys(shown).sort(), ['default', 'linux-kernel', 'vault']);
      assert.equal(shown['vault']!.parts['data']!.colour, GREEN);
    } finally {
      await shot('numbers');
    }
  });

  it('shows a domain started by qvm-start as running, and halted again, without a reload', async () => {
    try {
      const row = (name: string) => page.locator(`#domains tr[data-domain="${name}"]`);
      assert.equal(await row('work').locator('td.state').textContent(), 'Halted');
      assert.equal(await row('work').locator('td.class').textContent(), 'AppVM');
      assert.equal(await row('work').locator('td.template').textContent(), 'tpl');
      assert.equal(await row('work').locator('td.pools').textContent(), 'default, linux-kernel');
      assert.equal(await row('filler').locator('td.pools').textContent(), 'vault, linux-kernel');
      // Gone if the page were loaded again.
      await page.evaluate(() => ((window as unknown as { qsMarker: number }).qsMarker = 19));
      await tool('qvm-start', ['work']);
      await page.waitForSelector('#domains tr[data-domain="work"] td.state.Running', { timeout: 20_000 });
      await shot('domain-running');
      await tool('qvm-shutdown', ['--wait', 'work']);
      await page.waitForSelector('#domains tr[data-domain="work"] td.state.Halted', { timeout: 20_000 });
      assert.equal(await page.evaluate(() => (window as unknown as { qsMarker?: number }).qsMarker), 19, 'the page was not reloaded');
    } finally {
      await shot('domain-halted');
    }
  });

  it('turns the bar red when the pool is filled past the threshold, and shows the volume as qvm-volume info does', async () => {
    try {
      const before = await shownPools(page);
      assert.equal(before['vault']!.parts['data']!.cls, 'ok');
      const vault = (await usageJson()).find((r) => r.pool === 'vault')!;
      assert.equal(vault.above_threshold, false);
      // Enough data to go 3 points past the threshold, in whole MiB of random (incompressible, no holes) bytes.
      const need = ((threshold + 3 - vault.data_percent!) / 100) * vault.data_size!;
      const size = Math.ceil(need / 2 ** 20) * 2 ** 20;
      const data = path.join(sockDir, 'fill.img');
      await fs.writeFile(data, randomBytes(size));
      await tool('qvm-volume', ['import', 'filler:private', data]);
      assert.equal((await usageJson()).find((r) => r.pool === 'vault')!.above_threshold, true, 'the tool sees the pool above the threshold');
      await page.waitForSelector('#pools .pool[data-pool="vault"] .part[data-part="data"].above', { timeout: 20_000 });
      await pageMatchesTools();
      assert.equal((await shownPools(page))['vault']!.parts['data']!.colour, RED);
      assert.match((await page.locator('#notices').textContent()) ?? '', /pool vault: data above the threshold/);
      // The volume, as the tool reads it.
      await page.locator('#pools .pool[data-pool="vault"]').click();
      const info = JSON.parse(await tool('qvm-volume', ['info', '--format', 'json', 'filler:private'])) as { size: number; usage: number };
      const row = page.locator('#volumes tr[data-volume="filler:private"]');
      await row.waitFor({ timeout: 20_000 });
      await page.waitForFunction((u) => document.querySelector('#volumes tr[data-volume="filler:private"] td.usage')?.getAttribute('title') === `${u} bytes`, info.usage, { timeout: 20_000 }).catch(() => undefined);
      assert.equal(await row.locator('td.size').getAttribute('title'), `${info.size} bytes`);
      assert.equal(await row.locator('td.usage').getAttribute('title'), `${info.usage} bytes`);
    } finally {
      await shot('threshold');
    }
  });

  it('lists the revisions of a committed volume', async () => {
    try {
      await page.locator('#pools .pool[data-pool="default"]').click();
      const revs = JSON.parse(await tool('qvm-volume', ['info', '--format', 'json', 'work:private', 'revisions'])) as string[];
      assert.ok(revs.length > 0, 'the start and shutdown above made a revision');
      // Their times as the daemon gives them (ListSnapshotTimes, asked here directly over the socket).
      const times = (await new AdminClient({ socketPath: path.join(sockDir, 's') }).call('admin.vm.volume.ListSnapshotTimes', 'work', 'private')).toString();
      const expected = times.split('\n').filter(Boolean).join('\n');
      assert.deepEqual(expected.split('\n').map((l) => l.split(' ')[0]), revs);
      const cell = '#volumes tr[data-volume="work:private"] td.revisions';
      await page.waitForFunction(([c, e]) => document.querySelector(c)?.getAttribute('title') === e, [cell, expected] as const, { timeout: 20_000 }).catch(() => undefined);
      assert.equal(await page.locator(cell).getAttribute('title'), expected);
      const shown = (await page.locator(cell).textContent()) ?? '';
      for (const line of expected.split('\n')) {
        const [id, time] = line.split(' ');
        assert.ok(shown.includes(`${id} (`), `page: ${shown}`);
        assert.match(time!, /^\d{4}-\d\d-\d\dT/);
      }
    } finally {
      await shot('revisions');
    }
  });

  it('refuses every request without the token, or with a wrong one, or for another Host', async () => {
    const urls = ['/', '/app.js', '/uPlot.iife.min.js', '/api/pools', '/api/domains', '/api/volumes?pool=vault', '/api/history', '/api/events', '/nothing'];
    for (const u of urls) {
      const none = await get(`${web!.base}${u}`);
      assert.equal(none.status, 401, `${u} without a token`);
      assert.doesNotMatch(none.body, /vault|filler|tpl/);
      const wrong = await get(`${web!.base}${u}`, { authorization: `Bearer ${web!.token.slice(1)}x` });
      assert.equal(wrong.status, 403, `${u} with a wrong token`);
      assert.doesNotMatch(wrong.body, /vault|filler|tpl/);
    }
    assert.equal((await get(`${web!.base}/?token=nope`)).status, 403);
    assert.equal((await get(`${web!.base}/api/pools`, { authorization: `Bearer ${web!.token}`, host: 'attacker.example' })).status, 403);
    assert.equal((await get(`${web!.base}/api/pools`, { authorization: `Bearer ${web!.token}` })).status, 200);
    // A browser without the cookie.
    const ctx = await browser!.newContext();
    const stranger = await ctx.newPage();
    try {
      const res = await stranger.goto(`${web!.base}/`);
      assert.equal(res?.status(), 401);
      assert.doesNotMatch(await stranger.content(), /vault|filler/);
      await shot('no-token', stranger);
    } finally {
      await ctx.close();
    }
    // The token file: the printed token, mode 0600.
    const st = await fs.stat(path.join(stateDir, 'token'));
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal((await fs.readFile(path.join(stateDir, 'token'), 'utf8')).trim(), web!.token);
  });

  it('bounds what a request may ask: methods, bodies, URL length, names, page sizes, event streams', async () => {
    const auth = { authorization: `Bearer ${web!.token}` };
    const send = (method: string, pathPart: string, body?: string) =>
      new Promise<number>((resolve, reject) => {
        const req = http.request(`${web!.base}${pathPart}`, { method, headers: { ...auth, ...(body ? { 'content-length': String(body.length) } : {}) } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end(body);
      });
    assert.equal(await send('POST', '/api/pools', 'x=1'), 405);
    assert.equal(await send('DELETE', '/api/pools'), 405);
    assert.equal(await send('GET', '/api/pools', 'abc'), 413);
    assert.equal(await send('GET', `/api/domains?q=${'a'.repeat(3000)}`), 414);
    assert.equal(await send('GET', `/api/domains?q=${'a'.repeat(65)}`), 400);
    assert.equal(await send('GET', '/api/domains?offset=-1'), 400);
    assert.equal(await send('GET', '/api/volumes?pool=nosuch'), 404);
    for (const p of ['/../../etc/passwd', '/%2e%2e/package.json', '/src/web/assets/app.js', '/node_modules/uplot/package.json', '/api/../app.js/x'])
      assert.equal(await send('GET', p), 404, p);
    const page500 = JSON.parse((await get(`${web!.base}/api/domains?limit=100000`, auth)).body) as { items: unknown[] };
    assert.equal(page500.items.length, 4, 'all 4 domains (fewer than the cap of 500)');
    // The page holds one event stream; 15 more fill the 16 allowed; the next is refused.
    const open: http.ClientRequest[] = [];
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 16; i++) {
        statuses.push(
          await new Promise<number>((resolve, reject) => {
            const req = http.get(`${web!.base}/api/events`, { headers: auth }, (res) => resolve(res.statusCode ?? 0));
            req.on('error', reject);
            open.push(req);
          }),
        );
      }
      assert.deepEqual(statuses, [...Array<number>(15).fill(200), 503]);
    } finally {
      for (const r of open) r.destroy();
    }
  });

  it('refuses a non-loopback address unless told', async () => {
    const w = spawnNode(WEB, ['--listen', '0.0.0.0:0', '--state-dir', stateDir], { PATH: process.env['PATH'], HOME: stateDir });
    const end = await w.exited;
    assert.equal(end.code, 2, w.err());
    assert.match(w.err(), /0\.0\.0\.0 is not a loopback address.*--allow-remote/);
  });

  it('charts the usage history and keeps it, bounded, across a restart', async () => {
    try {
      await page.waitForFunction(() => document.querySelectorAll('#chart .uplot canvas').length > 0, undefined, { timeout: 20_000 });
      const file = path.join(stateDir, 'usage-history.json');
      const auth = () => ({ authorization: `Bearer ${web!.token}` });
      const hist = async () => (JSON.parse((await get(`${web!.base}/api/history`, auth())).body) as { pools: Record<string, number[][]> }).pools;
      const first = await hist();
      assert.ok(first['vault']!.length >= 2, `points: ${first['vault']!.length}`);
      await shot('history');
      await web!.stop();
      const saved = JSON.parse(await fs.readFile(file, 'utf8')) as { pools: Record<string, number[][]> };
      const lastBefore = saved.pools['vault']!.at(-1)!;
      assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
      // Restarted keeping 3 points: the newest of the old ones are there, no more than 3.
      web = await startWeb(path.join(sockDir, 's'), stateDir, ['--threshold', String(threshold), '--sample-interval', '0.5', '--history-points', '3']);
      const again = await hist();
      assert.ok(again['vault']!.length <= 3);
      assert.ok(
        again['vault']!.some((p) => p[0] === lastBefore[0]),
        'the last point before the restart is kept',
      );
      await page.goto(`${web.base}/?token=${web.token}`);
      await page.waitForSelector('body[data-ready="true"]');
      await page.waitForFunction(() => document.querySelectorAll('#chart .uplot canvas').length > 0, undefined, { timeout: 20_000 });
    } finally {
      await shot('history-restarted');
    }
  });
  it('follows qubesd through a restart: unreachable shown, then live again, then a start seen', async () => {
    try {
      await daemon!.stop();
      await page.waitForFunction(() => document.getElementById('live')!.textContent === 'qubesd unreachable', undefined, { timeout: 20_000 });
      await shot('daemon-stopped');
      daemon = await startDaemon(base, path.join(sockDir, 's'));
      await page.waitForFunction(() => document.getElementById('live')!.textContent === 'live', undefined, { timeout: 20_000 });
      await tool('qvm-start', ['work']);
      await page.waitForSelector('#domains tr[data-domain="work"] td.state.Running', { timeout: 20_000 });
      await tool('qvm-shutdown', ['--wait', 'work']);
      await page.waitForSelector('#domains tr[data-domain="work"] td.state.Halted', { timeout: 20_000 });
    } finally {
      await shot('daemon-restarted');
    }
  });
});
