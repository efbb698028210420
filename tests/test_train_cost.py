"""Modelled training cost, ``cost/train_gates``: one unit for every method (cost.py; Colombo's
gate model, methods.md §6.4), checked against counts written out by hand from the notebook's
formulas, and kept exact through packs and resumes."""
import pytest

from tests.conftest import small_arch_args

E4 = 10_000  # gates of one fp32 multiply or add
B = 64       # tiny_cfg's batch size


def _fc_gates(n_in: int, n_out: int, first: bool) -> int:
    """The notebook's FP SGD baseline for one linear layer and one step of B samples."""
    fwd = B * n_in * n_out + B * (n_in - 1) * n_out        # mult + add
    wgrad = fwd                                              # "same as forward"
    igrad = 0 if first else B * n_in * n_out + B * (n_out - 1) * n_in
    return (fwd + wgrad + igrad) * E4


# tiny_cfg: an MLP 64 -> 32 -> 32 -> 32 -> 10 on digits; first and last layer full precision
LAYERS = [(64, 32, True), (32, 32, False), (32, 32, False), (32, 10, False)]
N_BINARY = 2 * 32 * 32                      # the two hidden binary layers' latent weights
N_FP = 32 * 64 + 3 * (32 + 32) + 10 * 32 + 10  # first weight (no bias), 3 BatchNorms, last layer


def _steps(cfg):
    from bnnsearch.data import load_dataset

    return len(load_dataset("digits", cfg.data_root, cfg.data_obj()).x_train) // cfg.batch_size


def test_latent_gates_hand_computed(tiny_cfg):
    from bnnsearch.engine import fit

    cfg = tiny_cfg(epochs=2)
    hist = fit(cfg, threads=1).history
    # LatentSGD prices 1 mult + 1 add per latent weight, Adam (the fp layers) 10 + 4
    per_step = sum(_fc_gates(*l) for l in LAYERS) + (2 * N_BINARY + 14 * N_FP) * E4
    steps = _steps(cfg)
    assert [h["cost/train_gates"] for h in hist] == [steps * per_step, 2 * steps * per_step]


def test_gradient_methods_differ_only_in_their_update(tiny_cfg):
    """Latent SGD and the filtered optimizer train the same network in fp32: the same forward
    and backward gates; both update the binary weights at 2 per weight and the rest with Adam."""
    from bnnsearch.engine import fit

    a = fit(tiny_cfg(epochs=1), threads=1).final["cost/train_gates"]
    b = fit(tiny_cfg(method="filtered", epochs=1), threads=1).final["cost/train_gates"]
    c = fit(tiny_cfg(method="proxconnect", epochs=1, hparams={"optimizer": "adam", "pair": "bnn"}), threads=1).final["cost/train_gates"]
    assert a == b
    steps = _steps(tiny_cfg())
    assert c - a == steps * (14 - 2) * N_BINARY * E4  # ProxConnect's binary weights under Adam (inside its clip)


def test_cyclebnn_gates_scale_binary_layers_by_bits(tiny_cfg):
    from bnnsearch.engine import fit

    cfg = tiny_cfg(method="cyclebnn", epochs=1, hparams={"b_min": 4, "b_max": 4, "shape": "static", "grad_bits": 8})
    res = fit(cfg, threads=1)
    b, g = 4, 8
    fwd = B * (32 * 32 + 31 * 32) * E4            # one hidden binary layer's fp32 forward
    grads = 2 * fwd                              # weight grad (= forward) + input grad (the same for 32x32)
    binary = 2 * (fwd * b * b + grads * b * g) / (32 * 32)
    full = _fc_gates(*LAYERS[0]) + _fc_gates(*LAYERS[3])
    n_params = sum(p.numel() for p in res.model.parameters())  # AdamW over every parameter
    per_step = binary + full + 14 * n_params * E4
    assert res.final["cost/train_gates"] == pytest.approx(_steps(cfg) * per_step, rel=1e-12)


