#!/usr/bin/env bash
# The benchmarks behind BENCHMARKS.md. Release builds; everything on loopback.
#   scripts/bench.sh [dispatch|logs|checkpoint|propose|scale|overhead|trainer]...   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
BIN=target/release
what=("$@")
[ ${#what[@]} -gt 0 ] || what=(dispatch logs checkpoint propose scale overhead trainer)
for w in "${what[@]}"; do
  case "$w" in
    dispatch)
      for i in 1 2 3; do "$BIN/liandan-bench" dispatch 100000 32 64; done ;;
    logs)
      "$BIN/liandan-bench" logs 1000000 ;;
    checkpoint)
      "$BIN/liandan-bench" checkpoint 256 ;;
    propose)
      for i in 1 2 3; do "$BIN/liandan-bench" propose 1000; done ;;
    scale)
      for i in 1 2 3; do "$BIN/liandan-bench" scale 1000000 1000; done ;;
    overhead)
      for i in 1 2 3; do "$BIN/liandan-bench" overhead 1024 16; done
      "$BIN/liandan-bench" overhead 10000 16 ;;
    trainer)
      py="${LIANDAN_TORCH_PYTHON:-python3}"
      for cfg in "--width=64 --batch_size=64" "--width=256 --batch_size=256" "--width=1024 --batch_size=512"; do
        for i in 1 2 3; do
          # Rust and PyTorch back to back in the same run, one thread each.
          r=$("$BIN/liandan-train" bench $cfg --threads=1 --steps=300 | python3 -c 'import json,sys;print(json.load(sys.stdin)["ms_per_step_median"])')
          p=$("$py" bench/pytorch_step.py $cfg --threads=1 --steps=300 | python3 -c 'import json,sys;print(json.load(sys.stdin)["ms_per_step_median"])')
          echo "trainer $cfg: liandan-train $r ms/step, PyTorch $p ms/step, ratio $(python3 -c "print(round($r/$p, 3))")"
        done
      done ;;
    *) echo "unknown benchmark $w" >&2; exit 64 ;;
  esac
done
