"""``fit(cfg, report)``: the one training loop. No Ray, no MLflow.

Habits (design.md): data lives on the device, batches are index gathers, augmentation is
batched on the device, schedules are closed-form host functions, and every statistic is
accumulated on the device and read back with **one** host sync per epoch (the ``tolist`` of
one stacked tensor). A non-finite loss ends the run after the epoch in which it appeared, with
``diverged = 1``: the accuracies of that epoch are reported as 0 (the worst case) and the
losses as ``inf``, never NaN.

Report keys per epoch: ``epoch``, ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
``test/loss``, ``test/acc``, ``val/acc_top5``, ``test/acc_top5``, ``bin/flip_ratio`` (seed 002
Eq. 18, per step, averaged over the epoch) and ``bin/flip_from_init`` (global and
``/<layer>``), ``sched/<name>``, ``cost/*`` (the static inference cost, and
``cost/train_gates``: modelled training cost so far, cost.py), ``time/epoch_s``,
``time/total_s``, ``time/cpu_s``, ``time/total_cpu_s``, ``diverged``, plus the method's own
entries (``val/acc_<name>``, ``test/acc_<name>`` for its extra evaluations,
``Method.eval_variants``, after the last epoch only); on a CUDA device ``mem/peak_device_mb``,
the peak memory PyTorch's allocator held since the run started in this process (a pack's
members share one, their pack's; on the CPU no per-run peak exists — a Ray worker's process
peak mixes its trials — so none is reported); with ``compile: true`` also ``time/compile_s``
(see ``fit_pack``).
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

from .config import RunConfig
from .data import augment_batch, load_dataset
from .errors import UserError
from .methods import RunInfo, get_method
from .methods.base import Pack, member_losses, unpackable_hparams, upcast
from .nn import rng
from .runio import write_whole

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
def _evaluate(pack: Pack, forward, x, y, batch_size):
    """Per-member (loss, accuracy, top-5 accuracy) on (x, y): three ``[K]`` device tensors, no
    host sync. Top-5 counts a sample when its label is among the 5 largest logits (among all
    of them with 5 classes or fewer: then it is 1)."""
    pack.train(False)
    k = len(pack.members)
    loss = torch.zeros(k, device=x.device, dtype=torch.float64)
    correct = torch.zeros(k, device=x.device, dtype=torch.long)
    correct5 = torch.zeros(k, device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        logits = upcast(pack.forward(forward, x[i : i + batch_size]))
        yb = y[i : i + batch_size]
        loss += member_losses(logits.double(), yb, reduction="sum")  # float64: a sum over the whole split
        correct += (logits.argmax(-1) == yb[:, None]).sum(0)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # [N, K, 5]
        correct5 += (top == yb[:, None, None]).any(-1).sum(0)
    pack.train(True)
    return loss / len(x), correct.float() / len(x), correct5.float() / len(x)


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


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model(cfg: RunConfig, data, method, hp, device):
    """The binarized model of a resolved config on already loaded data (seeded by cfg.seed)."""
    torch.manual_seed(cfg.seed)
    model = method.build(cfg.arch, cfg.arch_obj(), data.in_shape, data.num_classes, hp, cfg.sign0, cfg.seed)
    model = model.to(device)
    if cfg.dtype != "float32":
        model = model.to(DTYPES[cfg.dtype])
    if cfg.channels_last and len(data.in_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_data(cfg: RunConfig, device):
    data = load_dataset(cfg.data, cfg.data_root, cfg.data_obj(), device)
    if cfg.dtype != "float32":
        for k in ("x_train", "x_val", "x_test"):
            t = getattr(data, k)
            if t.is_floating_point():
                setattr(data, k, t.to(DTYPES[cfg.dtype]))
    return data


def build(cfg: RunConfig, device: torch.device | str = "cpu"):
    """Data, method, hyperparameters and binarized model of a resolved config."""
    data = load_data(cfg, device)
    method = get_method(cfg.method)
    hp = cfg.hp()
    return data, method, hp, build_model(cfg, data, method, hp, device)


def run_info(cfg: RunConfig, data) -> RunInfo:
    """The step arithmetic of a run: full batches only (the last partial one is dropped)."""
    n_train, bs = len(data.x_train), min(cfg.batch_size, len(data.x_train))
    steps_per_epoch = max(1, n_train // bs)
    return RunInfo(cfg.epochs * steps_per_epoch, steps_per_epoch, bs, data.in_shape, data.num_classes, n_train,
                   cfg.seed)


def planned_train_gates(cfg: RunConfig, epochs: int | None = None) -> tuple[float, RunInfo]:
    """The modelled training cost (``cost/train_gates``, cost.py) of a run of ``cfg`` after
    ``epochs`` (all by default), without training: the method's per-step count times the steps,
    or, where the method counts as it goes (CycleBNN's precision schedule), its schedules and
    per-step hooks run over those steps as ``fit`` runs them. With the run's step arithmetic."""
    data, method, hp, model = build(cfg, "cpu")
    method.prepare(model, data)
    info = run_info(cfg, data)
    steps = info.total_steps if epochs is None else min(epochs, cfg.epochs) * info.steps_per_epoch
    setup = method.setup(model, hp, info.total_steps, info)
    per_step = method.train_gates_per_step(model, setup, info)
    if per_step is not None:
        return per_step * steps, info
    for step in range(steps):
        progress = step / info.total_steps
        for sch in setup.scheduled:
            sch.apply(sch.value(progress))
        for hook in setup.on_step:
            hook(step, progress)
    out: dict = {}
    for fn in setup.epoch_metrics:
        out.update(fn())
    return float(out["cost/train_gates"]), info


def pack_key(cfg: RunConfig) -> dict:
    """What every member of a pack shares: the config without the method's packable
    hyperparameters (``Hparams`` fields whose metadata says ``packable: False`` stay in)."""
    d = cfg.to_dict()
    hp = d.pop("hparams")
    fixed = unpackable_hparams(get_method(cfg.method))
    d["hparams"] = {k: v for k, v in hp.items() if k in fixed}
    return d


def fit(
    cfg: RunConfig,
    report: Callable[[dict], Any] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    threads: int | None = None,
    save_due: Callable[[], bool] | None = None,
    on_start: Callable[[], Any] | None = None,
) -> FitResult:
    """Train one configuration. ``report(metrics)`` is called once per epoch; a truthy return
    stops training. With ``checkpoint_dir`` the full state is saved after every epoch (with
    ``save_due``, after the epochs where ``save_due()`` is true, asked before the epoch's
    report) and a run finding a checkpoint there continues from it. ``on_start()`` is called once
    the data is loaded and the model built, before the first epoch (the CLI announces the run
    there, so a missing dataset is the only line printed)."""
    return fit_pack([cfg], [report], checkpoint_dir=checkpoint_dir, threads=threads, save_due=save_due,
                    on_start=on_start)[0]


def autocast(cfg: RunConfig, device: torch.device):
    """The forward pass's precision context: bf16 autocast with ``amp: bf16`` (on the CPU too:
    slow where it lacks bf16 instructions, but never ignored), else none."""
    if cfg.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far, by Dynamo's own timers:
    the forward's compiles (tracing, and Inductor's code generation or cache loads beneath it)
    and the backward's, which AOTAutograd compiles lazily at the first backward pass."""
    import sys

    if "torch._dynamo" not in sys.modules:
        return 0.0
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(sum(compilation_time_metrics.get(k, ())) for k in ("_compile.compile_inner", "backward._backward_impl")))


