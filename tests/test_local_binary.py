import pytest
import torch

from bnnsearch.errors import ConfigError
from bnnsearch.methods import RunInfo, get_method
from bnnsearch.methods.local_binary import LocalHparams
from bnnsearch.nn.local import LocalBinaryNet, imatmul, local_update, reinforce, reinforcement_mask


def test_one_layer_update_hand_computed():
    a = torch.tensor([[1, -1, 1]], dtype=torch.int32)
    H = torch.tensor([[1, -1], [-1, 1], [1, 1]], dtype=torch.int32)
    P = torch.tensor([[1, -1], [1, 1]], dtype=torch.int32)
    z = a @ H                      # [3, -1]
    act = torch.where(z >= 0, 1, -1).int()
    scores = act @ P               # [0, -2] -> predicts class 0
    y = torch.tensor([1])
    # rho = P[:, 1] = [-1, 1]; Delta = z * rho = [-3, -1]: both units err
    dH, wrong, sel = local_update(a, z, scores, y, P, group=2, margin=0)
    assert wrong.tolist() == [True]
    assert sel.tolist() == [[False, True]]  # the smaller |Delta| (unit 1) in the one group
    assert dH.tolist() == [[0, 2], [0, -2], [0, 2]]
    dH1, _, _ = local_update(a, z, scores, y, P, group=1, margin=0)
    assert dH1.tolist() == [[-2, 2], [2, -2], [-2, 2]]
    assert dH.dtype == torch.int32


def test_imatmul_is_the_exact_int32_product():
    """The float32 BLAS product equals int32 matmul bit for bit on {-1, 0, +1} matrices, also
    where every sum reaches the inner dimension (all-ones) and with inner dimensions at the
    sizes training uses (784 pixels, 525 units, batches up to 500)."""
    g = torch.Generator().manual_seed(0)
    for m, k, n in [(500, 784, 525), (10, 525, 105), (525, 500, 10), (3, 20000, 4)]:
        a = torch.randint(-1, 2, (m, k), generator=g, dtype=torch.int32)
        b = torch.randint(-1, 2, (k, n), generator=g, dtype=torch.int32)
        out = imatmul(a, b)
        assert out.dtype == torch.int32 and torch.equal(out, a @ b)
        ones = torch.ones(m, k, dtype=torch.int32)
        assert torch.equal(imatmul(ones, -torch.ones(k, n, dtype=torch.int32)), torch.full((m, n), -k, dtype=torch.int32))


def test_imatmul_stays_exact_under_bf16_autocast():
    """``amp: bf16`` autocasts the evaluation forward; bf16 holds integers exactly only up to 256,
    so the product opts out (an all-ones sum of 785 came out 784 before it did)."""
    a, b = torch.ones(2, 785, dtype=torch.int32), torch.ones(785, 3, dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a.float() @ b.float())[0, 0].item() != 785  # the control: autocast rounds it
        assert torch.equal(imatmul(a, b), torch.full((2, 3), 785, dtype=torch.int32))


def test_reinforcement_touches_exactly_the_masked_weights():
    """h += 2 sign(h) (sign(0) = +1) where the mask is set, nothing elsewhere: the CPU's sparse
    update equals the dense formula."""
    g = torch.Generator().manual_seed(1)
    H = torch.randint(-5, 6, (300, 40), generator=g, dtype=torch.int32)
    H[0, :3] = 0
    mask = torch.rand(H.shape, generator=g) < 0.05
    mask[0, :3] = True
    want = H + 2 * torch.where(H >= 0, 1, -1).to(torch.int32) * mask
    reinforce(H, mask)
    assert H.dtype == torch.int32 and torch.equal(H, want) and H[0, :3].tolist() == [2, 2, 2]


