#!/usr/bin/env python3
"""Open an MLflow experiment page in headless Chromium; check that the given runs show; save a screenshot.

    python scripts/check_mlflow_ui.py URL EXPERIMENT_ID RUN_NAME [RUN_NAME ...] --screenshot out.png

URL is the tracking server (e.g. http://127.0.0.1:5000). The page is rendered twice by Debian's
``chromium`` (``apt-get install chromium``): once with ``--dump-dom`` to read the rendered HTML,
once with ``--screenshot``. Exit 0 when the experiment page rendered and every run name (and
``--experiment-name``, if given) appears in it; exit 1 with a message saying what is missing;
exit 2 when Chromium or the server cannot be used at all. Standard library only.

The page is the experiment's run table (``--tab runs``). Nested runs (the trials of a
``recstudio tune`` study) are collapsed under their parent there: name the parent runs.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else []) + list(CHROMIUM_CANDIDATES):
        path = shutil.which(name) if name else None
        if path:
            return path
    fail("chromium not found (apt-get install chromium, or pass --chromium PATH)")
    return ""


def chromium_args(binary: str, user_data_dir: str, budget_ms: int, window: str) -> list[str]:
    return [
        binary,
        "--headless",
        "--no-sandbox",  # CI runs as root; the page is our own local server
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--run-all-compositor-stages-before-draw",  # iframes (HTML artifacts) drawn before the shot
        f"--user-data-dir={user_data_dir}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={window}",
    ]


def run_chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(
            f"error: chromium did not finish within {timeout:.0f} s: {' '.join(args[:1])}"
        ) from exc


def visible_text(dom: str) -> str:
    """Rough text of the rendered DOM: scripts/styles dropped, tags removed, entities decoded."""
    dom = re.sub(r"(?is)<(script|style|noscript)\b.*?</\1>", " ", dom)
    text = re.sub(r"(?s)<[^>]+>", " ", dom)
    return " ".join(html.unescape(text).split())


def server_check(base: str, experiment_id: str) -> dict:
    """The server answers and knows the experiment (clearer failure than an empty page)."""
    url = f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)["experiment"]
    except urllib.error.HTTPError as exc:
        fail(f"{url}: HTTP {exc.code} {exc.read()[:200]!r}")
    except (urllib.error.URLError, OSError) as exc:
        fail(f"MLflow server at {base} not reachable: {exc}")
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="tracking server URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("experiment_id")
    parser.add_argument("run_names", nargs="+", metavar="RUN_NAME", help="run names that must be shown")
    parser.add_argument("--screenshot", required=True, type=Path, help="where to save the PNG")
    parser.add_argument("--experiment-name", help="also require this text (default: the experiment's name)")
    parser.add_argument(
        "--tab",
        default="runs",
        help="experiment page tab (default: runs, the run table; '' for the experiment's default page)",
    )
    parser.add_argument(
        "--path",
        help="page under the experiment instead of --tab, e.g. runs/RUN_ID or "
        "runs/RUN_ID/artifacts/plots/parallel_coordinate.html",
    )
    parser.add_argument("--dom-out", type=Path, help="also save the rendered DOM here")
    parser.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time budget per render")
    parser.add_argument("--window-size", default="1600,1000")
    parser.add_argument("--timeout", type=float, default=120, help="wall-clock seconds per chromium call")
    args = parser.parse_args(argv)

    base = args.url.rstrip("/")
    experiment = server_check(base, args.experiment_id)
    expected_name = args.experiment_name or experiment.get("name", "")
    suffix = args.path if args.path is not None else args.tab
    if suffix and not suffix.startswith("?"):
        suffix = f"/{suffix.lstrip('/')}"
    page = f"{base}/#/experiments/{args.experiment_id}{suffix or ''}"
    binary = find_chromium(args.chromium)

    with tempfile.TemporaryDirectory(prefix="recstudio-chromium-") as profile:
        common = chromium_args(binary, profile, args.budget_ms, args.window_size)
        dom_proc = run_chromium(common + ["--dump-dom", page], args.timeout)
        dom = dom_proc.stdout
        if not dom.strip():
            tail = "\n".join(dom_proc.stderr.strip().splitlines()[-15:])
            print(
                f"error: chromium rendered nothing for {page} (exit {dom_proc.returncode})\n{tail}",
                file=sys.stderr,
            )
            return 2
        if args.dom_out:
            args.dom_out.parent.mkdir(parents=True, exist_ok=True)
            args.dom_out.write_text(dom)

        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = args.screenshot.resolve()
        if shot.exists():
            shot.unlink()
        shot_proc = run_chromium(common + [f"--screenshot={shot}", page], args.timeout)

    text = visible_text(dom)
    missing = [name for name in args.run_names if name not in text]
    if expected_name and expected_name not in text:
        missing.append(f"experiment '{expected_name}'")
    problems = []
    if missing:
        problems.append("not shown on the page: " + ", ".join(missing))
    if not shot.is_file() or shot.stat().st_size == 0:
        tail = "\n".join(shot_proc.stderr.strip().splitlines()[-10:])
        problems.append(f"no screenshot written to {shot} (chromium exit {shot_proc.returncode})\n{tail}")
    if problems:
        print(f"FAIL {page}", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print(f"  rendered text starts: {text[:400]!r}", file=sys.stderr)
        return 1
    print(
        f"OK {page}: experiment '{expected_name}' and {len(args.run_names)} run(s) shown; "
        f"screenshot {shot} ({os.path.getsize(shot)} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