@pytest.mark.parametrize("hps,first_pass", [({}, "cluster"), ({"update_mode": "simultaneous"}, None),
                                             ({"cluster_size": 0}, "forward"), ({"cluster_every": 2}, "cluster"),
                                             ({"assign": "loss", "cluster_size": 3, "cluster_every": 2}, "cluster")])
def test_hbnn_prices_the_alternating_modes_first_pass(tiny_cfg, hps, first_pass):
    """HBNN's alternating step makes two passes (methods.md §2.5 pitfall 6): the first is a
    forward, the input gradients and the binary layers' weight gradients (the cluster points'
    gradients pass through them) — a forward alone without points — on every ``cluster_every``-th
    step; the second is the fp32 step every method pays. ``assign: loss`` adds, on those steps, a
    forward per point and binary layer (2 layers x 3 points here)."""
    import math

    from bnnsearch.engine import fit
    from bnnsearch.methods.hbnn import _is_cluster
    from bnnsearch.nn import is_binary_param

    cfg = tiny_cfg(method="hbnn", epochs=1, hparams=hps)
    res = fit(cfg, threads=1)

    def fwd(n_in, n_out):
        return B * (n_in * n_out + (n_in - 1) * n_out) * E4

    def igrad(n_in, n_out, first):
        return 0 if first else B * (n_in * n_out + (n_out - 1) * n_in) * E4

    params = list(res.model.parameters())
    n_bin = sum(p.numel() for p in params if is_binary_param(p))
    n_cluster = sum(p.numel() for p in params if _is_cluster(p))
    n_fp = sum(p.numel() for p in params) - n_bin - n_cluster
    update = (2 * n_bin + 2 * n_cluster + 14 * n_fp) * E4  # SGD, Riemannian SGD, Adam
    per_step = sum(_fc_gates(*l) for l in LAYERS) + update
    first = {None: 0, "forward": sum(fwd(i, o) for i, o, _ in LAYERS),
             "cluster": sum(fwd(i, o) + igrad(i, o, f) for i, o, f in LAYERS) + 2 * fwd(32, 32)}[first_pass]
    if hps.get("assign") == "loss":
        first += 2 * 3 * sum(fwd(i, o) for i, o, _ in LAYERS)
    steps = _steps(cfg)
    with_first = math.ceil(steps / hps.get("cluster_every", 1))
    assert res.final["cost/train_gates"] == steps * per_step + with_first * first


def test_local_learner_is_orders_of_magnitude_cheaper(tiny_cfg):
    """Colombo et al.: ~10^8-10^10 gates against 10^11-10^12 for FP SGD/Adam, "2-3 orders of
    magnitude". The same hidden widths, trained each way on the same data."""
    from bnnsearch.engine import fit

    fp = fit(tiny_cfg(epochs=1, arch_args={"widths": [32, 32]}), threads=1).final["cost/train_gates"]
    lb = fit(tiny_cfg(method="local_binary", arch="local_mlp", epochs=1, arch_args={"widths": [32, 32]},
                      hparams={"group_size": 4}), threads=1).final["cost/train_gates"]
    assert 100 <= fp / lb


@pytest.mark.parametrize("method", ["latent", "hbnn", "cyclebnn", "local_binary"])
def test_gates_survive_a_resume_and_a_pack(tiny_cfg, tmp_path, method):
    from bnnsearch.engine import fit, fit_pack

    arch, args = small_arch_args(method)
    over = {"hparams": {"group_size": 5}} if method == "local_binary" else {}
    cfg = tiny_cfg(method=method, arch=arch, arch_args=args, epochs=2, **over)
    full = fit(cfg, threads=1).history
    assert full[0]["cost/train_gates"] > 0
    fit(cfg, lambda m: m["epoch"] == 1, checkpoint_dir=tmp_path, threads=1)
    resumed = fit(cfg, checkpoint_dir=tmp_path, threads=1).history
    assert [h["cost/train_gates"] for h in resumed] == [h["cost/train_gates"] for h in full]
    packed = fit_pack([cfg, cfg], threads=1)  # (members share the seed: it orders the batches)
    for member in packed:
        assert [h["cost/train_gates"] for h in member.history] == [h["cost/train_gates"] for h in full]


