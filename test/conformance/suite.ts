/**
 * The driver conformance suite: the whole volume contract, table-driven by
 * the driver's own declaration (capabilities), run against a pool factory
 * (target.ts). What the declaration says a driver does is exercised; what it
 * says the driver cannot do is checked to be refused with the right error
 * class. Nothing is skipped silently: a check that does not apply to a
 * driver is replaced by the refusal it implies, or named in a diagnostic.
 *
 * The suite's title carries `[conformance:DRIVER@PLACE]`, by which the test
 * summary counts it per driver and per place (test/helpers/count-reporter.ts).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { pattern, readAt, sha256, writeAt, MiB } from '../helpers/data.js';
import {
  QubesException,
  QubesValueError,
  QubesVolumeRevisionNotFoundError,
  StoragePoolException,
} from '../../src/storage/errors.js';
import { canShrink } from '../../src/storage/driver.js';
import type { Pool } from '../../src/storage/pool.js';
import type { Volume, VolumeSpec } from '../../src/storage/volume.js';
import { filesUnder, type ConformanceTarget } from './target.js';
import { KINDS, SIZE, TAG, tagBytes, untag, volumesOf } from './volumes.js';
import { openPool } from './open-pool.js';
import { describeCrashRecovery } from './crash.js';
import { describeModel } from './model.js';

/** The suite's title: counted per driver and place by the test summary. */
export function conformanceTitle(t: ConformanceTarget): string {
  return `driver conformance [conformance:${t.driver.name}@${t.place}]`;
}

