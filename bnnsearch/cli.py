"""Command-line interface: argument parsing and printing only; the work lives elsewhere."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import Interrupted, UserError, named

DEMO_DIR = Path(__file__).parent / "defaults"
REGISTRY_HELP = "MLflow Model Registry URI (default: $MLFLOW_REGISTRY_URI, else the tracking URI)"


def _progress(total_epochs: int):
    def show(m: dict) -> None:
        flag = "  DIVERGED" if m["diverged"] else ""
        print(
            f"epoch {m['epoch']:>3}/{total_epochs}  train loss {m['train/loss']:.4f} acc {100 * m['train/acc']:6.2f}%"
            f"  val acc {100 * m['val/acc']:6.2f}%  test acc {100 * m['test/acc']:6.2f}%"
            f"  flips/step {100 * m['bin/flip_ratio']:.3f}%  from init {100 * m['bin/flip_from_init']:5.1f}%"
            f"  {m['time/epoch_s']:.2f}s{flag}",
            flush=True,
        )

    return show


class _OutDirError(UserError):
    """``train --out`` could not be written (named by its flag, not by the config file)."""


def cmd_train(args) -> int:
    from .config import load_config
    from .engine import fit
    from .runio import MetricsWriter, check_out_dir, write_config, write_text_whole
    from .textui import fmt, table

    cfg = load_config(args.config, args.set or [])
    out = Path(args.out or f"runs/{cfg.method}-{cfg.data}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out_dir(out, f"--out {out}")
    held = [n for n in ("config.yaml", "metrics.jsonl", "cost.json") if (out / n).exists()]
    if held:  # a run's results are not overwritten (a sweep refuses a recorded study name alike)
        raise UserError(f"--out {out}: already holds a run ({', '.join(held)}); give another --out, or remove it first")
    show = _progress(cfg.epochs)
    header = f"training {cfg.method} on {cfg.data} with {cfg.arch} for {cfg.epochs} epochs -> {out}/"
    writer = []  # the run directory is written once the first epoch exists: a run that fails to start leaves none

    def report(m):
        if not writer:
            try:
                write_config(out, cfg)
                writer.append(MetricsWriter(out / "metrics.jsonl"))
            except OSError as e:
                raise _OutDirError(f"--out {out}: cannot write there ({e.strerror})") from None
        writer[0](m)
        show(m)

    try:
        res = fit(cfg, report, on_start=lambda: print(header, flush=True))  # once the data and model exist
    except _OutDirError:
        raise
    except UserError as e:
        raise named(args.config, e) from None
    except KeyboardInterrupt:
        if not writer:
            raise  # nothing written yet: the usual "before anything was recorded"
        print(f"\nbnnsearch: interrupted: {out}/ holds config.yaml and the epochs finished so far in metrics.jsonl "
              "(an incomplete run: no cost.json, no summary); `train` has no resume: run it again with another --out, "
              "or remove this folder first", file=sys.stderr)
        return _exit_interrupted()
    # cost.json marks the run complete: written whole, so a kill mid-write never fakes a finished run
    write_text_whole(out / "cost.json", json.dumps([r.__dict__ for r in res.cost_rows], indent=1))
    best = max(res.history, key=lambda m: m["val/acc"])
    last = res.final
    rows = [
        ["final (epoch %d)" % last["epoch"], last["train/acc"], last["val/acc"], last["test/acc"], last["bin/flip_from_init"]],
        ["best val (epoch %d)" % best["epoch"], best["train/acc"], best["val/acc"], best["test/acc"], best["bin/flip_from_init"]],
    ]
    print()
    print(table(rows, ["", "train/acc", "val/acc", "test/acc", "flip_from_init"]))
    print(f"\ncost: {fmt(last['cost/ops'])} OPs/sample ({fmt(last['cost/bops'])} BOPs, {fmt(last['cost/flops'])} FLOPs), "
          f"{fmt(last['cost/mem_bits'] / 8 / 1024)} KiB, {last['cost/compression']:.1f}x smaller than fp32; "
          f"time {last['time/total_s']:.1f}s"
          + (f" (+ {last['time/compile_s']:.1f}s compiling)" if "time/compile_s" in last else "")
          + f", {last['time/total_cpu_s']:.1f} CPU s")
    if res.diverged:
        print("the run DIVERGED (non-finite loss); metrics of the last epoch are worst-case values")
    print(f"wrote {out}/config.yaml, metrics.jsonl, cost.json")
    return 0


def cmd_cost(args) -> int:
    from .config import load_config
    from .engine import build, planned_train_gates
    from .textui import fmt, table

    cfg = load_config(args.config, args.set or [])
    data, method, _, model = build(cfg, "cpu")
    rows, tot = method.inference_cost(model, data.in_shape)
    print(f"{cfg.method} / {cfg.arch} on {cfg.data} (input {tuple(data.in_shape)}, {data.num_classes} classes), per sample:\n")
    print(table(
        [[r.name, r.kind, r.shape, r.params, r.macs, r.w_bits, r.a_bits, r.bops, r.flops, r.mem_bits] for r in rows],
        ["layer", "type", "weight", "params", "MACs", "w bits", "a bits", "BOPs", "FLOPs", "memory bits"],
        align_right=set(range(3, 10)),
    ))
    print()
    print(table([[k, v] for k, v in tot.items()], ["total", "value"]))
    print(f"\nOPs = BOPs/64 + FLOPs = {fmt(tot['cost/ops'])};  memory {fmt(tot['cost/mem_bits'] / 8 / 1024)} KiB "
          f"({tot['cost/compression']:.2f}x vs fp32)")
    gates, info = planned_train_gates(cfg)
    print(f"modelled training cost (cost/train_gates): {gates:.4g} Boolean gates for {cfg.epochs} epoch(s) of "
          f"{info.steps_per_epoch} steps of {info.batch_size} samples ({gates / info.total_steps:.4g} a step)")
    return 0


def cmd_space(args) -> int:
    from .spaces import load_space
    from .textui import table

    for path in args.spaces:
        s = load_space(path)
        objs = s.objectives_text()
        head = f"{path} (name {s.name})" if s.name else str(path)
        if s.method == "automl":
            cons = ", ".join(f"{m} {k} {b:g}" for m, k, b in s.constraints) or "none"
            print(f"{head}: AutoML over {', '.join(s.methods)}; objectives {objs}; constraints {cons}; fixed {s.fixed}")
        else:
            print(f"{head}: method {s.method}, objective {objs}, fixed {s.fixed}")
        rows = []
        for p in s.params:
            rng = ", ".join(map(str, p.choices)) if p.kind == "categorical" else f"[{p.low}, {p.high}]"
            when = "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in p.when) or "always"
            rows.append([p.name, ".".join(p.path), p.kind + (" (log)" if p.log else ""), rng, when])
        print(table(rows, ["param", "config key", "kind", "range", "sampled when"], align_right=set()))
        if s.method != "automl":
            d = s.default_point()
            print(f"first trial (paper defaults): {d if d else 'none: the defaults lie outside this space'}")
        print()
    return 0


def _sweep_args(args, space):
    from .sweep import SweepArgs

    return SweepArgs(
        space=space, trials=args.trials, sampler=args.sampler, seed=args.seed,
        startup_trials=space.ax_startup_trials() if args.startup_trials == "ax" else args.startup_trials,
        concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler, address=args.address, tracking_uri=args.tracking_uri, experiment=args.experiment,
        storage=args.storage, name=args.name, resume=args.resume, max_failures=args.max_failures,
        checkpoint_s=args.checkpoint_s, pack=args.pack, time_budget_s=getattr(args, "time_budget", 0.0) or 0.0)


def print_summary(s: dict, top: int = 5) -> None:
    from .textui import table

    rows = []
    for i, r in enumerate(s["top"][:top], 1):
        cfg = ", ".join(f"{k}={_short(v)}" for k, v in r["config"].items())
        rows.append([i, r["trial"], r["objective"], r["epochs"], cfg])
    c = s["counts"]
    print(f"\nstudy {s['study']}: {c['complete']} complete, {c['stopped early']} stopped early, "
          f"{c['diverged']} diverged, {c['failed']} failed in {s['seconds']:.0f}s")
    if rows:
        print(table(rows, ["rank", "trial", s["metric"], "epochs", "config"], align_right={0, 2, 3}))
    print(f"\nMLflow: experiment {s['experiment']!r}, parent run {s['parent_run_id']}\n"
          f"  open the UI with:  mlflow ui --backend-store-uri {s['tracking_uri']}\n"
          f"Ray results: {s['storage']}")


def _short(v):
    from .spaces import _decode

    v = _decode(v)  # list-valued choices (widths) travel as "yaml:[...]"
    return f"{v:.4g}" if isinstance(v, float) else v


def cmd_sweep(args) -> int:
    from .spaces import load_space
    from .sweep import run_sweep

    space = load_space(args.space)
    if space.method == "automl":
        raise UserError(f"{args.space}: an AutoML space (methods:); run it with  bnnsearch automl {args.space}  "
                        "(it prints and records the Pareto front and can register the network)")
    a = _sweep_args(args, space)
    header = (f"study {a.study_name()}: {space.method}, {a.budget_text()}, sampler {a.sampler}, "
              f"scheduler {a.scheduler}, objective {space.mode} {space.metric}")
    # printed once the flags, store and data are checked: a mistake is the only line printed
    print_summary(run_sweep(a, lambda: print(header, flush=True)))
    return 0


def _packs(text: str | None) -> list[int] | None:
    """--packs K1,K2 as integers; run_compare checks the sizes themselves."""
    if text is None:
        return None
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        from .compare import PACKS_HINT

        raise UserError(f"--packs {text}: {PACKS_HINT}") from None


def cmd_compare(args) -> int:
    from .compare import compare_report, run_compare
    from .spaces import load_space

    spaces = [load_space(p) for p in args.spaces]
    base = _sweep_args(args, spaces[0])
    s = run_compare(spaces, base, args.repeats, args.target_delta, args.out, args.name,
                    allow_mixed=getattr(args, "allow_mixed", False), random_arm=getattr(args, "random_arm", False),
                    noise_seeds=getattr(args, "noise_seeds", 0), target_gap=getattr(args, "target_gap", None),
                    samplers=args.samplers.split(",") if getattr(args, "samplers", None) else None,
                    ax_design=args.startup_trials == "ax", packs=_packs(getattr(args, "packs", None)),
                    status=getattr(args, "status", False))
    if getattr(args, "status", False):
        from .compare import progress_report

        print(progress_report(s))
        return 0
    print(compare_report(s), flush=True)
    print(f"\nwrote {s['out']}/summary.json, summary.md, curves.csv, " + ", ".join(Path(p).name for p in s["plots"])
          + ", dashboard.html")
    print(f"MLflow comparison run {s['comparison_run_id']} in experiment {s['experiment']!r}\n"
          f"  open the UI with:  mlflow ui --backend-store-uri {s['tracking_uri']}")
    return 0


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '2h', '1.5h' -> seconds (argparse type: a clear error otherwise)."""
    t = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    try:
        v = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds or a duration like 90s, 30m, 2h") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return v


