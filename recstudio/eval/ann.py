"""ANN evaluation: the usual top-k metrics from lists a faiss index retrieves, beside exact ranking.

Why: serving retrieves from an index (``recstudio.ann.ItemIndex``) rather than scoring every item,
so before trusting IVF or HNSW one wants to know what they cost in quality and gain in speed on
the real evaluation splits. ``evaluate_ann`` scores each split twice per block of users, from the
same query vectors and with the same exclusions as exact evaluation (padding always; the
history when ``eval.mask_history``):

- exact: ``scorer.matrix`` against all items, history masked, ``topk`` (what evaluation does);
- ANN: ``ItemIndex.search`` with the history mask as its exclusion.

The ANN lists go through ``RankingEvaluator.update_ranked``, the same top-k formulas as exact
evaluation, so a flat index reproduces the exact metrics. Reported per split: the top-k metrics,
``ann_recall@K`` (the share of the exact top K that the index also returns, K = the largest
cutoff, summed over users), and the queries per second of both searches (query vectors are
computed once for both and timed by neither). AUC needs every item's score and is left out.

Only models whose scores are ``scorer(query vector, item vector)`` with an inner-product,
cosine or euclidean scorer can be indexed: ``check_ann_model`` rejects tower-free models and the
mlp scorer with one line (``check_ann_config`` already from the config, before any data).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from recstudio.ann.faiss_index import INDEX_KINDS, ItemIndex
from recstudio.config import EvalConfig, ResolvedConfig
from recstudio.errors import ConfigError
from recstudio.eval.evaluation import active_protocols
from recstudio.eval.metrics import TOPK_METRICS, prepare_scores
from recstudio.eval.ranking import RankingEvaluator, build_eval_split

log = logging.getLogger(__name__)

ANN_METRICS = ("ip", "cosine", "l2")
SCORER_TO_METRIC = {"inner_product": "ip", "cosine": "cosine", "euclidean": "l2"}
"""The ANN metric that reproduces each scorer's ranking (by scorer config name)."""
LEFT_OUT_NOTE = "left out: needs every item's score, which an index does not compute"


@dataclass(frozen=True)
class AnnSettings:
    """Which index to build and how hard it searches (see ``ItemIndex``); metric None: the
    model's scorer decides."""

    kind: str = "flat"
    metric: str | None = None
    nlist: int | None = None
    nprobe: int = 8
    ef_search: int = 64
    hnsw_m: int = 32
    ef_construction: int = 100

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"ANN index kind must be one of {', '.join(INDEX_KINDS)}, got '{self.kind}'")
        if self.metric is not None and self.metric not in ANN_METRICS:
            raise ConfigError(f"ANN metric must be one of {', '.join(ANN_METRICS)}, got '{self.metric}'")


def _tower_free_error(model_name: str) -> ConfigError:
    return ConfigError(
        f"--ann needs item vectors, and {model_name} is a tower-free model (it scores items "
        "without an item tower); drop --ann or evaluate an item-tower model"
    )


def _scorer_error(model_name: str, scorer: str) -> ConfigError:
    return ConfigError(
        f"--ann needs an inner-product or distance space, and {model_name} uses the '{scorer}' scorer "
        "(a learned score no index can search); use scorer inner_product, cosine or euclidean"
    )


def check_ann_config(cfg: ResolvedConfig) -> None:
    """Fail before any data is prepared when the configured model cannot be indexed: no item
    vectors (tower-free), or a configured scorer that is not a vector-space one."""
    from recstudio.model.base import ItemTowerRecommender
    from recstudio.model.registry import get_model_class

    if not issubclass(get_model_class(cfg.model_name), ItemTowerRecommender):
        raise _tower_free_error(cfg.model_name)
    scorer = getattr(cfg.model, "scorer", None)
    if isinstance(scorer, str) and scorer not in SCORER_TO_METRIC:
        raise _scorer_error(cfg.model_name, scorer)


def check_ann_model(model: Any) -> str:
    """The ANN metric that ranks items as ``model`` does ("ip", "cosine" or "l2"), or a
    ConfigError when an index cannot reproduce its scores."""
    from recstudio.model.base import ItemTowerRecommender
    from recstudio.model.scorer import SCORERS

    name = type(model).__name__
    if not isinstance(model, ItemTowerRecommender):
        raise _tower_free_error(name)
    if type(model).score_batch is not ItemTowerRecommender.score_batch:
        raise ConfigError(f"--ann: {name} scores items by more than its scorer over item vectors")
    scorer = getattr(model, "scorer", None)
    scorer_name = next((n for n, cls in SCORERS.items() if type(scorer) is cls), None)
    if scorer_name not in SCORER_TO_METRIC:
        raise _scorer_error(name, scorer_name or type(scorer).__name__)
    return SCORER_TO_METRIC[scorer_name]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_index(items: torch.Tensor, settings: AnnSettings, metric: str) -> tuple[ItemIndex, float]:
    """The index over item vectors ``items`` (GPU when they are on CUDA and faiss-gpu is there)
    and its build seconds."""
    start = time.perf_counter()
    index = ItemIndex(
        items.detach().float(),
        metric=metric,  # type: ignore[arg-type]
        kind=settings.kind,  # type: ignore[arg-type]
        nlist=settings.nlist,
        nprobe=settings.nprobe,
        hnsw_m=settings.hnsw_m,
        ef_construction=settings.ef_construction,
        ef_search=settings.ef_search,
    )
    return index, time.perf_counter() - start


