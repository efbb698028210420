import pytest
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
