"""One run on several devices: Lightning DDP with processes that RecStudio starts itself.

Lightning's own DDP launcher re-executes ``sys.argv`` for every extra rank, which would re-run a
whole ``recstudio tune`` study (or a notebook) in each child. Instead the calling process stays
rank 0 (it owns the MLflow run, the Optuna trial and the result) and ``DistributedRun`` starts
ranks 1..N-1 as fresh ``spawn`` processes that run the same training code
(``recstudio.pipeline.train_and_test``) with tracking off. Lightning sees an externally launched
job (``RankEnvironment``), so it launches nothing and just joins the process group: ``gloo`` on
CPU, ``nccl`` on CUDA, where rank r uses GPU r.

Each rank trains on its share of every epoch's permutation (``recstudio.data.views``), DDP
averages the gradients, and evaluation scores a disjoint block of users per rank whose metric
sums are all-reduced (``recstudio.eval.ranking.RankingEvaluator``), so every user counts once.

If rank 0 fails or is interrupted (including an Optuna prune), the other ranks are terminated:
they would otherwise wait in a collective until the process-group timeout.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import socket
from datetime import timedelta
from typing import Any

from recstudio.errors import TrainingError

log = logging.getLogger("recstudio")

WORKER_JOIN_SECONDS = 120.0
"""How long rank 0 waits for the other ranks to exit after its own run finished."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environment(rank: int, port: int) -> Any:
    """A Lightning cluster environment for a process we started: fixed rank, fixed port."""
    from lightning_fabric.plugins.environments import LightningEnvironment

    class RankEnvironment(LightningEnvironment):
        @property
        def creates_processes_externally(self) -> bool:
            return True

        @property
        def main_address(self) -> str:
            return "127.0.0.1"

        @property
        def main_port(self) -> int:
            return port

        def local_rank(self) -> int:
            return rank

        def node_rank(self) -> int:
            return 0

    return RankEnvironment()


def ddp_strategy(rank: int, port: int, accelerator: str, timeout_seconds: float) -> Any:
    """``DDPStrategy`` for ``rank`` of a job started by ``DistributedRun``."""
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(
        cluster_environment=rank_environment(rank, port),
        process_group_backend="nccl" if accelerator == "gpu" else "gloo",
        timeout=timedelta(seconds=timeout_seconds),
    )


def trainer_kwargs(
    rank: int, world_size: int, port: int | None, accelerator: str, timeout: float
) -> dict[str, Any]:
    """Extra ``pl.Trainer`` arguments for one rank of a ``DistributedRun`` ({} on one device)."""
    if world_size == 1:
        return {}
    return {
        "strategy": ddp_strategy(rank, port or 0, accelerator, timeout),
        "use_distributed_sampler": False,  # the views and evaluation blocks shard themselves
    }


class DistributedRun:
    """Context manager around rank 0's work: starts ranks 1..N-1, reaps them afterwards.

    ``target(rank, *args)`` runs in each extra rank; it must be importable (spawn pickles it by
    name) and its arguments picklable.
    """

    def __init__(self, world_size: int, target: Any, args: tuple[Any, ...]) -> None:
        self.world_size = world_size
        self.target = target
        self.args = args
        self.processes: list[Any] = []

    def __enter__(self) -> DistributedRun:
        context = mp.get_context("spawn")
        for rank in range(1, self.world_size):
            process = context.Process(
                target=self.target, args=(rank, *self.args), name=f"recstudio-rank-{rank}", daemon=False
            )
            process.start()
            self.processes.append(process)
        pids = [p.pid for p in self.processes]
        log.info("started %d extra DDP rank(s): pids %s", len(self.processes), pids)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        destroy_process_group()
        if exc_type is not None:
            self.terminate()
            return
        failed = []
        for rank, process in enumerate(self.processes, start=1):
            process.join(WORKER_JOIN_SECONDS)
            if process.is_alive():
                failed.append(f"rank {rank} did not exit")
            elif process.exitcode != 0:
                failed.append(f"rank {rank} exited with code {process.exitcode}")
        if failed:
            self.terminate()
            raise TrainingError("distributed run: " + "; ".join(failed))

    def terminate(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)


def destroy_process_group() -> None:
    """Leave the job's process group, so that later runs in this process are single-process
    again (Lightning keeps it after ``fit``/``test``; the evaluator all-reduces while it exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a broken group (a peer died) cannot be left cleanly; drop it anyway
            log.debug("could not destroy the process group cleanly", exc_info=True)
