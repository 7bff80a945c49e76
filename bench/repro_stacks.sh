#!/usr/bin/env bash
# Cold `make repro` time of experiment notebooks without stacks and with them, side by side in one run.
#
#   bench/repro_stacks.sh ROOT NB [NB ...]
#   SLICE=1200 bench/repro_stacks.sh ROOT NB [NB ...]     # long notebooks: in slices, resumable
#
# Two modes, each with its own outputs folder and run cache under ROOT: `nostack` (PAPER_REPRO_STACK=1: the same
# code, every run alone) and `stack` (the default). Each notebook runs once per mode, ABBA (the first notebook
# nostack then stack, the next stack then nostack, ...), so a machine that speeds up or slows down during the run
# does not favour one mode. FIRST=stack starts with the stacked half instead: a single notebook is one pair, AB, and
# on 2026-12-07 the same stack of 7 runs (fig3's mining, stacked in both halves) took 12% longer in the second half.
# Within a mode the notebooks share the run cache in the order given, as in `make repro`:
# pass them in `make repro`'s order, starting from an empty ROOT, for cold times.
#
# SLICE=S: a notebook whose pair outlasts a session (sanity_figA1 took 100 min stacked) runs in slices of at most S
# seconds, the modes alternating ABBA slice by slice, so both see the same machine. A slice stops papermill (and its
# kernel); the next slice of that mode restarts the notebook, which loads every run it finished from its run cache (a
# stack in flight resumes from its last epoch checkpoint). A mode's time is the sum of its slices: the restarts' cost
# (a kernel start and reloading the cache, seconds) counts against both modes alike. The script can be stopped
# (kill the script's process: it records the slice in flight) and started again with the same arguments: it goes on
# from ROOT/times.tsv. Do not stop it by killing papermill alone: that slice would end as if the notebook failed.
#
# Writes ROOT/times.tsv (notebook, mode, seconds, finished at, and `slice` for a slice that did not finish the
# notebook) and each notebook's papermill log under ROOT/<mode>/<notebook>/log.txt (one per slice with SLICE); then
# prints the table of bench/repro_stacks.py (ratio line last). Run it on a quiet machine: nothing else on the cores.
set -euo pipefail
root=${1:?usage: bench/repro_stacks.sh ROOT NB [NB ...]}; shift
[ $# -gt 0 ] || { echo "usage: bench/repro_stacks.sh ROOT NB [NB ...]"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${VENV:-$here/.venv}/bin
slice=${SLICE:-0}
[[ $slice =~ ^[0-9]+$ ]] || { echo "SLICE=$slice: give whole seconds (0: no slices)"; exit 2; }
mkdir -p "$root"; root=$(cd "$root" && pwd); touch "$root/times.tsv"
finished() { awk -F'\t' -v nb="$1" -v m="$2" '$1 == nb && $2 == m && $5 != "slice" {f = 1} END {exit !f}' "$root/times.tsv"; }
pm=""
stop() {  # the script was asked to stop: end the slice in flight, record it, exit
  trap - TERM INT
  if [ -n "$pm" ]; then kill -TERM -- "-$pm" 2>/dev/null || true; wait "$pm" 2>/dev/null || true; fi
  [ -n "${cur:-}" ] && printf "%s\t%s\t%s\t%s\tslice\n" $cur "$(( $(date +%s) - s ))" "$(date -u +%FT%TZ)" | tee -a "$root/times.tsv"
  exit 143
}
trap stop TERM INT
run() {  # run NB MODE: the notebook (or one slice of it) in MODE; appends its times.tsv row
  local nb=$1 mode=$2 out="$root/$2" n log
  mkdir -p "$out/$nb"
  n=$(awk -F'\t' -v nb="$nb" -v m="$mode" '$1 == nb && $2 == m' "$root/times.tsv" | wc -l)
  log="$out/$nb/log.txt"; [ "$slice" -gt 0 ] && log="$out/$nb/log-$n.txt"
  if [ "$mode" = nostack ]; then export PAPER_REPRO_STACK=1; else unset PAPER_REPRO_STACK; fi
  s=$(date +%s); cur="$nb $mode"
  # its own session, so a slice's end stops papermill and the kernel it started (ipykernel also exits with its parent)
  PAPER_REPRO_OUTPUTS="$out" setsid "$bin/papermill" "$here/nbs/$nb.ipynb" "$out/$nb/$nb.ipynb" -k python3 \
    --cwd "$here/nbs" --log-output --no-progress-bar > "$log" 2>&1 & pm=$!
  local rc=0 ended=""
  while kill -0 "$pm" 2>/dev/null; do
    if [ "$slice" -gt 0 ] && (( $(date +%s) - s >= slice )); then kill -TERM -- "-$pm" 2>/dev/null || true; ended=slice; break; fi
    sleep 2
  done
  wait "$pm" || rc=$?; pm=""
  if [ -z "$ended" ] && [ "$rc" -ne 0 ]; then echo "$nb ($mode) failed (exit $rc): see $log"; exit 1; fi
  printf "%s\t%s\t%s\t%s%s\n" "$nb" "$mode" "$(( $(date +%s) - s ))" "$(date -u +%FT%TZ)" "${ended:+	$ended}" | tee -a "$root/times.tsv"
  cur=""
}
case ${FIRST:-nostack} in nostack) i=0 ;; stack) i=1 ;; *) echo "FIRST=$FIRST: use nostack or stack"; exit 2 ;; esac
for nb in "$@"; do
  if (( i % 2 == 0 )); then a=nostack b=stack; else a=stack b=nostack; fi
  j=$(awk -F'\t' -v nb="$nb" '$1 == nb' "$root/times.tsv" | wc -l)    # slices of this notebook so far (resuming)
  until finished "$nb" nostack && finished "$nb" stack; do
    if (( (j + 1) / 2 % 2 == 0 )); then m=$a o=$b; else m=$b o=$a; fi      # ABBA slice by slice: a b b a a b ...
    finished "$nb" "$m" && m=$o
    run "$nb" "$m"; j=$((j + 1))
  done
  i=$((i + 1))
done
"$bin/python" "$here/bench/repro_stacks.py" "$root"
