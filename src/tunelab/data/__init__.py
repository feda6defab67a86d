"""Dataset pipeline: sources → index (SQLite) → buckets, captions, caches, loader."""
