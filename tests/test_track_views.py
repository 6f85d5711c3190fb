"""The saved MLflow UI view of a study (``recstudio.track.views``)."""

from __future__ import annotations

from recstudio.track.views import study_view, view_key, view_link


def test_view_key_is_url_safe_and_readable() -> None:
    assert view_key("BPR-ml-100k") == "study-BPR-ml-100k"
    assert view_key("my study/2 ü") == "study-my-study-2"


def test_study_view_orders_columns_and_sort_by_the_objective() -> None:
    state = study_view(
        "o'brien", "best_valid_logloss", False, ["train.learning_rate", "model.embed_dim"], ["test_logloss"]
    )
    assert state["searchFilter"] == "tags.`optuna.study` = 'o\\'brien' AND tags.`optuna.trial` LIKE '%'"
    assert state["orderByAsc"] is True  # lower log loss is better
    assert state["selectedColumns"] == [
        "metrics.`best_valid_logloss`",
        "metrics.`test_logloss`",
        "metrics.`best_epoch`",
        "params.`train.learning_rate`",
        "params.`model.embed_dim`",
        "attributes.`Dataset`",
    ]
    assert state["columnOrder"][2:] == state["selectedColumns"]
    (chart,) = state["compareRunCharts"]
    assert chart["selectedMetrics"] == ["best_valid_logloss", "test_logloss"]
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]


def test_view_link_targets_the_runs_table_or_its_charts() -> None:
    assert view_link("http://h:5000/", "3", "study-x") == (
        "http://h:5000/#/experiments/3/runs?viewStateShareKey=study-x&workflowType=machine_learning"
    )
    assert view_link("http://h:5000", "3", "study-x", charts=True).endswith("&compareRunsMode=CHART")
