import math

import pytest
import torch

from bnnsearch.nn.hyperbolic import (HyperbolicSign, RiemannianSGD, expmap, expmap0, logmap0, mobius_add,
                                     sphere_exp)

C = 1 / 0.05**2  # the paper's best ball radius r = 0.05


def test_log_exp_at_origin_roundtrip():
    v = torch.randn(50, 8, dtype=torch.float64) * 0.01
    assert torch.allclose(logmap0(expmap0(v, C), C), v, atol=1e-10)


def test_images_stay_inside_the_ball():
    g = torch.Generator().manual_seed(0)
    p = expmap0(torch.randn(20, 16, generator=g), C)
    v = torch.randn(20, 16, generator=g) * 100  # far into saturation
    out = expmap(p, v, C)
    assert (out.norm(dim=1) * math.sqrt(C) < 1).all()
    assert (expmap0(v, C).norm(dim=1) * math.sqrt(C) < 1).all()


def test_exp_at_origin_never_flips_but_a_moved_base_point_can():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(200, 32, generator=g)
    assert torch.equal(torch.sign(expmap0(v, C)), torch.sign(v))
    assert torch.equal(torch.sign(expmap(torch.zeros(200, 32, dtype=v.dtype), v, C)), torch.sign(v))
    p = expmap0(torch.randn(200, 32, generator=g), C) * 0.9
    assert (torch.sign(expmap(p, v * 0.001, C)) != torch.sign(v)).any()


def test_mobius_identity_and_sphere_exp():
    x = expmap0(torch.randn(5, 4, dtype=torch.float64), C)
    assert torch.allclose(mobius_add(torch.zeros_like(x), x, C), x)
    assert torch.allclose(mobius_add(x, torch.zeros_like(x), C), x)
    r = 1.0
    p = torch.randn(5, 4, dtype=torch.float64)
    p = p / p.norm(dim=1, keepdim=True) * r
    out = sphere_exp(p, torch.randn(5, 4, dtype=torch.float64), r)
    assert torch.allclose(out.norm(dim=1), torch.full((5,), r, dtype=torch.float64))



def _expmap_by_definition(x, v, c):
    """exp_x(v) written out (geoopt / Ganea et al. 2018): Moebius addition, then projection."""
    from bnnsearch.nn.hyperbolic import _norm, project

    sc = math.sqrt(c)
    lam = 2 / (1 - c * (x * x).sum(-1, keepdim=True))
    n = _norm(v)
    return project(mobius_add(x, torch.tanh(sc * lam * n / 2) * v / (sc * n), c), c)


def _sphere_exp_by_definition(p, v, r):
    vt = v - (v * p).sum(-1, keepdim=True) / (r * r) * p
    n = vt.norm(dim=-1, keepdim=True)
    return torch.cos(n / r) * p + r * torch.sin(n / r) * vt / n


def test_the_reduced_exp_maps_equal_their_definitions_values_and_gradients():
    """expmap and sphere_exp compute the exponential maps from row reductions (fewer full-size
    operations); in float64 they equal the maps as defined, inside the ball and where the
    projection clips, and so do the gradients (on the sphere: p's tangential part, the part
    RiemannianSGD steps along)."""
    g = torch.Generator().manual_seed(3)
    for r, v_scale in ((0.05, 0.05), (0.5, 0.05), (1.0, 0.3), (10.0, 0.05), (0.05, 5.0)):  # last: clipped
        c = 1 / r**2
        d = torch.randn(3, 64, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True)
        v = (torch.randn(60, 64, generator=g, dtype=torch.float64) * v_scale).requires_grad_()
        up = torch.randn(60, 64, generator=g, dtype=torch.float64)
        for manifold in ("ball", "sphere"):
            p = (d * r * (0.7 if manifold == "ball" else 1.0))[torch.arange(60) % 3].requires_grad_()
            fast, ref = (expmap, _expmap_by_definition) if manifold == "ball" else (sphere_exp, _sphere_exp_by_definition)
            a = fast(p, v, c if manifold == "ball" else r)
            b = ref(p, v, c if manifold == "ball" else r)
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-13 * r), (manifold, r, (a - b).abs().max().item())
            ga = torch.autograd.grad((a * up).sum(), (p, v))
            gb = torch.autograd.grad((b * up).sum(), (p, v))
            assert torch.allclose(ga[1], gb[1], rtol=1e-10, atol=1e-12), (manifold, r)
            if manifold == "sphere":
                ga, gb = ([q - (q * p).sum(-1, keepdim=True) / r**2 * p for q in (x[0],)] for x in (ga, gb))
            assert torch.allclose(ga[0], gb[0], rtol=1e-10, atol=1e-12), (manifold, r)
        if v_scale > 1:
            assert (_expmap_by_definition(p.detach(), v.detach(), c).norm(dim=1) * math.sqrt(c) > 0.99999 - 1e-12).all()


def test_gradients_reach_latent_and_cluster():
    q = HyperbolicSign(out_channels=6, n=12, radius=0.05, cluster_size=3, cluster_init=0.5)
    w = torch.randn(6, 3, 2, 2, requires_grad=True)
    out = q(w)
    assert set((out / q.alpha.view(-1, 1, 1, 1)).detach().round().unique().tolist()) <= {-1.0, 1.0}
    (out * torch.randn_like(out)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert q.cluster.grad is not None and q.cluster.grad.abs().sum() > 0
    assert q.alpha.grad is not None


def test_rsgd_keeps_points_in_the_ball_and_on_the_sphere():
    p = torch.nn.Parameter(expmap0(torch.randn(4, 6), C))
    opt = RiemannianSGD([p], lr=10.0, c=C, manifold="ball")
    for _ in range(5):
        p.grad = torch.randn_like(p) * 100
        opt.step()
    assert (p.detach().norm(dim=1) * math.sqrt(C) < 1).all()
    s = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(4, 6), dim=1))
    opt = RiemannianSGD([s], lr=0.5, c=1.0, manifold="sphere")
    s.grad = torch.randn_like(s)
    opt.step()
    assert torch.allclose(s.detach().norm(dim=1), torch.ones(4), atol=1e-6)


def test_hbnn_trains_and_reports(tiny_cfg):
    from bnnsearch.engine import fit

    for mode in ("alternating", "simultaneous"):
        h = fit(tiny_cfg(method="hbnn", epochs=2, hparams={"update_mode": mode, "cluster_size": 2})).history
        assert 0 < h[-1]["hbnn/max_boundary"] < 1
        assert h[-1]["val/acc"] > 0.3 and "bin/flip_from_init/net.3" in h[-1]
    h = fit(tiny_cfg(method="hbnn", epochs=1, hparams={"manifold": "sphere", "radius": 1.0, "ste": "rbnn"})).history
    assert h[-1]["hbnn/max_boundary"] == torch.tensor(1.0).item() or abs(h[-1]["hbnn/max_boundary"] - 1) < 1e-5
    assert "sched/ste_t" in h[-1]


def test_ste_choices_give_different_gradients_at_radius_005():
    """The four surrogates must differ at the paper's best radius (applied to h itself, clip
    was bit-identical to identity and approx a constant 2x)."""
    from bnnsearch.nn.hyperbolic import HyperbolicSign

    torch.manual_seed(0)
    w = torch.randn(8, 32) * 0.1
    g_out = torch.randn(8, 32)
    grads = {}
    for ste in ("identity", "clip", "approx", "rbnn"):
        q = HyperbolicSign(out_channels=8, n=32, radius=0.05, cluster_size=1, ste=ste, scale=False,
                           generator=torch.Generator().manual_seed(0))
        q.ste_t = 1.0
        wi = w.clone().requires_grad_(True)
        q(wi).backward(g_out)
        grads[ste] = wi.grad
    names = list(grads)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(grads[a], grads[b], rtol=1e-3), (a, b)
    ratio = grads["approx"] / grads["identity"]
    assert not torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=1e-2)  # not a mere lr factor


