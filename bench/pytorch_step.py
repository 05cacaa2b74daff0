"""Time per training step of the PyTorch equivalent of `liandan-train bench`.

Same model (MLP: 2 inputs, `depth` hidden layers of `width`, ReLU, 3 classes),
same fixed batch, same optimizer (Adam, lr 0.01, PyTorch's default foreach
implementation; --optimizer=adam_fused for its fused kernel), same thread count, CPU. Prints one JSON line like the Rust
benchmark does. Used by scripts/bench.sh.
"""
import json
import sys
import time

import torch


def main() -> None:
    args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
    width = int(args.get("width", 256))
    depth = int(args.get("depth", 2))
    batch = int(args.get("batch_size", 256))
    steps = int(args.get("steps", 300))
    threads = int(args.get("threads", 1))
    optimizer = args.get("optimizer", "adam")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers, fan_in = [], 2
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 3))
    model = torch.nn.Sequential(*layers)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    elif optimizer == "adam_fused":
        # Not PyTorch's default on CPU; for comparison with liandan-train's fused pass.
        opt = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(batch, 2)
    y = torch.randint(0, 3, (batch,))
    times = []
    for i in range(steps + 10):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        if i >= 10:
            times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"ms_per_step_median": times[len(times) // 2] * 1e3, "steps": steps, "threads": torch.get_num_threads(), "batch_size": batch}))


if __name__ == "__main__":
    main()
