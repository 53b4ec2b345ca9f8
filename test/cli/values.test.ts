/** Values the tools read from their arguments and turn into admin API words. */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { boolArg } from '../../src/cli/common/subcommands.js';
import { CliError } from '../../src/cli/common/tool.js';

describe('boolArg', () => {
  const cases: [string, 'True' | 'False'][] = [
    ['yes', 'True'], ['ON', 'True'], ['1', 'True'], ['True', 'True'],
    ['no', 'False'], ['Off', 'False'], ['0', 'False'], ['FALSE', 'False'],
  ];
  for (const [arg, want] of cases) it(`${arg} -> ${want}`, async () => assert.equal(await boolArg(arg, 'rw'), want));
  for (const arg of ['', 'maybe', ' yes', 'y'])
    it(`refuses ${JSON.stringify(arg)}, naming the property`, () =>
      assert.rejects(
        () => boolArg(arg, 'ephemeral_volatile'),
        (e: unknown) => e instanceof CliError && e.message === `ephemeral_volatile must be True or False, not '${arg}'`,
      ));
});
