import pytest
from _proc import free_port, start_dashboard
from dashboards.page import _pareto, build_html


def test_pareto_front_hand_made():
    # (cost, objective): lower cost and higher objective are better
    pts = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.65), (4.0, 0.9), (5.0, 0.9)]
    assert _pareto(pts) == [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]


def test_empty_store_says_what_to_do(tmp_path):
    from bnnsearch.errors import UserError
    from bnnsearch.tracking import Tracker

    with pytest.raises(UserError, match="empty.db does not exist"):  # a typo must not create an empty store
        build_html(f"sqlite:///{tmp_path}/empty.db")
    assert not (tmp_path / "empty.db").exists()
    Tracker(f"sqlite:///{tmp_path}/empty.db", "nothing-yet")
    html = build_html(f"sqlite:///{tmp_path}/empty.db")
    assert "No bnnsearch studies in this store yet" in html and "<svg" not in html


def test_served_page_reports_a_store_that_went_away(tmp_path):
    """A request after the store vanished answers 503 with the reason, not a dropped connection."""
    import threading
    import time
    import urllib.error
    import urllib.request

    from bnnsearch.tracking import Tracker
    from dashboards.server import serve

    db = tmp_path / "s.db"
    Tracker(f"sqlite:///{db}", "nothing-yet")
    port = free_port()
    threading.Thread(target=serve, args=(f"sqlite:///{db}", port, "http://ui"), daemon=True).start()
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            page = urllib.request.urlopen(url, timeout=30).read().decode()
            break
        except urllib.error.URLError:
            time.sleep(0.1)
    assert "No bnnsearch studies in this store yet" in page
    db.unlink()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=30)
    assert e.value.code == 503 and "s.db does not exist" in e.value.read().decode()


def test_charts_keep_everything_inside_and_legends_beside():
    from _svgcheck import charts, check_chart

    from dashboards.svg import Frame

    # a categorical axis with jittered points: every point inside the frame, names as ticks
    fr = Frame([], [0.5, 0.9], title="t", xlabel="opt", ylabel="objective", xcats=["adam", "sgd"])
    for i, (c, y) in enumerate([(0, 0.5), (1, 0.9), (0, 0.7), (1, 0.6), (0, 0.8)]):
        fr.point(c + 0.08 * ((i % 5) - 2), y, "#000")
    svg = fr.svg()
    assert check_chart(svg)["points"] == 5 and ">adam</text>" in svg and ">sgd</text>" in svg
    # a band wider than the curve: drawn whole (the frame takes its edges), legend in its own column
    fr = Frame([1, 2, 3], [0.2, 0.3, 0.4, 0.0, 0.7, 0.1, 0.65, 0.2, 0.75], xlabel="trial", ylabel="acc", legend=True)
    fr.band([1, 2, 3], [0.0, 0.1, 0.2], [0.7, 0.65, 0.75], "#00f")
    fr.line([1, 2, 3], [0.2, 0.3, 0.4], "#00f")
    fr.legend([("latent", "#00f"), ("target", "#000", "4,3")])
    got = check_chart(fr.svg())
    assert got["legend"] == 2 and got["dashed_legend"] == 1
    # controls: the checker fails on a point outside the frame and on a legend over the plot
    bad = Frame([0, 1], [0, 1])
    bad.point(5, 0.5, "#000")
    with pytest.raises(AssertionError):
        check_chart(bad.svg())
    import re

    over = re.sub(r'(class="legend-swatch")', r'\1', fr.svg())  # the old layout: a swatch over the plot
    over = re.sub(r'<rect x="[\d.]+"( y="[\d.]+" width="10" height="10" fill="#00f" class="legend-swatch")',
                  r'<rect x="500"\1', over)
    assert over != fr.svg()
    with pytest.raises(AssertionError):
        check_chart(over)
    with pytest.raises(ValueError):  # a legend needs its column
        Frame([0, 1], [0, 1]).legend([("x", "#000")])
    # a constant series keeps its own scale (1e-4 is not drawn as 0)
    flat = Frame([1, 2], [1e-4, 1e-4])
    assert flat.y0 > 0 and charts(flat.svg())


def test_efficiency_rank_test_is_between_methods_as_in_compare():
    """A comparison with random-search arms: the dashboard's rank test on trials-to-target is
    between the methods, each method's "@random" arm apart (what compare reports), so the two
    views print the same p."""
    import html
    import json
    import re

    from bnnsearch.efficiency import method_stats, rank_test, target_value
    from dashboards.page import _efficiency_section

    values = {"a": [[0.5, 0.9, 0.9], [0.6, 0.8, 0.9], [0.9, 0.9, 0.9]], "b": [[0.5, 0.6, 0.7], [0.5, 0.5, 0.9], [0.4, 0.5, 0.6]],
              "a@random": [[0.5, 0.6, 0.6], [0.5, 0.6, 0.7], [0.5, 0.5, 0.6]]}
    studies, runs = [], {}
    for arm, vs in values.items():
        for i, v in enumerate(vs):
            studies.append({"run_id": f"{arm}{i}", "params": {"metric": "val/acc", "mode": "max"}, "trial_values": v})
            runs.setdefault(arm, []).append(f"{arm}{i}")
    page = _efficiency_section({"studies": studies}, {"tags": {"study_runs": json.dumps(runs)},
                                                     "params": {"trials": "3", "target_delta": "0.5"}})
    target = target_value([v for vs in values.values() for s in vs for v in s], "max", 0.5, "val/acc")
    ttt = {m: method_stats(m, vs, target, "max").ttt for m, vs in values.items()}
    between = rank_test({"a": ttt["a"], "b": ttt["b"]}, 3)
    assert between["p_value"] != rank_test(ttt, 3)["p_value"]  # the data tell the two tests apart
    (p,) = re.findall(r"Mann-Whitney U: p = ([0-9.]+)", page)
    assert float(p) == float(format(between["p_value"], ".3g"))
    assert "to own target" not in page  # only with a gap target
    # with compare's --target-gap: the same rule, and each method's own target as compare has it
    from bnnsearch.efficiency import own_gap_ttt, ttt_text

    page = _efficiency_section({"studies": studies}, {"tags": {"study_runs": json.dumps(runs)},
                                                     "params": {"trials": "3", "target_gap": "0.5", "startup_trials": "1"}})
    own = own_gap_ttt(values, "max", 0.5, 1)
    assert "to own target median [IQR] (reached)" in page
    for m in values:
        o = own[m]
        assert f"<td>{html.escape(m)}</td>" in page and f"<td>{html.escape(ttt_text(o['median'], o['q1'], o['q3'], 3, o['bounds']))} ({o['reached']})</td>" in page
    assert (own["a@random"]["median"], own["a@random"]["q3"]) == (4, 4)  # beyond the 3 trials: never "4 trials"
    assert "<td>&gt;3 [&gt;3, &gt;3] (1)</td>" in page


def test_ctrl_c_stops_the_served_dashboard_cleanly(tmp_path):
    """Ctrl-C is how the served dashboard is stopped (its banner says so): exit 0 and one line,
    not "interrupted (before anything was recorded)" with status 130."""
    import signal
    import subprocess
    import urllib.request

    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "nothing-yet")
    srv, port = start_dashboard(tmp_path, stderr=subprocess.PIPE)
    try:
        assert "Ctrl-C stops it" in srv.stdout.readline()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).status == 200
        srv.send_signal(signal.SIGINT)
        out, err = srv.communicate(timeout=60)
    finally:
        srv.kill()
    assert srv.returncode == 0, err
    assert err.strip().splitlines() == ["bnnsearch: dashboard stopped"], err
