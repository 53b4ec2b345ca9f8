/**
 * The thread behind lstat-batch.ts: reads the lstat of every path of a
 * batch, one after another, and answers the batch in one message. Runs as a
 * worker thread, so a slow filesystem blocks this thread, never the
 * daemon's event loop.
 */
import { lstatSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { LstatAnswer } from './lstat-batch.js';

function read(p: string): LstatAnswer {
  try {
    const st = lstatSync(p, { throwIfNoEntry: false });
    return st ? [st.dev, st.ino, st.mode, st.size, st.blocks] : null;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return { code: err.code ?? 'EIO', errno: err.errno ?? 0, message: err.message };
  }
}

parentPort!.on('message', (paths: string[]) => {
  parentPort!.postMessage(paths.map(read));
});
