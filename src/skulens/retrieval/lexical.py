"""Lexical retrieval: BM25 on tantivy over titles, attributes and categories, with field boosts and filters.

tantivy was chosen over bm25s on the real Home Depot queries (higher nDCG@10 and 2x lower latency:
docs/benchmarks/lexical.md, reasons in docs/retrieval.md). One tantivy index holds every field:

* ``title``, ``attributes``, ``category``: English-stemmed text; a query is the disjunction of its
  words over these fields, each field's BM25 scaled by its boost (``LexicalConfig.boosts``).
* ``category_key``, ``attr`` (``name=value``), ``price``: the filter fields, matched *inside* the
  search as zero-score clauses, so a filtered search returns the best matches among the documents
  that pass, never a truncated list with holes.
* ``id``: the product id (stored, exact), also used to exclude deleted products (tombstones).

An index folder holds ``tantivy/`` (the engine's files) and ``manifest.json`` (boosts, counts,
build time).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from skulens.retrieval.filters import Filters
from skulens.retrieval.normalise import normaliser, unchanged

DEFAULT_BOOSTS = {"title": 2.0, "attributes": 1.0, "category": 0.5}
TEXT_FIELDS = ("title", "attributes", "category")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class LexicalConfig:
    boosts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BOOSTS))
    # tantivy analyser of the text fields: "en_stem" (lower-case + Snowball English; "drills" matches
    # "drill") or "default" (lower-case only). Measured: docs/benchmarks/lexical.md.
    tokenizer: str = "en_stem"
    writer_heap_mb: int = 200
    # Canonical tokens added to titles, attributes and queries (skulens.retrieval.normalise): "none"
    # for indexes built before it existed, so each version is queried as it was indexed.
    normaliser: str = "none"

    @classmethod
    def from_settings(cls, retrieval: Any) -> LexicalConfig:
        """The configuration ``retrieval`` settings ask for (boosts and normaliser): what build_index
        indexes with and what ``skulens eval`` measures."""
        return cls(boosts=dict(retrieval.lexical_boosts), normaliser=retrieval.lexical_normaliser)


def _schema(config: LexicalConfig):  # noqa: ANN202 - tantivy.Schema
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    for name in TEXT_FIELDS:
        builder.add_text_field(name, stored=False, tokenizer_name=config.tokenizer)
    builder.add_text_field("category_key", stored=False, tokenizer_name="raw")
    builder.add_text_field("attr", stored=False, tokenizer_name="raw")
    builder.add_float_field("price", stored=False, indexed=True, fast=True)
    return builder.build()


def product_documents(products: pa.Table) -> Iterable[dict[str, Any]]:
    """The fields of each product of a canonical ``products`` table, as the index stores them."""
    columns = {name: products.column(name).to_pylist()
               for name in ("product_id", "title", "category_path", "attributes", "price")}
    for pid, title, cats, attrs, price in zip(*columns.values(), strict=True):
        attrs = [(k, v) for k, v in (attrs or []) if v]
        cats = [c for c in (cats or []) if c]
        yield {"id": pid, "title": title or "", "attributes": " ".join(v for _, v in attrs),
               "category": " ".join(cats), "category_key": [c.casefold() for c in cats],
               "attr": [f"{k.casefold()}={v.casefold()}" for k, v in attrs], "price": price}


def analyzer(config: LexicalConfig):  # noqa: ANN201 - tantivy.TextAnalyzer
    """A Python-side copy of the text fields' analyser (tantivy's ``en_stem`` / ``default``)."""
    import tantivy

    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40)) \
        .filter(tantivy.Filter.lowercase())
    if config.tokenizer == "en_stem":
        builder = builder.filter(tantivy.Filter.stemmer("english"))
    return builder.build()


def _document(doc: Mapping[str, Any]):  # noqa: ANN202 - tantivy.Document
    import tantivy

    fields = {k: v for k, v in doc.items() if k != "price" and v not in (None, [])}
    if doc.get("price") is not None:  # no price: no value, so no price filter ever matches it
        fields["price"] = float(doc["price"])
    return tantivy.Document(**fields)


class BM25Index:
    """A built or loaded lexical index (tantivy, in a folder or in RAM)."""

    def __init__(self, index: Any, config: LexicalConfig, manifest: dict[str, Any] | None = None) -> None:
        self.index = index
        self.config = config
        self.schema = index.schema
        self.manifest = manifest or {}
        self.index.reload()
        self._searcher = index.searcher()
        self._analyse = analyzer(config).analyze
        self._normalise = normaliser(config.normaliser)

    @property
    def documents(self) -> int:
        return int(self._searcher.num_docs)

    @classmethod
    def build(cls, products: pa.Table | Iterable[Mapping[str, Any]], config: LexicalConfig | None = None,
              folder: Path | None = None) -> BM25Index:
        """Index a canonical ``products`` table (or documents from :func:`product_documents`), in
        ``folder`` or in RAM."""
        import tantivy

        config = config or LexicalConfig()
        unknown = sorted(set(config.boosts) - set(TEXT_FIELDS))
        if unknown:
            raise ValueError(f"unknown lexical field {', '.join(unknown)}; known: {', '.join(TEXT_FIELDS)}")
        if not any(b > 0 for b in config.boosts.values()):
            raise ValueError("at least one lexical field needs a positive boost")
        normalise = normaliser(config.normaliser)
        started = time.perf_counter()
        if folder is not None:
            (folder / "tantivy").mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(_schema(config), path=str(folder / "tantivy") if folder else None)
        writer = index.writer(heap_size=config.writer_heap_mb * 1_000_000, num_threads=1)
        documents = product_documents(products) if isinstance(products, pa.Table) else products
        count = 0
        tokens = dict.fromkeys(TEXT_FIELDS, 0)
        analyse = analyzer(config).analyze
        for doc in documents:
            doc = _normalised(doc, normalise)
            writer.add_document(_document(doc))
            count += 1
            for name in TEXT_FIELDS:
                tokens[name] += len(analyse(doc[name])) if doc[name] else 0
        writer.commit()
        writer.wait_merging_threads()
        manifest = {"kind": "bm25", "engine": f"tantivy {getattr(tantivy, '__version__', '')}".strip(),
                    "documents": count, "config": asdict(config), "build_s": round(time.perf_counter() - started, 2),
                    # Average tokens per field: BM25 of documents outside the index (live updates).
                    "avg_tokens": {name: tokens[name] / max(count, 1) for name in TEXT_FIELDS},
                    "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if folder is not None:
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return cls(index, config, manifest)

    def query(self, text: str, filters: Filters | None = None, exclude: Collection[str] = (),  # noqa: ANN201
              only: Collection[str] | None = None, expansion: Sequence[str] = (), expansion_weight: float = 0.0):
        """The tantivy query for ``text`` (any of its words, boosted per field), ``filters`` and
        ``only`` (product ids to choose from) as zero-score required clauses and ``exclude``
        (product ids) as a prohibited clause; None when the text has no words. ``expansion`` words
        (:mod:`skulens.retrieval.expansion`) join as one optional clause scaled by ``expansion_weight``."""
        import tantivy

        # No query syntax, no AND/OR operators: the words of the normalised text.
        words = [w.lower() for w in _WORD.findall(self._normalise(text or ""))]
        if not words:
            return None
        fields = [f for f, b in self.config.boosts.items() if b > 0]
        text_query = self.index.parse_query(" ".join(words), fields, field_boosts=dict(self.config.boosts))
        extra = [w.lower() for w in _WORD.findall(" ".join(expansion))]
        if extra and expansion_weight > 0:
            # A separate, down-weighted clause, so the query's own words usually decide first.
            added = self.index.parse_query(" ".join(extra), fields, field_boosts=dict(self.config.boosts))
            text_query = tantivy.Query.boolean_query([(tantivy.Occur.Should, text_query), (
                tantivy.Occur.Should, tantivy.Query.boost_query(added, expansion_weight))])
        required = _filter_clauses(self.schema, filters)
        if only is not None:
            required.append(tantivy.Query.term_set_query(self.schema, "id", list(only)))
        if not required and not exclude:
            return text_query  # the same scores; without the wrapping clause tantivy scores faster
        clauses = [(tantivy.Occur.Must, text_query)]
        for clause in required:
            clauses.append((tantivy.Occur.Must, tantivy.Query.const_score_query(clause, 0.0)))
        if exclude:
            clauses.append((tantivy.Occur.MustNot, tantivy.Query.term_set_query(self.schema, "id", list(exclude))))
        return tantivy.Query.boolean_query(clauses)

    def search(self, query: str, k: int = 10, filters: Filters | None = None, exclude: Collection[str] = (),
               only: Collection[str] | None = None, expansion: Sequence[str] = (),
               expansion_weight: float = 0.0) -> list[tuple[str, float]]:
        """The ``k`` best (product id, score) matching ``query`` and ``filters`` (and among ``only``
        when given), best first; ``expansion`` as in :meth:`query`."""
        compiled = self.query(query, filters, exclude, only, expansion, expansion_weight)
        if compiled is None or k <= 0:
            return []
        hits = self._searcher.search(compiled, k, count=False).hits
        return [(self._searcher.doc(address)["id"][0], float(score)) for score, address in hits if score > 0]

    def doc_frequency(self, word: str, field_name: str = "title") -> int:
        """How many documents contain ``word`` (already analysed) in ``field_name``."""
        return int(self._searcher.doc_freq(field_name, word))

    def score_external(self, query: str, documents: Sequence[Mapping[str, Any]]) -> list[float]:
        """BM25 (tantivy's formula: k1 1.2, b 0.75, per-field boosts) of documents that are not in
        this index, with this index's statistics plus theirs: document frequencies of the index and
        these documents, the index's average field lengths. Live-updated products so rank beside
        indexed ones as if they had been indexed with them."""
        import math

        analyse = self._analyse
        terms = sorted(set(analyse(" ".join(w.lower() for w in _WORD.findall(self._normalise(query or ""))))))
        if not terms or not documents:
            return [0.0] * len(documents)
        avg = self.manifest.get("avg_tokens") or {}
        total = self.documents + len(documents)
        documents = [_normalised(d, self._normalise) for d in documents]  # once, not once per field
        scores = [0.0] * len(documents)
        for name, boost in self.config.boosts.items():
            if boost <= 0:
                continue
            fields = [analyse(d.get(name) or "") for d in documents]
            avgdl = avg.get(name) or (sum(map(len, fields)) / len(fields)) or 1.0
            for term in terms:
                df = self.doc_frequency(term, name) + sum(term in f for f in fields)
                if df == 0:
                    continue
                idf = math.log(1 + (total - df + 0.5) / (df + 0.5))
                for i, f in enumerate(fields):
                    tf = f.count(term)
                    if tf:
                        scores[i] += boost * idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(f) / avgdl))
        return scores

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        import tantivy

        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{folder}: no lexical index here (manifest.json missing)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        config = LexicalConfig(**manifest["config"])
        return cls(tantivy.Index.open(str(folder / "tantivy")), config, manifest)


def _normalised(doc: Mapping[str, Any], normalise: Callable[[str], str]) -> Mapping[str, Any]:
    """``doc`` with its title and attributes normalised (the other fields as they are)."""
    if normalise is unchanged:
        return doc
    return {**doc, **{name: normalise(doc[name]) for name in ("title", "attributes") if doc.get(name)}}


def _filter_clauses(schema: Any, filters: Filters | None) -> list[Any]:
    import tantivy

    if filters is None or filters.empty:
        return []
    clauses = []
    if filters.category is not None:
        clauses.append(tantivy.Query.term_query(schema, "category_key", filters.category.casefold()))
    if filters.price_min is not None or filters.price_max is not None:
        clauses.append(tantivy.Query.range_query(
            schema, "price", tantivy.FieldType.Float,
            None if filters.price_min is None else float(filters.price_min),
            None if filters.price_max is None else float(filters.price_max)))
    for name, value in filters.attributes.items():
        clauses.append(tantivy.Query.term_query(schema, "attr", f"{name.casefold()}={value.casefold()}"))
    return clauses
