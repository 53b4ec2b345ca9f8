// domain-add and domain-delete on the wire: empty subject, as Qubes sends
// them (the stock EventsDispatcher refreshes its domain list only then).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { describeEachFs } from '../../helpers/filesystems.js';
import { waitFor } from '../helpers.js';
import { startRig, type Rig } from './helpers.js';

const b = (s: string) => Buffer.from(s, 'latin1');

describeEachFs('domain-add and domain-delete events', (tfs, fsx) => {
  let rig: Rig;
  before(async () => {
    rig = await startRig(tfs, await fsx.tempDir('domain-events'));
    await rig.rt.app.createDomain({ klass: 'TemplateVM', name: 'tpl', label: 'black' });
  });
  after(() => rig?.stop());

  test('are framed with an empty subject and the pair vm', async () => {
    const sock = net.connect(rig.socketPath);
    const chunks: Buffer[] = [];
    sock.on('connect', () => sock.end(b('admin.Events dom0 name dom0\0')));
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', () => {});
    const bytes = () => Buffer.concat(chunks);
    try {
      const first = b('1\0\0connection-established\0\0');
      await waitFor(() => bytes().length >= first.length);
      await rig.rt.app.createDomain({ klass: 'AppVM', name: 'w3', label: 'red', template: 'tpl' });
      await rig.rt.app.removeDomain('w3');
      const add = b('1\0\0domain-add\0vm\0w3\0\0');
      const del = b('1\0\0domain-delete\0vm\0w3\0\0');
      await waitFor(() => bytes().includes(del), 10_000);
      const got = bytes();
      assert.ok(got.subarray(0, first.length).equals(first), got.toString('latin1'));
      assert.ok(got.indexOf(add) > 0 && got.indexOf(add) < got.indexOf(del), got.toString('latin1'));
      assert.equal(got.indexOf(b('\0dom0\0domain-')), -1, 'no dom0 subject');
    } finally {
      sock.destroy();
    }
  });
});
