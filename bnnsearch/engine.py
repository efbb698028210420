"""``fit(cfg, report)``: the one training loop. No Ray, no MLflow.

Habits (design.md): data lives on the device, batches are index gathers, augmentation is
batched on the device, schedules are closed-form host functions, and every statistic is
accumulated on the device and read back with **one** host sync per epoch (the ``tolist`` of
one stacked tensor). A non-finite loss ends the run after the epoch in which it appeared, with
``diverged = 1``: the accuracies of that epoch are reported as 0 (the worst case) and the
losses as ``inf``, never NaN.

Report keys per epoch: ``epoch``, ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
``test/loss``, ``test/acc``, ``bin/flip_ratio`` (seed 002 Eq. 18, per step, averaged over the
epoch) and ``bin/flip_from_init`` (global and ``/<layer>``), ``sched/<name>``, ``cost/*``,
``time/epoch_s``, ``time/total_s``, ``diverged``, plus the method's own entries.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .config import RunConfig
from .data import augment_batch, load_dataset
from .errors import UserError
from .methods import RunInfo, get_method
from .nn import rng

CKPT_NAME = "state.pt"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA device is available (use device: auto or cpu)")
    return torch.device(name)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    diverged: bool = False
    cost_rows: list = field(default_factory=list)
    model: Any = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def _evaluate(model, forward, x, y, batch_size):
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        logits = forward(model, x[i : i + batch_size]).float()
        yb = y[i : i + batch_size]
        loss += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train()
    return loss / len(x), correct.float() / len(x)


def _restore(dst: dict, src: dict) -> None:
    """Restore checkpointed Setup.state in place (methods' closures hold these objects)."""
    for k, v in src.items():
        cur = dst.get(k)
        if isinstance(cur, torch.Tensor):
            cur.copy_(v)
        elif isinstance(cur, dict) and isinstance(v, dict):
            _restore(cur, v)
        else:
            dst[k] = v


def build(cfg: RunConfig, device: torch.device | str = "cpu"):
    """Data, method, hyperparameters and binarized model of a resolved config."""
    data = load_dataset(cfg.data, cfg.data_root, cfg.data_obj(), device)
    method = get_method(cfg.method)
    hp = cfg.hp()
    torch.manual_seed(cfg.seed)
    model = method.build(cfg.arch, cfg.arch_obj(), data.in_shape, data.num_classes, hp, cfg.sign0, cfg.seed)
    model = model.to(device)
    if cfg.channels_last and len(data.in_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return data, method, hp, model


def fit(
    cfg: RunConfig,
    report: Callable[[dict], Any] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    threads: int | None = None,
) -> FitResult:
    """Train one configuration. ``report(metrics)`` is called once per epoch; a truthy return
    stops training. With ``checkpoint_dir`` the full state is saved after every epoch and a
    run finding a checkpoint there continues from it."""
    torch.set_num_threads(threads or cfg.threads or available_cpus())
    device = resolve_device(cfg.device)
    data, method, hp, model = build(cfg, device)
    method.prepare(model, data)
    n_train, bs = len(data.x_train), min(cfg.batch_size, len(data.x_train))
    steps_per_epoch = max(1, n_train // bs)
    total_steps = cfg.epochs * steps_per_epoch
    info = RunInfo(total_steps, steps_per_epoch, bs, data.in_shape, data.num_classes, n_train, cfg.seed)
    setup = method.setup(model, hp, total_steps, info)
    rows, static_cost = method.inference_cost(model, data.in_shape)

    use_amp = cfg.amp == "bf16" and device.type == "cuda"
    net = torch.compile(model) if cfg.compile else model

    def forward(m, x):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
        with ctx:
            return net(x) if m is model else m(x)

    frozen = [(t, t.detach().clone()) for t in method.binary_storage(model)] if cfg.freeze_binary else []
    layers = method.binary_signs(model)
    total_w = float(sum(n for _, _, n in layers)) or 1.0
    prev = [fn() for _, fn, _ in layers]
    init = [s.clone() for s in prev]
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    # Every other random draw during training (nn/rng.py): one stream, checkpointed with the rest.
    train_gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)
    result = FitResult(cost_rows=rows, model=model)
    start_epoch, step, elapsed = 0, 0, 0.0

    ckpt_path = Path(checkpoint_dir) / CKPT_NAME if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        st = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(st["model"])
        for opt, s in zip(setup.optimizers, st["optimizers"]):
            opt.load_state_dict(s)
        shuffle_gen.set_state(st["shuffle_gen"])
        aug_gen.set_state(st["aug_gen"].to(aug_gen.get_state().device))
        train_gen.set_state(st["train_gen"].to(train_gen.get_state().device))
        prev, init = st["prev"], st["init"]
        start_epoch, step, elapsed = st["epoch"], st["step"], st["elapsed"]
        result.history = st["history"]
        _restore(setup.state, st["setup_state"])

    with rng.use(train_gen):
        sched_last: dict[str, float] = {}
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(n_train, generator=shuffle_gen).to(device, non_blocking=True)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            flips = torch.zeros(len(layers), device=device)
            for i in range(steps_per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                x, y = data.x_train[idx], data.y_train[idx]
                if data.augment:
                    x = augment_batch(x, aug_gen)
                progress = step / total_steps
                for s in setup.scheduled:
                    v = s.value(progress)
                    s.apply(v)
                    sched_last[s.name] = v
                for hook in setup.on_step:
                    hook(step, progress)
                loss, logits = method.train_step(model, x, y, setup, forward)
                if frozen:
                    with torch.no_grad():
                        for t, t0_ in frozen:
                            t.copy_(t0_)
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                for j, (_, sign_fn, _) in enumerate(layers):
                    cur = sign_fn()
                    flips[j] += (cur != prev[j]).sum()
                    prev[j] = cur
                step += 1
            for hook in setup.on_epoch_end:
                hook()
            val_loss, val_acc = _evaluate(model, forward, data.x_val, data.y_val, cfg.eval_batch_size)
            test_loss, test_acc = _evaluate(model, forward, data.x_test, data.y_test, cfg.eval_batch_size)
            from_init = torch.stack([(p != s).sum() for p, s in zip(prev, init)]).float() if layers else flips
            n_seen = steps_per_epoch * bs
            head = torch.stack([loss_sum / n_seen, correct.float() / n_seen, val_loss, val_acc, test_loss, test_acc])
            extras: dict[str, Any] = {}
            for fn in setup.epoch_metrics:
                extras.update(fn())
            dev_keys = [k for k, v in extras.items() if isinstance(v, torch.Tensor)]
            dev_vals = [extras[k].detach().float().reshape(()).to(device) for k in dev_keys]
            vals = torch.cat([head, flips, from_init, *[v[None] for v in dev_vals]]).tolist()  # the one host sync
            extras.update(zip(dev_keys, vals[len(vals) - len(dev_keys):]))
            epoch_s = time.perf_counter() - t0
            elapsed += epoch_s
            tr_loss, tr_acc, v_loss, v_acc, t_loss, t_acc = vals[:6]
            n_l = len(layers)
            fl, fi = vals[6 : 6 + n_l], vals[6 + n_l : 6 + 2 * n_l]
            diverged = not all(math.isfinite(v) for v in (tr_loss, v_loss, t_loss))
            m: dict[str, Any] = {
                "epoch": epoch + 1,
                "train/loss": tr_loss, "train/acc": tr_acc,
                "val/loss": v_loss, "val/acc": v_acc,
                "test/loss": t_loss, "test/acc": t_acc,
                "bin/flip_ratio": sum(fl) / (total_w * steps_per_epoch),
                "bin/flip_from_init": sum(fi) / total_w,
            }
            for (name, _, numel), f, f0 in zip(layers, fl, fi):
                m[f"bin/flip_ratio/{name}"] = f / (numel * steps_per_epoch)
                m[f"bin/flip_from_init/{name}"] = f0 / numel
            m.update({f"sched/{k}": v for k, v in sched_last.items()})
            m.update(extras)
            m.update(static_cost)
            m["time/epoch_s"] = epoch_s
            m["time/total_s"] = elapsed
            m["diverged"] = int(diverged)
            if diverged:
                for k in list(m):
                    if isinstance(m[k], float) and math.isnan(m[k]) and not k.endswith(("/acc", "/loss")):
                        del m[k]  # a method's diagnostic of the NaN weights: no value to record
                    elif k.endswith("/acc"):
                        m[k] = 0.0
                    elif k.endswith("/loss"):
                        m[k] = math.inf
            result.history.append(m)
            result.diverged = diverged
            if ckpt_path is not None:
                state = {
                    "model": model.state_dict(), "optimizers": [o.state_dict() for o in setup.optimizers],
                    "shuffle_gen": shuffle_gen.get_state(), "aug_gen": aug_gen.get_state(),
                    "train_gen": train_gen.get_state(),
                    "prev": prev, "init": init, "epoch": epoch + 1, "step": step, "elapsed": elapsed,
                    "history": result.history, "setup_state": dict(setup.state),
                }
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt_path.with_suffix(".tmp")
                torch.save(state, tmp)
                tmp.replace(ckpt_path)
            stop = report(m) if report is not None else None
            if diverged or stop:
                break
    return result
