"""Random initialisation without touching the caller's random state.

Loading or building a model must not reseed or advance torch's global RNG (a user's experiment would
silently change). Our own layers draw from a local ``torch.Generator`` (``generator(seed)``). Modules from
transformers and ``torch.nn`` draw from the default generator and take no generator argument, so they are
built inside ``local_rng(seed)``: a fork of the default generator, seeded, and restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator of its own, seeded: the same stream ``torch.manual_seed(seed)`` would give."""
    return torch.Generator().manual_seed(int(seed))


@contextmanager
def local_rng(seed: int | None = None) -> Iterator[None]:
    """Run the block on a forked CPU RNG (seeded if ``seed`` is given); the caller's RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield
