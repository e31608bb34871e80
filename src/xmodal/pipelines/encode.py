"""``encode``: what ``xmodal encode`` does, as a library call."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def encode(source: str | Path, model: Any, out: str | Path, *, executor: str = "local", ray_address: str | None = None,
           **options: Any) -> Any:
    """Encode a collection into embedding shards (``xmodal.distributed.encode_collection``; returns its report).

    ``ray_address``: join this Ray cluster first (``auto``, ``ray://head:10001``); default a local Ray.
    """
    from ..distributed import encode_collection

    if ray_address:
        import ray

        ray.init(address=ray_address, ignore_reinit_error=True)
    return encode_collection(source, model, out, executor=executor, **options)