@pytest.mark.parametrize("p", [2e-4, 3e-3, 0.0285])
def test_gap_draws_hit_each_weight_independently_with_probability_p(p):
    """The sparse draw (Geometric gaps) against the Bernoulli(p) law it replaces: over 300 draws
    of a 784 x 525 layer, the mean number of hits is N p within 4 standard errors, its variance
    is the binomial one within 25 %, and the hits spread evenly over 16 blocks of the weights
    (chi-square, p > 1e-3). Fixed seeds: the test is deterministic."""
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(3)
    shape, n, k = (784, 525), 784 * 525, 300
    masks = [reinforcement_mask(shape, torch.tensor(p), 0.0285, g) for _ in range(k)]
    counts = torch.tensor([m.sum().item() for m in masks], dtype=torch.float64)
    var = n * p * (1 - p)
    assert abs(counts.mean().item() - n * p) < 4 * (var / k) ** 0.5, (counts.mean(), n * p)
    assert 0.75 < counts.var().item() / var < 1.25, (counts.var(), var)
    blocks = torch.stack([m.flatten().view(16, -1).sum(1) for m in masks]).sum(0).double()
    assert chisquare(blocks.numpy()).pvalue > 1e-3, blocks
    assert all(m.shape == shape and m.dtype == torch.bool for m in masks[:3])


def test_gap_draws_at_the_edges_and_the_dense_reference():
    """p = 0 hits nothing (also with p_max > 0: acc_prev = 1), p = 1 hits every weight (the cap
    M = N binds, so the draw is exact there), and `dense` is one uniform per weight from the
    same generator (the stream of runs made before `gaps`)."""
    g = torch.Generator().manual_seed(0)
    assert not reinforcement_mask((30, 7), torch.tensor(0.0), 0.5, g).any()
    assert not reinforcement_mask((30, 7), torch.tensor(0.0), 0.0, g).any()
    assert reinforcement_mask((30, 7), torch.tensor(1.0), 1.0, g).all()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(reinforcement_mask((30, 7), torch.tensor(0.1), 0.1, g1, "dense"),
                       torch.rand((30, 7), generator=g2) < 0.1)


def test_two_layer_step_hand_computed():
    """One train_step on a 2-layer net, reinforcement off; layer 2 sees layer 1's activations
    from before layer 1's update."""
    net = LocalBinaryNet(3, 2, (2, 2))
    net.H0.copy_(torch.tensor([[1, -1], [-1, 1], [1, 1]]))
    net.P0.copy_(torch.tensor([[1, -1], [1, 1]]))
    net.H1.copy_(torch.tensor([[-1, 1], [1, -1]]))
    net.P1.copy_(torch.tensor([[1, 1], [-1, 1]]))
    net.threshold.zero_()
    m = get_method("local_binary")
    hp = LocalHparams(group_size=1, robustness=0.0, p_r=0.0)
    setup = m.setup(net, hp, 10, RunInfo(10, 10, 1, (3,), 2, 1))
    x = torch.tensor([[0.5, -0.2, 0.9]])  # -> a0 = [1, -1, 1]
    m.train_step(net, x, torch.tensor([1]), setup, None)
    # layer 1 (as above, group 1): H0 += [[-2, 2], [2, -2], [-2, 2]]
    assert net.H0.tolist() == [[-1, 1], [1, -1], [-1, 3]]
    # layer 2: input a1 = [1, -1]; z = a1 H1 = [-2, 2]; act = [-1, 1]; scores = act P1 = [-2, 0]
    # -> predicts 1 = y, margin 2 >= floor(0 * 2): correct, no update
    assert net.H1.tolist() == [[-1, 1], [1, -1]]
    assert net.H0.dtype == torch.int32 and net.H1.dtype == torch.int32
    # local/updates/<l> counts the units selected in the step, summed over the minibatch: 2 in
    # layer 1 (both units, group 1), none in layer 2; the same sample twice in one batch: 4
    assert setup.state["stats"]["updates"].tolist() == [2, 0]
    net.H0.copy_(torch.tensor([[1, -1], [-1, 1], [1, 1]]))
    setup2 = m.setup(net, hp, 10, RunInfo(10, 10, 2, (3,), 2, 2))
    m.train_step(net, x.repeat(2, 1), torch.tensor([1, 1]), setup2, None)
    assert setup2.state["stats"]["updates"].tolist() == [4, 0]
    assert net.H0.tolist() == [[-3, 3], [3, -3], [-3, 5]]  # each selection moves its column by 2


