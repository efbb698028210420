"""bnnsearch dashboards: what the MLflow UI cannot show (cross-study efficiency, importance,
accuracy vs cost). Reads the tracking store only (through ``bnnsearch.tracking``); never imports
the training engine. ``bnnsearch dashboard`` serves it; ``build_html`` exports one
self-contained HTML file (inline SVG, no scripts, no network needed to view it)."""
from .page import build_html  # noqa: F401
