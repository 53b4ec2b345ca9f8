// Child for the state journal tests: runs the scripted session below on the
// App of DIR, printing `ack N` after step N returned (so after it was saved),
// then closes the App, or with `kill` SIGKILLs itself without closing (the
// journal stays, as after a power cut). The parent sets
// QUBES_STORAGE_JOURNAL_FROM and QUBES_STORAGE_FAILPOINTS.
// Usage: node journal-child.js DIR REFLINK STEPS [kill]
import { openTestApp } from '../helpers/app-child.js';
import type { QubesApp } from '../../src/domain/app.js';

/** What the session's domains hold after some steps: name -> features, tags, label. */
export type SessionModel = Map<string, { features: Record<string, string>; tags: string[]; label: string }>;

const appvm = (i: number): string => `a${String(Math.floor(i / 5) * 5).padStart(3, '0')}`;

/**
 * Step i (from 1) of the session, as done to the App and to the model: a
 * create, a feature, a tag, a label, and a remove of the AppVM made 10 steps
 * earlier, in turn; every 7th step also sets a global property.
 */
export async function step(i: number, app: QubesApp | null, model: SessionModel): Promise<void> {
  const name = appvm(i);
  switch (i % 5) {
    case 0:
      if (app) await app.createDomain({ klass: 'AppVM', name, label: 'red', template: 'tpl' });
      model.set(name, { features: {}, tags: [], label: 'red' });
      break;
    case 1:
      if (app) await app.setFeature(app.domain(name), `f${i}`, `v${i}`);
      model.get(name)!.features[`f${i}`] = `v${i}`;
      break;
    case 2:
      if (app) await app.addTag(app.domain(name), `t${i}`);
      model.get(name)!.tags.push(`t${i}`);
      break;
    case 3:
      if (app) await app.setPropertyFromText(app.domain(name), 'label', i % 2 ? 'green' : 'blue');
      model.get(name)!.label = i % 2 ? 'green' : 'blue';
      break;
    case 4: {
      const old = appvm(i - 10);
      if (i >= 14 && model.has(old)) {
        if (app) await app.removeDomain(old);
        model.delete(old);
      }
      break;
    }
  }
  if (i % 7 === 0 && app) await app.setPropertyFromText(app.globals, 'default_template', 'tpl');
}

/** The model after the first n steps. */
export async function modelAfter(n: number): Promise<SessionModel> {
  const m: SessionModel = new Map();
  for (let i = 0; i < n; i++) await step(i, null, m);
  return m;
}

/** The same, read off an App. */
export function modelOf(app: QubesApp): SessionModel {
  const m: SessionModel = new Map();
  for (const d of app.domainList()) {
    if (!/^a[0-9]{3}$/.test(d.name)) continue;
    m.set(d.name, { features: Object.fromEntries(d.features), tags: [...d.tags].sort(), label: String(d.prop('label')) });
  }
  for (const v of m.values()) v.tags.sort();
  return m;
}

async function main(): Promise<void> {
  const [dir, reflink, steps, kill] = process.argv.slice(2);
  const app = await openTestApp(dir!, reflink === 'true');
  const model: SessionModel = new Map();
  if (!app.findDomain('tpl')) await app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
  for (let i = 0; i < Number(steps); i++) {
    await step(i, app, model);
    process.stdout.write(`ack ${i + 1}\n`);
  }
  if (kill === 'kill') process.kill(process.pid, 'SIGKILL');
  await app.close();
}

if (process.argv[1]?.endsWith('journal-child.js')) {
  main().catch((e) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
