"""Packed trials (nn/pack.py, engine.fit_pack): a member of a pack is trained exactly as the
same configuration alone.

Reference: ``engine.fit`` on each configuration alone. In float64 the binary signs of every
member must equal the lone run's after every step, and every per-epoch metric must agree (to
1e-9 relative: a batched matmul may round differently from an unbatched one in the last bit).
"""
from __future__ import annotations

import math

import pytest
import torch

from bnnsearch.config import resolve
from bnnsearch.engine import fit, fit_pack
from bnnsearch.methods import get_method
from bnnsearch.nn.pack import NotPackable, PackedModel

MLP = {"arch": "mlp", "arch_args": {"widths": [32, 32]}}
LOCAL = {"arch_args": {"widths": [48, 48]}}

# Per method: configs differing in packable hyperparameters, incl. ones that change quantizers.
CASES = {
    "latent": (MLP, [{"lr": 1.0}, {"lr": 30.0, "init_scale": 0.0, "clipping": True, "clip_mode": "both"},
                     {"lr": 3.0, "scaling": True, "act": "approx_sign", "momentum": 0.5}]),
    "filtered": (MLP, [{"alpha": 1e-3}, {"alpha": 1e-2, "gamma": 0.5}, {"alpha": 1e-1, "alpha_decay": "none"}]),
    "proxconnect": (MLP, [{"pair": "bnn"}, {"pair": "pc", "lr": 0.01}, {"pair": "bnn++", "optimizer": "sgd"}]),
    "cyclebnn": (MLP, [{"b_min": 2, "b_max": 6}, {"b_min": 3, "b_max": 8, "cycles": 2, "lr": 3e-3, "tau_clamp": True},
                       {"grad_bits": 4, "grad_bits_min": 2, "lr_annealing": "per_cycle", "precision_mode": "true_kbit_forward"}]),
    "hbnn": (MLP, [{}, {"radius": 0.5, "lr": 0.3, "tau_clamp": True, "granularity": "layer", "cluster_size": 3, "assign": "loss"},
                   {"cluster_size": 4, "cluster_lr": 0.1, "assign": "nearest"}, {"cluster_size": 0, "granularity": "element"}]),
    "local_binary": (LOCAL, [{"group_size": 8}, {"robustness": 0.5, "hidden_bits": 6, "group_size": 8},
                             {"group_size": 4, "p_r": 0.1}]),
}


# Per method, its optimizers as fused in a pack (None: members step one by one).
FUSED = {"latent": ["latent", "adam"], "filtered": ["filtered", "adam"], "proxconnect": [None, "adam"],  # a clipped wrapper and SGD among the binary optimizers
         "cyclebnn": ["adam"], "hbnn": ["sgd", None, "adam"], "local_binary": []}


def _cfgs(method, extra, hps, **kw):
    base = {"method": method, "data": "digits", "epochs": 3, "batch_size": 64, "seed": 3, "device": "cpu",
            "dtype": "float64", "threads": 1, **extra, **kw}
    return [resolve({**base, "hparams": h}) for h in hps]


class _SignRecorder:
    """Records every member's binary signs after every training step (solo and packed)."""

    def __init__(self, monkeypatch, method):
        self.solo: list[list[torch.Tensor]] = []
        self.pack: list[list[list[torch.Tensor]]] = []
        self.fused: list[str | None] = []  # per optimizer position: the fused kind, or None
        m = get_method(method)
        step, step_pack = m.train_step, m.train_step_pack

        def signs(model):
            return [fn().clone() for _, fn, _ in m.binary_signs(model)]

        def rec_solo(model, *a, **k):
            out = step(model, *a, **k)
            self.solo.append(signs(model))
            return out

        def rec_pack(pack, *a, **k):
            self.fused = [f.kind if f is not None else None for f in pack.fused]
            out = step_pack(pack, *a, **k)
            self.pack.append([signs(mm) for mm in pack.members])
            return out

        monkeypatch.setattr(m, "train_step", rec_solo)
        monkeypatch.setattr(m, "train_step_pack", rec_pack)


def _same_history(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        for key, va in ea.items():
            if key.startswith(("time/", "pack/")):
                continue
            vb = eb[key]
            if isinstance(va, float):
                assert math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12), (key, ea["epoch"], va, vb)
            else:
                assert va == vb, (key, va, vb)