def cmd_automl(args) -> int:
    from .automl import AutoSpace, run_automl
    from .spaces import load_space
    from .sweep import check_args
    from .textui import table

    space = load_space(args.space)
    if not isinstance(space, AutoSpace):
        raise UserError(f"{args.space}: a one-method space (method: {space.method}); automl takes a space with "
                        "methods: (see search_spaces/automl.yaml), sweep takes this one")
    if args.trials is None:
        args.trials = 0 if args.time_budget else 20
    a = _sweep_args(args, space)
    data = space.fixed.get("data", "mnist1d")
    a.experiment = a.experiment or f"bnnsearch/{data}/automl"
    a.name = a.name or f"automl-{data}-{a.sampler}-s{a.seed}"
    register = None if args.register is None else (args.register or f"bnnsearch-{data}")
    check_args(a)  # before the warm start reads the store
    from .automl import check_flags

    check_flags(a, args.out, args.pick)
    if args.registry_uri and register is None:
        raise UserError(f"--registry-uri {args.registry_uri}: it says where --register registers the network; "
                        "give --register too")
    if register is not None:  # a registry of its own is checked before the study, not after it
        from .tracking import registry_store

        registry_store(a.tracking_uri, args.registry_uri)
    objs = space.objectives_text()
    cons = "; constraints " + ", ".join(f"{m} {k} {b:g}" for m, k, b in space.constraints) if space.constraints else ""
    header = (f"automl {a.study_name()}: methods {', '.join(space.methods)}; objectives {objs}{cons}; "
              f"{a.budget_text()}, sampler {a.sampler}")
    # printed once the flags, store and data are checked: a mistake is the only line printed
    s = run_automl(a, args.out, args.pick, args.warm_start, ready=lambda: print(header, flush=True))
    print_summary(s)
    keys = [m for m, _ in space.objectives]
    rows = [[p["rank"], p["method"], *[p["objectives"][k] for k in keys], p["trial"], _arch_text(p["config"])]
            for p in s["front"]]
    print(f"\nPareto front ({len(rows)} point{'s' if len(rows) != 1 else ''}, feasible complete trials)"
          + (f", hypervolume {s['hypervolume']:.6g} (reference {list(space.refs)}"
             + "".join(f"; {m} on a log10 axis" for (m, _), lg in zip(space.objectives, space.objective_logs) if lg)
             + ")" if s["hypervolume"] is not None else ""))
    if rows:
        print(table(rows, ["rank", "method", *keys, "trial", "network"], align_right=set(range(2, 2 + len(keys)))))
        from .automl import front_ties

        for line in front_ties(s["front"]):
            print(line)
    print(f"wrote {s['out']}/pareto.json (also on the study's MLflow run)", flush=True)
    from . import interrupts

    if register is not None and interrupts.pending():  # a Ctrl-C as the study wrote its record
        print(f"\nnot retraining front point {args.pick or 1}: interrupted; nothing was registered. Register it "
              f"with:\n  {resume_command(getattr(args, 'argv', sys.argv[1:]), a.name)}", flush=True)
    elif register is not None:
        from .automl import register_pick

        print(f"\nretraining front point {args.pick or 1} to register it as {register!r} ...", flush=True)
        try:
            reg = register_pick(s, register, args.pick, args.registry_uri)
        except KeyboardInterrupt:  # in the retraining: the study and its front are recorded
            print(f"\nbnnsearch: interrupted while retraining front point {args.pick or 1}: the study and its front "
                  f"are recorded, nothing was registered. Register it with:\n  "
                  f"{resume_command(getattr(args, 'argv', sys.argv[1:]), a.name)}", file=sys.stderr, flush=True)
            return _exit_interrupted()
        if interrupts.pending():  # a Ctrl-C while the model was written: it was written whole
            print(f"\nbnnsearch: interrupted as the model was written; it is registered whole: "
                  f"{reg['model_uri']}", file=sys.stderr, flush=True)
            return _exit_interrupted()
        own = reg["registry_uri"] if reg["registry_uri"] != s["tracking_uri"] else None  # a registry of its own
        print(f"\nregistered {reg['model_uri']} (MLflow run {reg['run_id']}): retrained test/acc {reg['test/acc']:.4f}"
              f" (the trial recorded {_fmt(reg['trial_test_acc'])}), modelled memory {_fmt(reg['mem_bits'])} bits\n"
              + (f"  in the Model Registry at {own}\n" if own else "")
              + f"  check it with:  bnnsearch evaluate {reg['model_uri']}"
              + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")
              + (f" --registry-uri {own}" if own else ""))
    return 0


