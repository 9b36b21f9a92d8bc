#!/bin/bash
# Old against new on one node: W1 (400 × true, 8 slots) timed from
# `pesc submit --wait` to its exit, three times per fresh node, the two
# builds alternating so both share the machine's moods.
#   scripts/ab-w1.sh OLD_PESC NEW_PESC [ROUNDS]
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'true\n' > "$work/noop.sh"
run() {
  local bin=$1 label=$2 d
  d=$(mktemp -d "$work/node.XXXX")
  "$bin" --data-dir "$d" node --api 127.0.0.1:0 --slots 8 --listen /ip4/127.0.0.1/tcp/0 \
    --mdns false --executor process --pause-when-others-above 100 > "$d/log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -f "$d/api.addr" ] && break; sleep 0.1; done
  "$bin" --data-dir "$d" submit "$work/noop.sh" --entry true -n 50 --wait --json > /dev/null
  for _ in 1 2 3; do
    local t0 t1
    t0=$(date +%s.%N)
    "$bin" --data-dir "$d" submit "$work/noop.sh" --entry true -n 400 --wait --json > /dev/null
    t1=$(date +%s.%N)
    echo "$label $(echo "$t1 - $t0" | bc)"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$rounds"); do
  run "$old" old
  run "$new" new
done