# CUDA where torch sees a GPU (benchmarks/device_check.sh on a lent GPU machine; CI has none)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", sorted(CASES))
def test_member_equals_the_config_trained_alone(method, device, monkeypatch):
    extra, hps = CASES[method]
    cfgs = _cfgs(method, extra, hps, device=device)
    rec = _SignRecorder(monkeypatch, method)
    alone = [fit(c).history for c in cfgs]
    steps = len(rec.solo) // len(cfgs)
    packed = fit_pack(cfgs)
    assert len(rec.pack) == steps > 0
    for k in range(len(cfgs)):
        for s in range(steps):
            want, got = rec.solo[k * steps + s], rec.pack[s][k]
            assert all(w.device.type == device and torch.equal(w, g) for w, g in zip(want, got)), \
                f"member {k}, step {s}: signs differ"
        _same_history(alone[k], packed[k].history)
        assert packed[k].history[-1]["pack/size"] == len(cfgs)
    # The fused optimizer steps (methods/fused.py) were what ran: the comparison checks them.
    assert rec.fused == FUSED[method]
    # The members really differ (else the check above proves little).
    finals = {tuple(h[-1][k] for k in ("val/loss", "train/loss")) for h in alone}
    assert len(finals) == len(cfgs)


@pytest.mark.parametrize("arch,args,method,hps,extra", [
    ("resnet20", {"width": 0.25}, "cyclebnn", [{"b_min": 2}, {"b_min": 4, "lr": 3e-3}], {}),
    ("resnet18", {"width": 0.0625}, "latent", [{"lr": 1.0}, {"lr": 30.0, "init_scale": 0.0}], {}),
    ("vgg_small", {"width": 0.0625}, "proxconnect", [{"pair": "bnn"}, {"pair": "bnn+"}], {}),
    # members in channels_last memory format (their stacked weights were not viewable as [K, n])
    ("resnet20", {"width": 0.25}, "latent", [{"lr": 1.0}, {"lr": 30.0}], {"channels_last": True}),
])
def test_conv_archs_pack_exactly(arch, args, method, hps, extra):
    cfgs = _cfgs(method, {"arch": arch, "arch_args": args, **extra}, hps, epochs=1)
    alone = [fit(c).history for c in cfgs]
    for a, p in zip(alone, fit_pack(cfgs)):
        _same_history(a, p.history)


