// Child process of the rbd crash tests: runs operations on the volume
// appvms/crash/private of an rbd pool with the given image prefix, in order. With
// QUBES_STORAGE_FAILPOINTS set it is killed (SIGKILL) at that point.
// argv: PREFIX OP...   (OP: start, stop, write:TEXT, import:SEED, revert)
import { pattern } from '../../helpers/data.js';
import { crashVolume, makeRbdPool, writeVol } from './helpers.js';

const [prefix, ...ops] = process.argv.slice(2);
const pool = makeRbdPool({ prefix: prefix!, revisionsToKeep: 2 });
const priv = crashVolume(pool);
for (const op of ops) {
  const [kind, arg] = op.split(':');
  if (kind === 'start') await priv.start();
  else if (kind === 'stop') await priv.stop();
  else if (kind === 'write') await writeVol(priv, 0, arg!.padEnd(16, '\0'));
  else if (kind === 'import') {
    const p = await priv.importData(priv.size);
    const { writeAt } = await import('../../helpers/data.js');
    await writeAt(p, 0, pattern(priv.size, Number(arg)));
    await priv.importDataEnd(true);
  } else if (kind === 'revert') await priv.revert();
  else throw new Error(`unknown op ${op}`);
}
