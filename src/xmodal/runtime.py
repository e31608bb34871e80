"""Where and in which precision models run: one place that turns user specs into torch devices/dtypes.

The lowest layer of xmodal next to ``errors``: every loader (``from_pretrained``, ``load_model``) and
later the CLI's ``--device``/``--dtype`` options resolve their arguments here, so a bad value gives the
same one-line ``InvalidInputError`` everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Any, Iterator

from .errors import InvalidInputError

# Defaults for loaders called without device/dtype: what a command's --device/--dtype asked for (see ``defaults``).
_SESSION: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("xmodal_runtime_defaults", default={})


@contextlib.contextmanager
def defaults(device: Any = None, dtype: Any = None, threads: Any = None) -> Iterator[dict[str, Any]]:
    """Within the block, models loaded without ``device``/``dtype`` use these; threads are set for torch.

    The CLI's ``--device/--dtype/--threads`` enter this once per command, so every loader below a verb
    (indexes, rerankers, servers, trainers) follows the user's choice without each taking the arguments.
    Bad values fail here, before any work, with one ``InvalidInputError`` line.
    """
    dev = resolve_device(device)
    chosen = {"device": dev, "dtype": resolve_dtype(dtype, dev), "threads": set_num_threads(threads)}
    token = _SESSION.set({k: v for k, v in chosen.items() if k != "threads"})
    try:
        yield chosen
    finally:
        _SESSION.reset(token)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}
_DEVICE = re.compile(r"^(cpu|mps|cuda)(:(\d+))?$")


def resolve_dtype(spec: Any, device: Any = None) -> Any:
    """``None``/``"auto"`` (keep the weights' dtype), a ``torch.dtype`` or a name (``fp16``, ``bfloat16``, ...)
    -> ``torch.dtype | None``.

    With ``device`` given, a precision that device cannot compute in (bfloat16 on a GPU without it, float16
    on a CPU build without half kernels) is refused here with one line instead of failing mid-encoding.
    """
    import torch

    if spec is None:
        spec = _SESSION.get().get("dtype")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return None
    if isinstance(spec, torch.dtype):
        dtype = spec
    else:
        name = _DTYPES.get(str(spec).lower())
        if name is None:
            raise InvalidInputError(f"unknown dtype '{spec}'; use auto or one of {sorted(_DTYPES)}.")
        dtype = getattr(torch, name)
    if device is not None and dtype in (torch.float16, torch.bfloat16) and not dtype_runs(dtype, str(device)):
        raise InvalidInputError(f"dtype {str(dtype).removeprefix('torch.')} cannot run on device '{device}'; "
                                "use --dtype float32 (or auto).")
    return dtype


_RUNS: dict[tuple[Any, str], bool] = {}


def dtype_runs(dtype: Any, device: str) -> bool:
    """Whether a small matrix product and a softmax work in ``dtype`` on ``device`` (probed once, cached)."""
    import torch

    key = (dtype, device)
    if key not in _RUNS:
        if device.startswith("cuda") and dtype is torch.bfloat16 and torch.cuda.is_available():
            ok = bool(torch.cuda.is_bf16_supported())
        else:
            try:
                x = torch.ones(4, 4, dtype=dtype, device=device if device != "auto" else "cpu")
                torch.softmax(x @ x, dim=-1).sum().item()
                ok = True
            except (RuntimeError, TypeError):
                ok = False
        _RUNS[key] = ok
    return _RUNS[key]


def resolve_device(spec: Any = None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; checks ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    An unknown or unavailable device raises ``InvalidInputError`` (one line) instead of failing later
    inside torch with a long traceback.
    """
    import torch

    if spec is None:
        spec = _SESSION.get().get("device")
    if spec is None or str(spec).lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(spec).strip().lower()
    m = _DEVICE.match(text)
    if m is None:
        raise InvalidInputError(f"unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps.")
    kind, index = m.group(1), m.group(3)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device '{spec}' asked for, but no CUDA GPU is available here; use --device cpu.")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise InvalidInputError(f"device '{spec}' does not exist: this machine has {torch.cuda.device_count()} "
                                    "CUDA GPU(s), numbered from 0.")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidInputError(f"device '{spec}' asked for, but Apple MPS is not available here; use --device cpu.")
    if kind == "cpu" and index is not None:
        raise InvalidInputError(f"device '{spec}': the CPU takes no index; use 'cpu'.")
    return text


def place_model(model: Any, device: Any = None, dtype: Any = None) -> Any:
    """What every ``from_pretrained`` ends with: eval mode, on the resolved device, in the resolved dtype."""
    model.eval()
    dev = resolve_device(device)
    return model.to(device=dev, dtype=resolve_dtype(dtype, dev))


def move_model(model: Any, device: Any = None, dtype: Any = None) -> Any:
    """Move an already-loaded model to ``device`` and/or cast it to ``dtype``; what is not given stays as it is.

    For APIs that take a loaded model (``Retriever``, ``create_app``, ``Trainer``) plus ``device``/``dtype``:
    unlike ``place_model``, ``device=None`` keeps the model where it is instead of choosing the default device.
    """
    if model is None or (device is None and dtype is None) or not hasattr(model, "to"):
        return model
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    dev = resolve_device(device) if device is not None else (first.device if first is not None else None)
    kwargs: dict[str, Any] = {} if device is None else {"device": dev}
    wanted = resolve_dtype(dtype, dev) if dtype is not None else None
    if wanted is not None:
        kwargs["dtype"] = wanted
    return model.to(**kwargs) if kwargs else model


# ---------------------------------------------------------------------------------------------- CPU threads
THREADS_ENV = "XMODAL_NUM_THREADS"


def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask / container limits), at least 1."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:  # cgroup v2 quota, e.g. "200000 100000" = 2 CPUs
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def idle_cpus(sample_s: float = 0.1) -> float | None:
    """How many CPUs were idle over the last ``sample_s`` seconds (Linux ``/proc/stat``), ``None`` elsewhere."""
    import os
    import time

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])

    try:
        i0, t0 = read()
        time.sleep(sample_s)
        i1, t1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return (i1 - i0) / (t1 - t0) * (os.cpu_count() or 1)


def default_num_threads() -> int:
    """Intra-op threads when the user sets none: the CPUs that are idle right now (at least 1, at most the usable ones).

    torch's own default (one thread per core) collapses when another process keeps a core busy: its
    OpenMP threads wait for the one that got descheduled (``benchmarks/threads.py`` measured it). Counting
    the idle CPUs at start keeps the speed of all cores on an idle machine and of one thread on a busy one.
    """
    cap = usable_cpus()
    idle = idle_cpus()
    if idle is None:
        return cap
    return max(1, min(cap, int(idle + 0.5)))


def set_num_threads(threads: int | str | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, else ``$XMODAL_NUM_THREADS``, else ``default_num_threads()``.

    Returns the number set. A bad value (not a positive whole number) is one ``InvalidInputError`` line.
    """
    import os

    import torch

    spec = threads if threads is not None else os.environ.get(THREADS_ENV) or None
    if spec is None or str(spec).strip().lower() == "auto":
        n = default_num_threads()
    else:
        try:
            n = int(str(spec).strip())
        except ValueError:
            n = 0
        if n < 1:
            where = "--threads" if threads is not None else f"${THREADS_ENV}"
            raise InvalidInputError(f"{where} must be a positive whole number or 'auto'; got '{spec}'.")
    torch.set_num_threads(n)
    return n
