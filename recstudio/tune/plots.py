"""Study plots (Optuna's plotly figures) written as HTML artifacts of the MLflow parent run.

Plots need ``plotly``; without it they are skipped with a warning that says what to install,
because a missing plot must never fail a finished study. Each plot is skipped on its own when
the study cannot support it yet (importances need two completed trials with varying params).
Each HTML file embeds plotly.js (``include_plotlyjs=True``, ~4.7 MB a file): a GPU workstation
behind a firewall has no CDN, and the MLflow UI shows an HTML artifact in a frame where a script
beside the file would not load either, so only the inlined library renders everywhere. A static
``<name>.png`` is written beside each HTML file with Optuna's matplotlib version of the same
plot (matplotlib comes with MLflow; no browser needed, unlike plotly's ``kaleido``): MLflow's
artifact viewer shows it as an image at once, where the 4.7 MB HTML file has to be parsed in a
frame first (blank in the headless Chromium check, which gives up before the script has run).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

log = logging.getLogger("recstudio.tune")


PLOTS = {
    "optimization_history": 1,
    "intermediate_values": 1,
    "parallel_coordinate": 1,
    "slice": 1,
    "param_importances": 2,
    "pareto_front": 1,
}
"""Plot name (``optuna.visualization.plot_<name>``) -> completed trials it needs."""
SINGLE_OBJECTIVE_ONLY = ("intermediate_values",)
"""Plots of what a multi-objective study does not have (its trials report no epochs)."""
MULTI_OBJECTIVE_ONLY = ("pareto_front",)


def plot_options(study: optuna.Study, name: str) -> dict[str, Any] | None:
    """Keyword arguments of ``plot_<name>`` for ``study``; None when the plot does not apply.

    A multi-objective study's plots show its metric (the first objective, by ``target``), and
    its Pareto front names every objective (Optuna draws fronts of two or three objectives)."""
    from recstudio.tune.objectives import is_multi_objective, objective_names, primary_value

    multi = is_multi_objective(study)
    if (multi and name in SINGLE_OBJECTIVE_ONLY) or (not multi and name in MULTI_OBJECTIVE_ONLY):
        return None
    if not multi:
        return {}
    names = objective_names(study)
    if name == "pareto_front":
        return {"target_names": names} if len(names) <= 3 else None
    if name == "param_importances" and study.directions[0] == optuna.study.StudyDirection.MAXIMIZE:
        # importances with a target are computed for *low* target values: negate a maximised metric
        return {"target": lambda t: -primary_value(t), "target_name": names[0]}
    return {"target": primary_value, "target_name": names[0]}


def _figure_function(name: str, flavour: str = "plotly") -> Callable[[optuna.Study], Any]:
    """``plot_<name>`` from ``optuna.visualization`` (plotly) or its ``.matplotlib`` twin."""
    from optuna import visualization as vis

    module = vis.matplotlib if flavour == "matplotlib" else vis
    return getattr(module, f"plot_{name}")


def write_study_plots(
    study: optuna.Study, out_dir: str | Path, include_plotlyjs: str | bool = True
) -> list[Path]:
    """Write every plot the study supports to ``out_dir/<name>.html`` and ``<name>.png``;
    returns the written files."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        log.warning("study plots skipped: they need plotly (pip install plotly)")
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    written: list[Path] = []
    for name, needed in PLOTS.items():
        options = plot_options(study, name)
        if options is None:
            continue
        if len(complete) < needed:
            log.info(
                "plot %s skipped: needs %d completed trials, the study has %d", name, needed, len(complete)
            )
            continue
        try:
            with warnings.catch_warnings():  # PED-ANOVA warns whenever a target is given
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                figure = _figure_function(name)(study, **options)
            path = out_dir / f"{name}.html"
            figure.write_html(str(path), include_plotlyjs=include_plotlyjs)
            written.append(path)
        except Exception as exc:  # e.g. importances when every trial has the same params
            log.info("plot %s skipped: %s", name, exc)
            continue
        png = _static_image(study, name, out_dir / f"{name}.png", options)
        if png is not None:
            written.append(png)
    return written


def _static_image(
    study: optuna.Study, name: str, path: Path, options: dict[str, Any] | None = None
) -> Path | None:
    """The matplotlib version of plot ``name`` as ``path`` (PNG); None if it cannot be drawn."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("static plot %s skipped: matplotlib is not installed", path.name)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = _figure_function(name, "matplotlib")(study, **(options or {}))
        figure = _first_axes(axes).figure
        figure.set_size_inches(11, 6)
        figure.savefig(str(path), format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
    except Exception as exc:  # noqa: BLE001 - the HTML plot is there; the image is a convenience
        log.info("static plot %s skipped: %s", path.name, exc)
        return None
    return path


def _first_axes(axes: Any) -> Any:
    """One Axes of what an Optuna matplotlib plot returns (an Axes or an array of them)."""
    import numpy as np

    return axes if hasattr(axes, "figure") else np.asarray(axes, dtype=object).flat[0]


def log_study_plots(study: optuna.Study, parent: Any) -> list[str]:
    """Write the plots and log them under ``plots/`` of the parent run; returns artifact paths."""
    with tempfile.TemporaryDirectory(prefix="recstudio-plots-") as tmp:
        files = write_study_plots(study, tmp)
        for path in files:
            parent.client.log_artifact(parent.run_id, str(path), "plots")
    return [f"plots/{p.name}" for p in files]
