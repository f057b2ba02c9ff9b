"""Benchmark: max pooling through torch's NCHW kernel against partitions.layers.MaxPool2d.

    PYTHONPATH=. python3 bench/maxpool.py [--repeats 5] [--batch-size 100]

On ONE thread, in this process set up as an agent is (profiles.host.keep_freed_memory):
1. each pool of the zoo's VGG-5 and VGG-11 (and ResNet-style 3x3, stride 2, padding 1) on
   its activation at the batch size: forward alone and forward + backward, nn.MaxPool2d
   against partitions.layers.MaxPool2d;
2. a whole training step (forward, loss, backward, SGD step) of VGG-5, VGG-11 and VGG-16 on
   3x32x32, with the model's pools as the zoo builds them and swapped back to nn.MaxPool2d.
The two ways alternate, `--repeats` times; each figure is the median of the repeats' medians
(10 timed calls each, after 3 untimed), with the range over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiles.host import keep_freed_memory  # noqa: E402

keep_freed_memory()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from partitions.layers import MaxPool2d  # noqa: E402
from partitions.zoo import build_model  # noqa: E402


def median_ms(fn: Callable[[], None], calls: int = 10, warm_up: int = 3) -> float:
    for _ in range(warm_up):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def with_native_pools(model: nn.Module) -> nn.Module:
    """The same model with every MaxPool2d of ours replaced by torch's, same settings."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride,
                                                   child.padding, child.dilation,
                                                   ceil_mode=child.ceil_mode))
    return model


def alternate(ways: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            results[name].append(median_ms(fn))
    return results


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def pool_row(label: str, shape: tuple, options: dict, repeats: int) -> None:
    x = torch.randn(shape).relu().requires_grad_()
    theirs, ours = nn.MaxPool2d(**options), MaxPool2d(**options)
    grad = torch.randn_like(theirs(x))
    r = alternate({"fwd torch": lambda: theirs(x), "fwd ours": lambda: ours(x),
                   "fwd+bwd torch": lambda: theirs(x).backward(grad),
                   "fwd+bwd ours": lambda: ours(x).backward(grad)}, repeats)
    print(f"  {label:<13} {str(shape):<20} forward {cell(r['fwd torch'])} | "
          f"{cell(r['fwd ours'])}   forward+backward {cell(r['fwd+bwd torch'])} | "
          f"{cell(r['fwd+bwd ours'])}")


def pools(batch: int, repeats: int) -> None:
    print(f"\npools, ms (median of {repeats}, range): torch's NCHW kernel | "
          "partitions.layers.MaxPool2d")
    for case in [("vgg5 pool 1", (batch, 32, 32, 32), dict(kernel_size=2)),
                 ("vgg5 pool 2", (batch, 64, 16, 16), dict(kernel_size=2)),
                 ("vgg11 pool 1", (batch, 64, 32, 32), dict(kernel_size=2, ceil_mode=True)),
                 ("vgg11 pool 4", (batch, 512, 4, 4), dict(kernel_size=2, ceil_mode=True)),
                 ("3x3 /2 pad 1", (batch, 64, 32, 32),
                  dict(kernel_size=3, stride=2, padding=1))]:
        pool_row(*case, repeats)


def step_row(name: str, batch: int, repeats: int) -> None:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models = {"torch": with_native_pools(build_model(name, (3, 32, 32), 10)),
              "ours": build_model(name, (3, 32, 32), 10)}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
                  for k, m in models.items()}

    def step(k: str) -> Callable[[], None]:
        def run() -> None:
            F.cross_entropy(models[k](x), y).backward()
            optimizers[k].step()
            optimizers[k].zero_grad(set_to_none=True)
        return run

    r = alternate({"torch": step("torch"), "ours": step("ours")}, repeats)
    gain = 1 - statistics.median(r["ours"]) / statistics.median(r["torch"])
    print(f"  {name:<6} B={batch:<4} {cell(r['torch'])} | {cell(r['ours'])}   "
          f"{gain * 100:.0f}% less")


def steps(batch: int, repeats: int) -> None:
    print(f"\ntraining steps, ms (median of {repeats}, range): with torch's pools | with ours")
    for name, b in (("vgg5", batch), ("vgg11", 32), ("vgg16", 32)):
        step_row(name, b, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    pools(args.batch_size, args.repeats)
    steps(args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