@pytest.mark.parametrize("method", ["latent", "hbnn", "cyclebnn", "local_binary"])
def test_the_cost_of_a_run_is_known_before_it_trains(tiny_cfg, capsys, tmp_path, method):
    """``bnnsearch cost`` prints a config's modelled training cost without training: the same
    number the run reports at its end (CycleBNN's follows its precision schedule step by step)."""
    import yaml

    from bnnsearch.cli import main
    from bnnsearch.engine import fit, planned_train_gates

    arch, args = small_arch_args(method)
    over = {"hparams": {"group_size": 5}} if method == "local_binary" else {}
    cfg = tiny_cfg(method=method, arch=arch, arch_args=args, epochs=2, **over)
    gates, info = planned_train_gates(cfg)
    assert gates == fit(cfg, threads=1).final["cost/train_gates"]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["cost", str(p)]) == 0
    assert (f"modelled training cost (cost/train_gates): {gates:.4g} Boolean gates for 2 epoch(s) of "
            f"{info.steps_per_epoch} steps of 64 samples") in capsys.readouterr().out


def test_compare_computes_the_cost_of_trials_that_did_not_record_it(tiny_cfg):
    """Trials trained before ``cost/train_gates`` was reported: compare computes it from the
    trial's recorded config and the epochs it trained (a trial stopped early included): the
    number the run reports after those epochs."""
    from types import SimpleNamespace as NS

    from bnnsearch.compare import _train_gates
    from bnnsearch.config import dump
    from bnnsearch.engine import fit
    from bnnsearch.record import MlflowCallback

    cfg = tiny_cfg(method="cyclebnn", epochs=3)
    hist = fit(cfg, lambda m: m["epoch"] == 2, threads=1).history  # stopped after 2 of 3 epochs
    texts = {"old": dump(cfg)}

    class Store:  # what _train_gates reads of a tracker: a run's artifact
        def download_text(self, run_id, name):
            assert name == "config.yaml"
            return texts[run_id]

    def run(rid, index, metrics):
        return NS(info=NS(run_id=rid), data=NS(tags={MlflowCallback.INDEX: str(index)}, metrics=metrics))

    kids = [run("old", 2, {"time/total_s": 1.0, "epoch": 2.0}),           # trained, recorded no gates
            run("new", 1, {"time/total_s": 1.0, "epoch": 3.0, "cost/train_gates": 5.0}),
            run("failed", 3, {})]                                          # never trained
    values, computed = _train_gates(Store(), kids, 4)
    assert values == [5.0, hist[1]["cost/train_gates"], None, None] and computed == 1


def test_the_cost_plot_is_drawn_only_when_every_arm_knows_its_cost(tmp_path):
    from bnnsearch.colors import arm_styles
    from bnnsearch.plots import cost_plot

    per_method = {"a": [[0.5, 0.7]], "b": [[0.6, 0.6]]}
    gates = {"a": [[1e9, 1e9]], "b": [[1e12, 1e12]]}
    styles = arm_styles(per_method)
    known = {"mode": "max", "metric": "val/acc", "methods": {"a": {"train_gates_to_target": [2e9]},
                                                            "b": {"train_gates_to_target": [None]}}}
    path = cost_plot(per_method, gates, 0.65, known, tmp_path / "c.png", styles)
    assert path == tmp_path / "c.png" and path.read_bytes()[:4] == b"\x89PNG"
    unknown = {**known, "methods": {**known["methods"], "b": {"train_gates_to_target": None}}}
    assert cost_plot(per_method, gates, 0.65, unknown, tmp_path / "d.png", styles) is None
    assert not (tmp_path / "d.png").exists()
