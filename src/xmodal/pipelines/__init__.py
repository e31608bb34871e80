"""One library function per command: ``xmodal <verb>`` parses arguments and calls exactly one of these.

The Python API can do everything the command line does by calling the same functions
(``xmodal.index_folder(...)``, ``xmodal.search(...)``, ...). Heavy libraries are imported inside the
functions; the command line imports this package only when a command runs (``xmodal --help`` stays light).
Adding a command: a module here with its function + one export line below, and a ``cli/*_cmds.py``
module that parses arguments and calls it (see docs/architecture.md).
"""

from __future__ import annotations

from .demo import demo  # xmodal demo
from .encode import encode  # xmodal encode
from .export import export  # xmodal export
from .evaluate import EvaluationRun, attach_feature_store, evaluate  # xmodal evaluate
from .features import features_convert, features_info, features_split  # xmodal features split|info|convert
from .index import EmbeddingsIndex, index_folder, index_from_embeddings  # xmodal index [--from-embeddings]
from .search import SearchHits, search  # xmodal search
from .serve import serve  # xmodal serve
from .texts import index_texts  # xmodal index-texts
from .train import TrainRun, mine_negatives, synth, train  # xmodal train, xmodal synth, xmodal mine-negatives
from .verify import VerifyReport, verify_index  # xmodal verify

__all__ = ["export", "index_folder", "index_texts", "index_from_embeddings", "search", "evaluate", "train", "synth", "encode", "serve", "demo",
           "features_split", "features_info", "features_convert", "mine_negatives", "EmbeddingsIndex", "SearchHits", "EvaluationRun",
           "TrainRun", "attach_feature_store", "verify_index", "VerifyReport"]
