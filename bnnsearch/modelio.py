"""A trained binary network as a portable object: what ``automl --register`` logs to the MLflow
Model Registry and what ``bnnsearch evaluate`` scores.

``BinaryNet`` wraps the engine's model with the resolved config that built it. It pickles as
(config, input shape, classes, state dict, the modules' scalar settings) and is rebuilt through
the method's own ``build`` on load: binarized layers are torch parametrizations, which torch
refuses to pickle whole, and the scalar settings (CycleBNN's final bit width, ProxConnect's
hard phase, ...) are plain attributes that a state dict does not hold. Loading needs bnnsearch
installed (the model's code); MLflow's pyfunc serving works in an environment that has it.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

_SCALARS = (bool, int, float, str, type(None))


def module_scalars(net: nn.Module) -> dict[str, dict]:
    """Every module's public plain-value attributes (bit widths, flags, temperatures)."""
    out = {}
    for name, mod in net.named_modules():
        vals = {k: v for k, v in vars(mod).items() if not k.startswith("_") and k != "training" and isinstance(v, _SCALARS)}
        if vals:
            out[name] = vals
    return out


def _rebuild(config: dict, in_shape: tuple, num_classes: int, state: dict, scalars: dict) -> "BinaryNet":
    from .config import resolve
    from .engine import build_model
    from .methods import get_method

    cfg = resolve(dict(config), "model config")
    method = get_method(cfg.method)
    net = build_model(cfg, SimpleNamespace(in_shape=tuple(in_shape), num_classes=num_classes), method, cfg.hp(), "cpu")
    net.load_state_dict(state)
    mods = dict(net.named_modules())
    for name, vals in scalars.items():
        for k, v in vals.items():
            setattr(mods[name], k, v)
    return BinaryNet(net, config, in_shape, num_classes).eval()


class BinaryNet(nn.Module):
    """A trained binary network and the resolved run config that built it (``config``)."""

    def __init__(self, net: nn.Module, config: dict, in_shape, num_classes: int):
        super().__init__()
        self.net = net
        self.config = dict(config)
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.net.parameters(), None)
        if p is not None and x.is_floating_point() and x.dtype != p.dtype:
            x = x.to(p.dtype)
        return self.net(x)

    def __reduce__(self):
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        return (_rebuild, (self.config, self.in_shape, self.num_classes, state, module_scalars(self.net)))


@torch.no_grad()
def test_accuracy(model, config: dict | None = None, threads: int | None = None) -> tuple[float, int]:
    """(accuracy, samples) of a model (a BinaryNet, or any callable such as the exported graph
    MLflow stores, with ``config``) on its config's own test split, computed as the engine
    computes ``test/acc`` (same batches, same float32 division): equal to the recorded value
    when run on the same device with the same thread count."""
    from .config import resolve
    from .engine import available_cpus, load_data
    from .methods.base import upcast

    cfg = resolve(dict(config if config is not None else model.config), "model config")
    torch.set_num_threads(threads or cfg.threads or available_cpus())
    data = load_data(cfg, "cpu")
    if isinstance(model, BinaryNet):
        model.eval()
    correct = torch.zeros((), dtype=torch.long)
    x, y = data.x_test, data.y_test
    for i in range(0, len(x), cfg.eval_batch_size):
        logits = upcast(model(x[i : i + cfg.eval_batch_size]))
        correct += (logits.argmax(-1) == y[i : i + cfg.eval_batch_size]).sum()
    return float((correct.float() / len(x)).item()), len(x)


