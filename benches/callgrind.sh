#!/usr/bin/env bash
# Instructions per call of each circuit breaker target, from two callgrind
# runs of different lengths: their difference leaves out start-up and
# set-up, which a single run would count.
#   benches/callgrind.sh [short] [long]
set -euo pipefail
cd "$(dirname "$0")/.."
short=${1:-1000}
long=${2:-11000}
bin=$(cargo bench --bench circuit --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
count() {
  CIRCUIT_TARGET=$1 CIRCUIT_CALLS=$2 valgrind --tool=callgrind \
    --callgrind-out-file=/dev/null "$bin" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for target in none tower_reissue tower_reissue_per_host tower_resilience_count tower_resilience_time; do
  a=$(count "$target" "$short")
  b=$(count "$target" "$long")
  echo "$target $(( (b - a) / (long - short) ))"
done
