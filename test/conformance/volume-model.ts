// The in-memory model of the volume semantics the model-based tests compare
// against: what each volume holds (as an 8-byte tag written at its start),
// its working copy while running, its revisions and its size. Shared by the
// conformance suite (every driver, through the library) and the daemon
// tests; it knows nothing of files or sockets.

export const REVISIONS_TO_KEEP = 2;
export const TAG_BYTES = 8;

export interface OriginModel {
  committed: string;
  /** The working copy while its domain runs. */
  dirty: string | null;
  /** Oldest first; each keeps the data and the size it had when committed. */
  revisions: { data: string; size: number }[];
  size: number;
  /** Revisions kept (the volume's revisions_to_keep, >= 0). */
  keep: number;
}

export interface VmModel {
  running: boolean;
  private: OriginModel;
  /** AppVMs: the template root's committed tag seen at start (the snapshot). */
  rootSnapshot: string | null;
  /** The template root's commit count at start (is_outdated compares it). */
  rootVersion: number;
}

export interface Model {
  tplRoot: OriginModel;
  tplRunning: boolean;
  /** Commits of the template root so far. */
  tplVersion: number;
  vms: Record<string, VmModel>;
}

export const EMPTY_TAG = '';

export function origin(size: number, keep = REVISIONS_TO_KEEP): OriginModel {
  return { committed: EMPTY_TAG, dirty: null, revisions: [], size, keep };
}

/** A commit: the old data becomes the newest revision, the oldest past the limit go. */
export function commit(o: OriginModel, data: string): void {
  o.revisions.push({ data: o.committed, size: o.size });
  while (o.revisions.length > o.keep) o.revisions.shift();
  o.committed = data;
}

/** Revert to the newest revision: it leaves the list; the current data becomes the newest; the size is the revision's. */
export function revertNewest(o: OriginModel): void {
  const target = o.revisions.pop()!;
  o.revisions.push({ data: o.committed, size: o.size });
  o.committed = target.data;
  o.size = target.size;
}

export function startVm(m: Model, name: string): void {
  const vm = m.vms[name]!;
  vm.running = true;
  vm.private.dirty = vm.private.committed;
  vm.rootSnapshot = m.tplRoot.committed;
  vm.rootVersion = m.tplVersion;
}

export function stopVm(m: Model, name: string): void {
  const vm = m.vms[name]!;
  vm.running = false;
  commit(vm.private, vm.private.dirty!);
  vm.private.dirty = null;
  vm.rootSnapshot = null;
}

/** The content of the first TAG_BYTES of a volume, as the model tags it. */
export function tagOf(buf: Buffer): string {
  return buf.subarray(0, TAG_BYTES).toString('latin1').replace(/\0+$/, '');
}

export function tagBytes(tag: string): Buffer {
  const b = Buffer.alloc(TAG_BYTES);
  b.write(tag, 'latin1');
  return b;
}

/** A template and AppVMs, all empty and halted, volumes of `size`. */
export function newModel(vms: readonly string[], size: number, keep = REVISIONS_TO_KEEP): Model {
  return {
    tplRoot: origin(size, keep),
    tplRunning: false,
    tplVersion: 0,
    vms: Object.fromEntries(vms.map((n) => [n, { running: false, private: origin(size, keep), rootSnapshot: null, rootVersion: 0 }])),
  };
}
