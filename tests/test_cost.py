"""The cost model against hand-computed numbers on a toy net."""
from torch import nn

from bnnsearch.cost import cost_table
from bnnsearch.nn import binarize


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)      # FP first
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)      # binary
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)                           # FP last (with bias)

    def forward(self, x):
        x = self.bn0(self.conv0(x))
        x = self.bn1(self.conv1(x))
        return self.fc(x.flatten(1))


def test_hand_computed_costs():
    m = Toy()
    binarize(m, "ste_sign", "ste_sign")
    rows, tot = cost_table(m, (3, 8, 8))
    by = {r.name: r for r in rows}
    # conv0: 64 output positions x 4 channels x (3*3*3) MACs, fp32 weights
    assert by["conv0"].macs == 8 * 8 * 4 * 27 == 6912
    assert by["conv0"].flops == 6912 and by["conv0"].bops == 0
    assert by["conv0"].mem_bits == 4 * 3 * 9 * 32
    # conv1: 64 x 8 x (4*9) = 18432 binary MACs; 1-bit weights
    assert by["conv1"].macs == 18432 and by["conv1"].bops == 18432 and by["conv1"].flops == 0
    assert (by["conv1"].w_bits, by["conv1"].a_bits) == (1, 1)
    assert by["conv1"].mem_bits == 8 * 4 * 9 * 1
    # fc: 512 x 10 MACs, weights + bias in fp32
    assert by["fc"].macs == 5120 and by["fc"].mem_bits == (5120 + 10) * 32
    # other: BN weight+bias (4+4, 8+8) and running stats (4+4, 8+8) in fp32
    other = rows[-1]
    assert other.params == 48 and other.mem_bits == 48 * 32
    assert tot["cost/bops"] == 18432
    assert tot["cost/flops"] == 6912 + 5120
    assert tot["cost/ops"] == 18432 / 64 + 12032
    params = 108 + 288 + 5130 + 48
    mem = 108 * 32 + 288 + 5130 * 32 + 48 * 32
    assert tot["cost/params"] == params
    assert tot["cost/compression"] == params * 32 / mem


def test_w1a32_layer_counts_as_flops():
    m = Toy()
    binarize(m, "ste_sign", "identity")
    rows, tot = cost_table(m, (3, 8, 8))
    conv1 = [r for r in rows if r.name == "conv1"][0]
    assert conv1.w_bits == 1 and conv1.a_bits == 32 and conv1.bops == 0 and conv1.flops == 18432
