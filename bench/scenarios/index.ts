// The scenario registry: `npm run bench -- NAME` picks by name, in this order.
import type { Scenario } from '../run.js';
import { lifecycle } from './lifecycle.js';
import { lifecycleDaemon } from './lifecycle-daemon.js';
import { clone } from './clone.js';
import { scale } from './scale.js';
import { importExport } from './import-export.js';
import { apiLoad } from './api-load.js';
import { tools } from './tools.js';
import { sparseCopyScenario } from './sparse-copy.js';
import { web } from './web.js';

export const SCENARIOS: Scenario[] = [lifecycle, lifecycleDaemon, clone, scale, importExport, apiLoad, tools, sparseCopyScenario, web];
