#!/usr/bin/env bash
# A new user's first hour, scripted: the README's "Running it yourself" (a
# coordinator, a worker, submit, wait, results) with the mistakes people make
# on the way, checking the exit code and the message a user sees at each.
# `make test` runs it (e2e/tests/first_hour.rs); by hand:
#   BIN=target/debug bash e2e/first-hour.sh
# It starts its own coordinator and worker on loopback in a temp dir and
# stops them (by pid) when it ends.
set -uo pipefail
BIN=$(cd "${BIN:-target/debug}" && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/liandan-first-hour.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
failures=0
step=0

# see CODE NEEDLE CMD...: CMD exits CODE and prints NEEDLE (stdout or stderr).
see() {
  local want=$1 needle=$2
  shift 2
  step=$((step + 1))
  local out code
  out=$("$@" 2>&1)
  code=$?
  if [[ $code -ne $want ]] || [[ $out != *"$needle"* ]]; then
    echo "FAIL $step: $* exited $code (want $want), expected to see: $needle"
    echo "$out" | sed 's/^/    | /' | head -40
    failures=$((failures + 1))
  else
    echo "ok   $step: $*  ->  $code, \"$needle\""
  fi
}

# see_re CODE REGEX CMD...: as see, with a bash regular expression.
see_re() {
  local want=$1 re=$2
  shift 2
  step=$((step + 1))
  local out code
  out=$("$@" 2>&1)
  code=$?
  if [[ $code -ne $want ]] || ! [[ $out =~ $re ]]; then
    echo "FAIL $step: $* exited $code (want $want), expected to match: $re"
    echo "$out" | sed 's/^/    | /' | head -40
    failures=$((failures + 1))
  else
    echo "ok   $step: $*  ->  $code, /$re/"
  fi
}

# An RFC 3339 time in UTC to the microsecond, as CSV and JSON give times.
ISO='20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z'

liandan() { "$BIN/liandan" "$@"; }

start_coordinator() {
  "$BIN/liandan-coordinator" --listen "${1:-127.0.0.1:0}" --data-dir "$T/coordinator" \
    >"$T/coordinator.out" 2>>"$T/coordinator.log" &
  coord=$!
  pids+=("$coord")
  for _ in $(seq 200); do
    addr=$(sed -n 's/^listening on //p' "$T/coordinator.out" 2>/dev/null | head -1)
    [[ -n $addr ]] && break
    sleep 0.05
  done
  if [[ -z ${addr:-} ]]; then
    echo "FAIL: the coordinator did not start"
    cat "$T/coordinator.log"
    exit 1
  fi
  # It listens before its state is loaded (until then it answers "still
  # loading its state; retry in a moment", exit 69): wait as a user would.
  for _ in $(seq 200); do
    "$BIN/liandan" status --coordinator "http://$addr" >/dev/null 2>&1 && break
    sleep 0.05
  done
}

# --- The README's first commands, with the first mistake: no scheme. ---
start_coordinator
export LIANDAN_COORDINATOR="http://$addr"
see 64 "has no scheme; use http://$addr" liandan status --coordinator "$addr"
see 0 "no sweeps yet; submit one with \`liandan submit FILE\`" liandan status

# A worker that would offer nothing refuses to start (no GPU on this machine).
see 78 "slots = 0 and no GPU was found" env CUDA_VISIBLE_DEVICES= \
  "$BIN/liandan-worker" --coordinator "$LIANDAN_COORDINATOR" --state-dir "$T/idle-worker" --slots 0 --gpus visible
# Jobs see the worker's environment through ${envvar:...} (used below).
export FIRST_HOUR_MARKER="$T/marker" FIRST_HOUR_RELAPSE="$T/relapse-marker"
"$BIN/liandan-worker" --coordinator "$LIANDAN_COORDINATOR" --state-dir "$T/worker" --slots 2 \
  --gpus none --labels cpu,first-hour 2>"$T/worker.log" &
pids+=($!)
for _ in $(seq 100); do
  liandan workers -o csv 2>/dev/null | grep -q connected && break
  sleep 0.1
done
see 0 "cpu,first-hour" liandan workers -o wide

# --- A sweep file with typos: every problem at once, with suggestions. ---
cat >"$T/typo.yaml" <<'EOF'
methd: grid
program: train.py
parameters:
  lr: {valuse: [0.1, 0.01]}
liandan:
  seedz: 3
EOF
see 65 "methd (line 1): unknown top-level key (did you mean \`method\`?)" liandan validate "$T/typo.yaml"
see 65 "parameters.lr.valuse (line 4): unknown key (did you mean \`values\`?)" liandan validate "$T/typo.yaml"
see 65 "liandan.seedz (line 6): unknown key (did you mean \`seeds\`?)" liandan validate "$T/typo.yaml"
see 65 "4 problems:" liandan submit "$T/typo.yaml"
# What submit would refuse, validate refuses.
printf 'method: grid\nprogram: train.py\nparameters:\n  lr: {min: 0.001, max: 0.1}\n' >"$T/grid.yaml"
see 65 "grid search cannot enumerate the continuous distribution" liandan validate "$T/grid.yaml"

# --- A metric the sweep never sees: said loudly, or made a failure. ---
cat >"$T/quiet.yaml" <<'EOF'
name: quiet
method: grid
metric: {name: loss, goal: minimize}
command: [sh, -c, 'echo "loss: 0.5"']
parameters:
  x: {values: [1, 2]}
liandan:
  seeds: 2
  metric_pattern: 'loss=(?P<loss>[0-9.]+)'
EOF
see 0 "valid (grid sweep, 1 parameter(s), 2 seed(s), 2 trial(s), 4 job(s))" liandan validate "$T/quiet.yaml"
see 0 "warning: 4 of 4 succeeded job(s) never reported the metric \"loss\"" liandan submit "$T/quiet.yaml" --wait
see 0 "4 succeeded job(s) never reported the metric \"loss\"" liandan status
see 0 "never reported \"loss\"" liandan jobs quiet -o wide
# Ages and durations for people; RFC 3339 and seconds for scripts.
see 0 "AGE" liandan status -o wide
see 0 ",created" liandan status -o csv
see_re 0 ",$ISO" liandan status quiet -o csv
see_re 0 "\"created_at_iso\": \"$ISO\"" liandan status quiet -o json
see 0 "\"succeeded_without_metric\": 4" liandan status quiet -o json
see 0 "TOOK" liandan jobs quiet -o wide
see 0 "no trial has a value for the metric \"loss\"" liandan results quiet
see 0 "already exists with this spec; nothing was added" liandan submit "$T/quiet.yaml"
sed 's/^name: quiet/name: strict/; s/^liandan:/liandan:\n  require_metric: true/' "$T/quiet.yaml" >"$T/strict.yaml"
see 1 "no_metric: exited 0 but never reported the metric \"loss\"" liandan submit "$T/strict.yaml" --wait
# A metric printed as nan is a diverged run, not a pattern that never matched.
sed 's/^name: strict/name: diverged/; s/loss: 0.5/loss=nan/; s/\[0-9.\]+/[0-9.a-z]+/' "$T/strict.yaml" >"$T/diverged.yaml"
see 1 "reported the metric \"loss\" only as NaN or infinity" liandan submit "$T/diverged.yaml" --wait

# A retried job is judged by its new attempt alone: the failed attempt's
# value is not the result of one that reports nothing.
cat >"$T/relapse.yaml" <<'EOF'
name: relapse
method: grid
metric: {name: loss}
command: [sh, -c, 'test -e "$MARKER" && exit 0; echo "loss=0.3"; exit 1']
parameters:
  x: {value: 1}
liandan:
  retries: 0
  require_metric: true
  metric_pattern: 'loss=(?P<loss>[0-9.]+)'
  env: {MARKER: '${envvar:FIRST_HOUR_RELAPSE}'}
EOF
see 1 "0 succeeded, 1 failed" liandan submit "$T/relapse.yaml" --wait
touch "$T/relapse-marker"
see 0 "queued 1 job(s)" liandan retry relapse
see 1 "no_metric: exited 0 but never reported the metric \"loss\"" liandan wait relapse

# --- A done sweep's history stays; control commands say why not. ---
see 65 "finished" liandan pause quiet
see 65 "finished" liandan cancel quiet

# --- Jobs that fail: why, where, and running them again. ---
cat >"$T/fails.yaml" <<'EOF'
name: fails
method: grid
command: [sh, -c, 'echo "usage: train.py [--lr LR]" >&2; test -e "$MARKER" || exit 3']
parameters:
  lr: {values: [0.1, 0.01]}
liandan:
  retries: 0
  env: {MARKER: '${envvar:FIRST_HOUR_MARKER}'}
EOF
see 1 "sweep sw-" liandan submit "$T/fails.yaml" --wait
see 1 "see why: \`liandan logs job-" liandan wait fails
see 0 "\"state\": \"failed\"" liandan status fails -o json
see 0 "failed, exit 3" liandan jobs fails -o wide
see 0 "job,trial,seed,state,attempt,worker,metric,took,reason,lr" liandan jobs fails -o csv
job=$(liandan jobs fails -o csv | sed -n 2p | cut -d, -f1)
if [[ $job != job-* ]]; then
  echo "FAIL: jobs fails -o csv gave no job id (got ${job@Q})"
  failures=$((failures + 1))
fi
short=${job:0:10}
see 0 "usage: train.py [--lr LR]" liandan describe "$short"
see 0 "exit status: 3" liandan describe "$short"
see 67 "has no attempt 5" liandan logs "$short" --attempt 5
see 0 "usage: train.py" liandan logs "$short" --stderr
touch "$T/marker"
see 0 "queued 2 job(s) of sweep" liandan retry fails
see 0 "2 succeeded, 0 failed" liandan wait fails

# --- Checkpoints and metrics: sizes and times for people, exact in CSV. ---
cat >"$T/ckpt.yaml" <<'EOF'
name: ckpt
method: grid
command: [sh, -c, 'head -c 55117 /dev/zero > "$LIANDAN_CHECKPOINT_DIR/.t" && mv "$LIANDAN_CHECKPOINT_DIR/.t" "$LIANDAN_CHECKPOINT_DIR/step-50.ckpt"; echo "loss=0.25"; sleep 1']
metric: {name: loss}
parameters:
  x: {value: 1}
liandan:
  metric_pattern: 'loss=(?P<loss>[0-9.]+)'
EOF
see 0 "0 failed" liandan submit "$T/ckpt.yaml" --wait
cjob=$(liandan jobs ckpt -o csv | sed -n 2p | cut -d, -f1)
see 0 "53.8 KiB" liandan checkpoints "$cjob" -o wide
see 0 ",55117," liandan checkpoints "$cjob" -o csv
see 0 "Z " liandan metrics "$cjob" -o wide
see_re 0 ",$ISO," liandan metrics "$cjob" -o csv
see_re 0 "\"ts_iso\": \"$ISO\"" liandan metrics "$cjob" -o json
see_re 0 "\"created_at_iso\": \"$ISO\"" liandan checkpoints "$cjob" -o json
see_re 0 ",55117,[^,]*,$ISO," liandan checkpoints "$cjob" -o csv
see_re 0 "\"started_at_iso\": \"$ISO\"" liandan jobs ckpt -o json
see_re 0 "\"ended_at_iso\": \"$ISO\"" liandan describe "$cjob" -o json
see 0 "wrote $T/c.ckpt (55117 bytes, step 50, blake3 verified)" liandan download "$cjob" --file "$T/c.ckpt"
see 64 "possible values: text, json" liandan download "$cjob" -o "$T/c.ckpt"
# A job named by a short id downloads under its whole id.
see 0 "wrote $cjob-step-50.ckpt" bash -c "cd '$T' && '$BIN/liandan' download '${cjob:0:10}'"
# Usage lines do not make --coordinator look required.
see 0 "Usage: liandan completions [OPTIONS] <SHELL>" liandan completions --help

# --- Output: one meaning of -o, and files with --file. ---
see 64 "give the file as --file x.jpg" liandan plot quiet -o x.jpg
see 64 "plot draws PNG or SVG" liandan plot quiet --file "$T/x.jpg"
# -o decides the format whatever the file is called.
see 0 "wrote $T/ckpt-plot" liandan plot ckpt --file "$T/ckpt-plot" -o svg
see 0 "<svg" head -c 300 "$T/ckpt-plot"
see 64 "choose one format" liandan plot ckpt --file "$T/x.png" -o svg
see 64 "--param nope: the sweep has no such hyperparameter; its hyperparameters: x" liandan plot ckpt --param nope
see 64 "unexpected argument '--bogus'" liandan status --bogus
see 64 "unrecognized subcommand 'frobnicate'" liandan frobnicate
see 67 "not found" liandan describe job-ffffffffffff

# --- A sweep deleted and submitted again numbers its attempts above the old ones. ---
see 0 "deleted sweep" liandan delete quiet
see 0 "4 succeeded" liandan submit "$T/quiet.yaml" --wait
qjob=$(liandan jobs quiet -o csv | sed -n 2p | cut -d, -f1)
see 67 "has no attempt 1: its one attempt is 2" liandan logs "$qjob" --attempt 1
see 0 "loss: 0.5" liandan logs "$qjob"
see 67 "has no attempt 1: its one attempt is 2" liandan metrics "$qjob" --attempt 1
see 0 "attempt" liandan metrics "$qjob" --attempt 2 -o csv

# --- Workers by a short id; ids complete on Tab. ---
wid=$(liandan workers -o csv | sed -n 2p | cut -d, -f1)
see_re 0 ",[0-9]+,[0-9]+,$ISO," liandan workers -o csv
see_re 0 "\"last_seen_iso\": \"$ISO\"" liandan workers -o json
see 0 "is draining" liandan drain "${wid:0:6}"
see 0 "takes jobs again" liandan drain "${wid:0:6}" --undo
see 0 "$job" env COMPLETE=fish "$BIN/liandan" -- liandan logs job-
see 0 "fails" env COMPLETE=fish "$BIN/liandan" -- liandan results f

# --- The coordinator restarts while a user waits: wait rides it out. ---
cat >"$T/slow.yaml" <<'EOF'
name: slow
method: grid
command: [sh, -c, 'sleep 2']
parameters:
  x: {values: [1, 2]}
EOF
liandan submit "$T/slow.yaml" >/dev/null
liandan wait slow >"$T/wait.out" 2>&1 &
waiter=$!
pids+=("$waiter")
sleep 0.5
kill -TERM "$coord"
wait "$coord" 2>/dev/null
sleep 1
start_coordinator "$addr"
wait "$waiter"
code=$?
step=$((step + 1))
if [[ $code -eq 0 ]] && grep -q "the coordinator is back" "$T/wait.out"; then
  echo "ok   $step: liandan wait slow (coordinator restarted)  ->  0, \"the coordinator is back\""
else
  echo "FAIL $step: liandan wait slow across a coordinator restart exited $code"
  sed 's/^/    | /' "$T/wait.out"
  failures=$((failures + 1))
fi

echo "first hour: $step steps, $failures failed"
[[ $failures -eq 0 ]]
