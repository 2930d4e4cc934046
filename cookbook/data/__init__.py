"""Data: the corpus, the tokenizer, and (later sections) cleaning, deduplication and augmentation."""