@dataclass
class _Member:
    cfg: RunConfig
    hp: Any
    model: Any
    setup: Any
    layers: list
    total_w: float
    prev: list
    init: list
    frozen: list
    gen: torch.Generator
    rows: list
    static_cost: dict
    result: FitResult
    report: Callable[[dict], Any] | None
    gates: float | None = None  # modelled gates per step (Method.train_gates_per_step)
    sched_last: dict = field(default_factory=dict)


def fit_pack(
    cfgs: list[RunConfig],
    reports: list[Callable[[dict], Any] | None] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    threads: int | None = None,
    on_epoch: Callable[[dict[int, dict]], Any] | None = None,
    after_checkpoint: Callable[[], Any] | None = None,
    save_due: Callable[[], bool] | None = None,
    on_start: Callable[[], Any] | None = None,
) -> list[FitResult]:
    """Train K configurations that share every structural key as one packed network
    (``nn/pack.py``); K = 1 is the ordinary single run. Member k is trained exactly as
    ``fit(cfgs[k])`` would train it: its own optimizers, schedules, quantizers, training random
    stream and metrics; ``reports[k]`` receives its per-epoch metrics, and a truthy return
    stops that member only (ASHA), as divergence does. The pack ends when every member has.

    ``time/epoch_s`` of a member is the pack's epoch wall time divided by the members that
    trained in it (its fair share); ``pack/epoch_s`` is the whole pack's, ``pack/size`` K.
    With ``compile: true`` the seconds spent compiling are not in ``time/epoch_s`` and
    ``time/total_s``: ``time/compile_s`` reports them apart (so far in the run; a member's share
    in a pack, whose whole is ``pack/compile_s``). ``time/cpu_s`` and ``time/total_cpu_s`` are the
    process's CPU seconds over the same epochs (every thread's; a member's share in a pack,
    compiling included): a cost that another job sharing the machine inflates far less than wall
    time, which it stretches by waiting. On a GPU they count the host's work only.
    ``compile: true`` starts with ``torch._dynamo.reset()``, which drops every compiled function
    of this process (see the comment at the call): code that calls ``fit`` as a library and
    compiles functions of its own recompiles them on their next call.

    ``on_epoch({k: metrics})``, when given, is called once per epoch with every member that
    trained in it, instead of the per-member reports; it returns the members to stop, which
    the epoch's checkpoint then records as stopped; ``after_checkpoint()`` follows the save
    (a Ray trial hands the checkpoint over there).

    ``save_due()``, when given, is asked after each epoch whether to save the checkpoint then
    (default: every epoch). A Ray trial hands its checkpoint over only every ``--checkpoint-s``
    seconds and saves only then: a save costs a third of a short packed epoch (8 MLPs 64x3 on
    digits: ~30 ms of ~95 ms), and a save Ray never receives is lost with the trial's worker."""
    cfg = cfgs[0]
    k_n = len(cfgs)
    reports = list(reports) if reports is not None else [None] * k_n
    if len(reports) != k_n:
        raise ValueError("one report callback per member")
    if k_n > 1:
        key = pack_key(cfg)
        for c in cfgs[1:]:
            if c.method != cfg.method or pack_key(c) != key:
                diff = sorted(k for k in key if key[k] != pack_key(c).get(k)) or ["method"]
                raise ValueError(f"members of a pack must share every structural key; they differ in {diff}")
    torch.set_num_threads(threads or cfg.threads or available_cpus())
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # mem/peak_device_mb: this run's peak, its data included
        torch.cuda.reset_peak_memory_stats(device)
    data = load_data(cfg, device)
    method = get_method(cfg.method)
    run = run_info(cfg, data)  # the members share it but for their seeds (RunInfo.seed)
    n_train, bs, steps_per_epoch, total_steps = run.n_train, run.batch_size, run.steps_per_epoch, run.total_steps
    members: list[_Member] = []
    for c, rep in zip(cfgs, reports):
        hp = c.hp()
        model = build_model(c, data, method, hp, device)
        method.prepare(model, data)
        info = run_info(c, data)
        setup = method.setup(model, hp, total_steps, info)
        rows, static_cost = method.inference_cost(model, data.in_shape)
        frozen = [(t, t.detach().clone()) for t in method.binary_storage(model)] if c.freeze_binary else []
        layers = method.binary_signs(model)
        prev = [fn() for _, fn, _ in layers]
        # Every other random draw during training (nn/rng.py): one stream per member, checkpointed.
        gen = torch.Generator(device=device).manual_seed(c.seed + 3)
        members.append(_Member(c, hp, model, setup, layers, float(sum(n for _, _, n in layers)) or 1.0, prev,
                               [s.clone() for s in prev], frozen, gen, rows, static_cost,
                               FitResult(cost_rows=rows, model=model), rep,
                               method.train_gates_per_step(model, setup, info)))
    pack = Pack([m.model for m in members], [m.setup for m in members], [m.gen for m in members],
                method.pack_model([m.model for m in members]) if k_n > 1 else None)
    if k_n > 1:
        for c in cfgs:
            if c.freeze_binary:
                raise ValueError("freeze_binary (a control) is not packed; run it alone")

    target = pack.module if pack.module is not None else members[0].model
    if cfg.compile:
        # Every network compiles afresh: torch.nn.utils.parametrize gives each parametrized
        # module its own class, so Dynamo's type guards fail for every new network and each run
        # in a process added new cache entries until Dynamo's recompile limit (8) turned
        # compilation off for the rest of the process, silently (a worker's 5th or 6th trial
        # ran eager; tests/test_engine.py). Inductor's on-disk cache keeps the later compiles short.
        from torch import _dynamo

        _dynamo.reset()
    net = torch.compile(target) if cfg.compile else target

    def forward(m, x):
        with autocast(cfg, device):
            return net(x) if m is target else m(x)

    def eager_forward(m, x):  # the extra evaluations: not compiled (no graphs for a mode used once a run)
        with autocast(cfg, device):
            return m(x)

    variants = method.eval_variants()

    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    start_epoch, step, elapsed, compiled, cpu_used = 0, 0, 0.0, 0.0, 0.0

    ckpt_path = Path(checkpoint_dir) / CKPT_NAME if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        st = torch.load(ckpt_path, map_location=device, weights_only=True)
        if len(st["members"]) != k_n:
            raise ValueError(f"{ckpt_path}: a checkpoint of {len(st['members'])} members, not {k_n}")
        for m, ms in zip(members, st["members"]):
            m.model.load_state_dict(ms["model"])
            for opt, s in zip(m.setup.optimizers, ms["optimizers"]):
                opt.load_state_dict(s)
            m.gen.set_state(ms["train_gen"].to(m.gen.get_state().device))
            m.prev, m.init = ms["prev"], ms["init"]
            m.result.history = ms["history"]
            m.result.diverged = ms["diverged"]
            pack.active[members.index(m)] = ms["active"]
            _restore(m.setup.state, ms["setup_state"])
        shuffle_gen.set_state(st["shuffle_gen"])
        aug_gen.set_state(st["aug_gen"].to(aug_gen.get_state().device))
        start_epoch, step, elapsed = st["epoch"], st["step"], st["elapsed"]
        compiled = st.get("compile_s", 0.0)  # absent in checkpoints written before it was recorded
        cpu_used = st.get("cpu_s")  # None (not reported) when the checkpoint predates it: unknown, not 0

    if k_n > 1:
        pack.fuse()  # after a restore: the fused optimizer state starts from the members' own
    n_l = [len(m.layers) for m in members]
    # The flip statistics of a pack read all members' signs per layer at once where the method
    # allows it (the same values as each member's own, in 1/K of the small ops per step).
    stacked = method.binary_signs_stacked(pack.module, [m.model for m in members]) if k_n > 1 else None
    if on_start is not None:
        on_start()
    pack.train(True)
    with rng.use(members[0].gen):  # a pack's members switch to their own streams (Pack.ctx)
        for epoch in range(start_epoch, cfg.epochs):
            if not any(pack.active):
                break
            live = [i for i, a in enumerate(pack.active) if a]
            t0, cpu0 = time.perf_counter(), time.process_time()
            c0 = _compile_seconds() if cfg.compile else 0.0
            perm = torch.randperm(n_train, generator=shuffle_gen).to(device, non_blocking=True)
            loss_sum = torch.zeros(k_n, device=device, dtype=torch.float64)
            correct = torch.zeros(k_n, device=device, dtype=torch.long)
            flips = [torch.zeros(n, device=device) for n in n_l]
            if stacked is not None:
                flips_st = torch.zeros(k_n, n_l[0], device=device)
                prev_st = [torch.stack([m.prev[li] for m in members]) for li in range(n_l[0])]
            for i in range(steps_per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                x, y = data.x_train[idx], data.y_train[idx]
                if data.augment:
                    x = augment_batch(x, aug_gen)
                progress = step / total_steps
                for j in live:
                    m = members[j]
                    with pack.ctx(j):
                        for s in m.setup.scheduled:
                            v = s.value(progress)
                            s.apply(v)
                            m.sched_last[s.name] = v
                        for hook in m.setup.on_step:
                            hook(step, progress)
                if k_n == 1:
                    loss, logits = method.train_step(members[0].model, x, y, members[0].setup, forward)
                    loss, logits = loss.reshape(1), logits.unsqueeze(1)
                else:
                    loss, logits = method.train_step_pack(pack, x, y, forward)
                for j in live:
                    for t, t0_ in members[j].frozen:
                        with torch.no_grad():
                            t.copy_(t0_)
                loss_sum += loss * len(y)
                correct += (logits.argmax(-1) == y[:, None]).sum(0)
                if stacked is not None:  # members that ended are frozen: their rows stay 0, unread
                    for li, sign_fn in enumerate(stacked):
                        cur = sign_fn()
                        # int32: a row sum of bools into int64 ran ~5x slower (torch 2.14, CPU)
                        flips_st[:, li] += (cur != prev_st[li]).flatten(1).sum(1, dtype=torch.int32)
                        prev_st[li] = cur
                else:
                    for j in live:
                        m = members[j]
                        with pack.ctx(j):
                            for li, (_, sign_fn, _) in enumerate(m.layers):
                                cur = sign_fn()
                                flips[j][li] += (cur != m.prev[li]).sum()
                                m.prev[li] = cur
                step += 1
            if stacked is not None:
                for j in live:
                    flips[j] = flips_st[j]
                    members[j].prev = [prev_st[li][j].clone() for li in range(n_l[0])]  # its own (checkpointed)
            for j in live:
                with pack.ctx(j):
                    for hook in members[j].setup.on_epoch_end:
                        hook()
            val_loss, val_acc, val_acc5 = _evaluate(pack, forward, data.x_val, data.y_val, cfg.eval_batch_size)
            test_loss, test_acc, test_acc5 = _evaluate(pack, forward, data.x_test, data.y_test, cfg.eval_batch_size)
            extra_acc = {"val/acc_top5": val_acc5, "test/acc_top5": test_acc5}
            # after the last epoch only: every epoch they cost ~6 % of a CycleBNN run on mnist5k
            for name, mode in variants.items() if epoch == cfg.epochs - 1 else ():
                with contextlib.ExitStack() as modes:
                    for m in members:
                        modes.enter_context(mode(m.model))
                    extra_acc[f"val/acc_{name}"] = _evaluate(pack, eager_forward, data.x_val, data.y_val, cfg.eval_batch_size)[1]
                    extra_acc[f"test/acc_{name}"] = _evaluate(pack, eager_forward, data.x_test, data.y_test, cfg.eval_batch_size)[1]
            n_seen = steps_per_epoch * bs
            blocks, extras_all = [], []
            for j in live:
                m = members[j]
                from_init = torch.stack([(p != s).sum() for p, s in zip(m.prev, m.init)]).float() if m.layers else flips[j]
                head = torch.stack([loss_sum[j] / n_seen, correct[j].double() / n_seen, val_loss[j],
                                    val_acc[j].double(), test_loss[j], test_acc[j].double()])
                extras: dict[str, Any] = {}
                with pack.ctx(j):
                    for fn in m.setup.epoch_metrics:
                        extras.update(fn())
                extras.update({k: v[j] for k, v in extra_acc.items()})
                dev_keys = [k for k, v in extras.items() if isinstance(v, torch.Tensor)]
                dev_vals = [extras[k].detach().double().reshape(1).to(device) for k in dev_keys]
                blocks += [head, flips[j].double(), from_init.double(), *dev_vals]
                extras_all.append((extras, dev_keys))
            flat = torch.cat(blocks).tolist()  # the one host sync of the epoch, for every member
            comp = _compile_seconds() - c0 if cfg.compile else 0.0
            epoch_s = time.perf_counter() - t0 - comp  # compile seconds are reported apart
            epoch_cpu = time.process_time() - cpu0  # every thread of this process, compiling included
            elapsed += epoch_s
            cpu_used = None if cpu_used is None else cpu_used + epoch_cpu
            compiled += comp
            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            pos = 0
            for j, (extras, dev_keys) in zip(live, extras_all):
                m = members[j]
                width = 6 + 2 * n_l[j] + len(dev_keys)
                vals, pos = flat[pos : pos + width], pos + width
                extras.update(zip(dev_keys, vals[width - len(dev_keys):]))
                metrics = _epoch_metrics(m, epoch, vals, n_l[j], steps_per_epoch, extras, epoch_s / len(live), elapsed / len(live) if k_n > 1 else elapsed)
                if m.gates is not None:  # the steps so far (every live member took all of them)
                    metrics["cost/train_gates"] = step * m.gates
                if cpu_used is not None:
                    metrics["time/cpu_s"] = epoch_cpu / len(live)
                    metrics["time/total_cpu_s"] = cpu_used / len(live) if k_n > 1 else cpu_used
                if cfg.compile:
                    metrics["time/compile_s"] = compiled / len(live) if k_n > 1 else compiled
                if device.type == "cuda":  # the allocator's own count: a host read, no device sync
                    metrics["mem/peak_device_mb"] = peak_mb
                if k_n > 1:
                    metrics["pack/size"] = k_n
                    metrics["pack/epoch_s"] = epoch_s
                    if cfg.compile:
                        metrics["pack/compile_s"] = compiled
                m.result.history.append(metrics)
                m.result.diverged = bool(metrics["diverged"])
            if on_epoch is not None:
                stops = set(on_epoch({j: members[j].result.history[-1] for j in live}) or ())
                for j in live:
                    if members[j].result.diverged or j in stops:
                        pack.active[j] = False
            if ckpt_path is not None and (save_due is None or save_due()):
                state = {
                    "members": [{
                        "model": m.model.state_dict(), "optimizers": [o.state_dict() for o in m.setup.optimizers],
                        "train_gen": m.gen.get_state(), "prev": m.prev, "init": m.init, "history": m.result.history,
                        "diverged": m.result.diverged, "setup_state": dict(m.setup.state),
                        "active": pack.active[j] and not m.result.diverged,
                    } for j, m in enumerate(members)],
                    "shuffle_gen": shuffle_gen.get_state(), "aug_gen": aug_gen.get_state(),
                    "epoch": epoch + 1, "step": step, "elapsed": elapsed, "compile_s": compiled, "cpu_s": cpu_used,
                }
                # With per-member reports a member is deactivated only after its report: the saved
                # flag anticipates divergence (final), not a stop a report returns (re-asked after
                # a resume). With on_epoch the stops are decided before the save.
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                write_whole(ckpt_path, lambda tmp: torch.save(state, tmp))
            if on_epoch is not None:
                if after_checkpoint is not None:
                    after_checkpoint()
                continue
            for j in live:
                m = members[j]
                stop = m.report(m.result.history[-1]) if m.report is not None else None
                if m.result.diverged or stop:
                    pack.active[j] = False
    return [m.result for m in members]


def _epoch_metrics(m: _Member, epoch: int, vals: list, n_l: int, steps_per_epoch: int, extras: dict,
                   epoch_s: float, total_s: float) -> dict:
    tr_loss, tr_acc, v_loss, v_acc, t_loss, t_acc = vals[:6]
    fl, fi = vals[6 : 6 + n_l], vals[6 + n_l : 6 + 2 * n_l]
    diverged = not all(math.isfinite(v) for v in (tr_loss, v_loss, t_loss))
    out: dict[str, Any] = {
        "epoch": epoch + 1,
        "train/loss": tr_loss, "train/acc": tr_acc,
        "val/loss": v_loss, "val/acc": v_acc,
        "test/loss": t_loss, "test/acc": t_acc,
        "bin/flip_ratio": sum(fl) / (m.total_w * steps_per_epoch),
        "bin/flip_from_init": sum(fi) / m.total_w,
    }
    for (name, _, numel), f, f0 in zip(m.layers, fl, fi):
        out[f"bin/flip_ratio/{name}"] = f / (numel * steps_per_epoch)
        out[f"bin/flip_from_init/{name}"] = f0 / numel
    out.update({f"sched/{k}": v for k, v in m.sched_last.items()})
    out.update(extras)
    out.update(m.static_cost)
    out["time/epoch_s"] = epoch_s
    out["time/total_s"] = total_s
    out["diverged"] = int(diverged)
    if diverged:
        for k in list(out):
            if isinstance(out[k], float) and math.isnan(out[k]) and not k.endswith(("/acc", "/loss")):
                del out[k]  # a method's diagnostic of the NaN weights: no value to record
            elif k.endswith("/acc") or "/acc_" in k:
                out[k] = 0.0
            elif k.endswith("/loss"):
                out[k] = math.inf
    return out
