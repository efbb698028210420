"""The run configuration of one training run (one trial).

Shape (YAML)::

    method: latent            # a registered method
    arch: mlp                 # a registered architecture
    arch_args: {widths: [512, 512, 512, 512]}
    data: mnist5k             # a registered dataset
    data_args: {val_fraction: 0.1}
    data_root: ./data
    epochs: 30
    batch_size: 128
    seed: 0
    device: auto              # auto | cpu | cuda
    hparams: {lr: 1.0}        # the method's own hyperparameters (its Hparams dataclass)

Everything is validated strictly before anything runs; ``resolve`` returns the config with all
defaults filled in (what ``config.yaml`` of a run holds, re-runnable as is).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .archs import ARCHS
from .data import DATASETS
from .errors import ConfigError, UserError
from .methods import get_method
from .schema import parse_dataclass, subkey, to_dict


@dataclass(frozen=True)
class RunConfig:
    method: str = "latent"
    arch: str = "mlp"
    data: str = "mnist1d"
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_root: str = "./data"
    hparams: dict = field(default_factory=dict)
    arch_args: dict = field(default_factory=dict)
    data_args: dict = field(default_factory=dict)
    sign0: Literal["plus", "random", "zero"] = "plus"
    threads: int = 0  # torch CPU threads; 0 = all cores given to this process
    amp: Literal["none", "bf16"] = "none"  # bf16 autocast of the forward pass (CUDA or CPU)
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 2048
    # float64 is for exactness checks (a packed member against the same config alone); data
    # and model are cast, the loss is computed in the same precision.
    dtype: Literal["float32", "float64"] = "float32"
    # A control, not a method: the binary weights keep their initial signs (their storage is
    # restored after every step) while everything else trains. What a method's binary training
    # adds is its accuracy above this control.
    freeze_binary: bool = False

    def validate(self):
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.threads < 0:
            raise ValueError(f"threads: must be >= 0, got {self.threads}")
        if self.amp == "bf16" and self.dtype == "float64":
            raise ValueError("amp: bf16 computes in bfloat16, dtype: float64 asks for exact float64 (pick one)")

    # Parsed views (validated in resolve()).
    def hp(self):
        return parse_dataclass(get_method(self.method).Hparams, self.hparams, "hparams")

    def arch_obj(self):
        return parse_dataclass(ARCHS.get(self.arch)[0], self.arch_args, "arch_args")

    def data_obj(self):
        return parse_dataclass(DATASETS.get(self.data)[0], self.data_args, "data_args")

    def to_dict(self) -> dict:
        return to_dict(self)


def resolve(raw: dict, where: str = "config") -> RunConfig:
    """Validate a raw mapping and return it with every default filled in."""
    _hparam_outside_hparams(raw, where)
    cfg = parse_dataclass(RunConfig, raw, where)
    method = get_method(cfg.method, subkey(where, "method"))
    if "arch" not in raw and method.archs is not None:  # e.g. local_binary trains only local_mlp
        cfg = dataclasses.replace(cfg, arch=method.archs[0])
    ARCHS.get(cfg.arch, subkey(where, "arch"))
    DATASETS.get(cfg.data, subkey(where, "data"))
    if method.archs is not None and cfg.arch not in method.archs:
        raise ConfigError(f"method {cfg.method} trains only arch {', '.join(method.archs)}, not {cfg.arch!r}", subkey(where, "arch"))
    hp = parse_dataclass(method.Hparams, cfg.hparams, subkey(where, "hparams"))
    arch = parse_dataclass(ARCHS.get(cfg.arch)[0], cfg.arch_args, subkey(where, "arch_args"))
    data = parse_dataclass(DATASETS.get(cfg.data)[0], cfg.data_args, subkey(where, "data_args"))
    only = getattr(ARCHS.get(cfg.arch)[1], "only_method", None)
    if only is not None and cfg.method != only:
        raise ConfigError(f"arch {cfg.arch!r} is trained only by method {only!r}", subkey(where, "arch"))
    try:
        method.validate_config(hp, arch, cfg.epochs)
    except ValueError as e:
        raise ConfigError(str(e), subkey(where, "hparams")) from None
    return dataclasses.replace(cfg, hparams=to_dict(hp), arch_args=to_dict(arch), data_args=to_dict(data))


def _hparam_outside_hparams(raw: dict, where: str) -> None:
    """A method hyperparameter given as a top-level key (``lr: 0.1``, ``--set lr=0.1``) belongs
    under ``hparams``: say so, instead of only listing the run config's keys."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        fields = {f.name for f in dataclasses.fields(get_method(raw.get("method")).Hparams)}
    except (ConfigError, TypeError):  # no or unknown method: parse_dataclass reports it
        return
    for k in raw:
        if k not in names and k in fields:
            raise ConfigError(f"{k!r} is a hyperparameter of method {raw['method']}: put it under hparams "
                              f"(hparams: {{{k}: ...}}, or --set hparams.{k}=...)", subkey(where, k))


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads ``1e-3`` (no dot) as a float, as users write it."""


SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)


def safe_load(text: str):
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a YAML file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{at}: {what}") from None
    if data is None:
        raise UserError(f"{path}: the file is empty (expected a mapping of keys)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(raw: dict, sets: list[str]) -> dict:
    """Apply ``--set key=value`` overrides; dotted keys reach nested mappings, values are YAML."""
    out = dict(raw)
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value")
        key, _, text = item.partition("=")
        try:
            value: Any = safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None, sets: list[str] = ()) -> RunConfig:
    raw = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    if path and ("params" in raw or "methods" in raw):  # a search space given where one run's config goes
        kind, cmd = ("an AutoML space (methods:)", "automl") if "methods" in raw else ("a search space (params:)", "sweep")
        raise ConfigError(f"{kind}, not the config of one run; study it with  bnnsearch {cmd} {path}  "
                          f"(bnnsearch best STUDY --out best.yaml then writes a trial's config to train)", where)
    try:
        return resolve(apply_overrides(raw, list(sets)), where)
    except ConfigError as e:  # a value a --set gave is named with it: the file may not hold it at all
        text = str(e).removeprefix(f"{where}: ")  # "hparams.lr: expected a number, got 'abc'"
        key = text.split(":", 1)[0] if ":" in text else ""
        for s in reversed(list(sets)):
            k = s.split("=", 1)[0].strip()
            if key and (key == k or k.startswith(key + ".") or key.startswith(k + ".")):
                raise ConfigError(text, f"{where} (from --set {s})") from None
        raise


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
