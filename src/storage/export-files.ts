/**
 * The temporary files a volume hands out as its exports, for drivers whose
 * data is not a file a reader can open in place (lvm_thin, rbd): each export
 * is a copy made for that reader, and ends once, by the path it was given.
 */
import * as fs from 'node:fs/promises';
import { StoragePoolException } from './errors.js';

export class ExportFiles {
  private readonly held = new Set<string>();

  /** Makes the export `file` through `fill` and holds it; a fill that fails leaves no file. */
  async make(file: string, fill: (file: string) => Promise<void>): Promise<string> {
    try {
      await fill(file);
    } catch (e) {
      await fs.rm(file, { force: true });
      throw e;
    }
    this.held.add(file);
    return file;
  }

  /**
   * Ends the export `file` through `remove` (the driver's own, its errors
   * worded by the driver); it is no longer held even when the removal fails.
   * A path this volume did not hand out, or ended already, is refused.
   */
  async end(file: string, where: string, remove: (file: string) => Promise<void>): Promise<void> {
    if (!this.held.has(file)) throw new StoragePoolException(`${where}: not an export in progress: ${file}`);
    try {
      await remove(file);
    } finally {
      this.held.delete(file);
    }
  }
}
