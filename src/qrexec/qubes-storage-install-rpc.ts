#!/usr/bin/env node
/**
 * qubes-storage-install-rpc: installs the import services for Qubes' own
 * admin client (`qvm-volume import`, `qvm-create --root-copy-from`, template
 * installs) into a qrexec services directory. See install.ts.
 */
import { optStr, type CommandSpec } from '../cli/common/args.js';
import { CliError, runTool } from '../cli/common/tool.js';
import { defaultInternalSocketPath } from '../admin/paths.js';
import { defaultServicesDir, installImportServices } from './install.js';

const PROG = 'qubes-storage-install-rpc';
const SPEC: CommandSpec = {
  prog: PROG,
  summary:
    'Install the services admin.vm.volume.Import and admin.vm.volume.ImportWithSize, through which ' +
    "Qubes' admin client imports volume data, into a qrexec services directory.",
  options: [
    {
      names: ['--internal-socket'],
      kind: 'value',
      metavar: 'PATH',
      help: "qubesd's internal socket (default QUBESD_INTERNAL_SOCKET, else beside QUBESD_SOCKET or BASE/qubesd.sock: qubesd.internal.sock)",
    },
    { names: ['-f', '--force'], kind: 'flag', help: 'replace entries that were not written by this command' },
  ],
  positionals: [{ name: 'DIR', count: '?', help: 'the services directory (default QREXEC_SERVICES_DIR, else /etc/qubes-rpc)' }],
};

await runTool(PROG, async (t) => {
  const p = t.parse(SPEC, process.argv.slice(2));
  const dir = optStr(p, 'DIR') ?? defaultServicesDir();
  const internalSocket = p.values.get('internal_socket') ?? defaultInternalSocketPath();
  let files: string[];
  try {
    files = await installImportServices({ dir, internalSocket, force: p.flags.has('force') });
  } catch (e) {
    throw new CliError((e as Error).message);
  }
  for (const f of files) t.out(`${f}\n`);
  t.out(`for the qubesd with the internal socket ${internalSocket}\n`);
});
