"""Data: the corpus and tokenizer, cleaning, deduplication and augmentation.

corpus · tokenizer · clean/ (tabular rules + pipeline, text clean-up and PII) · dedup/ (exact, MinHash,
semantic; the MinHash engine; the offline sentence encoder) · augment · synthetic
"""
