#!/usr/bin/env bash
# try-breakage.sh NAME [CRASH-CLI ARGS...]
#
# Shows that the campaigns catch a deliberate breakage of the product code:
# clones this checkout's HEAD into a scratch directory, applies
# test/reliability/breakages/NAME.diff there (never here), builds it, and
# runs the campaign against it (default: --power-loss --fs xfs --iterations
# 100 --seed 101 --drivers file-reflink, as measured in docs/reliability.md).
# Expect violations. The scratch directory is removed afterwards. Root
# (loop mounts). See docs/reliability.md.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
name="${1:?usage: $0 NAME [crash-cli args...]  (NAME: $(cd "$here/test/reliability/breakages" && ls *.diff | sed 's/\.diff$//' | tr '\n' ' '))}"
shift
patch="$here/test/reliability/breakages/$name.diff"
[ -f "$patch" ] || { echo "no breakage $name ($patch)" >&2; exit 2; }
scratch="$(mktemp -d /tmp/scratch-"$name"-XXXXXX)"
trap 'rm -rf -- "$scratch"' EXIT
git clone -q "$here" "$scratch/repo"
ln -s "$(readlink -f "$here/node_modules")" "$scratch/repo/node_modules"
git -C "$scratch/repo" apply "$patch"
(cd "$scratch/repo" && npx tsc -p tsconfig.json)
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(--power-loss --fs xfs --iterations 100 --seed 101 --drivers file-reflink)
node "$scratch/repo/dist/test/reliability/crash-cli.js" "${args[@]}" -q
