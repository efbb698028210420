from dashboards.page import _pareto, build_html


def test_pareto_front_hand_made():
    # (cost, objective): lower cost and higher objective are better
    pts = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.65), (4.0, 0.9), (5.0, 0.9)]
    assert _pareto(pts) == [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]


def test_empty_store_says_what_to_do(tmp_path):
    html = build_html(f"sqlite:///{tmp_path}/empty.db")
    assert "No bnnsearch studies in this store yet" in html and "<svg" not in html
