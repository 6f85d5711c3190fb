"""Search strategies: Optuna samplers and pruners by name, their defaults and their seeds.

The names here are what ``--sampler``/``--pruner`` and the ``tune:`` section accept; one module
holds them so that the command line, the experiment files and the study agree. Optuna is
imported only when a sampler or pruner is built, so the command line can read the names
without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recstudio.errors import ConfigError
from recstudio.tune.space import SearchSpace, grid

if TYPE_CHECKING:
    import optuna

    from recstudio.tune.settings import TuneSettings

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "grid")
PRUNERS = ("calibrated", "median", "hyperband", "successive-halving", "none")
PRUNER_HELP = (
    "calibrated (default): no pruning before a warm-up of F x (the defaults trial's best epoch + 1) "
    "epochs, then successive halving with reduction factor r; general, knowledge, social and "
    "sequential models F=0.5 r=2, feature-based F=0.3 r=3. The defaults trial is never pruned. "
    "median, hyperband, successive-halving: Optuna's; none: every trial runs to its end."
)


def default_pruner(sampler: str | None = None) -> str:
    """``calibrated`` for every sampler.

    Optuna's benchmarks pair Hyperband with TPE and the median pruner with random search, but
    on recommendation models both prune the configurations that converge slowly and end best:
    a 20-trial BPR study ended at 0.2243 validation NDCG@10 below its defaults' 0.2292 (issue 12).
    The calibrated pruner (``recstudio.tune.calibrated``) waits for a fraction of the defaults'
    own convergence first (benchmarks/README.md compares them).
    """
    return "calibrated"


def make_sampler(
    name: str, space: SearchSpace, seed: int | None = None, options: dict[str, Any] | None = None
) -> optuna.samplers.BaseSampler:
    """A sampler by name; ``options`` go to its constructor (e.g. ``n_startup_trials`` for TPE)."""
    import optuna

    options = dict(options or {})
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if name == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise ConfigError("sampler 'cmaes' needs the cmaes package: pip install cmaes") from None
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        if name == "qmc":
            options.setdefault("scramble", True)
            # every worker must use the same seed: QMC indexes one sequence by trial number
            return optuna.samplers.QMCSampler(seed=0 if seed is None else seed, **options)
        if name == "grid":
            return optuna.samplers.GridSampler(grid(space), seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"sampler '{name}': bad option: {exc}") from None
    raise ConfigError(f"unknown sampler '{name}'; expected one of {', '.join(SAMPLERS)}")


def make_pruner(
    name: str,
    options: dict[str, Any] | None = None,
    max_epochs: int | None = None,
    family: str | None = None,
) -> optuna.pruners.BasePruner:
    """A pruner by name. Steps are epochs: Hyperband's budget is ``train.epochs`` by default;
    the calibrated pruner takes its warm-up fraction and reduction factor from ``family``'s
    profile unless ``options`` set them.

    Pruners compare reported values in the study's direction, so a minimised metric
    (``logloss``) is pruned the right way round without options here.
    """
    import optuna

    options = dict(options or {})
    try:
        if name == "calibrated":
            from recstudio.tune.calibrated import CalibratedPruner, profile_for

            profile = profile_for(family)
            options.setdefault("warmup_fraction", profile.warmup_fraction)
            options.setdefault("reduction_factor", profile.reduction_factor)
            options.setdefault("min_trials", profile.min_trials)
            options.setdefault("max_epochs", max_epochs)
            return CalibratedPruner(**options)
        if name == "median":
            options.setdefault("n_startup_trials", 5)
            options.setdefault("n_warmup_steps", 2)
            return optuna.pruners.MedianPruner(**options)
        if name == "hyperband":
            options.setdefault("min_resource", 1)
            options.setdefault("max_resource", max_epochs or "auto")
            options.setdefault("reduction_factor", 3)
            return optuna.pruners.HyperbandPruner(**options)
        if name == "successive-halving":
            options.setdefault("min_resource", 1)
            options.setdefault("reduction_factor", 3)
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if name == "none":
            return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pruner '{name}': bad option: {exc}") from None
    raise ConfigError(f"unknown pruner '{name}'; expected one of {', '.join(PRUNERS)}")


def sampler_and_pruner(settings: TuneSettings, worker: int = 0) -> tuple[Any, Any]:
    """Each worker, and each resumed invocation, seeds its sampler differently (else they would
    replay the same proposals), except QMC, whose workers must share one sequence."""
    seed = settings.seed
    if seed is not None and settings.sampler != "qmc":
        seed = seed + settings.seed_offset + 10007 * worker
    max_epochs = (settings.base_config.get("train") or {}).get("epochs")
    return (
        make_sampler(settings.sampler, settings.space, seed, settings.sampler_options),
        make_pruner(settings.pruner, settings.pruner_options, max_epochs, model_family(settings.model)),
    )


def model_family(model: str) -> str | None:
    """The registered model's family (None for a name the registry does not know)."""
    from recstudio.errors import ModelError
    from recstudio.model.registry import get_model_class

    try:
        return get_model_class(model).family
    except ModelError:
        return None
