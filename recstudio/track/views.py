"""Saved MLflow UI views: the runs-table columns and charts a study is compared by.

MLflow's experiment page shows no metric or parameter column until the user picks them (174
candidates for a BPR study), and its charts pick their axes by name order. The page can load a
*shared view* instead: a JSON UI state stored in the experiment tag
``mlflow.sharedViewState.<key>`` and opened with ``?viewStateShareKey=<key>`` (what its "Share"
button does). A study writes one such view: its runs only, sorted by the objective, with the
objective, the key test metrics and the searched parameters as columns, and a
parallel-coordinates chart over the searched parameters and the objective. ``recstudio ui`` and
the end of ``recstudio tune`` print the link.

The state's field names are those of MLflow 3.17's UI (``selectedColumns``, ``orderByKey``,
``compareRunCharts``...); a UI that does not know one ignores it, and the plain experiment
page is unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""Experiment tag prefix MLflow's UI reads shared views from."""

KEY_TEST_METRICS = ("ndcg@10", "recall@10", "auc", "logloss")
"""Test metrics shown beside the objective when the runs computed them."""

STUDY_SECTION = "recstudio-study"


def column(kind: str, name: str) -> str:
    """A runs-table column id as MLflow's UI writes it: ``params.`model.embed_dim```."""
    return f"{kind}.`{name}`"


def view_key(study_name: str) -> str:
    """The URL-safe share key of a study's view (readable: ``study-<name>``)."""
    return "study-" + re.sub(r"[^A-Za-z0-9_-]+", "-", study_name).strip("-")[:200]


def study_view(
    study_name: str,
    objective: str,
    higher_is_better: bool,
    params: Sequence[str],
    test_metrics: Sequence[str] = (),
) -> dict[str, Any]:
    """The UI state of a study's view. ``objective`` and ``test_metrics`` are MLflow metric
    keys (``best_valid_ndcg_at_10``, ``test_ndcg_at_10``), ``params`` the searched config keys."""
    metrics = [objective, *test_metrics, "best_epoch"]
    columns = [column("metrics", m) for m in metrics] + [column("params", p) for p in params]
    columns.append(column("attributes", "Dataset"))
    parallel = {
        "uuid": "recstudio-parallel",
        "type": "PARALLEL",
        "runsCountToCompare": 100,
        "metricSectionId": STUDY_SECTION,
        "deleted": False,
        "isGenerated": False,
        "displayName": f"{study_name}: searched parameters vs {objective}",
        "selectedParams": list(params),
        "selectedMetrics": [objective, *test_metrics[:1]],
        "showAllRuns": True,
    }
    return {
        # the trials only: the parent run (the study's summary row) has no searched parameters
        "searchFilter": f"tags.`optuna.study` = '{_quote(study_name)}' AND tags.`optuna.trial` LIKE '%'",
        "orderByKey": column("metrics", objective),
        "orderByAsc": not higher_is_better,
        "selectedColumns": columns,
        "columnOrder": [column("attributes", "Run Name"), column("attributes", "Created"), *columns],
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": [parallel],
        "compareRunSections": [
            {
                "uuid": STUDY_SECTION,
                "name": f"Study {study_name}",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
                "columns": 1,  # the parallel plot across the whole width
                "cardHeight": 480,
            }
        ],
        "isAccordionReordered": False,
        "hideEmptyCharts": True,
    }


RUNS_VIEW_KEY = "runs"
RUNS_VIEW_METRICS = ("test_ndcg_at_10", "test_recall_at_10", "test_auc", "best_epoch")


def runs_view() -> dict[str, Any]:
    """The UI state of an experiment's general view (``recstudio run`` and study trials alike):
    newest first, with the model and dataset tags and the test metrics every model reports
    (ranking models NDCG/Recall@10, all of them AUC) as columns."""
    columns = [column("tags", "model"), column("tags", "dataset")]
    columns += [column("metrics", m) for m in RUNS_VIEW_METRICS]
    columns.append(column("attributes", "Dataset"))
    return {
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": [column("attributes", "Run Name"), column("attributes", "Created"), *columns],
    }


def save_view(client: Any, experiment_id: str, key: str, state: dict[str, Any]) -> None:
    """Store ``state`` as the experiment's shared view ``key`` (replacing an older one)."""
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(state))


def saved_views(experiment_tags: dict[str, str]) -> list[str]:
    """The share keys of the views stored on an experiment, in name order."""
    return sorted(k[len(VIEW_TAG_PREFIX) :] for k in experiment_tags if k.startswith(VIEW_TAG_PREFIX))


def view_link(base: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """URL of a saved view on the MLflow UI at ``base`` (the runs table, or its chart view)."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"
    url += "&workflowType=machine_learning"
    return url + ("&compareRunsMode=CHART" if charts else "")


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
