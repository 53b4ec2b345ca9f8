#!/usr/bin/env bash
# Runs the compiled test files (dist/test/**/*.test.js) with Node's test
# runner. Listing them by name keeps helper modules and child-process scripts
# under dist/test out of the run (Node 20 would run every .js of a directory).
# Beside the spec reporter, test/helpers/count-reporter.ts counts the tests per
# filesystem, cluster or test VM; the summary ends the output. With QS_TEST_REQUIRE=1
# (CI) a filesystem, cluster or the test VM on which no test ran, or some were skipped,
# fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The longest files start first (the rbd driver's, on the Ceph cluster, takes
# about half the run on its own): with two at a time the others run beside it
# instead of after it.
mapfile -t files < <(
  find dist/test -name '*.test.js' | sort |
    awk '{ print (index($0, "/rbd") ? 0 : 1) "\t" $0 }' | sort -s -t "$(printf '\t')" -k1,1 | cut -f2-
)
if [ "${#files[@]}" -eq 0 ]; then
  echo "run-tests: no compiled tests under dist/test (run npm run build)" >&2
  exit 1
fi
# Every save the App limits to some domains is checked against a full one
# (an internal error if it missed a change): the tests prove the scopes.
export QUBES_STORAGE_CHECK_SAVES=1
counts="$(mktemp "${TMPDIR:-/tmp}/qs-test-counts.XXXXXX")"
trap 'rm -f "$counts"' EXIT
export QS_TEST_COUNTS_FILE="$counts"
rc=0
node --test --test-concurrency="${QS_TEST_CONCURRENCY:-2}" \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=./dist/test/helpers/count-reporter.js --test-reporter-destination=/dev/null \
  "$@" "${files[@]}" || rc=$?
node dist/test/helpers/count-summary.js "$counts" || { [ "$rc" -ne 0 ] || rc=1; }
exit "$rc"
