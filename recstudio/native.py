"""Native CPU kernels, compiled on first use with the system C compiler and loaded with ctypes.

Why: on a small CPU a BPR step is a few hundred thousand multiply-adds, and torch spends most of
it dispatching ~15 small ops and handing them to its thread pool. One C pass over the batch
(``native_kernels.c``) does the same arithmetic about three times faster. The same library
counts the ranks that full-ranking AUC needs without sorting every row.

Why compiled here rather than shipped: the source is a few hundred lines of plain C99 without
torch headers, so ``cc`` builds it in about 1.5 s and no build step is needed at install.
The library lands under ``$XDG_CACHE_HOME/recstudio/native`` (default ``~/.cache``), keyed by
the source, compiler flags and CPU, and is written to a temporary file and renamed into place
so that concurrent workers never load a half-written file.

Where no compiler works (or ``RECSTUDIO_NATIVE=0``), ``kernels()`` returns None, one log line
says why, and callers use their torch code, which computes the same values.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_kernels.c")
ABI = 5  # must equal recstudio_native_abi() in the C source
FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno"]
# Tried in order: OpenMP shares torch's runtime (the same libgomp.so.1 is already loaded) and
# uses its threads; -march=native is not known to every compiler.
_VARIANTS = (["-fopenmp", "-march=native"], ["-fopenmp"], ["-march=native"], [])
_DISABLED_VALUES = {"0", "false", "no", "off"}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recstudio" / "native"


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: a library built on one CPU may not run on another
    (e.g. a home directory shared between machines)."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    parts.append(line.strip())
                    if len(parts) >= 4:
                        break
    except OSError:
        pass
    return "\n".join(parts)


def _build(compiler: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise OSError(f"{compiler} exited with {proc.returncode}: {proc.stderr.strip() or 'no output'}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(compiler: str, flags: list[str]) -> ctypes.CDLL:
    key = hashlib.sha256(
        b"\0".join(
            [SOURCE.read_bytes(), compiler.encode(), " ".join(flags).encode(), _cpu_fingerprint().encode()]
        )
    ).hexdigest()[:16]
    target = cache_dir() / f"recstudio_kernels-{key}.so"
    if not target.exists():
        log.info("building the native CPU kernels (first use, about 2 s): %s", target)
        _build(compiler, flags, target)
    lib = ctypes.CDLL(str(target))
    if lib.recstudio_native_abi() != ABI:
        raise OSError(f"{target} has ABI {lib.recstudio_native_abi()}, expected {ABI}")
    _declare(lib)
    return lib


def _openmp_runtimes() -> set[str]:
    """Files of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if len(line.split()) >= 6}
    except OSError:
        return set()
    return {p for p in paths if any(name in Path(p).name for name in ("libgomp", "libiomp", "libomp"))}


def _compile_error(exc: BaseException) -> str:
    """The compiler's first error line (its whole output is long and mostly context)."""
    text = str(exc)
    for line in text.splitlines()[1:]:
        if "error" in line.lower():
            return f"{text.splitlines()[0].split(':')[0]}: {line.strip()[:300]}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, f64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"sipl_forward_{suffix}")
        fwd.restype = i64
        fwd.argtypes = [p, i64, p, p, i64, p, i64, i64, i64, cint, f64, p, p]
        bwd = getattr(lib, f"sipl_backward_{suffix}")
        bwd.restype = None
        bwd.argtypes = [p, i64, p, p, i64, p, p, i64, i64, i64, cint, f64, f64, p, p, p]
        counts = getattr(lib, f"count_below_{suffix}")
        counts.restype = None
        counts.argtypes = [p, i64, p, p, i64, p, p]
        excluded = getattr(lib, f"count_neg_inf_{suffix}")
        excluded.restype = None
        excluded.argtypes = [p, i64, i64, p]