@pytest.mark.parametrize("group,bits,draw", [(1, 0, "gaps"), (1, 4, "dense"), (5, 3, "gaps"), (25, 4, "dense"),
                                             (5, 0, "dense")])
def test_the_cpu_sparse_update_equals_the_dense_reference(group, bits, draw):
    """The CPU path (only the selected columns, the reinforced weights and the clip on those,
    sign(H) cached between steps) against the dense path the GPU runs, from the same seed: H
    bit for bit after every one of 12 steps, with reinforcement on (acc_prev set so p < p_max),
    an initialisation wider than the clip, and H overwritten between steps as a checkpoint
    restore does (the cached signs must be rebuilt)."""
    m = get_method("local_binary")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12 * 8, 40, generator=g)
    y = torch.randint(0, 3, (12 * 8,), generator=g)
    hp = LocalHparams(group_size=group, robustness=0.3, p_r=0.9, hidden_bits=bits, init_std=8.0, reinforce_draw=draw)
    nets, setups = [], []
    for sparse in (True, False):
        net = LocalBinaryNet(40, 3, (25, 50), init_std=8.0, seed=1)
        setup = m.setup(net, hp, 12, RunInfo(12, 12, 8, (40,), 3, 12 * 8, seed=7))
        setup.ctx[-1]["sparse"] = sparse
        setup.state["acc"]["prev"].fill_(0.4)
        nets.append(net), setups.append(setup)
    restored = torch.randint(-9, 10, nets[0].H1.shape, generator=g, dtype=torch.int32)
    for step in range(12):
        if step == 6:  # a restore between steps, into both nets
            for net in nets:
                net.H1.copy_(restored)
        for net, setup in zip(nets, setups):
            m.train_step(net, x[8 * step:8 * step + 8], y[8 * step:8 * step + 8], setup, None)
            setup.state["steps"] += 1
        assert torch.equal(nets[0].H0, nets[1].H0) and torch.equal(nets[0].H1, nets[1].H1), step
    assert [s.state["stats"]["reinforced"].tolist() for s in setups][0] == setups[1].state["stats"]["reinforced"].tolist()
    assert setups[0].state["stats"]["reinforced"].sum() > 0 and setups[0].state["stats"]["updates"].sum() > 0
    if bits:
        assert nets[0].H0.abs().max() <= 2 ** (bits - 1)


def test_group_selection_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    B, n_in, n_out, C, group = 16, 12, 20, 4, 5
    a = torch.where(torch.rand(B, n_in, generator=g) < 0.5, 1, -1).int()
    H = torch.randint(-50, 50, (n_in, n_out), generator=g).int()
    P = torch.where(torch.rand(n_out, C, generator=g) < 0.5, 1, -1).int()
    z = a @ torch.where(H >= 0, 1, -1).int()
    scores = torch.where(z >= 0, 1, -1).int() @ P
    y = torch.randint(0, C, (B,), generator=g)
    dH, wrong, sel = local_update(a, z, scores, y, P, group, margin=3)
    expected = torch.zeros(B, n_out, dtype=torch.bool)
    for b in range(B):
        if not wrong[b]:
            continue
        for k0 in range(0, n_out, group):
            cands = [(abs(int(z[b, k] * P[k, y[b]])), k) for k in range(k0, k0 + group) if z[b, k] * P[k, y[b]] < 0]
            if cands:
                expected[b, min(cands)[1]] = True
    assert torch.equal(sel, expected) and sel.any()
    rho = P[:, y].T
    assert torch.equal(dH, 2 * (a.T.long() @ (expected.long() * rho.long())).int())


