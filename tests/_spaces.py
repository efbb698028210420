"""Small search-space files the end-to-end tests write (one shape, one place)."""
import yaml


def automl_space_file(tmp_path, fixed: dict, methods: dict, name: str = "automl.yaml") -> str:
    """An AutoML space as the tests use it: accuracy vs modelled memory under a memory bound, two
    widths, and `methods` ({method: its params}) over `fixed` (data read from tmp_path/data)."""
    p = tmp_path / name
    p.write_text(yaml.safe_dump({
        "objectives": [{"metric": "val/acc", "mode": "max"}, {"metric": "cost/mem_bits", "mode": "min"}],
        "constraints": {"cost/mem_bits": {"max": 2.0e5}},
        # the widths are searched, so not fixed (a searched key cannot be fixed too)
        "fixed": {**{k: v for k, v in fixed.items() if k != "arch_args"}, "data_root": str(tmp_path / "data")},
        "params": {"arch_args.widths": {"categorical": [[16, 16, 16], [64, 64, 64]]}},
        "methods": {m: {"params": params} for m, params in methods.items()}}))
    return str(p)