/** An error check for assert.rejects/throws: of class `cls`, the message matching `re` when given. */
export function isError(cls: abstract new (...a: never[]) => Error, re?: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`);
    if (re) assert.match(e.message, re);
    return true;
  };
}

/** Refused at initVolume or at create, whichever the driver does: never made. */
async function refusedToMake(make: () => Volume, cls: abstract new (...a: never[]) => Error, re?: RegExp): Promise<void> {
  await assert.rejects(async () => {
    const v = make();
    await v.create();
  }, isError(cls, re));
}

export function describeConformance(target: ConformanceTarget): void {
  const caps = target.driver.capabilities;
  const kinds = new Set(caps.volumeKinds);
  const finiteMax = Number.isFinite(caps.maxRevisions);
  /** Revisions the volumes here keep: 2, or fewer when the driver keeps fewer. */
  const KEEP = Math.min(2, caps.maxRevisions);
  const io = target.io;

  describe(conformanceTitle(target), { skip: target.skip }, () => {
    let pool: Pool;
    let n = 0;
    const dom = (): string => `d${++n}`;
    before(async () => {
      pool = await target.makePool(caps.writable ? { revisions_to_keep: KEEP } : {});
      await pool.setup();
    });
    after(() => target.cleanup());

    const read = async (v: Volume): Promise<string> => untag(await io.read(await v.path(), 0, TAG));
    const write = async (v: Volume, s: string, offset = 0): Promise<void> => io.write(await v.path(), offset, tagBytes(s));
    /** The committed data's tag, read through export (as admin.vm.volume.Export does). */
    const committed = async (v: Volume, offset = 0): Promise<string> => {
      const p = await v.export();
      try {
        return untag(await readAt(p, offset, TAG));
      } finally {
        await v.exportEnd(p);
      }
    };
    const exportedSize = async (v: Volume): Promise<number> => {
      const p = await v.export();
      try {
        return (await fs.stat(p)).size;
      } finally {
        await v.exportEnd(p);
      }
    };
    /** One session of a save_on_stop volume: start, write `s`, stop (commit). */
    const session = async (v: Volume, s: string): Promise<void> => {
      await v.start();
      await write(v, s);
      await v.stop();
    };
    const noDebris = async (p = pool): Promise<void> => assert.deepEqual(await target.debris(p), [], 'nothing left that is not at rest');
    /**
     * What a refused change must leave alone: the committed data's hash and
     * size, the revisions, and, for a pool in a directory, the digest of every
     * file under it.
     */
    const stateOf = async (v: Volume): Promise<unknown> => {
      const p = await v.export();
      let data: string;
      try {
        data = await sha256(p);
      } finally {
        await v.exportEnd(p);
      }
      const dir = v.pool.config()['dir_path'];
      return { size: v.size, data, revisions: await v.revisions(), files: typeof dir === 'string' ? await digestOfDir(dir) : null };
    };

    /** The shrink of a driver that declares it: the cut, the revision that keeps the old data, revert, the refusals. */
    function describeShrink(): void {
      const HALF = SIZE / 2;
      /** An origin with 'head' at 0 and 'tail' in its last TAG bytes, committed. */
      const headAndTail = async (extra: Partial<VolumeSpec> = {}): Promise<Volume> => {
        const v = volumesOf(pool, dom()).origin(extra);
        await v.create();
        await v.start();
        await write(v, 'head');
        await write(v, 'tail', SIZE - TAG);
        await v.stop();
        return v;
      };

      it('a forced shrink keeps the data up to the new end, cuts the rest, and reports the new size', async () => {
        const v = await headAndTail();
        await v.resize(HALF, { force: true });
        assert.equal(v.size, HALF);
        assert.equal((await v.info()).size, HALF);
        assert.equal(await exportedSize(v), HALF);
        assert.equal(await committed(v), 'head');
        await v.start();
        assert.equal(untag(await io.read(await v.path(), 0, TAG)), 'head', 'the domain sees the data before the cut');
        await v.stop();
        // Grown back, the old end reads zeros: the data past the cut is gone, not hidden.
        await v.resize(SIZE);
        assert.equal(await committed(v, SIZE - TAG), '');
        await noDebris();
      });

      if (KEEP > 0)
        it(`keeps the data before the cut as the newest revision (old size and data); revert undoes the shrink, and can itself be undone`, async () => {
          const v = await headAndTail();
          const revsBefore = await v.revisions();
          await v.resize(HALF, { force: true });
          const revs = await v.revisions();
          assert.equal(revs.length, Math.min(revsBefore.length + 1, KEEP), 'one more revision, within the limit');
          assert.ok(!revsBefore.some((r) => r.id === revs.at(-1)!.id), 'the newest revision is new');
          if (target.revisionData) assert.equal(untag(await target.revisionData(v, revs.at(-1)!, TAG)), 'head');
          await v.revert();
          assert.equal(v.size, SIZE, 'the old size is back');
          assert.equal((await v.info()).size, SIZE);
          assert.equal(await exportedSize(v), SIZE);
          assert.equal(await committed(v), 'head');
          assert.equal(await committed(v, SIZE - TAG), 'tail', 'the cut data is back');
          // The shrunk state became a revision of its own: reverting again shrinks again.
          await v.revert();
          assert.equal(v.size, HALF);
          assert.equal(await exportedSize(v), HALF);
          await noDebris();
        });

      it('with revisions_to_keep 0 (and -1) a shrink just cuts: no revision is made', async () => {
        for (const keep of [0, -1]) {
          const v = await headAndTail({ revisions_to_keep: keep });
          await v.resize(HALF, { force: true });
          assert.equal(v.size, HALF);
          assert.equal(await exportedSize(v), HALF);
          assert.equal(await committed(v), 'head');
          assert.deepEqual(await v.revisions(), [], `revisions_to_keep ${keep}`);
        }
        await noDebris();
      });

      it('refuses to shrink a volume in use (StoragePoolException): the running copy and the committed data stay whole', async () => {
        const v = await headAndTail();
        await v.start();
        await assert.rejects(v.resize(HALF, { force: true }), isError(StoragePoolException, /cannot shrink .* while the volume is in use/));
        assert.equal(v.size, SIZE);
        assert.equal(untag(await io.read(await v.path(), SIZE - TAG, TAG)), 'tail', 'the running copy is whole');
        assert.equal(await exportedSize(v), SIZE);
        await v.stop();
        assert.equal(await exportedSize(v), SIZE);
        assert.equal(await committed(v, SIZE - TAG), 'tail');
      });

      if (kinds.has('snapshot'))
        it("refuses to shrink a snapshot (its data is its source's) with StoragePoolException", async () => {
          const d = volumesOf(pool, dom());
          const src = d.templateRoot();
          await src.create();
          const snap = d.snapshot(src);
          await snap.create();
          await assert.rejects(snap.resize(HALF, { force: true }), isError(StoragePoolException, /shrink the source/));
          assert.equal(snap.size, SIZE);
        });

      if (kinds.has('volatile'))
        it('shrinks a stopped volatile volume: its next start has the new size', async () => {
          const v = volumesOf(pool, dom()).volatile();
          await v.create();
          await v.resize(HALF, { force: true });
          assert.equal(v.size, HALF);
          await v.start();
          if (target.io.name === 'file') assert.equal((await fs.stat(await v.path())).size, HALF);
          await v.stop();
          await v.remove();
        });
    }

    // ---- the declaration ------------------------------------------------

    describe('the declaration', () => {
      it('is well formed', (t) => {
        assert.ok(caps.volumeKinds.length > 0 && caps.volumeKinds.every((k) => KINDS.includes(k)), `volumeKinds ${caps.volumeKinds.join(',')}`);
        assert.ok(caps.maxRevisions === Infinity || (Number.isSafeInteger(caps.maxRevisions) && caps.maxRevisions >= 0));
        t.diagnostic(`kinds ${caps.volumeKinds.join(',')}; maxRevisions ${caps.maxRevisions}; writable ${caps.writable}; remote ${caps.remote}; shrink ${canShrink(caps)}`);
      });

      for (const kind of KINDS.filter((k) => !kinds.has(k)))
        it(`refuses a ${kind} volume (not declared) with QubesValueError`, async () => {
          const before = await pool.listVolumes();
          const d = dom();
          const src = target.presentVid
            ? pool.initVolume(null, { name: 'kernel', vid: target.presentVid })
            : volumesOf(pool, d).templateRoot();
          await refusedToMake(() => volumesOf(pool, d).ofKind(kind, src), QubesValueError);
          assert.deepEqual(await pool.listVolumes(), before, 'nothing made');
        });

      if (finiteMax) {
        it(`refuses a pool keeping ${caps.maxRevisions + 1} revisions (maxRevisions ${caps.maxRevisions}) with QubesValueError`, async () => {
          await assert.rejects(target.makePool({ revisions_to_keep: caps.maxRevisions + 1 }), isError(QubesValueError));
        });
        it(`refuses a volume keeping ${caps.maxRevisions + 1} revisions at init, and setRevisionsToKeep(${caps.maxRevisions + 1}), with QubesValueError`, async () => {
          const d = dom();
          const kind = kinds.has('origin') ? 'origin' : caps.volumeKinds[0]!;
          const make = (extra: Partial<VolumeSpec>): Volume =>
            target.presentVid
              ? pool.initVolume(null, { name: 'kernel', vid: target.presentVid, ...extra })
              : kind === 'origin'
                ? volumesOf(pool, d).origin(extra)
                : volumesOf(pool, d).ofKind(kind, volumesOf(pool, d).templateRoot());
          await refusedToMake(() => make({ revisions_to_keep: caps.maxRevisions + 1 }), QubesValueError);
          const v = make({});
          assert.throws(() => v.setRevisionsToKeep(caps.maxRevisions + 1), isError(QubesValueError));
          assert.ok(v.revisions_to_keep <= caps.maxRevisions, `revisions_to_keep ${v.revisions_to_keep} after the refusal`);
        });
      } else {
        it('keeps any number of revisions (maxRevisions Infinity): a volume keeping 50 is accepted', () => {
          const v = volumesOf(pool, dom()).origin({ revisions_to_keep: 50 });
          assert.equal(v.revisions_to_keep, 50);
        });
      }
    });

    if (!caps.writable) {
      describeReadOnly(() => pool);
      describeCrashRecovery(target);
      return;
    }

    // ---- every declared kind --------------------------------------------

    describe('volume kinds', () => {
      if (kinds.has('origin'))
        it('origin: created empty, the domain writes a working copy, committed on stop, kept across restarts', async () => {
          const v = volumesOf(pool, dom()).origin();
          await v.create();
          assert.equal(await committed(v), '', 'a new volume reads as zeros');
          assert.equal(await v.isDirty(), false);
          await v.start();
          assert.equal(await v.isDirty(), true);
          await write(v, 'first');
          assert.equal(await committed(v), '', 'not committed while running');
          await v.stop();
          assert.equal(await v.isDirty(), false);
          assert.equal(await committed(v), 'first');
          await v.start();
          assert.equal(await read(v), 'first', 'the next start has it');
          await v.stop();
          assert.equal(await exportedSize(v), SIZE);
          await noDebris();
        });

      if (kinds.has('snapshot'))
        it("snapshot: starts from the source's committed data, drops its writes on stop, is_outdated after the source commits", async () => {
          const d = volumesOf(pool, dom());
          const src = d.templateRoot();
          await src.create();
          await session(src, 'v1');
          const snap = d.snapshot(src);
          await snap.create();
          await snap.start();
          assert.equal(await read(snap), 'v1');
          assert.equal(await snap.isOutdated(), false);
          await src.start();
          await write(src, 'v2');
          assert.equal(await read(snap), 'v1', "the source's running writes are invisible");
          await src.stop();
          assert.equal(await read(snap), 'v1', 'a running snapshot keeps its data');
          const outdated = await snap.isOutdated();
          assert.ok(outdated === true || outdated === null, `is_outdated after the source committed: ${outdated}`);
          await write(snap, 'scribble');
          await snap.stop();
          assert.equal(await snap.isDirty(), false);
          await snap.start();
          assert.equal(await read(snap), 'v2', 'a new start has the new data, not the writes');
          assert.equal(await snap.isOutdated(), false);
          await snap.stop();
          // a snapshot started while its source runs gets the source's committed data
          await src.start();
          await write(src, 'v3 (uncommitted)');
          await snap.start();
          assert.equal(await read(snap), 'v2');
          await snap.stop();
          await src.stop();
          await noDebris();
        });

      if (kinds.has('volatile'))
        it('volatile: empty at every start, its writes dropped on stop', async () => {
          const v = volumesOf(pool, dom()).volatile();
          await v.create();
          await v.start();
          assert.equal(await read(v), '');
          await write(v, 'swap data');
          await v.stop();
          assert.equal(await v.isDirty(), false);
          await v.start();
          assert.equal(await read(v), '', 'empty again');
          await v.stop();
          await v.remove();
          await noDebris();
        });

      if (kinds.has('origin_snapshot'))
        it("origin_snapshot: starts from the source's committed data, commits its writes on stop", async () => {
          const d = volumesOf(pool, dom());
          const src = d.templateRoot();
          await src.create();
          await session(src, 'base');
          const v = d.originSnapshot(src);
          await v.create();
          await v.start();
          assert.equal(await read(v), 'base');
          await write(v, 'own');
          await v.stop();
          assert.equal(await committed(v), 'own');
          await noDebris();
        });

      if (kinds.has('origin'))
        it('remove: the volume, its revisions and its working files go; the pool no longer lists it', async () => {
          const v = volumesOf(pool, dom()).origin();
          await v.create();
          await session(v, 'a');
          await session(v, 'b');
          assert.ok((await pool.listVolumes()).includes(v.vid));
          await v.remove();
          assert.ok(!(await pool.listVolumes()).includes(v.vid));
          assert.deepEqual(await v.revisions(), [], 'its revisions went too');
          await assert.rejects(v.verify(), isError(StoragePoolException));
          await noDebris();
        });
    });

    if (!kinds.has('origin')) {
      it('keeps no data of its own (no origin kind): revisions, resize, import, export and clones do not apply', (t) => {
        t.diagnostic('the declaration lists no origin kind; the refusals above cover it');
      });
      describeCrashRecovery(target);
      return;
    }

    // ---- revisions and revert -------------------------------------------

    describe('revisions and revert', () => {
      if (KEEP >= 1)
        it(`keeps ${KEEP} revision(s) and trims the oldest, with increasing ids and UTC times`, async () => {
          const v = volumesOf(pool, dom()).origin();
          await v.create();
          const ids: number[] = [];
          for (const s of ['one', 'two', 'three']) {
            await session(v, s);
            const revs = await v.revisions();
            assert.ok(revs.length <= KEEP, `${revs.length} revisions, limit ${KEEP}`);
            ids.push(parseInt(revs.at(-1)!.id, 10)); // the number an id starts with (lvm_thin: TIMESTAMP-back, as Qubes names them)
          }
          const revs = await v.revisions();
          assert.equal(revs.length, KEEP);
          for (let i = 1; i < ids.length; i++) assert.ok(ids[i]! > ids[i - 1]!, `ids increase: ${ids.join(',')}`);
          for (const r of revs) {
            assert.match(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
            assert.ok(Math.abs(Date.parse(r.time) - Date.now()) < 300_000, `time ${r.time} is now, in UTC`);
          }
          // Which were kept: the oldest kept is the data KEEP commits ago.
          await v.revert(revs[0]!.id);
          assert.equal(await committed(v), ['one', 'two'][2 - KEEP]);
        });

      if (KEEP >= 1)
        it('reverts to the exact data, and the revert itself can be reverted', async () => {
          const v = volumesOf(pool, dom()).origin();
          await v.create();
          await session(v, 'old');
          await v.start();
          await io.write(await v.path(), MiB, pattern(MiB, 3));
          await write(v, 'new');
          await v.stop();
          const current = await committed(v);
          const before = await v.revisions();
          await v.revert();
          assert.equal(await committed(v), 'old');
          assert.deepEqual(untag(await readAtExport(v, MiB)), '', 'the whole image is the old one');
          const after = await v.revisions();
          assert.ok(!after.some((r) => r.id === before.at(-1)!.id), 'the restored revision became the current data');
          assert.equal(after.length, before.length, 'the data before the revert became a revision');
          await v.revert(); // the newest: the data before the revert
          assert.equal(await committed(v), current);
          const p = await v.export();
          try {
            assert.deepEqual(await readAt(p, MiB, MiB), pattern(MiB, 3));
          } finally {
            await v.exportEnd(p);
          }
          await noDebris();
        });

      it('keeps no revision with revisions_to_keep 0, and then has nothing to revert to', async () => {
        const v = volumesOf(pool, dom()).origin({ revisions_to_keep: 0 });
        await v.create();
        await session(v, 'a');
        await session(v, 'b');
        assert.deepEqual(await v.revisions(), []);
        await assert.rejects(v.revert(), isError(QubesVolumeRevisionNotFoundError));
        assert.equal(await committed(v), 'b');
      });

      it('refuses revert while started (StoragePoolException) and to an unknown revision (QubesVolumeRevisionNotFoundError)', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await session(v, 'a');
        await assert.rejects(v.revert('999999'), isError(QubesVolumeRevisionNotFoundError));
        await v.start();
        await assert.rejects(v.revert(), isError(StoragePoolException, /dirty|in use/));
        await v.stop();
      });

      it('with revisions_to_keep -1 writes in place, keeps no revision, refuses export while running and snapshots of it', async () => {
        const d = volumesOf(pool, dom());
        const v = d.templateRoot({ revisions_to_keep: -1 });
        await v.create();
        await v.start();
        await write(v, 'in place');
        await assert.rejects(v.export(), isError(StoragePoolException, /snapshots disabled/));
        if (kinds.has('snapshot')) {
          const snap = d.snapshot(v);
          await snap.create();
          await assert.rejects(snap.start(), isError(StoragePoolException, /snapshots disabled/));
        }
        await v.stop();
        assert.deepEqual(await v.revisions(), []);
        assert.equal(await committed(v), 'in place');
        if (kinds.has('snapshot')) assert.throws(() => d.snapshot(v).setRevisionsToKeep(-1), isError(QubesValueError));
      });
    });

    async function readAtExport(v: Volume, offset: number): Promise<Buffer> {
      const p = await v.export();
      try {
        return await readAt(p, offset, TAG);
      } finally {
        await v.exportEnd(p);
      }
    }

    // ---- resize ---------------------------------------------------------

    describe('resize', () => {
      it('grows keeping the data, a running copy follows, shrinking is refused without force (and done with it where declared)', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await session(v, 'keep me');
        await v.resize(SIZE + 2 * MiB);
        assert.equal(v.size, SIZE + 2 * MiB);
        assert.equal(await exportedSize(v), SIZE + 2 * MiB);
        assert.equal(await committed(v), 'keep me');
        await assert.rejects(v.resize(SIZE), canShrink(caps) ? isError(QubesValueError, /shrink.*refused without force/) : isError(StoragePoolException, /cannot shrink/));
        assert.equal(v.size, SIZE + 2 * MiB);
        await v.start();
        await v.resize(SIZE + 3 * MiB);
        await write(v, 'at the new end', SIZE + 3 * MiB - TAG); // the running copy has grown
        await v.stop();
        assert.equal(await committed(v, SIZE + 3 * MiB - TAG), 'at the new end');
        if (!canShrink(caps)) return; // the refusal: 'cannot shrink' below
        await v.resize(SIZE, { force: true });
        assert.equal(v.size, SIZE);
        assert.equal(await exportedSize(v), SIZE);
        assert.equal(await committed(v), 'keep me');
      });

      if (canShrink(caps)) describeShrink();
      else if (caps.writable)
        it(`refuses a shrink, forced or not (shrink not declared), with StoragePoolException naming the driver, and changes nothing`, async () => {
          const v = volumesOf(pool, dom()).origin();
          await v.create();
          await session(v, 'head');
          await v.start();
          await write(v, 'tail', SIZE - TAG);
          await v.stop();
          const before = await stateOf(v);
          for (const force of [true, false])
            await assert.rejects(
              v.resize(SIZE / 2, { force }),
              isError(StoragePoolException, new RegExp(`cannot shrink from ${SIZE} to ${SIZE / 2} bytes: driver ${pool.declaredBy} cannot shrink volumes`)),
            );
          assert.equal(v.size, SIZE);
          assert.deepEqual(await stateOf(v), before, 'nothing changed');
        });

      if (kinds.has('snapshot'))
        it('resizes a running snapshot: its running data follows', async () => {
          const d = volumesOf(pool, dom());
          const src = d.templateRoot();
          await src.create();
          const snap = d.snapshot(src);
          await snap.create();
          await snap.start();
          await snap.resize(SIZE + 2 * MiB);
          await write(snap, 'at the end', SIZE + 2 * MiB - TAG);
          assert.equal(untag(await io.read(await snap.path(), SIZE + 2 * MiB - TAG, TAG)), 'at the end');
          await snap.stop();
          assert.equal(snap.size, SIZE + 2 * MiB);
        });

      it('refuses to resize a read-only volume (QubesValueError)', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        v.setRw(false);
        await assert.rejects(v.resize(SIZE * 2), isError(QubesValueError, /read-only/));
        assert.equal(await exportedSize(v), SIZE);
      });
    });

    // ---- import and export ----------------------------------------------

    describe('import and export', () => {
      it('exports the committed data, also while running (the data before the start)', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await session(v, 'committed');
        await v.start();
        await write(v, 'uncommitted');
        assert.equal(await committed(v), 'committed');
        await v.stop();
        assert.equal(await committed(v), 'uncommitted');
        await noDebris();
      });

      it('exportInto hands over the data export() gives (size first, pieces in order), also while running; a sink that fails stops it and leaves nothing', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await v.start();
        await write(v, 'committed');
        await write(v, 'far', SIZE - MiB); // data after a hole
        await v.stop();
        await v.start();
        await write(v, 'uncommitted');
        /** The export through the sink, assembled; checks the order of the calls. */
        const viaSink = async (): Promise<Buffer> => {
          let buf: Buffer | null = null;
          let reached = 0;
          let ends = 0;
          await v.exportInto({
            begin: async (size) => {
              assert.equal(buf, null, 'begin once');
              buf = Buffer.alloc(size);
            },
            data: async (offset, bytes) => {
              assert.ok(buf, 'begin first');
              assert.equal(ends, 0, 'no data after the end');
              assert.ok(offset >= reached && offset + bytes.length <= buf.length && bytes.length > 0, `piece ${offset}+${bytes.length} in order, within ${buf.length}`);
              bytes.copy(buf, offset);
              reached = offset + bytes.length;
            },
            end: async () => {
              assert.ok(buf, 'begin before the end');
              ends++;
            },
          });
          assert.ok(buf, 'begin was called');
          assert.equal(ends, 1, 'end once, before exportInto returned');
          return buf;
        };
        const viaPath = async (): Promise<string> => {
          const p = await v.export();
          try {
            return await sha256(p);
          } finally {
            await v.exportEnd(p);
          }
        };
        let got = await viaSink();
        assert.equal(untag(got.subarray(0, TAG)), 'committed', 'while running: the data before the start');
        assert.equal(untag(got.subarray(SIZE - MiB, SIZE - MiB + TAG)), 'far');
        assert.equal(sha256Of(got), await viaPath());
        const failure = new Error('the reader went away');
        await assert.rejects(v.exportInto({ begin: async () => undefined, data: async () => { throw failure; }, end: async () => assert.fail('no end after a failure') }), (e) => e === failure);
        await v.stop();
        got = await viaSink();
        assert.equal(untag(got.subarray(0, TAG)), 'uncommitted');
        assert.equal(sha256Of(got), await viaPath());
        await noDebris();
      });

      it('exportInto lends its bytes: a sink that holds each piece a while finds it unchanged until its data() resolved (no buffer read into again before)', async () => {
        // 40 MiB with a tag every MiB: more pieces than any driver keeps buffers (rbd a ring of 5 of
        // 4 MiB, the files two taking turns), so a buffer read into again too early shows here.
        const size = 40 * MiB;
        const v = volumesOf(pool, dom()).origin({ size });
        await v.create();
        await v.start();
        for (let k = 0; k < size / MiB; k++) await write(v, `piece ${k}`, k * MiB);
        await v.stop();
        const got = Buffer.alloc(size);
        let pieces = 0;
        await v.exportInto({
          begin: async (n) => assert.equal(n, size),
          data: async (offset, bytes) => {
            const kept = Buffer.from(bytes);
            await new Promise((r) => setTimeout(r, 3)); // the socket's write, slow
            assert.ok(bytes.equals(kept), `the piece at ${offset} (${bytes.length} bytes) changed while the sink held it`);
            bytes.copy(got, offset);
            pieces++;
          },
          end: async () => undefined,
        });
        for (let k = 0; k < size / MiB; k++) assert.equal(untag(got.subarray(k * MiB, k * MiB + TAG)), `piece ${k}`);
        assert.ok(pieces >= 6, `${pieces} pieces: too few to reuse a buffer`);
        await noDebris();
      });

      it('imports data on success only (importData, importDataEnd); a failed import keeps the old data and leaves nothing', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await session(v, 'old');
        const revs = (await v.revisions()).length;
        let p = await v.importData(2 * MiB);
        await writeAt(p, 0, pattern(MiB, 7));
        await v.importDataEnd(false);
        assert.equal(await committed(v), 'old');
        assert.equal(v.size, SIZE);
        assert.equal((await v.revisions()).length, revs, 'a failed import makes no revision');
        await noDebris();
        p = await v.importData(2 * MiB);
        const data = pattern(2 * MiB, 8);
        tagBytes('imported').copy(data);
        await writeAt(p, 0, data);
        await v.importDataEnd(true);
        assert.equal(v.size, 2 * MiB);
        assert.equal(await exportedSize(v), 2 * MiB);
        const e = await v.export();
        try {
          assert.equal(await sha256(e), sha256Of(data));
        } finally {
          await v.exportEnd(e);
        }
        if (KEEP >= 1) {
          const after = await v.revisions();
          assert.equal(after.length, Math.min(revs + 1, KEEP), 'the old data became a revision');
          await v.revert();
          assert.equal(await committed(v), 'old');
        }
        await noDebris();
      });

      it('an import whose data vanished fails with StoragePoolException and keeps the old data', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await session(v, 'old');
        const p = await v.importData(SIZE);
        await fs.rm(p);
        await assert.rejects(v.importDataEnd(true), isError(StoragePoolException));
        assert.equal(await committed(v), 'old');
        assert.equal(v.size, SIZE);
        await noDebris();
      });

      it('refuses an import while started, a second import at once, and an end without an import (StoragePoolException)', async () => {
        const v = volumesOf(pool, dom()).origin();
        await v.create();
        await v.start();
        await assert.rejects(v.importData(MiB), isError(StoragePoolException, /in use/));
        await v.stop();
        await v.importData(MiB);
        await assert.rejects(v.importData(MiB), isError(StoragePoolException, /in progress/));
        await v.importDataEnd(false);
        await assert.rejects(v.importDataEnd(true), isError(StoragePoolException, /no import/));
      });

      for (const kind of (['snapshot', 'volatile'] as const).filter((k) => kinds.has(k)))
        it(`refuses an import into a ${kind} volume (QubesValueError: it keeps no data)`, async () => {
          const d = volumesOf(pool, dom());
          const src = d.templateRoot();
          await src.create();
          const v = d.ofKind(kind, src);
          await v.create();
          await assert.rejects(v.importData(MiB), isError(QubesValueError, /keeps? no data|not kept/));
          await assert.rejects(v.importVolume(src), isError(QubesValueError));
        });
    });

    // ---- clones ---------------------------------------------------------

    describe('clones (importVolume)', () => {
      it('clones within the pool, and refuses a volume into itself (QubesValueError)', async () => {
        const a = volumesOf(pool, dom()).origin();
        const b = volumesOf(pool, dom()).origin();
        await a.create();
        await b.create();
        await session(a, 'from a');
        await a.resize(SIZE + MiB);
        await b.importVolume(a);
        assert.equal(await committed(b), 'from a');
        assert.equal(b.size, SIZE + MiB);
        assert.equal(await committed(a), 'from a', 'the source is unchanged');
        await assert.rejects(a.importVolume(a), isError(QubesValueError));
        await noDebris();
      });

      it('clones across pools of this driver, both ways', async () => {
        const other = await target.makePool({ revisions_to_keep: KEEP });
        await other.setup();
        const a = volumesOf(pool, dom()).origin();
        const c = volumesOf(other, dom()).origin();
        await a.create();
        await c.create();
        await session(a, 'here');
        await c.importVolume(a);
        assert.equal(await committed(c), 'here');
        await session(c, 'there');
        await a.importVolume(c);
        assert.equal(await committed(a), 'there');
        await noDebris(other);
      });

      it('clones to and from a file-reflink pool', async () => {
        const fr = await openPool('file-reflink', `fr${++n}`, { dir_path: await target.scratchDir(), setup_check: false });
        await fr.setup();
        const a = volumesOf(pool, dom()).origin();
        const e = volumesOf(fr, dom()).origin();
        await a.create();
        await e.create();
        await session(a, 'to reflink');
        await e.importVolume(a);
        assert.equal(untag(await readAt(await e.path(), 0, TAG)), 'to reflink');
        await e.start();
        await writeAt(await e.path(), 0, tagBytes('from reflink'));
        await e.stop();
        await a.importVolume(e);
        assert.equal(await committed(a), 'from reflink');
        await noDebris();
      });
    });

    // ---- usage, info, listing, verify -------------------------------------

    describe('usage, info and verify', () => {
      it("reports info (usage, path and is_outdated as the separate calls), the pool's usage and its volumes", async () => {
        const d = volumesOf(pool, dom());
        const v = d.templateRoot();
        await v.create();
        await session(v, 'data');
        const vols = [v];
        if (kinds.has('snapshot')) {
          const s = d.snapshot(v);
          await s.create();
          await s.start();
          vols.push(s);
        }
        for (const x of vols) {
          const info = await x.info();
          assert.equal(info.pool, pool.name);
          assert.equal(info.vid, x.vid);
          assert.equal(info.size, SIZE);
          assert.equal(info.rw, true);
          assert.equal(info.save_on_stop, x.save_on_stop);
          assert.equal(info.snap_on_start, x.snap_on_start);
          assert.ok(info.usage >= 0 && info.usage <= info.size + 8 * MiB, `usage ${info.usage}`);
          const separate = { usage: await x.usage(), path: await x.path(), is_outdated: await x.isOutdated() };
          assert.deepEqual({ usage: info.usage, path: info.path, is_outdated: info.is_outdated }, separate, x.vid);
        }
        if (vols.length > 1) {
          await session(v, 'data 2'); // the running snapshot is outdated now
          const x = vols[1]!;
          const info = await x.info();
          assert.deepEqual(
            { usage: info.usage, path: info.path, is_outdated: info.is_outdated },
            { usage: await x.usage(), path: await x.path(), is_outdated: await x.isOutdated() },
            `${x.vid}, its source committed since it started`,
          );
        }
        for (const x of vols.slice(1)) await x.stop();
        const details = await pool.usageDetails();
        if (details['data_size'] !== undefined && details['data_usage'] !== undefined)
          assert.ok(details['data_usage'] <= details['data_size'], JSON.stringify(details));
        assert.ok(Object.values(details).every((x) => Number.isSafeInteger(x) && x >= 0), JSON.stringify(details));
        assert.ok((await pool.listVolumes()).includes(v.vid), 'listed');
        const got = await pool.getVolume(v.vid);
        assert.equal(got.vid, v.vid);
        assert.equal(got.size, SIZE);
      });

      it('verifies a created volume; a missing one is refused at verify and start (StoragePoolException) and starts nothing', async () => {
        const d = volumesOf(pool, dom());
        const v = d.templateRoot();
        await v.create();
        assert.equal(await v.verify(), true);
        const lone = volumesOf(pool, dom()).origin();
        await assert.rejects(lone.verify(), isError(StoragePoolException, /missing/));
        await assert.rejects(lone.start(), isError(StoragePoolException, /missing/));
        assert.equal(await lone.isDirty(), false, 'a failed start starts nothing');
        if (kinds.has('snapshot')) {
          const orphan = volumesOf(pool, dom()).snapshot(volumesOf(pool, dom()).templateRoot());
          await assert.rejects(orphan.verify(), isError(StoragePoolException));
        }
        await noDebris();
      });
    });

    describeCrashRecovery(target);
    describeModel(target, KEEP);
  });

  function describeReadOnly(poolOf: () => Pool): void {
    const vid = target.presentVid;
    describe('a read-only driver (writable: false)', () => {
      it('declares a volume it can serve (presentVid)', () => assert.ok(vid, 'a read-only target must give presentVid'));
      const kernel = (extra: Partial<VolumeSpec> = {}): Volume => poolOf().initVolume({ name: 'work', dirPrefix: 'appvms' }, { name: 'kernel', vid: vid!, ...extra });

      it('serves a present volume read-only: verify, start, stop, path, usage, info, no revisions', async () => {
        const v = kernel();
        await v.create();
        assert.equal(v.rw, false);
        assert.equal(await v.verify(), true);
        await v.start();
        assert.equal(await v.isDirty(), false, 'nothing to commit');
        await v.stop();
        assert.deepEqual(await v.revisions(), []);
        const info = await v.info();
        assert.equal(info.rw, false);
        assert.equal(info.revisions_to_keep, 0);
        assert.ok(info.usage >= 0);
        assert.ok((await poolOf().listVolumes()).includes(vid!));
      });

      it('refuses a writable volume at init (QubesValueError)', async () => {
        await refusedToMake(() => kernel({ rw: true }), QubesValueError);
      });

      const writes: { op: string; run: (v: Volume) => Promise<unknown> }[] = [
        { op: 'resize', run: (v) => v.resize(1 << 20) },
        { op: 'a forced shrink', run: (v) => v.resize(0, { force: true }) },
        { op: 'revert', run: (v) => v.revert() },
        { op: 'importData', run: (v) => v.importData(10) },
        { op: 'importDataEnd', run: (v) => v.importDataEnd(true) },
        { op: 'importVolume', run: (v) => v.importVolume(kernel()) },
        { op: 'setRw(true)', run: async (v) => v.setRw(true) },
      ];
      for (const c of writes)
        it(`refuses ${c.op} (a write to a read-only driver) with a Qubes error, and changes nothing`, async () => {
          const v = kernel();
          const before = await v.usage();
          await assert.rejects(c.run(v), (e: unknown) => {
            assert.ok(e instanceof StoragePoolException || e instanceof QubesValueError, `expected a refusal, got ${String(e)}`);
            assert.match((e as QubesException).message, /read-only/);
            return true;
          });
          assert.equal(v.rw, false);
          assert.equal(await v.usage(), before);
        });
    });
  }
}

/** Every file under `dir` (relative name and sha256 of its content), sorted. */
async function digestOfDir(dir: string): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for (const f of await filesUnder(dir)) out.push([f, await sha256(`${dir}/${f}`)]);
  return out;
}

function sha256Of(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
