#!/usr/bin/env bash
# Record asv results for every commit of a range with the project's own environment (.venv):
# each commit's fastconv is installed (editable, from a temporary git worktree) in turn and
# benchmarked with today's suite (benchmarks/); then the dashboard is rebuilt.
#   benchmarks/history.sh main~5..main [extra `asv run` arguments, e.g. -b Compute.time_call]
# No network and no second torch install, unlike asv's managed environments.
set -euo pipefail
# As in the Makefile, the runtimes' own OpenMP wait policy; on shared cores run it with
# OMP_WAIT_POLICY=PASSIVE in the environment (docs/benchmarking.md says why).
range=${1:?usage: benchmarks/history.sh A..B [asv run arguments]}
shift
root=$(git rev-parse --show-toplevel)
cd "$root"
venv=${VENV:-.venv}
src=$(mktemp -d)/fastconv
restore() {
  git worktree remove --force "$src" 2>/dev/null || true
  "$venv/bin/python" -m pip install -q -e "$root" >/dev/null
}
trap restore EXIT
"$venv/bin/asv" machine --yes --machine "$(hostname)" >/dev/null
for commit in $(git rev-list --reverse "$range"); do
  echo "== $(git log -1 --format='%h %s' "$commit")"
  git worktree add --detach "$src" "$commit" >/dev/null 2>&1
  "$venv/bin/python" -m pip install -q -e "$src" >/dev/null
  "$venv/bin/asv" run --python=same --set-commit-hash="$commit" --machine "$(hostname)" "$@" || true
  git worktree remove --force "$src"
done
"$venv/bin/asv" publish