def _fmt(v):
    return "-" if v is None else (f"{v:.4f}" if abs(v) < 10 else f"{v:.6g}")


def _arch_text(cfg: dict) -> str:
    widths = cfg.get("arch_args", {}).get("widths")
    return f"{cfg.get('arch')} {widths}" if widths is not None else str(cfg.get("arch"))


def cmd_evaluate(args) -> int:
    from .modelio import evaluate_uri

    r = evaluate_uri(args.model, args.tracking_uri, args.registry_uri)
    rec = r["recorded"]
    print(f"{r['model']}: {r['method']} / {r['arch']} on {r['data']}: test/acc {r['test_acc']:.6f} on "
          f"{r['samples']} test samples")
    if rec is None:
        print("no recorded test/acc to compare with (not from a bnnsearch-registered model)")
        return 0
    same = rec == r["test_acc"]
    print(f"recorded in MLflow run {r['run_id']}: {rec:.6f} -> {'equal' if same else 'DIFFERENT'}")
    return 0 if same else 1


def cmd_export(args) -> int:
    from .modelio import export_uri
    from .runio import check_out_file
    from .textui import fmt

    out = Path(args.out)
    check_out_file(out, f"--out {out}")
    r = export_uri(args.model, out, args.tracking_uri, label=f"--out {out}", registry_uri=args.registry_uri)
    modelled = r["modelled_mem_bits"] / 8
    print(f"wrote {out}: {fmt(r['bytes'])} bytes ({r['binary_tensors']} tensors as packed bits, "
          f"{fmt(r['binary_weights'])} binary values; modelled memory {fmt(modelled)} bytes — the file adds the "
          "container, the config and the network's buffers)")
    if r["full_precision_storage"]:
        print(f"kept full precision (the network's logits change with their signs alone): "
              f"{', '.join(r['full_precision_storage'])}")
    print(f"read back: logits {'identical' if r['exact'] else 'DIFFERENT'}; load it with "
          f"bnnsearch.modelio.load_bnn('{out}') or score it with  bnnsearch evaluate {out}")
    return 0 if r["exact"] else 1


