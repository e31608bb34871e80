"""The public API: every command is one function exported from ``xmodal``; importing stays light."""

from __future__ import annotations

import subprocess
import sys

import xmodal
import xmodal.pipelines as pipelines

COMMAND_FUNCTIONS = {"index_folder": "index_folder", "index_from_embeddings": "index_from_embeddings", "search": "search",
                     "index_texts": "index_texts",
                     "evaluate": "evaluate", "train_model": "train", "synth": "synth", "encode": "encode",
                     "serve": "serve", "run_demo": "demo", "features_split": "features_split",
                     "features_info": "features_info", "features_convert": "features_convert"}


def test_every_pipeline_is_exported_from_xmodal():
    for public, name in COMMAND_FUNCTIONS.items():
        assert getattr(xmodal, public) is getattr(pipelines, name)
    assert set(COMMAND_FUNCTIONS.values()) <= set(pipelines.__all__)


def test_train_function_survives_importing_the_train_package():
    import xmodal.train  # noqa: F401 - the subpackage owns the name `xmodal.train`; the command is train_model

    assert callable(xmodal.train_model) and xmodal.train_model is pipelines.train


def test_importing_xmodal_and_its_cli_loads_no_heavy_library():
    code = ("import sys, xmodal, xmodal.cli; "
            "print(sorted(m for m in ('torch', 'faiss', 'transformers', 'pyarrow', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