@lru_cache(maxsize=1)
def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None (logged once) when disabled or no compiler works."""
    if os.environ.get("RECSTUDIO_NATIVE", "1").strip().lower() in _DISABLED_VALUES:
        log.info("native CPU kernels disabled by RECSTUDIO_NATIVE; using the torch code")
        return None
    compiler = os.environ.get("CC", "cc")
    error = ""
    for extra in _VARIANTS:
        before = _openmp_runtimes()
        try:
            lib = _load(compiler, FLAGS + extra)
        except (OSError, subprocess.SubprocessError, AttributeError) as exc:
            error = _compile_error(exc)
            continue
        if "-fopenmp" in extra and len(_openmp_runtimes()) > max(1, len(before)):
            # a second OpenMP runtime (torch built with another one): two thread pools would
            # fight over the cores, so use the single-threaded build instead
            log.info("native kernels: torch uses another OpenMP runtime; using the single-threaded build")
            continue
        log.debug("native CPU kernels loaded from %s", lib._name)
        return lib
    log.warning(
        "native CPU kernels unavailable (%s); training and AUC use the torch code, which is slower on CPU. "
        "Install a C compiler (cc), or set RECSTUDIO_NATIVE=0 to silence this.",
        error,
    )
    return None


DTYPES = {torch.float32: "f32", torch.float64: "f64"}
"""Tensor dtypes the kernels take, with the suffix of their C functions."""
_LOSS_KINDS = {"bpr": 0, "bce": 1}


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def sampled_loss_forward(
    query: torch.Tensor,
    items: torch.Tensor,
    candidates: torch.Tensor,
    query_index: torch.Tensor | None,
    kind: str,
    reg_weight: float,
) -> tuple[float, torch.Tensor]:
    """Loss value and the [N, 1+K] candidate scores of ``ops.sampled_inner_product_loss``.

    Inputs are contiguous CPU tensors of one dtype in ``DTYPES`` (int64 ids); ids out of range
    raise ``IndexError`` naming the first one, before anything is computed.
    """
    n, c = candidates.shape
    scores = query.new_empty((n, c))
    loss = ctypes.c_double()
    bad = getattr(kernels(), f"sipl_forward_{DTYPES[query.dtype]}")(
        query.data_ptr(),
        query.shape[0],
        _ptr(query_index),
        items.data_ptr(),
        items.shape[0],
        candidates.data_ptr(),
        n,
        c,
        items.shape[1],
        _LOSS_KINDS[kind],
        reg_weight,
        scores.data_ptr(),
        ctypes.byref(loss),
    )
    if bad > 0:
        raise IndexError(f"item id {int(candidates.view(-1)[bad - 1])} out of range [0, {items.shape[0]})")
    if bad < 0:
        raise IndexError(f"query id {int(query_index[-bad - 1])} out of range [0, {query.shape[0]})")
    return loss.value, scores


def sampled_loss_backward(
    query: torch.Tensor,
    items: torch.Tensor,
    candidates: torch.Tensor,
    query_index: torch.Tensor | None,
    scores: torch.Tensor,
    kind: str,
    reg_weight: float,
    grad: float,
    want: tuple[bool, bool] = (True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients (query, items) of ``grad`` times the loss, from ``sampled_loss_forward``'s
    inputs and scores; None for a side not in ``want``. The kernel zeroes the gradient tables
    itself (each thread the rows it owns), saving a pass over them."""
    d_query = torch.empty_like(query) if want[0] else None
    d_items = torch.empty_like(items) if want[1] else None
    n, c = candidates.shape
    scratch = torch.empty_like(scores)  # the loss's gradient per score
    getattr(kernels(), f"sipl_backward_{DTYPES[query.dtype]}")(
        query.data_ptr(),
        query.shape[0],
        _ptr(query_index),
        items.data_ptr(),
        items.shape[0],
        candidates.data_ptr(),
        scores.data_ptr(),
        n,
        c,
        items.shape[1],
        _LOSS_KINDS[kind],
        grad,
        reg_weight,
        scratch.data_ptr(),
        _ptr(d_query),
        _ptr(d_items),
    )
    return d_query, d_items


def count_below(
    x: torch.Tensor, rows: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Counts for full-ranking AUC from one pass over each queried row.

    For each query (``rows[t]``, ``values[t]``): how many entries of ``x[rows[t]]`` are below
    and at most ``values[t]``; and for each row of ``x`` how many entries are -inf (excluded).
    Returns (below [T], below_or_equal [T], excluded [b]), int64; None when the kernels are not
    available or ``x`` is not a CPU float32/float64 matrix (the caller sorts instead).
    """
    lib = kernels()
    suffix = DTYPES.get(x.dtype)
    if lib is None or suffix is None or x.device.type != "cpu" or x.dim() != 2 or x.shape[1] >= 2**31:
        return None
    x = x.contiguous()
    rows = rows.to(torch.int64).contiguous()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= x.shape[0]):
        raise IndexError(f"row ids must be in [0, {x.shape[0]})")
    values = values.to(x.dtype).contiguous()
    below = torch.empty(rows.shape[0], dtype=torch.int64)
    below_or_equal = torch.empty_like(below)
    excluded = torch.empty(x.shape[0], dtype=torch.int64)
    getattr(lib, f"count_below_{suffix}")(
        x.data_ptr(),
        x.shape[1],
        rows.data_ptr(),
        values.data_ptr(),
        rows.shape[0],
        below.data_ptr(),
        below_or_equal.data_ptr(),
    )
    getattr(lib, f"count_neg_inf_{suffix}")(x.data_ptr(), x.shape[0], x.shape[1], excluded.data_ptr())
    return below, below_or_equal, excluded
