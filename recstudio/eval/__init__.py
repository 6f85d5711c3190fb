"""Exact full-ranking evaluation: metric formulas (``metrics``) and splits/evaluator (``ranking``)."""

from __future__ import annotations

from recstudio.eval.metrics import ALL_METRICS, TOPK_METRICS, auc, topk_metrics
from recstudio.eval.ranking import EvalBlocks, EvalSplit, RankingEvaluator, build_eval_split

__all__ = [
    "ALL_METRICS",
    "TOPK_METRICS",
    "EvalBlocks",
    "EvalSplit",
    "RankingEvaluator",
    "auc",
    "build_eval_split",
    "topk_metrics",
]