def test_training_clips_and_learns(tiny_cfg):
    from bnnsearch.engine import fit

    cfg = tiny_cfg(method="local_binary", arch="local_mlp", arch_args={"widths": [40, 40]}, epochs=3,
                   hparams={"group_size": 10, "hidden_bits": 7, "init_std": 32.0})
    res = fit(cfg)
    net = res.model
    assert net.H0.abs().max() <= 64 and net.H1.abs().max() <= 64
    assert (net.H0.abs() == 64).any()  # the clip was actually reached
    last = res.final
    assert last["val/acc"] > 0.3 and 0 <= last["local/saturation/0"] <= 1
    assert last["cost/train_gates"] > 0 and last["cost/train_mem_bits"] > 0
    assert {"local/err/0", "local/updates/1", "local/reinforced/0"} <= set(last)
    # methods.md §6.4: the output layer's local classifier is the network's, so its miss rate
    # (no margin) is the training error; the margin only adds samples (err >= miss)
    assert last["local/miss/1"] == pytest.approx(1 - last["train/acc"], abs=1e-6)
    assert all(last[f"local/err/{l}"] >= last[f"local/miss/{l}"] > 0 for l in (0, 1))
    for l, H in enumerate((net.H0, net.H1)):  # |H| percentiles of the trained hidden weights
        want = torch.quantile(H.abs().double().flatten(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
                              interpolation="lower")
        assert [last[f"local/h_abs_q{q}/{l}"] for q in (10, 50, 90)] == want.tolist()


def test_config_errors(tiny_cfg):
    with pytest.raises(ConfigError, match="group_size 7 must divide"):
        tiny_cfg(method="local_binary", arch="local_mlp", arch_args={"widths": [30, 30]}, hparams={"group_size": 7})
    with pytest.raises(ConfigError, match="trains only arch local_mlp"):
        tiny_cfg(method="local_binary", arch="mlp")
    with pytest.raises(ConfigError, match="trained only by method 'local_binary'"):
        tiny_cfg(method="latent", arch="local_mlp")
    with pytest.raises(ConfigError, match="input_levels must be >= 1"):
        tiny_cfg(method="local_binary", arch="local_mlp", arch_args={"widths": [30, 30], "input_levels": 0})


@pytest.mark.parametrize("levels", [1, 2])
def test_gates_hand_computed(levels):
    net = LocalBinaryNet(4, 3, (6, 6), input_levels=levels)
    setup = get_method("local_binary").setup(net, LocalHparams(group_size=3), 5, RunInfo(5, 5, 2, (4,), 3, 10))
    B, C, n0 = 2, 3, 4 * levels  # the first layer sees 4 features x levels input bits
    l1 = B * n0 * 6 * 11 + B * 6 * C * 11 + 9 * B * 6 + 2 * n0 * 6 + 10 * n0 * 6 + 40 * n0 * 6
    l2 = B * 6 * 6 * 11 + B * 6 * C * 11 + 2 * 36 + 10 * 36 + 40 * 36
    assert setup.state["gates_per_step"] == l1 + l2


def test_few_hidden_bits_stay_near_chance(tiny_cfg):
    """Seed 004 reports chance level for b <= 5 hidden-weight bits; b = 4 reproduces that here."""
    from bnnsearch.engine import fit

    cfg = tiny_cfg(method="local_binary", arch="local_mlp", arch_args={"widths": [40, 40]}, epochs=3,
                   hparams={"group_size": 10, "hidden_bits": 4, "init_std": 4.0})
    res = fit(cfg)
    assert res.model.H0.abs().max() <= 8
    assert res.final["val/acc"] < 0.3


def test_two_valued_features_are_kept():
    """A +-1 (or 0/1) feature whose median equals its maximum would become constant under
    'strictly above the median'; two-valued features are thresholded at their midpoint."""
    from types import SimpleNamespace

    x = torch.tensor([[1.0, 0.0, 0.3], [1.0, 1.0, 0.9], [-1.0, 1.0, 0.5], [1.0, 1.0, 0.1], [-1.0, 0.0, 0.7]])
    net = LocalBinaryNet(3, 2, (4,))
    get_method("local_binary").prepare(net, SimpleNamespace(x_train=x))
    a = net.binarize_input(x)
    assert a[:, 0].tolist() == [1, 1, -1, 1, -1]   # +-1 kept (median +1 would make it all -1)
    assert a[:, 1].tolist() == [-1, 1, 1, 1, -1]   # 0/1 kept (median 1)
    assert a[:, 2].tolist() == [-1, 1, -1, -1, 1]  # many-valued: strictly above the median 0.5
    img = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]], [[[1.0, 1.0], [0.0, 1.0]]]])  # (N=2, C=1, 2, 2), 0/1 valued
    net2 = LocalBinaryNet(4, 2, (4,))
    get_method("local_binary").prepare(net2, SimpleNamespace(x_train=img))
    assert net2.binarize_input(img).tolist() == [[-1, 1, 1, 1], [1, 1, -1, 1]]


