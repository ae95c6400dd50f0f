#!/usr/bin/env bash
# Instructions per operation of every mode of the instruction-count benches,
# from two callgrind runs of different lengths: their difference leaves out
# start-up and set-up, which a single run would count. On a shared machine
# this is the stable figure; timings are not.
#
#   benches/instructions.sh [--features LIST] [bench ...]
#
# `--features` (or FEATURES=LIST) builds the benches with those cargo
# features, for benches that need one (their `required-features`).
#
# Each bench binary named here runs `MODE N` (N operations of MODE) and
# prints its modes with `--list`, one per line, as `MODE [BASELINE]`; a mode
# with a baseline gets a ratio column against it.
# SHORT and LONG set the two run lengths (default 1,000 and 11,000).
set -euo pipefail
cd "$(dirname "$0")/.."
short=${SHORT:-1000}
long=${LONG:-11000}
features=${FEATURES:-}
if [ "${1:-}" = "--features" ]; then
  features=$2
  shift 2
fi
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(retry_instructions idempotency_instructions)

count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-26s %-34s %12s %8s\n' bench mode instr/op ratio
for bench in "${benches[@]}"; do
  bin=$(cargo bench --bench "$bench" ${features:+--features "$features"} --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -n "$bin" ] || { echo "no such bench: $bench" >&2; exit 1; }
  declare -A per_op=()
  while read -r mode baseline; do
    a=$(count "$mode" "$short")
    b=$(count "$mode" "$long")
    per_op[$mode]=$(( (b - a) / (long - short) ))
    ratio=""
    if [ -n "${baseline:-}" ] && [ -n "${per_op[$baseline]:-}" ]; then
      ratio=$(awk -v x="${per_op[$mode]}" -v y="${per_op[$baseline]}" 'BEGIN { printf "%.2fx", x / y }')
    fi
    printf '%-26s %-34s %12d %8s\n' "$bench" "$mode" "${per_op[$mode]}" "$ratio"
  done < <("$bin" --list)
  unset per_op
done
