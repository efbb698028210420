"""Epoch time of ``engine.fit`` against a plain PyTorch reference loop, in one process.

The reference is the loop most BNN code ships: a CPU ``TensorDataset`` + ``DataLoader``
(shuffle), batches moved to the device each step, ``loss.item()`` accumulated per step, and
the same per-epoch evaluation of the validation and test splits; in fp32, or under bf16
autocast where the config asks for it (as the engine). Both train the *same*
binarized model with the *same* method optimizers on the same data; the engine additionally
tracks per-step flip ratios. Printed: median epoch seconds (first epoch dropped as warm-up)
and the ratio reference / engine (> 1 means the engine is faster).

    python benchmarks/train_speed.py                 # CPU: mlp on mnist1d
    python benchmarks/train_speed.py --gpu           # + vgg_small and resnet20 on CIFAR-shaped tensors
    python benchmarks/train_speed.py --gpu-only      # those alone (benchmarks/device_check.sh)
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from _common import cifar_shaped_npz, median_tail

from bnnsearch.config import resolve
from bnnsearch.engine import autocast, build, fit, resolve_device


def reference_epochs(cfg, epochs: int) -> list[float]:
    device = resolve_device(cfg.device)
    data, method, hp, model = build(cfg, device)
    ds = torch.utils.data.TensorDataset(data.x_train.cpu(), data.y_train.cpu())
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    evals = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.cpu(), y.cpu()), batch_size=cfg.eval_batch_size)
             for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test))]
    setup = method.setup(model, hp, epochs * len(loader))

    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        running = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            for opt in setup.optimizers:
                opt.zero_grad()
            with autocast(cfg, device):  # the engine's precision, so both compute alike
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            for opt in setup.optimizers:
                opt.step()
            running += loss.item()
        model.eval()
        with torch.no_grad():
            for ld in evals:
                correct = 0
                for x, y in ld:
                    with autocast(cfg, device):
                        correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def engine_epochs(cfg) -> list[float]:
    res = fit(cfg)
    return [m["time/epoch_s"] for m in res.history]



def bench(name, cfg, epochs):
    ref = median_tail(reference_epochs(cfg, epochs))
    eng = median_tail(engine_epochs(cfg))
    print(f"{name:<34} {cfg.device:<5} engine {eng:8.3f}s/epoch   reference {ref:8.3f}s/epoch   "
          f"ratio {ref / eng:5.2f}x", flush=True)
    return ref / eng


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--gpu", action="store_true", help="also the CIFAR-shaped conv nets on CUDA")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA settings (benchmarks/device_check.sh)")
    ap.add_argument("--methods", default="latent,filtered")
    args = ap.parse_args()
    args.gpu = args.gpu or args.gpu_only
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: torch sees no CUDA device on this machine")
    torch.set_num_threads(torch.get_num_threads())
    dev = "cuda" if args.gpu else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if args.gpu else ""))
    for method in [] if args.gpu_only else args.methods.split(","):
        cfg = resolve(dict(method=method, arch="mlp", data="mnist1d", epochs=args.epochs, batch_size=128,
                           device="cpu", data_root="./data", eval_batch_size=1024))
        bench(f"{method} mlp mnist1d bs128", cfg, args.epochs)
    if args.gpu:
        with tempfile.TemporaryDirectory() as tmp:
            p = cifar_shaped_npz(tmp, 20000)
            for arch in ("vgg_small", "resnet20"):
                for amp, cl in (("none", False), ("bf16", True)):
                    cfg = resolve(dict(method="latent", arch=arch, data="npz", data_root=str(p), epochs=args.epochs,
                                       batch_size=256, device=dev, amp=amp, channels_last=cl))
                    bench(f"latent {arch} synthetic amp={amp} cl={cl}", cfg, args.epochs)


if __name__ == "__main__":
    main()
