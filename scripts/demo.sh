#!/usr/bin/env bash
# Runs the example sweep on this machine: a coordinator and two workers on
# loopback in .demo/, the sweep in examples/demo.yaml to the end, the results,
# then stops everything it started (by pid).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
DEMO=.demo
rm -rf "$DEMO"
mkdir -p "$DEMO"
PORT=${LIANDAN_DEMO_PORT:-7478}
export LIANDAN_COORDINATOR="http://127.0.0.1:$PORT"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
"$BIN/liandan-coordinator" --listen "127.0.0.1:$PORT" --data-dir "$DEMO/coordinator" >"$DEMO/coordinator.out" 2>"$DEMO/coordinator.log" &
pids+=($!)
for i in 1 2; do
  "$BIN/liandan-worker" --coordinator "$LIANDAN_COORDINATOR" --state-dir "$DEMO/worker-$i" --slots 1 --gpus none \
    --train-binary "$BIN/liandan-train" 2>"$DEMO/worker-$i.log" &
  pids+=($!)
done
for _ in $(seq 100); do "$BIN/liandan" status >/dev/null 2>&1 && break; sleep 0.1; done
echo "== coordinator on $LIANDAN_COORDINATOR, 2 workers (logs in $DEMO/)"
"$BIN/liandan" validate examples/demo.yaml
"$BIN/liandan" submit examples/demo.yaml --wait
echo
echo "== liandan workers"
"$BIN/liandan" workers
echo
echo "== liandan results demo"
"$BIN/liandan" results demo
"$BIN/liandan" results demo -o json >"$DEMO/results.json"
if "$BIN/liandan" plot --help >/dev/null 2>&1; then
  "$BIN/liandan" plot demo --file "$DEMO/demo.png" && echo "plot: $DEMO/demo.png"
fi
