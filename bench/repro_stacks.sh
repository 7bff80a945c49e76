#!/usr/bin/env bash
# Cold `make repro` time of experiment notebooks without stacks and with them, side by side in one run.
#
#   bench/repro_stacks.sh ROOT NB [NB ...]
#
# Two modes, each with its own outputs folder and run cache under ROOT: `nostack` (PAPER_REPRO_STACK=1: the same
# code, every run alone) and `stack` (the default). Each notebook runs once per mode, ABBA (the first notebook
# nostack then stack, the next stack then nostack, ...), so a machine that speeds up or slows down during the run
# does not favour one mode. FIRST=stack starts with the stacked half instead: a single notebook is one pair, AB, and
# on 2026-12-07 the same stack of 7 runs (fig3's mining, stacked in both halves) took 12% longer in the second half.
# Within a mode the notebooks share the run cache in the order given, as in `make repro`:
# pass them in `make repro`'s order, starting from an empty ROOT, for cold times.
# Writes ROOT/times.tsv (notebook, mode, seconds, finished at) and each notebook's papermill log under
# ROOT/<mode>/<notebook>/log.txt; then prints the table of bench/repro_stacks.py (ratio line last).
# Run it on a quiet machine: nothing else should share the cores while it runs.
set -euo pipefail
root=${1:?usage: bench/repro_stacks.sh ROOT NB [NB ...]}; shift
[ $# -gt 0 ] || { echo "usage: bench/repro_stacks.sh ROOT NB [NB ...]"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${VENV:-$here/.venv}/bin
mkdir -p "$root"; root=$(cd "$root" && pwd)
run() {  # run NB MODE
  local nb=$1 mode=$2 out="$root/$2"
  mkdir -p "$out/$nb"
  local s; s=$(date +%s)
  if [ "$mode" = nostack ]; then export PAPER_REPRO_STACK=1; else unset PAPER_REPRO_STACK; fi
  PAPER_REPRO_OUTPUTS="$out" "$bin/papermill" "$here/nbs/$nb.ipynb" "$out/$nb/$nb.ipynb" -k python3 \
    --cwd "$here/nbs" --log-output --no-progress-bar > "$out/$nb/log.txt" 2>&1
  printf "%s\t%s\t%s\t%s\n" "$nb" "$mode" "$(( $(date +%s) - s ))" "$(date -u +%FT%TZ)" | tee -a "$root/times.tsv"
}
case ${FIRST:-nostack} in nostack) i=0 ;; stack) i=1 ;; *) echo "FIRST=$FIRST: use nostack or stack"; exit 2 ;; esac
for nb in "$@"; do
  if (( i % 2 == 0 )); then run "$nb" nostack; run "$nb" stack; else run "$nb" stack; run "$nb" nostack; fi
  i=$((i + 1))
done
"$bin/python" "$here/bench/repro_stacks.py" "$root"
