"""runio's whole-file writes: a write that stops part-way never replaces what was there."""
import numpy as np
import pytest

from bnnsearch.runio import copy_whole, write_text_whole, write_whole


def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "runs.json"
    write_text_whole(path, '{"a": 1}')

    def half_then_ctrl_c(tmp):
        tmp.write_text('{"a": 1, "b"')  # half-written, then the Ctrl-C arrives
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_whole(path, half_then_ctrl_c)
    assert path.read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.json"]
    write_text_whole(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'


def test_the_temporary_is_hidden_keeps_the_suffix_and_can_be_unique(tmp_path):
    seen = []
    for unique in (False, False, True, True):
        write_whole(tmp_path / "cache.npz", lambda tmp: (seen.append(tmp.name), np.savez(tmp, x=np.arange(3))),
                    unique=unique)
    assert seen[0] == seen[1] == ".cache.tmp.npz"  # np.savez would append .npz to a name without it
    assert seen[2] != seen[3] and all(n.startswith(".cache-") and n.endswith(".tmp.npz") for n in seen[2:])
    with np.load(tmp_path / "cache.npz") as d:
        assert d["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz"]


def test_copy_whole(tmp_path):
    (tmp_path / "a.pkl").write_bytes(b"\x80abc")
    copy_whole(tmp_path / "a.pkl", tmp_path / "b.pkl")
    assert (tmp_path / "b.pkl").read_bytes() == b"\x80abc"
