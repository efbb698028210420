"""The dashboard in a real browser (headless Chromium): the served page and the HTML export load
with no console errors and their plots have data. Runs on a small real study."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from _proc import start_dashboard
from _svgcheck import charts, check_chart

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true but chromium is not installed: the browser tests must run in CI (make browser)")


def chromium_dom(url, tmp_path):
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}",
                        "--enable-logging=stderr", "--v=0", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    return r.stdout, console


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    for method, params in (("latent", {"lr": {"float": [1e-3, 1.0], "log": True}}),
                           ("filtered", {"alpha": {"float": [1e-5, 1e-1], "log": True},
                                         "alpha_decay": {"categorical": ["none", "cosine", "linear"]}})):
        (tmp / f"{method}.yaml").write_text(yaml.safe_dump({
            "method": method, "objective": {"metric": "val/acc", "mode": "max"},
            "fixed": {"arch": "mlp", "arch_args": {"widths": [16, 16, 16]}, "data": "digits", "epochs": 2,
                      "batch_size": 64, "device": "cpu", "data_root": str(tmp / "data")}, "params": params}))
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "compare", str(tmp / "latent.yaml"),
                        str(tmp / "filtered.yaml"), "--repeats", "2", "--trials", "4", "--sampler", "random",
                        "--out", str(tmp / "out"), "--name", "dash"], cwd=tmp, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return tmp


def _check_page(dom):
    assert "bnnsearch dashboard" in dom and "Efficiency: dash" in dom
    assert dom.count("<svg") >= 5 and dom.count("<circle") >= 16  # every trial is a point somewhere
    assert "<polygon" in dom and "polyline" in dom  # bands and curves drawn
    assert "trials-to-target median" in dom and "fANOVA importance" in dom
    assert "parallel coordinates of the trials" in dom
    assert "#/experiments/" in dom and "/runs/" in dom  # points link to their MLflow runs
    # what is drawn, where: points and bands inside their frames, legends beside the plot (the
    # target's mark a dashed line), axis titles clear of tick labels, value marks on parallel axes,
    # categories named on a categorical axis
    got = [check_chart(svg) for svg in charts(dom)]
    assert sum(g["points"] for g in got) >= 16 and sum(g["dashed_legend"] for g in got) >= 1
    assert any(g["pcticks"] for g in got) and ">cosine</text>" in dom
    assert "the architecture was not searched" in dom  # one network size: said, not drawn as a column
    assert "objective vs measured training CPU seconds" in dom  # what each trial cost to train, as measured


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it where apt-get works)")
def test_export_loads_in_a_browser(store, tmp_path):
    export = store / "out" / "dashboard.html"
    assert export.exists()
    html = export.read_text()
    assert "http://" not in html.replace("http://127.0.0.1:5000", "").replace("http://www.w3.org/2000/svg", "")
    dom, console = chromium_dom(export.as_uri(), tmp_path)
    assert not console, console
    _check_page(dom)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it where apt-get works)")
def test_served_dashboard_loads_in_a_browser(store, tmp_path):
    srv, port = start_dashboard(store)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
                break
            except OSError:
                time.sleep(0.5)
        dom, console = chromium_dom(f"http://127.0.0.1:{port}/", tmp_path)
        assert not console, console
        _check_page(dom)
        assert 'http-equiv="refresh"' in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
    finally:
        srv.terminate()
        srv.wait(timeout=20)


def test_dashboard_never_imports_the_engine(store):
    code = ("import sys; from dashboards import build_html; build_html(); "
            "print('bnnsearch.engine' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=store, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().endswith("False False"), r.stdout + r.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it where apt-get works)")
def test_console_error_detector_catches_errors(tmp_path):
    """Control for the two tests above: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>nonexistent_function()</script></body></html>")
    _, console = chromium_dom(bad.as_uri(), tmp_path)
    assert any("nonexistent_function" in line for line in console)
