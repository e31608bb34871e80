"""``xmodal verify``: hash every file of a saved index against its manifest.

Opening an index only checks each file's size and modification time (cheap at any size, so a
memory-mapped open stays O(1)); this reads every byte, for a backup, a copy to another disk or a
suspected bad disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class VerifyReport:
    folder: Path
    files: int
    bytes: int
    seconds: float

    def summary(self) -> str:
        return (f"{self.folder}: all {self.files} files match the manifest's checksums "
                f"({self.bytes / 2**20:,.1f} MiB hashed in {self.seconds:.2f} s)")


def verify_index(folder: str | Path) -> VerifyReport:
    """Hash every file the index in ``folder`` depends on; ``CorruptIndexError`` names the first bad one."""
    from ..indexes.manifest import read_manifest

    folder = Path(folder)
    t0 = time.perf_counter()
    m = read_manifest(folder, verify="full")
    size = sum(m.path(folder, name).stat().st_size for name in m.checksums)
    return VerifyReport(folder, len(m.checksums), size, time.perf_counter() - t0)
