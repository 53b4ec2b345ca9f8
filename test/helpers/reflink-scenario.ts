// A template and an AppVM on one file-reflink pool, built the same way in the
// test process and in crash children, so both see the same volumes.
import { fileReflinkDriver } from '../../src/drivers/file-reflink/index.js';
import type { FileReflinkPool } from '../../src/drivers/file-reflink/pool.js';
import { DomainStorage } from '../../src/storage/domain-storage.js';
import { defaultVolumeConfigs, type DomainClass } from '../../src/storage/volume-sets.js';
import { MiB } from './data.js';

export interface Scenario {
  pool: FileReflinkPool;
  tpl: DomainStorage;
  app: DomainStorage;
  disp: DomainStorage;
}

export interface ScenarioOptions {
  setupCheck: boolean;
  revisionsToKeep?: number;
  rootSize?: number;
  privateSize?: number;
}

export function makePool(dir: string, o: ScenarioOptions, name = 'testpool'): FileReflinkPool {
  return fileReflinkDriver.createPool(name, {
    dir_path: dir,
    setup_check: o.setupCheck,
    revisions_to_keep: o.revisionsToKeep ?? 2,
    ephemeral_volatile: false,
  }) as FileReflinkPool;
}

export function domain(
  pool: FileReflinkPool,
  name: string,
  klass: DomainClass,
  o: ScenarioOptions,
  template: DomainStorage | null = null,
): DomainStorage {
  const p = pool.name;
  return DomainStorage.init(
    {
      domain: { name, dirPrefix: klass === 'TemplateVM' ? 'vm-templates' : 'appvms' },
      volumes: defaultVolumeConfigs(klass, { root: p, private: p, volatile: p }, {
        root: o.rootSize ?? 8 * MiB,
        private: o.privateSize ?? 4 * MiB,
      }),
      template,
    },
    () => pool,
  );
}

export function scenario(dir: string, o: ScenarioOptions): Scenario {
  const pool = makePool(dir, o);
  const tpl = domain(pool, 'tpl', 'TemplateVM', o);
  const app = domain(pool, 'work', 'AppVM', o, tpl);
  const disp = domain(pool, 'disp1', 'DispVM', o, app);
  return { pool, tpl, app, disp };
}