def test_local_binary_without_arch_uses_local_mlp(tiny_cfg):
    from bnnsearch.config import resolve

    cfg = resolve({"method": "local_binary", "data": "digits", "hparams": {"group_size": 5}})
    assert cfg.arch == "local_mlp"


def test_thermometer_code_hand_computed():
    """input_levels K: thresholds at the training values of rank floor(i (N-1) / (K+1)),
    level-major, K input bits per feature; the first layer and the cost table grow with K."""
    from types import SimpleNamespace

    x = torch.stack([torch.arange(10.0), 10 * torch.arange(10.0).flip(0)], dim=1)  # N=10, 2 features
    net = LocalBinaryNet(2, 3, (4,), input_levels=3)
    m = get_method("local_binary")
    m.prepare(net, SimpleNamespace(x_train=x))
    # ranks floor(i * 9 / 4) for i = 1, 2, 3: 2, 4, 6 (0-based) -> values 2, 4, 6 and 20, 40, 60
    assert net.threshold.tolist() == [2, 20, 4, 40, 6, 60]
    assert net.binarize_input(torch.tensor([[5.0, 45.0], [6.0, 0.0]])).tolist() == [[1, 1, 1, 1, -1, -1],
                                                                                   [1, -1, 1, -1, -1, -1]]
    assert tuple(net.H0.shape) == (6, 4)
    rows, _ = m.inference_cost(net, (2,))
    assert rows[0].shape == "6x4" and rows[-1].name == "(input thresholds)" and rows[-1].mem_bits == 32 * 6


def test_one_level_is_the_median():
    """input_levels 1 (the default) keeps the median encoding, per feature and per image channel."""
    from types import SimpleNamespace

    x = torch.randn(50, 7)
    net = LocalBinaryNet(7, 2, (4,))
    get_method("local_binary").prepare(net, SimpleNamespace(x_train=x))
    assert torch.equal(net.threshold, x.median(dim=0).values)
    img = torch.randn(6, 2, 3, 3)  # per channel: every pixel of a channel shares its thresholds
    net2 = LocalBinaryNet(18, 2, (4,), input_levels=2)
    get_method("local_binary").prepare(net2, SimpleNamespace(x_train=img))
    ch = img.transpose(0, 1).flatten(1)
    n = ch.shape[1]
    want = [ch.kthvalue(i * (n - 1) // 3 + 1, dim=1).values.repeat_interleave(9) for i in (1, 2)]
    assert torch.equal(net2.threshold, torch.cat(want))


def test_thermometer_code_lets_local_binary_learn_what_median_bits_hide(tiny_cfg, tmp_path):
    """The class is the quartile of a real-valued feature: its median bit tells two quartiles
    from the other two only, so no model of median bits gets past ~50 %; a 3-level thermometer
    code holds the quartile, and the same training learns it."""
    import numpy as np
    from bnnsearch.engine import fit

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2000, 4)).astype(np.float32)
    np.savez(tmp_path / "quartiles.npz", x=x, y=np.digitize(x[:, 0], [-0.5, 0.0, 0.5]))
    acc = {}
    for levels in (1, 3):
        cfg = tiny_cfg(method="local_binary", arch="local_mlp", data="npz", data_root=str(tmp_path / "quartiles.npz"),
                       epochs=5, batch_size=20, arch_args={"widths": [30, 30], "input_levels": levels},
                       hparams={"group_size": 5, "robustness": 0.0})
        acc[levels] = fit(cfg).final["val/acc"]
    assert acc[1] < 0.6 and acc[3] > 0.75, acc