def test_tau_clamp_zeroes_the_gradient_of_clamped_coordinates_only():
    """ReCU's τ clamp on the standardized coordinates u = h / rms(h) [RECON]: the forward (the
    signs) is unchanged; coordinates with |u| > Q_τ = -E|u| log(2 - 2τ) get no gradient, the
    others the unclamped gradient."""
    from bnnsearch.nn.hyperbolic import HyperbolicSign

    torch.manual_seed(0)
    w = torch.randn(8, 32) * 0.1
    g_out = torch.randn(8, 32)
    out, grads = {}, {}
    for tau in (1.0, 0.85):
        q = HyperbolicSign(out_channels=8, n=32, radius=0.05, cluster_size=1, scale=False,
                           generator=torch.Generator().manual_seed(0))
        q.tau = tau
        wi = w.clone().requires_grad_(True)
        out[tau] = q(wi)
        out[tau].backward(g_out)
        grads[tau] = wi.grad
        with torch.no_grad():
            h = q.phi(w)
    assert torch.equal(out[1.0], out[0.85])
    u = h / h.pow(2).mean(dim=1, keepdim=True).sqrt()
    clamped = u.abs() > -math.log(2 - 2 * 0.85) * u.abs().mean()
    assert 0 < clamped.sum() < clamped.numel()
    # exp_p is filter-wise (not element-wise): a coordinate's gradient reaches its whole filter,
    # so compare at the level of h: the surrogate passes dL/dh only where u is not clamped
    hh = h.clone().requires_grad_(True)
    q.tau = 0.85
    q.surrogate(hh).backward(g_out)
    assert torch.allclose(hh.grad, torch.where(clamped, torch.zeros_like(g_out), g_out), rtol=1e-6, atol=0)


def test_rbnn_surrogate_t_is_set_per_epoch_as_rbnns_code_sets_it(tiny_cfg):
    from bnnsearch.engine import fit

    h = fit(tiny_cfg(method="hbnn", epochs=3, hparams={"ste": "rbnn"})).history
    assert [m["sched/ste_t"] for m in h] == pytest.approx([10 ** (-2 + 3 * e / 3) for e in range(3)])


@pytest.mark.parametrize("method", ["hbnn", "cyclebnn"])
def test_tau_clamp_follows_recus_schedule_per_epoch(tiny_cfg, method):
    from bnnsearch.engine import fit
    from bnnsearch.nn.quantizers import recu_tau

    h = fit(tiny_cfg(method=method, epochs=3, hparams={"tau_clamp": True})).history
    assert [m["sched/tau"] for m in h] == pytest.approx([recu_tau(e, 3, 0.85, 0.99) for e in range(3)])
    assert "sched/tau" not in fit(tiny_cfg(method=method, epochs=1)).history[-1]


def test_saturation_and_cluster_use_are_reported(tiny_cfg):
    """methods.md §2.4: the percentiles of |w_tilde_j| / r over all filters, and the largest share
    of one layer's filters on one cluster point — checked against the trained model; with
    round-robin assignment the share is fixed by hand (32 filters over 2 points: 1/2)."""
    from bnnsearch.engine import fit
    from bnnsearch.nn import binary_layers, weight_quantizer
    from bnnsearch.nn.binarize import stored_weight

    rr = fit(tiny_cfg(method="hbnn", epochs=1, hparams={"cluster_size": 2})).final
    assert rr["hbnn/cluster_share_max"] == 0.5
    res = fit(tiny_cfg(method="hbnn", epochs=1, hparams={"cluster_size": 4, "assign": "nearest", "radius": 0.5}))
    layers = binary_layers(res.model)
    v = [stored_weight(layer).detach().flatten(1) for _, layer in layers]
    norms = torch.cat([x.norm(dim=1) for x in v]).double() / 0.5
    want = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), interpolation="lower")
    assert [res.final[f"hbnn/norm_over_r_q{q}"] for q in (10, 50, 90)] == pytest.approx(want.tolist(), rel=1e-6)
    share = max(torch.bincount(weight_quantizer(layer).assignment(x), minlength=4).max().item() / x.shape[0]
                for (_, layer), x in zip(layers, v))
    assert res.final["hbnn/cluster_share_max"] == pytest.approx(share) and 0.25 <= share <= 1


@pytest.mark.parametrize("manifold,radius", [("ball", 0.05), ("sphere", 1.0)])
def test_without_a_cluster_the_map_never_changes_a_sign(tiny_cfg, manifold, radius):
    """cluster_size 0 is HBNN without EPC (methods.md §2.1): exp at the origin is a positive
    rescaling of each filter, so the binary weights are the latent weights' signs at every step
    (the control that shows what the cluster adds), and the network still learns."""
    from bnnsearch.engine import fit
    from bnnsearch.nn import binary_layers, weight_quantizer
    from bnnsearch.nn.binarize import stored_weight

    res = fit(tiny_cfg(method="hbnn", epochs=2, hparams={"cluster_size": 0, "manifold": manifold, "radius": radius}))
    for _, layer in binary_layers(res.model):
        q, w = weight_quantizer(layer), stored_weight(layer).detach()
        assert q.cluster.numel() == 0 and torch.equal(q.hard_sign(w), w >= 0)
    assert res.final["val/acc"] > 0.2 and res.final["hbnn/max_boundary"] == 0  # ten classes: chance is 0.1
    assert "hbnn/cluster_share_max" not in res.final and res.final["bin/flip_from_init"] > 0  # the latent signs move