def cmd_best(args) -> int:
    from .best import best_trials
    from .runio import check_out_file, write_out

    out = Path(args.out)
    check_out_file(out, f"--out {out}")
    rows, best_cfg, notes = best_trials(args.target, args.tracking_uri, args.experiment, args.top)
    from .textui import table

    print(table([[i + 1, r["study"], r["trial"], r["value"], r["run_id"]] for i, r in enumerate(rows)],
                ["rank", "study", "trial", rows[0]["metric"] if rows else "value", "MLflow run"], align_right={0, 3}))
    write_out(out, f"--out {out}", lambda tmp: tmp.write_text(best_cfg))
    print(f"\nwrote the best config to {out}; reproduce it with:  bnnsearch train {out}")
    for note in notes:
        print(f"note: {note}")
    if rows[0].get("pack_size", 1) > 1:
        print(f"note: the best trial trained as a member of a pack of {rows[0]['pack_size']} (--pack): trained alone "
              "it matches to 1e-9 only with dtype: float64; in float32 batched kernels round differently, so expect "
              "its metrics within run-to-run noise, not to the last digit")
    return 0


def cmd_dashboard(args) -> int:
    from dashboards import build_html
    from dashboards.server import serve

    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be a TCP port, 1-65535")
    if args.export:
        from .runio import check_out_file, write_out

        out, label = Path(args.export), f"--export {args.export}"
        check_out_file(out, label)
        page = build_html(args.tracking_uri, args.mlflow_ui)
        write_out(out, label, lambda tmp: tmp.write_text(page))
        print(f"wrote {args.export} (one self-contained HTML file)")
        return 0
    from .tracking import check_store

    # A page request that finds no store could only answer with an error: say it now, once.
    uri = check_store(args.tracking_uri, must_exist=True)
    try:
        serve(uri, args.port, args.mlflow_ui, args.refresh)
    except OSError as e:
        raise UserError(f"--port {args.port}: cannot serve the dashboard ({e.strerror})") from None
    except KeyboardInterrupt:  # how it is stopped (it records nothing): not an interrupted command
        from . import interrupts

        interrupts.clear()
        print("\nbnnsearch: dashboard stopped", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    args.spaces = [str(DEMO_DIR / "demo_latent.yaml"), str(DEMO_DIR / "demo_filtered.yaml")]
    args.name = args.name or time.strftime("demo-%Y%m%d-%H%M%S")
    print(f"bnnsearch demo: hyperparameter efficiency of latent-weight SGD (4 hyperparameters) vs the filtered-"
          f"gradient optimizer (2), seed 002's Figure 8 in small: {args.repeats} {args.sampler.upper()} studies of "
          f"{args.trials} trials per method on mnist5k; {'Ray at ' + args.address if args.address else 'local Ray'}, "
          f"MLflow in {args.tracking_uri or 'sqlite:///./mlflow.db'}; "
          f"embedded defaults in {DEMO_DIR}\n", flush=True)
    rc = cmd_compare(args)
    print("\nbrowse: the plots and dashboard.html above, or  bnnsearch dashboard  (http://127.0.0.1:8050)")
    return rc


def _startup_trials(text: str) -> int | str:
    """``--startup-trials``: an integer, or ``ax`` (resolved per space, SearchSpace.ax_startup_trials)."""
    if text == "ax":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer, or 'ax' for Ax's default initial design") from None


def add_sweep_flags(w: argparse.ArgumentParser, kind: str = "sweep") -> None:
    """The study flags shared by sweep, compare and demo (``kind`` picks the help that is true)."""
    many = kind not in ("sweep", "automl")
    w.add_argument("--trials", type=int, default=20,
                   help="trials (default 20, or none with --time-budget)" if kind == "automl" else "trials per study")
    w.add_argument("--sampler", default="tpe", choices=["random", "tpe", "tpe-flat", "tpe-cover", "gp", "botorch", "nsga2", "bandit"],
                   help="Optuna sampler (botorch: BoTorchSampler from optuna-integration; tpe-flat: independent "
                        "univariate TPE, the baseline to tpe's multivariate/grouped model; AutoML spaces only: "
                        "tpe-cover, tpe whose random start tries every method first; bandit, UCB over methods "
                        "with a GP per method beneath)")
    w.add_argument("--seed", type=int, default=0,
                   help="sampler seed" + (" of the first repeat; repeat r uses seed + r" if many else ""))
    w.add_argument("--startup-trials", type=_startup_trials, default=5, metavar="N|ax",
                   help="random trials before the model-based sampler (same for every sampler); 'ax': Ax's "
                        "default initial design, max(5, 2 x the searched parameters)"
                        + (" of each space" if many else ""))
    w.add_argument("--concurrency", type=int, default=0, help="trials at once (0: CPUs / cpus-per-trial)")
    w.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPUs reserved by each trial")
    w.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="Ray GPUs reserved by each trial; fractions let several trials share a GPU")
    w.add_argument("--scheduler", default="fifo", choices=["fifo", "asha"],
                   help="fifo: every trial runs its full budget; asha: stop poor trials early (pruned)")
    w.add_argument("--pack", type=int, default=0,
                   help="train this many configurations as one stacked network per Ray trial (packed trials; "
                        "each is still its own MLflow run). 0: the space file's pack: (default 1)")
    w.add_argument("--max-failures", type=int, default=1, help="retries of a trial that raises (-1: unlimited)")
    w.add_argument("--checkpoint-s", type=float, default=30.0,
                   help="hand Ray a trial checkpoint at most every this many seconds (0: every epoch)")
    w.add_argument("--address", default=None, help="join an existing Ray cluster at HOST:PORT (ray start --head ...); "
                   "default: a local Ray instance")
    w.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    w.add_argument("--experiment", default=None,
                   help="MLflow experiment (default: bnnsearch-compare/<name>)" if many
                   else "MLflow experiment (default: bnnsearch/<data>/automl)" if kind == "automl"
                   else "MLflow experiment (default: bnnsearch/<data>/<arch>)")
    w.add_argument("--storage", default="./bnnsearch_runs", help="Ray results directory (trial checkpoints, resume state)")
    w.add_argument("--name", default=None,
                   help={"sweep": "study name (default: <method>-<sampler>-s<seed>)",
                         "compare": "comparison name (default: compare-<method>-<method>...); studies are "
                                    "<name>-<method>-r<repeat>",
                         "demo": "comparison name (default: demo-<date>-<time>)",
                         "automl": "study name (default: automl-<data>-<sampler>-s<seed>)"}[kind])
    w.add_argument("--resume", action="store_true",
                   help="continue an interrupted " + ("comparison: finished studies are kept, the interrupted one "
                                                      "continues, the missing ones run" if many else "study of this name"))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default (except None and store_true flags)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnnsearch", description="Hyperparameter search for binary neural networks.")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help, description):
        return sub.add_parser(name, help=help, description=description, formatter_class=_Help)

    t = cmd("train", "train one configuration",
            "Train one configuration without Ray or MLflow; writes config.yaml, metrics.jsonl and cost.json.")
    t.add_argument("config", help="run config YAML (any key left out takes its default)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key (dotted: hparams.lr=0.1); repeatable")
    t.add_argument("--out", help="output directory (default: runs/<method>-<data>-<time>)")
    t.set_defaults(func=cmd_train)

    c = cmd("cost", "print the per-layer inference cost table",
            "Per-layer parameters, MACs, BOPs, FLOPs and memory of a config's network, per sample.")
    c.add_argument("config", help="run config YAML")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key (dotted: hparams.lr=0.1); repeatable")
    c.set_defaults(func=cmd_cost)

    s = cmd("space", "validate search-space YAML files and show what they compile to",
            "Validate search spaces (every bound and choice must resolve to a valid config) and print them.")
    s.add_argument("spaces", nargs="+", help="search-space YAML files (search_spaces/*.yaml)")
    s.set_defaults(func=cmd_space)

    w = cmd("sweep", "run a hyperparameter study of one method (Ray Tune + Optuna/BoTorch + MLflow)",
            "Run (or --resume) one hyperparameter study: Ray Tune trials, an Optuna or BoTorch sampler, every "
            "trial recorded in MLflow under the study's parent run. Ctrl-C stops it (exit 130) and prints the "
            "command that resumes it.")
    w.add_argument("space", help="search-space YAML (search_spaces/*.yaml)")
    add_sweep_flags(w)
    w.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                   help="stop starting trials after this long (90s, 30m, 2h); with --trials, whichever comes first "
                        "(--trials 0: the time alone); a resumed study gets what is left of it")
    w.set_defaults(func=cmd_sweep)

    cp = cmd("compare", "hyperparameter efficiency: repeated equal-budget studies per method",
             "Hyperparameter efficiency across methods (seed 002's Figure 8 for any methods): --repeats studies "
             "of --trials trials per search space, best-so-far curves, trials-to-target, AUC and a rank test.")
    cp.add_argument("spaces", nargs="+", help="search-space YAMLs, one arm each: its method, or its name: where two "
                                              "spaces share a method")
    cp.add_argument("--repeats", type=int, default=5, help="independent studies per arm")
    cp.add_argument("--target-delta", type=float, default=0.5,
                    help="target = best value of all studies minus this (percentage points for accuracies)")
    cp.add_argument("--out", default=None, help="output directory (default: runs/<name>)")
    cp.add_argument("--random-arm", action="store_true",
                    help="also run every space with random search (arm <method>@random, same seeds and budget): "
                         "efficiency relative to random search")
    cp.add_argument("--target-gap", type=float, default=None,
                    help="instead of --target-delta: the target closes this fraction of the gap from a random "
                         "config's median value to the best arm's median final value (e.g. 0.9)")
    cp.add_argument("--noise-seeds", type=int, default=0,
                    help="re-train each arm's best config with this many other seeds and report the seed-to-seed "
                         "spread (the noise floor); 0: off")
    cp.add_argument("--samplers", default=None, metavar="S1,S2",
                    help="run every space with each of these samplers (arms <method>@<sampler>, same seeds and "
                         "budget), e.g. tpe,tpe-flat on search_spaces/automl.yaml")
    cp.add_argument("--packs", default=None, metavar="K1,K2",
                    help="run every space with each of these pack sizes (arms <method>@pack<K>, same seeds and "
                         "budget), e.g. 1,8: what packing's batches of proposals cost the sampler in trials")
    cp.add_argument("--status", action="store_true",
                    help="train nothing: print how far this comparison has got (finished studies per arm, the "
                         "trials of an unfinished one, training seconds, an estimate of what is left) and exit")
    cp.add_argument("--allow-mixed", action="store_true",
                    help="compare spaces that train on different data (refused by default: their values differ in kind)")
    add_sweep_flags(cp, "compare")
    cp.set_defaults(func=cmd_compare, trials=25, sampler="botorch")

    b = cmd("best", "print the top trials of a study or experiment and write the best config",
            "The top complete full-budget trials of a study (or of every study of an experiment), and the best "
            "one's resolved config, ready for `bnnsearch train`.")
    b.add_argument("target", help="a study name or an MLflow experiment name")
    b.add_argument("--top", type=int, default=5, help="how many trials to list")
    b.add_argument("--out", default="best.yaml", help="where to write the best trial's config")
    b.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    b.add_argument("--experiment", default=None, help="restrict the study lookup to this experiment")
    b.set_defaults(func=cmd_best)

    ds = cmd("dashboard", "serve (or export) the cross-study dashboard from the tracking store",
             "What the MLflow UI cannot show: efficiency curves across studies, trials-to-target, accuracy vs "
             "cost, hyperparameters in parallel coordinates. Served on localhost, or exported as one HTML file.")
    ds.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    ds.add_argument("--port", type=int, default=8050, help="port to serve on (127.0.0.1)")
    ds.add_argument("--refresh", type=int, default=30, help="seconds between page refreshes")
    ds.add_argument("--mlflow-ui", default="http://127.0.0.1:5000", help="where points link to (the MLflow UI)")
    ds.add_argument("--export", default=None, help="write the dashboard to this HTML file instead of serving it")
    ds.set_defaults(func=cmd_dashboard)

    am = cmd("automl", "one study across methods, sizes and objectives; registers the chosen network",
             "AutoML: the method is chosen inside the study (each method's hyperparameters conditional on it), "
             "several objectives (accuracy vs memory, BOPs, time) and hard constraints; prints and writes the Pareto "
             "front; with --register retrains the chosen point and registers it in the MLflow Model Registry.")
    am.add_argument("space", help="AutoML space YAML with methods: and objectives: (search_spaces/automl.yaml)")
    am.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                    help="stop starting trials after this long (90s, 30m, 2h); with --trials, whichever comes first; "
                         "a resumed study gets what is left of it")
    am.add_argument("--out", default=None, help="where pareto.json goes (default: runs/<name>)")
    am.add_argument("--register", nargs="?", const="", default=None, metavar="NAME",
                    help="retrain the chosen front point and register it in the MLflow Model Registry as NAME "
                         "(default name: bnnsearch-<data>)")
    am.add_argument("--warm-start", default=None, metavar="EXPERIMENT",
                    help="first evaluate the best configurations (the front under this study's objectives, at most 5) "
                         "of the finished trials of this MLflow experiment of the same store that fit this space")
    am.add_argument("--registry-uri", default=None, help=REGISTRY_HELP)
    am.add_argument("--pick", type=int, default=None,
                    help="the front point to register, by rank (default 1: the best first objective)")
    add_sweep_flags(am, "automl")
    am.set_defaults(func=cmd_automl, trials=None)

    ev = cmd("evaluate", "test accuracy of a registered model, checked against its recorded value",
             "Load a model (models:/NAME/VERSION, runs:/RUN/model, or a local model folder) and print its test "
             "accuracy on its own data split; exit 1 if it differs from the accuracy its MLflow run recorded.")
    ev.add_argument("model", help="MLflow model URI (models:/NAME/VERSION), model folder, or .bnn file")
    ev.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    ev.add_argument("--registry-uri", default=None, help=REGISTRY_HELP)
    ev.set_defaults(func=cmd_evaluate)

    ex = cmd("export", "write a registered model as a .bnn file (binary weights one bit each)",
             "Write a model (models:/NAME/VERSION) as a .bnn file: binary weights packed one bit each (where the "
             "network's logits depend on their signs alone, checked), every other parameter full precision, with "
             "its config; bnnsearch.modelio.load_bnn reads it back, bnnsearch evaluate scores it.")
    ex.add_argument("model", help="MLflow model URI (models:/NAME/VERSION)")
    ex.add_argument("--out", default="net.bnn", help="the .bnn file to write")
    ex.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    ex.add_argument("--registry-uri", default=None, help=REGISTRY_HELP)
    ex.set_defaults(func=cmd_export)

    d = cmd("demo", "run the main job on the embedded defaults: a small latent-vs-filtered comparison",
            "The main job on the embedded defaults: latent-weight SGD vs the filtered-gradient optimizer on "
            "mnist5k (no network needed), local Ray, MLflow in SQLite.")
    d.add_argument("--repeats", type=int, default=3, help="independent studies per method")
    d.add_argument("--target-delta", type=float, default=0.5,
                   help="target = best value of all studies minus this (percentage points for accuracies)")
    d.add_argument("--out", default=None, help="output directory (default: runs/<name>)")
    add_sweep_flags(d, "demo")
    d.set_defaults(func=cmd_demo, trials=8, sampler="tpe", startup_trials=3)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from . import interrupts

    interrupts.install()  # first thing: a Ctrl-C during start-up is remembered even if a library swallows it
    try:
        with interrupts.deferred():  # the heavy imports run whole; a Ctrl-C in them is raised right after
            import torch  # noqa: F401

            if args.command in ("sweep", "compare", "demo", "automl"):
                import mlflow  # noqa: F401
                import optuna  # noqa: F401
                from ray import tune  # noqa: F401
        args.argv = argv  # for a command that prints how to continue it
        rc = args.func(args)
        if rc == 0 and interrupts.pending():  # a Ctrl-C that came as a study wrote its (complete) record
            print("\nbnnsearch: interrupted as the command finished; what it recorded is complete",
                  file=sys.stderr)
            return _exit_interrupted()
        return rc
    except UserError as e:
        print(f"bnnsearch: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"\nbnnsearch: interrupted: {e}\ncontinue it with:\n  {resume_command(argv, e.name)}", file=sys.stderr)
        return _exit_interrupted()
    except KeyboardInterrupt:  # before a study recorded anything: rerun the same command
        print("\nbnnsearch: interrupted (before anything was recorded)", file=sys.stderr)
        return _exit_interrupted()


def _exit_interrupted() -> int:
    """130, and make sure the interpreter exits with it: CPython sets a global flag when a
    KeyboardInterrupt leaves code it runs through ``PyRun_*`` (some imports during start-up do),
    even though Python code above catches it; under ``python -m bnnsearch.cli`` it then kills
    itself with SIGINT at exit (status -2 instead of 130; seen in 2 of 8 start-up Ctrl-Cs)."""
    try:
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (AttributeError, ValueError, OSError):  # another interpreter: nothing to reset
        pass
    return 130


def resume_command(argv: list[str], name: str) -> str:
    """The command line that continues an interrupted study or comparison: the same arguments
    with its name pinned (a demo's name carries a time stamp) and --resume."""
    import shlex

    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == "--name":
            skip = True
            continue
        if tok.startswith("--name=") or tok == "--resume":
            continue
        out.append(tok)
    return shlex.join(["bnnsearch", *out, "--name", name, "--resume"])


def entry() -> None:
    """The ``bnnsearch`` command: ``main()``, then exit with its status. After an interrupt (130)
    the process ends without the interpreter's final teardown: the atexit handlers run first
    (Ray's own shutdown among them, MLflow's), the standard streams are flushed, then
    ``os._exit(130)``. A Ctrl-C during a study's set-up right after its Ray processes had been
    killed crashed that teardown in Ray's native code about 1 time in 8 (exit 139 after the
    "interrupted" line, past the point where faulthandler still reports; everything had been
    recorded and Ray shut down by then)."""
    code = main()
    from . import interrupts

    interrupts.finished()
    if code == 130:
        import atexit
        import os

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or gone (a closed pipe): nothing more to say
                pass
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    entry()