def load_model(uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """(model, config, provenance) of a .bnn file or an MLflow model URI. MLflow models are what
    ``automl --register`` logs: a torch.export graph with the bnnsearch config in its metadata
    (or a pickled BinaryNet). Provenance: the MLflow run and the test/acc it recorded.
    ``models:/`` URIs are looked up in the registry of ``tracking.registry_store``."""
    if Path(uri).suffix == ".bnn" or (Path(uri).is_file() and not uri.startswith(("models:/", "runs:/"))):
        net = load_bnn(uri)
        meta = net.provenance
        return net, net.config, {"run_id": meta.get("run_id"), "recorded": meta.get("recorded_test_acc")}
    import mlflow

    from .errors import UserError
    from .tracking import check_store, mlflow_uris, registry_store

    local, registered = not uri.startswith(("models:/", "runs:/")), uri.startswith("models:/")
    store = check_store(tracking_uri, must_exist=not local)
    registry = registry_store(store, registry_uri, must_exist=registered)
    try:
        with mlflow_uris(store, registry):
            info = mlflow.models.get_model_info(uri)
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for "no such model"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = f"; looked up in the Model Registry at {registry} (--registry-uri names another)" if registered else ""
        raise UserError(f"{uri}: cannot load an MLflow PyTorch model ({first[:300]}){where}") from None
    meta = info.metadata or {}
    config = model.config if isinstance(model, BinaryNet) else meta.get("bnnsearch_config")
    if not isinstance(config, dict):
        raise UserError(f"{uri}: a {type(model).__name__} without a bnnsearch config in its metadata "
                        "(automl --register logs the models bnnsearch reads)")
    recorded = None
    if info.run_id:
        try:
            recorded = mlflow.MlflowClient(store).get_run(info.run_id).data.metrics.get("test/acc")
        except Exception:  # noqa: BLE001 - a model folder copied away from its store
            recorded = None
    return model, config, {"run_id": info.run_id, "recorded": recorded, "metadata": meta}


def as_binary_net(model, config: dict, prov: dict, x: torch.Tensor) -> BinaryNet:
    """A BinaryNet from what ``load_model`` returned: an exported graph is rebuilt through the
    method from its parameters (named as in the network) and the metadata's shape and scalar
    settings, and must give the graph's logits bit for bit on ``x`` (the test inputs)."""
    from .errors import UserError

    if isinstance(model, BinaryNet):
        return model
    meta = prov.get("metadata", {})
    if "bnnsearch_in_shape" not in meta:
        raise UserError("this model's metadata lacks bnnsearch_in_shape (logged before export support)")
    state = {k[4:]: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("net.")}
    net = _rebuild(config, tuple(meta["bnnsearch_in_shape"]), int(meta["bnnsearch_num_classes"]), state,
                   meta.get("bnnsearch_scalars", {}))
    with torch.no_grad():
        if not torch.equal(net(x), model(x)):
            raise UserError("the network rebuilt from this model's parameters does not reproduce its graph's logits")
    return net


def _test_inputs(config: dict) -> torch.Tensor:
    from .config import resolve
    from .engine import load_data

    return load_data(resolve(dict(config), "model config"), "cpu").x_test


def evaluate_uri(uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> dict:
    """Load a .bnn file or an MLflow model and score it on its own test split; with the
    accuracy its MLflow run recorded, for comparison."""
    model, c, prov = load_model(uri, tracking_uri, registry_uri)
    acc, n = test_accuracy(model, c)
    return {"model": uri, "method": c["method"], "arch": c["arch"], "data": c["data"], "test_acc": acc, "samples": n,
            "run_id": prov.get("run_id"), "recorded": prov.get("recorded")}


# The .bnn file: binary weights packed one bit each, everything else full precision ---------

BNN_FORMAT = "bnnsearch-bnn/1"


def _candidates(t: torch.Tensor):
    """Packed stand-ins for a stored binary tensor, simplest first: its signs (+-1), then its
    signs times a per-output-row magnitude (mean |t|), for quantizers that scale."""
    sign = torch.where(t >= 0, 1.0, -1.0).to(t.dtype)
    yield "sign", sign, None
    if t.ndim >= 2:
        scale = t.abs().flatten(1).mean(1)
        yield "sign*row_scale", sign * scale.view(-1, *([1] * (t.ndim - 1))), scale


def export_bnn(net: BinaryNet, path, x: torch.Tensor, provenance: dict | None = None, label: str | None = None) -> dict:
    """Write ``net`` as a .bnn file. Every tensor the method names as its binary storage is
    stored as packed bits (plus a per-row scale where the quantizer uses one) when the network
    rebuilt with that stand-in gives the same logits on ``x`` bit for bit; otherwise it stays
    full precision (said in the report). The loader is ``load_bnn``. The file is written whole
    or not at all; a failed write is a UserError starting with ``label`` (default: the path)."""
    import numpy as np

    from .methods import get_method
    from .runio import write_out

    method = get_method(net.config["method"])
    names = {id(t): k for k, t in net.net.state_dict(keep_vars=True).items()}
    state = {k: v.detach().cpu().clone() for k, v in net.net.state_dict().items()}
    scalars = module_scalars(net.net)
    net.eval()
    with torch.no_grad():
        ref = net(x)
    binary, kept = {}, []
    for t in method.binary_storage(net.net):
        name = names.get(id(t))
        if name is None:
            continue
        for kind, stand_in, scale in _candidates(state[name]):
            trial = dict(state)
            trial[name] = stand_in
            with torch.no_grad():
                same = torch.equal(_rebuild(net.config, net.in_shape, net.num_classes, trial, scalars)(x), ref)
            if same:
                state[name] = stand_in
                bits = np.packbits((stand_in > 0).flatten().numpy().astype(np.uint8))
                binary[name] = {"shape": list(stand_in.shape), "bits": torch.from_numpy(bits),
                                "scale": None if scale is None else scale.float(), "dtype": str(stand_in.dtype)}
                break
        else:
            kept.append(name)
    for k, v in state.items():  # other tensors of +-1 only (e.g. the initial signs kept for statistics)
        if k not in binary and v.is_floating_point() and v.numel() and bool(((v == 1) | (v == -1)).all()):
            bits = np.packbits((v > 0).flatten().numpy().astype(np.uint8))
            binary[k] = {"shape": list(v.shape), "bits": torch.from_numpy(bits), "scale": None, "dtype": str(v.dtype)}
    full = {k: v for k, v in state.items() if k not in binary}
    doc = {"format": BNN_FORMAT, "config": net.config, "in_shape": list(net.in_shape),
           "num_classes": net.num_classes, "scalars": scalars, "binary": binary, "full": full,
           "provenance": {k: v for k, v in (provenance or {}).items() if k in ("run_id", "recorded_test_acc", "source")}}

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # opened here: torch.save(path) reports a failed open as RuntimeError
            torch.save(doc, f)

    write_out(Path(path), label or str(path), save)
    n_bin = sum(math.prod(b["shape"]) for b in binary.values())
    return {"path": str(path), "bytes": Path(path).stat().st_size, "binary_tensors": len(binary),
            "binary_weights": n_bin, "full_precision_storage": kept,
            "scaled": sorted(k for k, b in binary.items() if b["scale"] is not None)}


def load_bnn(path) -> BinaryNet:
    """A .bnn file back as a BinaryNet (weights-only load: nothing in the file runs code)."""
    import numpy as np

    from .errors import UserError

    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, ...
        raise UserError(f"{path}: not a .bnn file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(d, dict) or d.get("format") != BNN_FORMAT:
        raise UserError(f"{path}: not a .bnn file (format {d.get('format') if isinstance(d, dict) else None!r}, "
                        f"expected {BNN_FORMAT})")
    state = dict(d["full"])
    dtypes = {"torch.float32": torch.float32, "torch.float64": torch.float64}
    for name, b in d["binary"].items():
        n = math.prod(b["shape"])
        bits = np.unpackbits(b["bits"].numpy())[:n].astype(np.float64)
        w = torch.from_numpy(bits * 2 - 1).to(dtypes.get(b["dtype"], torch.float32)).view(b["shape"])
        if b["scale"] is not None:
            w = w * b["scale"].to(w.dtype).view(-1, *([1] * (w.ndim - 1)))
        state[name] = w
    net = _rebuild(d["config"], tuple(d["in_shape"]), d["num_classes"], state, d["scalars"])
    net.provenance = d.get("provenance") or {}  # the MLflow run it came from and its recorded test/acc
    return net


def export_uri(uri: str, out, tracking_uri: str | None = None, label: str | None = None,
               registry_uri: str | None = None) -> dict:
    """``bnnsearch export``: a registered model (or a .bnn file) written as a .bnn file; the
    file is read back and must score exactly as the model does."""
    model, config, prov = load_model(uri, tracking_uri, registry_uri)
    x = _test_inputs(config)  # loaded once: the rebuild check, the export's checks, the read-back
    net = as_binary_net(model, config, prov, x)
    rep = export_bnn(net, out, x, {"run_id": prov.get("run_id"), "recorded_test_acc": prov.get("recorded"),
                                   "source": uri}, label)
    back = load_bnn(out)
    with torch.no_grad():
        rep["exact"] = bool(torch.equal(back(x), net(x)))
    rep["config"] = config
    from .methods import get_method

    # modelled memory of the same network, for the file size beside it
    rep["modelled_mem_bits"] = get_method(config["method"]).inference_cost(net.net, net.in_shape)[1]["cost/mem_bits"]
    return rep