def test_channels_last_reaches_the_packs_convolutions(monkeypatch):
    """With ``channels_last: true`` a pack's convolutions get NHWC activations, as a lone run's do
    (the pack's repeated input came out plain contiguous, and the convolutions after it ran NCHW)."""
    conv, seen = torch.nn.functional.conv2d, []

    def spy(x, *a, **k):
        if x.shape[1] > 1:  # one channel is both orders
            seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return conv(x, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    fit_pack(_cfgs("latent", {"arch": "resnet20", "arch_args": {"width": 0.25}, "channels_last": True},
                   [{"lr": 1.0}, {"lr": 30.0}], epochs=1, dtype="float32"))
    assert len(seen) > 100 and all(seen), f"{seen.count(False)} of {len(seen)} convolutions got NCHW input"


@pytest.mark.parametrize("method,hps,together", [
    ("latent", [{"lr": 1.0}, {"lr": 30.0, "init_scale": 0.0}, {"lr": 3.0, "momentum": 0.5}], True),
    ("filtered", CASES["filtered"][1], True),
    ("latent", CASES["latent"][1], False),  # scaling differs: no shared quantizer, each member asked
])
def test_flip_statistics_read_all_members_at_once(method, hps, together, monkeypatch):
    """A pack reads its members' signs per layer in one call where they share a stacked weight
    quantizer (Method.binary_signs_stacked); its flip counts equal the members' read one by one,
    and the lone runs'. (The one-by-one path is the reference, forced here.)"""
    cfgs = _cfgs(method, MLP, hps, epochs=2)
    cls = type(get_method(method))
    orig, seen = cls.binary_signs_stacked, []
    monkeypatch.setattr(cls, "binary_signs_stacked", lambda self, *a: seen.append(r := orig(self, *a)) or r)
    stacked = fit_pack(cfgs)
    assert (seen[0] is not None) == together
    monkeypatch.setattr(cls, "binary_signs_stacked", lambda self, *a: None)
    one_by_one = fit_pack(cfgs)
    alone = [fit(c).history for c in cfgs]
    for s, o, a in zip(stacked, one_by_one, alone):
        _same_history(o.history, s.history)
        _same_history(a, s.history)
    assert all(h["bin/flip_ratio"] > 0 for r in stacked for h in r.history)  # signs flipped: counted


def test_random_sign0_draws_from_each_members_stream():
    cfgs = _cfgs("latent", MLP, [{"init_scale": 0.0, "lr": 1.0}, {"init_scale": 0.0, "lr": 5.0}], sign0="random",
                 epochs=2)
    alone = [fit(c).history for c in cfgs]
    for a, p in zip(alone, fit_pack(cfgs)):
        _same_history(a, p.history)


def test_a_diverging_member_is_frozen_and_the_others_go_on():
    cfgs = _cfgs("latent", MLP, [{"lr": 1.0}, {"lr": 1.0, "fp_optimizer": "sgd", "fp_lr": 1e305}, {"lr": 10.0}], epochs=3)
    alone = [fit(c) for c in cfgs]
    assert alone[1].diverged and not alone[0].diverged  # the control: fp_lr 1e305 diverges alone too
    packed = fit_pack(cfgs)
    assert packed[1].diverged and len(packed[1].history) == len(alone[1].history) < 3
    for k in (0, 2):
        assert not packed[k].diverged
        _same_history(alone[k].history, packed[k].history)


def test_a_stopped_member_is_masked_and_the_others_go_on(monkeypatch):
    cfgs = _cfgs("filtered", MLP, [{"alpha": 1e-3}, {"alpha": 1e-2}, {"alpha": 3e-2}], epochs=3)
    alone = [fit(c).history for c in cfgs]
    seen, at_stop = [], {}

    def stop(m):
        seen.append(m["epoch"])
        at_stop.update({k: v.detach().clone() for k, v in members[1].named_parameters()})
        return True

    members = []
    orig = get_method("filtered").pack_model
    monkeypatch.setattr(type(get_method("filtered")), "pack_model", lambda self, ms: members.extend(ms) or orig(ms))
    packed = fit_pack(cfgs, [None, stop, None])
    assert seen == [1] and len(packed[1].history) == 1
    # frozen: the stopped member's parameters took no update in the two epochs the pack trained on
    assert at_stop and all(torch.equal(v, dict(members[1].named_parameters())[k]) for k, v in at_stop.items())
    _same_history(alone[1][:1], packed[1].history)
    for k in (0, 2):
        _same_history(alone[k], packed[k].history)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_resumes_from_its_checkpoint(tmp_path, device):
    cfgs = _cfgs("latent", MLP, [{"lr": 1.0}, {"lr": 10.0}], epochs=3, device=device)
    full = fit_pack(cfgs)
    stop_at_2 = [lambda m: m["epoch"] >= 2] * 2
    fit_pack(cfgs, stop_at_2, checkpoint_dir=tmp_path)
    # The stop came from the reports, not a divergence: a resumed pack trains on.
    resumed = fit_pack(cfgs, checkpoint_dir=tmp_path)
    for f, r in zip(full, resumed):
        _same_history(f.history, r.history)


def test_structural_keys_must_match():
    a = _cfgs("latent", MLP, [{}])[0]
    b = _cfgs("latent", {"arch": "mlp", "arch_args": {"widths": [16, 16]}}, [{}])[0]
    with pytest.raises(ValueError, match="arch_args"):
        fit_pack([a, b])
    h1, h2 = _cfgs("hbnn", MLP, [{"update_mode": "alternating"}, {"update_mode": "simultaneous"}])
    with pytest.raises(ValueError, match="hparams"):
        fit_pack([h1, h2])


def test_a_module_with_no_packed_form_is_refused_by_name():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x * self.scale)

    with pytest.raises(NotPackable, match="Odd"):
        PackedModel([Odd(), Odd()])


