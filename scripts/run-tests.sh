#!/usr/bin/env bash
# Runs the compiled test files (dist/test/**/*.test.js) with Node's test
# runner. Listing them by name keeps helper modules and child-process scripts
# under dist/test out of the run (Node 20 would run every .js of a directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mapfile -t files < <(find dist/test -name '*.test.js' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "run-tests: no compiled tests under dist/test (run npm run build)" >&2
  exit 1
fi
# Every save the App limits to some domains is checked against a full one
# (an internal error if it missed a change): the tests prove the scopes.
export QUBES_STORAGE_CHECK_SAVES=1
exec node --test --test-concurrency="${QS_TEST_CONCURRENCY:-2}" "$@" "${files[@]}"
