"""Registry-wide checks that what a study searches and what a method trains are real.

* Every searched hyperparameter of every file in ``search_spaces/`` changes training: two
  different values give different training histories on a tiny run (conditional parameters in
  a context where they are active). An inert dimension would inflate the tuning cost that
  ``compare`` measures. A parameter may act only in part of the space (BNN's latent clip binds
  only at a large lr, after the weights reached it), so a second context puts the other parameters
  at the top of their ranges and trains longer.
* Every method flips its binary weights and beats a control that trains everything except the
  binary weights (``freeze_binary``) — a lower training loss, no lower validation accuracy: a bar
  like ``val/acc > 0.3`` can be met by the full-precision first and last layers around frozen
  random binary layers.
"""
import dataclasses
from pathlib import Path

import pytest

from bnnsearch.config import resolve
from bnnsearch.engine import fit
from bnnsearch.methods import list_methods
from bnnsearch.spaces import _encode, load_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted(ROOT.glob("search_spaces/*.yaml")) + sorted(ROOT.glob("bnnsearch/defaults/demo_*.yaml"))


def _tiny(space, root, epochs=2):
    fx = dict(space.fixed, data="digits", epochs=epochs, device="cpu", data_root=str(root), threads=2)
    args = dict(fx.get("arch_args") or {})
    if space.method != "local_binary":
        args["widths"] = [32, 32, 32]
    fx["arch_args"] = args
    if all(p.name != "batch_size" for p in space.params):
        fx["batch_size"] = 64
    return dataclasses.replace(space, fixed=fx)


def _history(space, values):
    h = fit(space.config(values)).history
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in h]


def _pair(p):
    return (p.low, p.high) if p.kind != "categorical" else (_encode(p.choices[0]), _encode(p.choices[-1]))


def _contexts(space, p):
    """Where to compare two values of p: the defaults, then every other parameter at its top."""
    active = {parent: allowed[0] for parent, allowed in p.when}
    high = {}
    for q in space.params:
        if q is not p and q.active({**high, **active}) and q.name not in active:
            high[q.name] = _pair(q)[1]
    return [(active, 2), ({**high, **active}, 6)]


CASES = [(path, p.name) for path in SPACES for p in load_space(path).params]


@pytest.mark.parametrize("path,name", CASES, ids=[f"{p.stem}:{n}" for p, n in CASES])
def test_every_searched_hyperparameter_changes_training(path, name, tmp_path):
    p = next(q for q in load_space(path).params if q.name == name)
    a, b = _pair(p)
    for ctx, epochs in _contexts(load_space(path), p):
        space = _tiny(load_space(path), tmp_path / "data", epochs)
        try:
            ha, hb = _history(space, {**ctx, name: a}), _history(space, {**ctx, name: b})
        except Exception:  # noqa: BLE001 - a context may be invalid for this space (e.g. b_min > b_max)
            continue
        if ha != hb:
            return
    pytest.fail(f"{path.name}: {name} = {a!r} and {b!r} train identically: an inert search dimension")


def test_inert_parameter_check_can_fail(tmp_path):
    """Control: a parameter that does not act (BNN's latent clip at a small lr, in a context
    where it cannot bind) is reported inert."""
    space = _tiny(load_space(ROOT / "search_spaces/proxconnect.yaml"), tmp_path / "data", 6)
    ctx = {"pair": "bnn", "lr": 1e-4}
    assert _history(space, {**ctx, "clip": True}) == _history(space, {**ctx, "clip": False})


def _small(method, root, **over):
    raw = dict(method=method, data="digits", epochs=4, batch_size=64, seed=0, device="cpu", threads=2,
               data_root=str(root), arch_args={"widths": [64, 64, 64]})
    if method == "local_binary":
        raw.update(arch_args={"widths": [60, 60]}, hparams={"group_size": 10})
    raw.update(over)
    return resolve(raw)


@pytest.mark.parametrize("method", list_methods())
def test_every_method_flips_and_beats_frozen_binary_control(method, tmp_path):
    trained = fit(_small(method, tmp_path)).final
    control = fit(_small(method, tmp_path, freeze_binary=True)).final
    assert trained["bin/flip_from_init"] > 0.01, trained["bin/flip_from_init"]
    if method != "cyclebnn":  # its effective signs also move with the bit schedule
        assert control["bin/flip_from_init"] == 0.0
    # The binary weights lower the training loss beyond what the full-precision layers reach
    # alone, and do not cost validation accuracy. (Validation accuracy alone was the bar until
    # 2026-12-05: on 144 images HBNN's 4-epoch run tied its control exactly on one CPU — 0.6389
    # both, with train loss 1.43 against 1.50 — so the smooth, averaged train loss carries it.)
    assert trained["train/loss"] < 0.98 * control["train/loss"], (trained["train/loss"], control["train/loss"])
    assert trained["val/acc"] >= control["val/acc"], (trained["val/acc"], control["val/acc"])