def test_float32_members_agree_within_seed_noise():
    """In float32 a batched matmul rounds differently, so a member may drift from its lone run;
    the drift must stay within the seed-to-seed spread of the same config (measured here)."""
    hps = [{"lr": 1.0}, {"lr": 10.0}, {"lr": 3.0, "init_scale": 0.0}]
    cfgs = _cfgs("latent", MLP, hps, dtype="float32", epochs=4)
    alone = [fit(c).history[-1]["val/acc"] for c in cfgs]
    packed = [r.history[-1]["val/acc"] for r in fit_pack(cfgs)]
    seeds = [fit(c).history[-1]["val/acc"] for c in (_cfgs("latent", MLP, [hps[0]], dtype="float32", epochs=4,
                                                           seed=s)[0] for s in (11, 12))]
    noise = max(abs(s - alone[0]) for s in seeds) + 1 / 144  # one validation sample of digits
    assert max(abs(a - p) for a, p in zip(alone, packed)) <= noise


@pytest.mark.parametrize("method", sorted(CASES))
def test_bf16_autocast_trains_every_method_packed_and_alone(method):
    """``amp: bf16`` autocasts the forward pass on the CPU as on CUDA (it was ignored off CUDA):
    every method trains under it, packed and alone, to finite metrics, and differently from fp32."""
    extra, hps = CASES[method]
    kw = dict(dtype="float32", epochs=2)
    fp32 = fit_pack(_cfgs(method, extra, hps[:2], **kw))
    bf16 = fit_pack(_cfgs(method, extra, hps[:2], amp="bf16", **kw))
    alone = fit(_cfgs(method, extra, hps[:1], amp="bf16", **kw)[0])
    for r in [*bf16, alone]:
        assert all(math.isfinite(v) for e in r.history for v in e.values() if isinstance(v, float))
    same = [r.history[-1]["train/loss"] for r in bf16] == [r.history[-1]["train/loss"] for r in fp32]
    assert same == (method == "local_binary")  # its arithmetic is integer: nothing to autocast


WIDE = {"arch": "mlp", "arch_args": {"widths": [128, 128]}}  # latent learns digits to ~97 % in 8 epochs


def val_accs(extra=WIDE, epochs=8, lrs=(1.0, 10.0), **kw) -> list[float]:
    """Final validation accuracy of a float32 latent pack (one member per learning rate)."""
    cfgs = _cfgs("latent", extra, [{"lr": lr} for lr in lrs], dtype="float32", epochs=epochs, **kw)
    return [r.history[-1]["val/acc"] for r in fit_pack(cfgs)]


def within_seed_noise(device: str, **kw) -> None:
    """The float32 eager pack's accuracies, trained again under ``kw``, land within the
    reference's seed-to-seed spread plus one validation sample."""
    ref = val_accs(device=device)
    assert min(ref) > 0.8  # the reference learns (10 classes: chance is 0.1)
    noise = max(abs(a - b) for a, b in zip(ref, val_accs(device=device, seed=11))) + 1 / 144
    got = val_accs(device=device, **kw)
    assert max(abs(a - b) for a, b in zip(ref, got)) <= noise, (ref, got, noise)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_trains_like_float32_within_seed_noise(device):
    within_seed_noise(device, amp="bf16")



# local_binary packs run one stacked step (LocalBinaryPack) on a GPU; on the CPU their members
# train one after another (faster there, LocalBinary.pack_model) unless STACK_ON_CPU, set here to
# check the stacked step against lone runs. The members differ in every packable hyperparameter:
# group sizes 1, 4, 48 (the whole layer one group), a member without reinforcement (p_r 0: it
# draws nothing), clipped and unclipped, another initialisation.
LOCAL_HPS = [{"group_size": 1, "robustness": 1.0, "p_r": 0.9, "hidden_bits": 4},
             {"group_size": 4, "p_r": 0.0, "init_std": 16.0},
             {"group_size": 48, "robustness": 0.1, "p_r": 0.5, "hidden_bits": 8}]


def _local_cfgs(draw="gaps", **kw):
    return _cfgs("local_binary", LOCAL, [{**h, "reinforce_draw": draw} for h in LOCAL_HPS], **kw)


@pytest.mark.parametrize("draw", ["gaps", "dense"])
@pytest.mark.parametrize("sparse", [True, False])  # the lone runs' step: the CPU's sparse one or the GPU's dense one
def test_local_binary_pack_is_one_stacked_step(draw, sparse, monkeypatch):
    """Every member's H after every step equals its lone run's bit for bit, and its metrics
    (reinforcement and update counts, errors, accuracies) agree, through the stacked step."""
    from bnnsearch.methods import local_binary as lb

    monkeypatch.setattr(lb, "SPARSE_ON_CPU", sparse)
    monkeypatch.setattr(lb, "STACK_ON_CPU", True)
    cfgs = _local_cfgs(draw, dtype="float32")
    m = get_method("local_binary")
    solo, packed, kinds = [], [], []
    step, step_pack = m.train_step, m.train_step_pack

    def rec_solo(model, *a):
        out = step(model, *a)
        solo.append([model.H(l).clone() for l in range(model.n_layers)])
        return out

    def rec_pack(pack, *a):
        kinds.append(type(pack.module).__name__)
        out = step_pack(pack, *a)
        packed.append([[mm.H(l).clone() for l in range(mm.n_layers)] for mm in pack.members])
        return out

    monkeypatch.setattr(m, "train_step", rec_solo)
    monkeypatch.setattr(m, "train_step_pack", rec_pack)
    alone = [fit(c).history for c in cfgs]
    got = fit_pack(cfgs)
    steps = len(solo) // len(cfgs)
    assert len(packed) == steps > 0 and set(kinds) == {"LocalBinaryPack"}
    for k in range(len(cfgs)):
        for s in range(steps):
            assert all(torch.equal(w, g) for w, g in zip(solo[k * steps + s], packed[s][k])), (k, s)
        _same_history(alone[k], got[k].history)
    hs = [h[-1] for h in alone]
    assert hs[1]["local/reinforced/0"] == 0 < hs[0]["local/reinforced/0"]  # p_r 0 draws nothing; the others do
    assert len({h["val/acc"] for h in hs}) == 3


@pytest.mark.parametrize("draw,sparse", [("gaps", True), ("dense", False)])
def test_local_binary_stopped_member_is_frozen_and_the_pack_resumes(tmp_path, monkeypatch, draw, sparse):
    """A stopped member's H takes no increment and no reinforcement while the others train on
    (as their lone runs); a pack stopped by its reports resumes from its checkpoint exactly."""
    from bnnsearch.methods import local_binary as lb

    monkeypatch.setattr(lb, "SPARSE_ON_CPU", sparse)
    monkeypatch.setattr(lb, "STACK_ON_CPU", True)
    cfgs = _local_cfgs(draw)
    alone = [fit(c).history for c in cfgs]
    seen = {}

    def stop(m):
        seen["H"] = [t.clone() for t in members[0].buffers()]
        return True

    members = []
    m = get_method("local_binary")
    orig = m.pack_model
    monkeypatch.setattr(m, "pack_model", lambda ms: members.extend(ms) or orig(ms))
    packed = fit_pack(cfgs, [stop, None, None])
    assert len(packed[0].history) == 1 and all(torch.equal(a, b) for a, b in zip(seen["H"], members[0].buffers()))
    _same_history(alone[0][:1], packed[0].history)
    for k in (1, 2):
        _same_history(alone[k], packed[k].history)
    fit_pack(cfgs, [lambda r: r["epoch"] >= 2] * 3, checkpoint_dir=tmp_path)
    for a, r in zip(alone, fit_pack(cfgs, checkpoint_dir=tmp_path)):
        _same_history(a, r.history)


def test_local_binary_packs_one_after_another_on_the_cpu():
    from bnnsearch.engine import build, build_model

    cfg = _local_cfgs()[0]
    data, method, hp, model = build(cfg, "cpu")
    assert method.pack_model([model, build_model(cfg, data, method, hp, "cpu")]) is None


def test_local_binary_members_share_the_reinforcement_draw():
    a, b = _local_cfgs("gaps")[0], _local_cfgs("dense")[1]
    with pytest.raises(ValueError, match="hparams"):
        fit_pack([a, b])


def test_a_pack_of_hbnn_members_without_clusters_equals_them_alone():
    """HBNN's control (cluster_size 0) in a pack of its own: no member has points to step, so the
    pack makes the alternating mode's first pass without gradients, as each member alone does."""
    cfgs = _cfgs("hbnn", MLP, [{"cluster_size": 0}, {"cluster_size": 0, "radius": 0.5}], epochs=2)
    alone = [fit(c).history for c in cfgs]
    for a, p in zip(alone, fit_pack(cfgs)):
        _same_history(a, p.history)
    assert alone[0][-1]["val/loss"] != alone[1][-1]["val/loss"]
