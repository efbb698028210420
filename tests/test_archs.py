import pytest
import torch

from bnnsearch.archs import ARCHS, build_arch, list_archs
from bnnsearch.methods import get_method
from bnnsearch.nn import binary_layers, is_binary_param
from bnnsearch.schema import parse_dataclass

SMALL = {"vgg_small": {"width": 0.125}, "resnet20": {"width": 0.5}, "resnet18": {"width": 0.125}, "mlp": {"widths": [16, 16, 16]}}


GRADIENT_ARCHS = [a for a in list_archs() if getattr(ARCHS.get(a)[1], "only_method", None) is None]


def test_local_mlp_forward_is_integer_scores():
    net = build_arch("local_mlp", (1, 8, 8), 10, parse_dataclass(ARCHS.get("local_mlp")[0], {"widths": [20, 20]}, "a"))
    out = net(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 10) and torch.equal(out, out.round()) and out.abs().max() <= 20
    assert not list(net.parameters())  # nothing for autograd


@pytest.mark.parametrize("name", GRADIENT_ARCHS)
def test_every_arch_forward_backward_binarized(name):
    args = parse_dataclass(ARCHS.get(name)[0], SMALL.get(name, {}), "arch_args")
    torch.manual_seed(0)
    model = get_method("latent").build(name, args, (3, 32, 32), 10, get_method("latent").Hparams())
    layers = binary_layers(model)
    assert layers, "no layer was binarized"
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    out.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {n}"
    # first and last conv/linear stay full precision
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    binarized = {n for n, _ in layers}
    if name != "mlp":
        assert names[0] not in binarized and names[-1] not in binarized
    assert any(is_binary_param(p) for p in model.parameters())


def test_mlp_fp_flags():
    from bnnsearch.archs import MlpArgs

    hp = get_method("latent").Hparams()
    m = get_method("latent").build("mlp", MlpArgs(widths=(8, 8, 8), fp_last=False), (40,), 10, hp)
    # 4 linear layers, first FP -> 3 binary layers including the classifier (seed 002 Fig. 8 net)
    assert [n for n, _ in binary_layers(m)] == ["net.3", "net.6", "net.9"]
    m2 = get_method("latent").build("mlp", MlpArgs(widths=(8, 8, 8)), (40,), 10, hp)
    assert [n for n, _ in binary_layers(m2)] == ["net.3", "net.6"]


def test_resnet20_has_shortcut_around_every_binary_conv():
    from bnnsearch.archs import ConvBN

    model = build_arch("resnet20", (3, 32, 32), 10, parse_dataclass(ARCHS.get("resnet20")[0], {}, "a"))
    blocks = [m for m in model.modules() if isinstance(m, ConvBN)]
    assert len(blocks) == 18 and all(b.shortcut is not None for b in blocks)


def test_conv_arch_rejects_vector_input():
    with pytest.raises(ValueError, match="image inputs"):
        build_arch("vgg_small", (40,), 10, parse_dataclass(ARCHS.get("vgg_small")[0], {}, "a"))
