"""Business rules, the last stage before the response: products never shown, products pinned to
the top for a query, and a cap on how many products of one leaf category fill a page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BusinessRules:
    hidden: frozenset[str] = frozenset()
    pinned: Mapping[str, Sequence[str]] = field(default_factory=dict)
    max_per_category: int = 0
    page_size: int = 10

    @classmethod
    def from_settings(cls, rules: Any) -> BusinessRules:
        return cls(frozenset(rules.hidden), {q.casefold().strip(): list(ids) for q, ids in rules.pinned.items()},
                   rules.max_per_category)

    def apply(self, query: str, order: Sequence[str], categories: Mapping[str, str],
              filters: Any = None) -> tuple[list[str], list[dict[str, Any]]]:
        """``order`` after the rules, and a note per rule that changed it.

        Hidden products are also excluded inside retrieval (so they never take a slot); here they
        are removed once more in case a pin names one. Pinned products are placed first only when
        they pass the request's filters, which the caller checks by passing them in ``order`` or
        not; a pinned product absent from the results is not invented."""
        notes: list[dict[str, Any]] = []
        order = [pid for pid in order if pid not in self.hidden]
        pins = [pid for pid in self.pinned.get(query.casefold().strip(), ()) if pid in order]
        if pins:
            order = pins + [pid for pid in order if pid not in pins]
            notes.append({"kind": "pinned", "products": pins})
        if self.max_per_category > 0:
            counts: dict[str, int] = {}
            kept, later = [], []
            for pid in order:
                leaf = categories.get(pid)
                if leaf is not None and counts.get(leaf, 0) >= self.max_per_category and len(kept) < self.page_size:
                    later.append(pid)  # pushed below the first page, not dropped
                    continue
                counts[leaf or ""] = counts.get(leaf or "", 0) + 1
                kept.append(pid)
            if later:
                notes.append({"kind": "category_cap", "moved_down": len(later)})
            order = kept[:self.page_size] + later + kept[self.page_size:]
        return order, notes
