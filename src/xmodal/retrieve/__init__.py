"""Retrieval pipeline: retrieve with an index, rerank with a cross-encoder."""

from .results import SearchResult
from .retriever import Reranker, Retriever

__all__ = ["SearchResult", "Retriever", "Reranker"]
