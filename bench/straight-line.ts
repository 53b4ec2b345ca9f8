// The straight-line baseline of an AppVM start+stop: the same file
// operations the file-reflink driver does (snapshot of the template's root,
// durable working copy of private, empty volatile; at stop the snapshot and
// volatile dropped, private committed keeping one revision), written out
// with nothing around them. `copy` is how a copy is made: a reflink on XFS
// (lifecycle), `cp --sparse=always` on ext4 (sparse-copy).
import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

export type CopyFn = (src: string, dst: string) => Promise<void>;

/** fsync of a file, or of a directory with `dir`. */
export async function fsyncPath(p: string, dir = false): Promise<void> {
  const fh = await fs.open(p, dir ? fsc.O_RDONLY | fsc.O_DIRECTORY : fsc.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Makes directory `b` with copies of the template's root and of private
 * (and private's first revision), and returns one start+stop cycle on them.
 */
export async function straightLineCycle(b: string, tplRoot: string, priv: string, size: number, copy: CopyFn): Promise<() => Promise<void>> {
  await fs.mkdir(b);
  const f = {
    tplRoot: path.join(b, 'tpl-root.img'),
    base: path.join(b, 'root-base.img'),
    rootDirty: path.join(b, 'root-dirty.img'),
    priv: path.join(b, 'private.img'),
    privDirty: path.join(b, 'private-dirty.img'),
    vol: path.join(b, 'volatile-dirty.img'),
    tmp: path.join(b, 'tmp.img'),
  };
  await copy(tplRoot, f.tplRoot);
  await copy(priv, f.priv);
  let rev = 0;
  await copy(f.priv, path.join(b, `private.img.${++rev}`));
  return async () => {
    // start: snapshot of the template root, working copy of private, empty volatile
    // (only the origin's copy must be durable: the others are discarded after a crash)
    await fs.link(f.tplRoot, f.base);
    await copy(f.base, f.tmp);
    await fs.rename(f.tmp, f.rootDirty);
    await copy(f.priv, f.tmp);
    await fsyncPath(f.tmp);
    await fs.rename(f.tmp, f.privDirty);
    const v = await fs.open(f.tmp, 'wx');
    await v.truncate(size);
    await v.close();
    await fs.rename(f.tmp, f.vol);
    await fsyncPath(b, true);
    // stop: drop snapshot and volatile, commit private keeping one revision
    await fs.unlink(f.rootDirty);
    await fs.unlink(f.base);
    await fs.unlink(f.vol);
    await fsyncPath(f.privDirty);
    await fs.link(f.priv, path.join(b, `private.img.${++rev}`));
    await fsyncPath(b, true);
    await fs.rename(f.privDirty, f.priv);
    await fsyncPath(b, true);
    await fs.unlink(path.join(b, `private.img.${rev - 1}`));
  };
}
