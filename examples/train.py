"""A training program written for liandan, in plain Python (no dependencies).

It follows the conventions in the README ("Writing a training program"):
- parameters arrive as --name=value arguments (and LIANDAN_PARAMS as JSON);
- metrics are appended to LIANDAN_METRICS_FILE, one JSON object per line;
- checkpoints are written completely under a temporary name, fsynced, then
  renamed to step-<N>.ckpt in LIANDAN_CHECKPOINT_DIR (the rename publishes it);
- with LIANDAN_RESUME_FROM set it continues from that checkpoint;
- SIGTERM (cancel, drain, shutdown) means: checkpoint now and exit.

The "model" minimises (w - target)^2 by gradient descent with a little seeded noise.
"""
import argparse
import json
import os
import random
import signal
import sys
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def save(ckpt_dir, step, state):
    final = os.path.join(ckpt_dir, f"step-{step}.ckpt")
    tmp = os.path.join(ckpt_dir, f".step-{step}.ckpt.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    dfd = os.open(ckpt_dir, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, on_term)

    metrics = open(os.environ["LIANDAN_METRICS_FILE"], "a") if "LIANDAN_METRICS_FILE" in os.environ else sys.stdout
    ckpt_dir = os.environ.get("LIANDAN_CHECKPOINT_DIR")
    state = {"step": 0, "w": 0.0, "rng": None}
    rng = random.Random(args.seed)
    resume = os.environ.get("LIANDAN_RESUME_FROM")
    if resume:
        with open(resume) as f:
            state = json.load(f)
        rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))
        print(f"resumed from step {state['step']}", file=sys.stderr)

    target = 3.0
    while state["step"] < args.steps:
        grad = 2 * (state["w"] - target) + rng.gauss(0, 0.1)
        state["w"] -= args.lr * grad
        state["step"] += 1
        loss = (state["w"] - target) ** 2
        if state["step"] % 10 == 0:
            metrics.write(json.dumps({"step": state["step"], "loss": loss}) + "\n")
            metrics.flush()
            print(f"step {state['step']} loss {loss:.6f}", flush=True)
        if ckpt_dir and (state["step"] % 50 == 0 or stop):
            state["rng"] = rng.getstate()
            save(ckpt_dir, state["step"], state)
        if stop:
            print(f"stopping at step {state['step']} after a checkpoint", file=sys.stderr)
            return 0
        time.sleep(args.sleep)
    metrics.write(json.dumps({"final": True, "step": state["step"], "loss": (state["w"] - target) ** 2}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
