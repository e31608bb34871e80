"""Opening an index checks sizes and modification times, not checksums (#20 item 3); `xmodal verify` hashes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from xmodal.errors import CorruptIndexError, InvalidInputError
from xmodal.indexes import manifest as manifest_mod
from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.manifest import read_manifest


def _saved(tmp_path, n=50):
    index = FaissIndex(16)
    index.add([f"i{k}" for k in range(n)], np.random.default_rng(0).standard_normal((n, 16)).astype("float32"))
    return index.save(tmp_path / "idx")


def test_quick_open_hashes_nothing_and_full_verify_hashes_everything(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    m = read_manifest(path, verify=False)
    assert set(m.stats) == set(m.checksums)  # size + mtime recorded for every file
    hashed = []
    real = manifest_mod.sha256_file
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda p, *a: hashed.append(p.name) or real(p, *a))
    FaissIndex.load(path)  # default verify: stats only
    read_manifest(path, verify="quick")
    assert hashed == []
    read_manifest(path, verify="full")
    assert len(hashed) == len(m.checksums)


def test_quick_open_still_detects_a_size_change_and_a_rewrite(tmp_path):
    path = _saved(tmp_path)
    stored = read_manifest(path, verify=False).path(path, "index.faiss")
    data = stored.read_bytes()
    stored.write_bytes(data[:-4])  # truncated
    with pytest.raises(CorruptIndexError, match="bytes, the manifest records"):
        FaissIndex.load(path)
    # same size, other content, written at once after the save: its new mtime differs from the
    # recorded (backdated) one, so the file is hashed and refused
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CorruptIndexError, match="checksum"):
        FaissIndex.load(path)
    stored.write_bytes(data)  # the original bytes again: accepted (hashed once more, mtime changed)
    assert len(FaissIndex.load(path)) == 50


def test_same_size_damage_with_the_mtime_put_back_needs_full_verify(tmp_path, capsys):
    path = _saved(tmp_path)
    m = read_manifest(path, verify=False)
    stored = m.path(path, "index.faiss")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    st = stored.stat()
    stored.write_bytes(bytes(data))
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a bit flip on disk would leave it
    read_manifest(path)  # the cheap check cannot see this ...
    with pytest.raises(CorruptIndexError, match="index.faiss"):
        read_manifest(path, verify="full")  # ... the full one does
    from xmodal.cli import main

    with pytest.raises(SystemExit) as e:
        main(["verify", str(path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "index.faiss" in err and "\n" not in err


def test_xmodal_verify_reports_a_good_index(tmp_path):
    from xmodal.cli import app

    path = _saved(tmp_path)
    res = CliRunner().invoke(app, ["verify", str(path)])
    assert res.exit_code == 0, res.output
    assert "match the manifest" in res.output


def test_old_manifest_without_stats_is_hashed(tmp_path, monkeypatch):
    import json

    path = _saved(tmp_path)
    mj = json.loads((path / "manifest.json").read_text())
    mj.pop("stats")
    (path / "manifest.json").write_text(json.dumps(mj))
    stored = read_manifest(path, verify=False).path(path, "ids.arrow")
    data = bytearray(stored.read_bytes())
    data[-10] ^= 1
    stored.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="ids.arrow"):
        read_manifest(path)


def test_bad_verify_value(tmp_path):
    with pytest.raises(InvalidInputError, match="verify"):
        read_manifest(_saved(tmp_path), verify="fast")