def test_granularity_maps_the_layer_or_each_element_as_one_vector():
    """granularity (methods.md §2.5 pitfall 3): ``layer`` maps the flattened weight with one base
    point, ``element`` each weight alone (without a cluster: the scalar tanh(sqrt(c)|w|) sign(w) /
    sqrt(c))."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2) * 0.1
    gen = torch.Generator().manual_seed(0)
    q = HyperbolicSign(out_channels=4, n=12, radius=0.5, cluster_size=2, granularity="layer", generator=gen)
    assert q.cluster.shape == (2, 48)
    assert torch.allclose(q.phi(w), expmap(q.cluster[:1], w.reshape(1, -1), 4.0).view_as(w), atol=1e-7)
    q = HyperbolicSign(out_channels=4, n=12, radius=0.5, cluster_size=3, granularity="element", generator=gen)
    assert q.cluster.shape == (3, 1)
    idx = torch.arange(48) % 3
    assert torch.allclose(q.phi(w), expmap(q.cluster[idx], w.reshape(-1, 1), 4.0).view_as(w), atol=1e-7)
    q = HyperbolicSign(out_channels=4, n=12, radius=0.5, cluster_size=0, granularity="element")
    assert torch.allclose(q.phi(w), torch.tanh(2 * w.abs()) * w.sign() / 2, atol=1e-7)


def test_element_granularity_on_the_sphere_is_refused(tiny_cfg):
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="no gradient would reach the weights"):
        tiny_cfg(method="hbnn", hparams={"manifold": "sphere", "radius": 1.0, "granularity": "element"})


def test_loss_assignment_takes_each_layers_best_point_by_brute_force(tiny_cfg):
    """assign: loss [RECON]: per layer in turn, the cluster point whose map gives the lowest
    minibatch loss (the layers before it as chosen); checked against trying every point by hand.
    BatchNorm's running statistics are left as they were."""
    import torch.nn.functional as F

    from bnnsearch.engine import build
    from bnnsearch.methods.hbnn import HBNN
    from bnnsearch.nn import binary_layers, weight_quantizer

    cfg = tiny_cfg(method="hbnn", hparams={"assign": "loss", "cluster_size": 4, "radius": 0.5, "cluster_init": 0.9})
    data, method, hp, model = build(cfg, "cpu")
    x, y = data.x_train[:64], data.y_train[:64]
    qs = [weight_quantizer(l) for _, l in binary_layers(model)]
    bn = [b.clone() for b in model.buffers() if b.dtype.is_floating_point]
    HBNN.choose_points(model, [(0, qs)], x, y, lambda m, v: m(v))
    assert all(torch.equal(a, b) for a, b in zip(bn, [b for b in model.buffers() if b.dtype.is_floating_point]))
    got = [int(q.choice) for q in qs]
    for q in qs:
        q.choice.fill_(0)
    want = []
    with torch.no_grad():
        for q in qs:
            losses = []
            for i in range(4):
                q.choice.fill_(i)
                losses.append(F.cross_entropy(model(x), y).item())
            best = min(range(4), key=losses.__getitem__)
            q.choice.fill_(best)
            want.append(best)
            assert max(losses) > min(losses)  # the points differ in loss: the choice means something
    assert got == want


def test_loss_assignment_trains_and_resumes_exactly(tiny_cfg, tmp_path):
    """The layers' chosen points are a checkpointed buffer: a resumed run continues exactly."""
    from bnnsearch.engine import fit

    cfg = tiny_cfg(method="hbnn", epochs=2, hparams={"assign": "loss", "cluster_size": 3})
    full = fit(cfg).history
    fit(cfg, lambda m: m["epoch"] == 1, checkpoint_dir=tmp_path)
    resumed = fit(cfg, checkpoint_dir=tmp_path).history
    strip = lambda h: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in h]  # noqa: E731
    assert strip(resumed) == strip(full) and full[-1]["val/acc"] > 0.3