@torch.no_grad()
def evaluate_ann(
    model: Any,
    data: Any,
    eval_config: EvalConfig,
    splits: tuple[str, ...],
    settings: AnnSettings,
) -> dict[str, Any]:
    """ANN metrics of ``model`` (already on its device) on ``splits``: ``{"index": {...},
    "left_out": {...}, "valid": {...}, "test": {...}}`` (see the module docstring)."""
    metric = check_ann_model(model)
    if settings.metric is not None and settings.metric != metric:
        log.warning(
            "--ann-metric %s differs from the model's scorer (%s): ANN lists rank differently",
            settings.metric,
            metric,
        )
        metric = settings.metric
    if "ranking" not in active_protocols(eval_config.protocol, model.data_needs.labelled):
        raise ConfigError("--ann ranks all items, and this model's evaluation protocol is pointwise")
    if eval_config.candidates:
        raise ConfigError("--ann ranks all items; it cannot be combined with eval.candidates > 0")
    names = [m for m in dict.fromkeys(eval_config.metrics) if m in TOPK_METRICS]
    if not names:
        raise ConfigError(
            f"--ann computes top-k metrics, and eval.metrics has none of {', '.join(TOPK_METRICS)}"
        )
    left_out = {m: LEFT_OUT_NOTE for m in eval_config.metrics if m not in TOPK_METRICS}
    cutoffs = sorted(set(eval_config.cutoffs))
    k = cutoffs[-1]

    model.eval()
    model.prepare_evaluation()
    try:
        items = model.eval_item_vectors()
        device = items.device
        index, build_seconds = build_index(items, settings, metric)
        out: dict[str, Any] = {
            "index": {**index.params(), "build_seconds": build_seconds},
            "left_out": left_out,
        }
        for split in splits:
            out[split] = _evaluate_split(
                model, data, eval_config, split, index, items, names, cutoffs, k, device
            )
    finally:
        model.eval_cache = {}
    return out


def _evaluate_split(
    model: Any,
    data: Any,
    eval_config: EvalConfig,
    split: str,
    index: ItemIndex,
    items: torch.Tensor,
    names: list[str],
    cutoffs: list[int],
    k: int,
    device: torch.device,
) -> dict[str, float]:
    """One split: exact and ANN top-k per block of users, metrics of the ANN lists, overlap, QPS."""
    eval_split = build_eval_split(data, split, max_seq_len=model.data_needs.eval_sequence)
    evaluator = RankingEvaluator(names, cutoffs, eval_config.mask_history)
    overlap = torch.zeros((), dtype=torch.float64, device=device)
    exact_count = torch.zeros((), dtype=torch.float64, device=device)
    exact_seconds = ann_seconds = 0.0
    for batch in eval_split.blocks(eval_config.batch_size, device=device):
        excluded = batch["history_mask"] if eval_config.mask_history else None
        query = model.query_vectors(batch)
        _sync(device)
        start = time.perf_counter()
        x = prepare_scores(model.scorer.matrix(query, items), excluded)
        exact_values, exact_ids = torch.topk(x, min(k, x.shape[1]), dim=1)
        _sync(device)
        exact_seconds += time.perf_counter() - start
        start = time.perf_counter()
        _, ann_ids = index.search(query, k, exclude=excluded)
        _sync(device)
        ann_seconds += time.perf_counter() - start

        ranked = ann_ids > 0  # id 0: the index found fewer than k allowed items
        evaluator.update_ranked(ann_ids, ranked, batch)
        in_exact = torch.zeros_like(x, dtype=torch.bool).scatter_(1, exact_ids, exact_values > -math.inf)
        overlap += (in_exact.gather(1, ann_ids) & ranked).sum()
        exact_count += (exact_values > -math.inf).sum()
    users = len(eval_split)
    result = evaluator.compute()
    result[f"ann_recall@{k}"] = float(overlap / exact_count) if exact_count else math.nan
    result["ann_qps"] = users / ann_seconds if ann_seconds else math.nan
    result["exact_qps"] = users / exact_seconds if exact_seconds else math.nan
    return result


def describe_index(result: dict[str, Any]) -> str:
    """One line about the index of an ``evaluate_ann`` result, for humans."""
    info = result["index"]
    params = [f"{key}={info[key]}" for key in ("nlist", "nprobe", "hnsw_m", "ef_search") if key in info]
    where = "GPU" if info["on_gpu"] else "CPU"
    text = f"{info['kind']} {info['metric']} index on {where}, {' '.join(params) or 'exact'}, "
    text += f"built in {info['build_seconds']:.2f} s"
    for metric, note in result.get("left_out", {}).items():
        text += f"; {metric} {note}"
    return text


def evaluate_checkpoint_ann(
    cfg: ResolvedConfig,
    checkpoint: str,
    settings: AnnSettings,
    splits: tuple[str, ...] = ("valid", "test"),
    data: Any = None,
    accelerator: str = "auto",
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """``evaluate_ann`` of a saved checkpoint, in this process on one device (CUDA when
    ``accelerator`` allows it and one is there, else CPU)."""
    check_ann_config(cfg)
    if data is None:
        from recstudio.pipeline import RunOptions, prepare_for

        data = prepare_for(cfg, RunOptions(data_dir=data_dir, cache_dir=cache_dir, tracking=False))
    use_cuda = accelerator in ("auto", "gpu") and torch.cuda.is_available()
    model = load_checkpoint_model(cfg, data, checkpoint).to("cuda" if use_cuda else "cpu")
    return evaluate_ann(model, data, cfg.eval, splits, settings)


def load_checkpoint_model(cfg: ResolvedConfig, data: Any, checkpoint: str) -> Any:
    """The configured model with a checkpoint's weights, on CPU; checked for ANN before the
    weights are read, so that a model no index can serve fails in one line."""
    from recstudio.pipeline import build_model

    model = build_model(cfg, data)
    check_ann_model(model)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    return model
