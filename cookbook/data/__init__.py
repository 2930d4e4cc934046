"""Data: the corpus and tokenizer, cleaning, deduplication and augmentation.

corpus · tokenizer · clean (tabular rules + pipeline) · clean_text (regex, stopwords, PII) · dedup (exact,
MinHash, semantic) · signatures (MinHash engine) · embeddings (offline sentence encoder) · augment · synthetic
"""
