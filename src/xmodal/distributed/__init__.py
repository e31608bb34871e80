"""Scale-out: encoding collections into embedding shards, locally or with Ray Data."""

from .encode import EncodeReport, encode_collection, plan_shards, read_embedding_shards

__all__ = ["EncodeReport", "encode_collection", "plan_shards", "read_embedding_shards"]
