"""Retrieval: the lexical BM25 index (and, as they land, the sharded vector index and fusion).

Importing this package is light; bm25s and numpy load when an index is built or opened.
"""
