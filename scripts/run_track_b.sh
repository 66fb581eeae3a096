#!/usr/bin/env bash
# Seed 004's run_track_b.sh on lmlab: the Track-B v1 matrix is configs/sweeps/track_b.yaml, run by
# `lmlab sweep run` (skips finished runs by config hash, retries failed ones, writes summary.csv
# and summary.txt under runs/sweeps/track_b/). This wrapper only translates the seed's options.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/run_track_b.sh [--dry-run|-d] [--quick|-q] [--force|-f] [--help|-h]

Run every Track-B v1 experiment (sanity; core 20k seed 0; core 20k seeds 0,1,2; core 50k
seeds 0,1,2; tau 0.05; tau 0.10) as one lmlab sweep.

  -d, --dry-run   print the plan (run dirs and commands), run nothing
  -q, --quick     10 training steps per run (smoke test)
  -f, --force     rerun experiments that already finished
  -h, --help      this help

Equivalent: lmlab sweep run configs/sweeps/track_b.yaml [--dry-run] [--quick] [--force]
USAGE
}

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -d|--dry-run) args+=(--dry-run) ;;
    -q|--quick) args+=(--quick) ;;
    -f|--force) args+=(--force) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_track_b.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lmlab="${LMLAB:-}"
if [[ -z "$lmlab" ]]; then
  if [[ -x "$root/.venv/bin/lmlab" ]]; then lmlab="$root/.venv/bin/lmlab"; else lmlab="lmlab"; fi
fi
# $lmlab unquoted: LMLAB may be a command with arguments ("python -m lmlab")
# shellcheck disable=SC2086
exec $lmlab sweep run "$root/configs/sweeps/track_b.yaml" "${args[@]}"
