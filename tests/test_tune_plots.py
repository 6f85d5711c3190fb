"""Study plots render without network: plotly.js is inside each HTML file, and a PNG of the
same plot lies beside it (issue 13)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna

from recstudio.tune.plots import write_study_plots


def test_study_plots_embed_plotly_and_load_nothing_from_the_network(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * t.suggest_int("dim", 8, 64), 4)
    files = write_study_plots(study, tmp_path)
    html = [p for p in files if p.suffix == ".html"]
    assert {p.name for p in html} >= {"optimization_history.html", "parallel_coordinate.html"}
    for path in html:
        text = path.read_text()
        sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", text)
        assert sources == [], (path.name, sources)  # no CDN, no file beside it
        assert "plotly.js v" in text or "Plotly" in text[:2_000_000]
        assert path.stat().st_size > 1_000_000  # the library itself is inside
        # and a static image beside it, which MLflow's artifact viewer shows without scripts
        png = path.with_suffix(".png")
        assert png in files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
