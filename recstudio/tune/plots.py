"""Study plots (Optuna's plotly figures) written as HTML artifacts of the MLflow parent run.

Plots need ``plotly``; without it they are skipped with a warning that says what to install,
because a missing plot must never fail a finished study. Each plot is skipped on its own when
the study cannot support it yet (importances need two completed trials with varying params).
Each HTML file embeds plotly.js (``include_plotlyjs=True``, ~4.7 MB a file): a GPU workstation
behind a firewall has no CDN, and the MLflow UI shows an HTML artifact in a frame where a script
beside the file would not load either, so only the inlined library renders everywhere. Where
``kaleido`` is installed a static ``<name>.png`` is written beside each HTML file too.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

log = logging.getLogger("recstudio.tune")


def _figures() -> dict[str, tuple[Callable[[optuna.Study], Any], int]]:
    """name -> (figure function, completed trials it needs)."""
    from optuna import visualization as vis

    return {
        "optimization_history": (vis.plot_optimization_history, 1),
        "intermediate_values": (vis.plot_intermediate_values, 1),
        "parallel_coordinate": (vis.plot_parallel_coordinate, 1),
        "slice": (vis.plot_slice, 1),
        "param_importances": (vis.plot_param_importances, 2),
    }


def write_study_plots(
    study: optuna.Study, out_dir: str | Path, include_plotlyjs: str | bool = True
) -> list[Path]:
    """Write every plot the study supports to ``out_dir/<name>.html`` (and ``<name>.png`` where
    kaleido can render it); returns the written files."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        log.warning("study plots skipped: they need plotly (pip install plotly)")
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    written: list[Path] = []
    for name, (make, needed) in _figures().items():
        if len(complete) < needed:
            log.info(
                "plot %s skipped: needs %d completed trials, the study has %d", name, needed, len(complete)
            )
            continue
        try:
            figure = make(study)
            path = out_dir / f"{name}.html"
            figure.write_html(str(path), include_plotlyjs=include_plotlyjs)
            written.append(path)
            png = _static_image(figure, out_dir / f"{name}.png")
            if png is not None:
                written.append(png)
        except Exception as exc:  # e.g. importances when every trial has the same params
            log.info("plot %s skipped: %s", name, exc)
    return written


def _static_image(figure: Any, path: Path) -> Path | None:
    """``path`` as a PNG when kaleido is installed (and can start its browser), else None."""
    import importlib.util

    if importlib.util.find_spec("kaleido") is None:
        return None
    try:
        figure.write_image(str(path), format="png", width=1100, height=600)
    except Exception as exc:  # noqa: BLE001 - kaleido without a usable browser: HTML only
        log.info("static plot %s skipped: %s", path.name, exc)
        return None
    return path


def log_study_plots(study: optuna.Study, parent: Any) -> list[str]:
    """Write the plots and log them under ``plots/`` of the parent run; returns artifact paths."""
    with tempfile.TemporaryDirectory(prefix="recstudio-plots-") as tmp:
        files = write_study_plots(study, tmp)
        for path in files:
            parent.client.log_artifact(parent.run_id, str(path), "plots")
    return [f"plots/{p.name}" for p in files]
