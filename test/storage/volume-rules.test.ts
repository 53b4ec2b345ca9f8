// The property rules of the volume contract, table-driven; no filesystem needed.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkVolumeProperties, checkVid, checkVolumeName, volumeKind } from '../../src/storage/volume.js';
import { QubesValueError } from '../../src/storage/errors.js';

const base = { rw: true, snap_on_start: false, save_on_stop: true, hasSource: false, revisions_to_keep: 1, ephemeral: false };

const cases: [string, Partial<typeof base>, RegExp | null][] = [
  ['origin with revisions', {}, null],
  ['origin with -1', { revisions_to_keep: -1 }, null],
  ['snapshot with source', { snap_on_start: true, save_on_stop: false, hasSource: true, revisions_to_keep: 0 }, null],
  ['origin_snapshot with source', { snap_on_start: true, hasSource: true }, null],
  ['volatile ephemeral', { save_on_stop: false, ephemeral: true, revisions_to_keep: 0 }, null],
  ['source without snap_on_start', { hasSource: true }, /source is only allowed with snap_on_start/],
  ['snap_on_start without source', { snap_on_start: true, save_on_stop: false }, /requires a source/],
  ['revisions_to_keep -2', { revisions_to_keep: -2 }, /must be an integer >= -1/],
  ['revisions_to_keep 1.5', { revisions_to_keep: 1.5 }, /must be an integer >= -1/],
  ['-1 on a snapshot', { snap_on_start: true, save_on_stop: false, hasSource: true, revisions_to_keep: -1 }, /only allowed with save_on_stop and without snap_on_start/],
  ['-1 on origin_snapshot', { snap_on_start: true, hasSource: true, revisions_to_keep: -1 }, /only allowed with save_on_stop/],
  ['-1 on volatile', { save_on_stop: false, revisions_to_keep: -1 }, /only allowed with save_on_stop/],
  ['ephemeral origin', { ephemeral: true }, /ephemeral is only allowed/],
  ['ephemeral read-only volatile', { rw: false, save_on_stop: false, ephemeral: true }, /ephemeral is only allowed/],
  ['ephemeral snapshot', { snap_on_start: true, save_on_stop: false, hasSource: true, ephemeral: true }, /ephemeral is only allowed/],
];

describe('volume property rules', () => {
  for (const [title, over, error] of cases) {
    it(title, () => {
      const run = () => checkVolumeProperties('volume v of pool p', { ...base, ...over });
      if (error) assert.throws(run, (e: unknown) => e instanceof QubesValueError && error.test((e as Error).message));
      else assert.doesNotThrow(run);
    });
  }
});

describe('volume kinds', () => {
  it('follow from the two flags', () => {
    assert.equal(volumeKind(false, false), 'volatile');
    assert.equal(volumeKind(true, false), 'snapshot');
    assert.equal(volumeKind(false, true), 'origin');
    assert.equal(volumeKind(true, true), 'origin_snapshot');
  });
});

describe('names and vids', () => {
  const goodNames = ['root', 'private', 'volatile', 'kernel', 'data_2'];
  const badNames = ['', '-x', 'a-b', 'a.b', 'a/b', '..', 'x'.repeat(33), 'a\0b', 'a\nb', 'ｒｏｏｔ'];
  for (const n of goodNames) it(`volume name ${n} accepted`, () => assert.doesNotThrow(() => checkVolumeName(n)));
  for (const n of badNames)
    it(`volume name ${JSON.stringify(n)} refused`, () => assert.throws(() => checkVolumeName(n), QubesValueError));
  const goodVids = ['appvms/work/private', 'vm-templates/fedora-40/root', 'a/b'];
  const badVids = ['', '/abs/x', 'a/../b', '../x', 'a//b', 'a/./b', 'a/b\0', 'a/.hidden', 'x/' + 'y'.repeat(300)];
  for (const v of goodVids) it(`vid ${v} accepted`, () => assert.doesNotThrow(() => checkVid(v)));
  for (const v of badVids)
    it(`vid ${JSON.stringify(v)} refused`, () => assert.throws(() => checkVid(v), QubesValueError));
});
