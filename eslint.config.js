// ESLint (flat config) with typescript-eslint's type-aware rules: they read
// the types tsc infers (through tsconfig.json), so they catch what tsc lets
// through: a promise nobody awaits, an async function passed where a callback
// returning void is expected, `await` on a non-promise, values never used.
// `npm run lint` runs it; `npm test` runs it before the tests (CI).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'bench/results/'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'demo/**/*.ts', 'examples/**/*.ts', 'scripts/**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // The rules this config is for, spelled out so a later preset change
      // cannot drop them silently.
      // node:test's describe/it/test return promises the runner itself
      // awaits; a test file never awaits them.
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      // Rules of the presets this code turns off or bends, and why:
      // - An async method without `await` is how a synchronous body keeps a
      //   promise-returning contract (Pool, Volume, handlers): a throw in it
      //   becomes a rejection, which callers rely on.
      '@typescript-eslint/require-await': 'off',
      // - `xs[i]!` marks an index known to be in range, as if
      //   noUncheckedIndexedAccess were on; this rule would strip them all.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // - Names and values from untrusted callers are checked for control
      //   characters on purpose, with regular expressions that name them.
      'no-control-regex': 'off',
      // - Expected output in tests is indented text; spaces read as they print.
      'no-regex-spaces': 'off',
      // - A caught `unknown` is passed on as it is (rejecting with it keeps
      //   the original error and class).
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
      // - `interface XOptions extends YOptions {}` names an options bag that
      //   may grow on its own.
      '@typescript-eslint/no-empty-object-type': ['error', { allowInterfaces: 'with-single-extends' }],
      // A name starting with `_` is unused on purpose (a parameter an
      // interface demands, an element skipped in a destructuring).
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          args: 'all',
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrors: 'none',
          destructuredArrayIgnorePattern: '^_',
          ignoreRestSiblings: true,
        },
      ],
    },
  },
);
