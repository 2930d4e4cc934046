"""Deduplication: exact, MinHash-LSH and semantic (methods), the MinHash engine (signatures) and the offline
sentence encoder (embeddings). Shown in notebooks/01.
"""

from cookbook.data.dedup.embeddings import SEMANTIC_HINT, default_model_path, embed, load_encoder
from cookbook.data.dedup.methods import DedupReport, exact, lsh_params, minhash, normalize, semantic
from cookbook.data.dedup.signatures import minhash_signatures, permutations, shingles

__all__ = [
    "SEMANTIC_HINT", "DedupReport", "default_model_path", "embed", "exact", "load_encoder", "lsh_params", "minhash",
    "minhash_signatures", "normalize", "permutations", "semantic", "shingles",
]
