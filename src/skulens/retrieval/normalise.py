"""Text normalisation for lexical matching: measurements, dimensions and model numbers.

Shoppers and catalogues write the same quantity many ways: ``1/2 in.``, ``1/2 inch``, ``0.5 in``,
``1/2'`` (in queries an apostrophe is often an inch), ``18-Volt`` and ``18v``, ``2 in. x 4 in.`` and
``2x4``, ``UD-40350`` and ``ud40350``. A word-level BM25 cannot see that these match: ``1/2``
becomes the words ``1`` and ``2``, ``18v`` one word that no title holds.

A normaliser **adds** canonical tokens to a text and never removes a word, so a query keeps every
match it had: ``1/2 in. pipe`` gains ``0p5in`` (decimal point as ``p``: the analyser splits on
punctuation), ``2x4`` gains ``2 4 2x4``, ``UD-40350`` gains ``ud40350``. The same function runs on
titles when the index is built and on queries when it is searched; the index's manifest names the
normaliser it was built with, so a version is always queried the way it was indexed.

Normalisers register by name (:data:`NORMALISERS`); ``retrieval.lexical_normaliser`` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

# Units as written in titles and queries -> one canonical unit. An apostrophe after a number is
# feet in catalogues and usually inches in queries, so it yields both.
_UNITS: dict[str, tuple[str, ...]] = {
    r"in(?:ch(?:es)?)?\.?|\"|''|”|″": ("in",),
    r"f(?:oo|ee)?t\.?": ("ft",),
    r"'|’|′": ("in", "ft"),
    r"cu\.?\s*ft\.?|cubic\s+f(?:oo|ee)t": ("cuft",),
    r"sq\.?\s*ft\.?|square\s+f(?:oo|ee)t": ("sqft",),
    r"v(?:olts?)?": ("v",),
    r"w(?:atts?)?": ("w",),
    r"amps?|a": ("amp",),
    r"gal(?:lons?)?\.?": ("gal",),
    r"lbs?\.?|pounds?": ("lb",),
    r"oz\.?|ounces?": ("oz",),
    r"qt\.?|quarts?": ("qt",),
    r"mm|millimet(?:er|re)s?": ("mm",),
    r"cm|centimet(?:er|re)s?": ("cm",),
    r"btus?": ("btu",),
    r"lumens?": ("lumen",),
    r"(?:pieces?|pcs?)": ("piece",),
    r"(?:packs?|pk)": ("pack",),
    r"(?:gauges?|ga)": ("gauge",),
    r"(?:lights?)": ("light",),
    r"(?:handles?)": ("handle",),
    r"(?:tiers?)": ("tier",),
    r"(?:shel(?:f|ves))": ("shelf",),
    r"(?:drawers?)": ("drawer",),
    r"(?:doors?)": ("door",),
    r"(?:cycles?)": ("cycle",),
    r"(?:speeds?)": ("speed",),
    r"(?:ton)s?": ("ton",),
}
_NUMBER = r"(?:\d+\s*-\s*\d+/\d+|\d+\s+\d+/\d+|\d+/\d+|\d*\.\d+|\d{1,3}(?:,\d{3})+|\d+)"
_UNIT_ALTERNATIVES = "|".join(f"(?:{pattern})" for pattern in sorted(_UNITS, key=len, reverse=True))
_MEASURE = re.compile(rf"(?<![\w.])({_NUMBER})\s*-?\s*({_UNIT_ALTERNATIVES})(?![a-z0-9])", re.IGNORECASE)
_UNIT_OF = [(re.compile(rf"(?:{pattern})\Z", re.IGNORECASE), units) for pattern, units in _UNITS.items()]
# Dimensions: numbers (each with an optional unit) joined by x: "2x4", "2 x 8 x 8", "3/4 in. x 3 in. x 8 ft.".
_DIM_PART = rf"({_NUMBER})\s*(?:(?:{_UNIT_ALTERNATIVES})(?![a-z0-9]))?\.?"
_DIMENSION = re.compile(rf"(?<![\w.]){_DIM_PART}(?:\s*[x×*]\s*{_DIM_PART}){{1,2}}", re.IGNORECASE)
_DIM_NUMBERS = re.compile(_NUMBER)
# Model numbers written with hyphens or slashes: "UD-40350", "HD-907/B".
_MODEL = re.compile(r"\b[a-z0-9]+(?:[-/][a-z0-9]+)+\b", re.IGNORECASE)
# A number glued to a word ("4shelves", "24inch"): the word on its own too.
_GLUED = re.compile(r"\b(\d+)([a-z]{3,})\b", re.IGNORECASE)


def canonical_number(text: str) -> str | None:
    """``1-1/2``, ``1 1/2``, ``3/4``, ``.5``, ``15,000`` as a token-safe decimal (``1p5``, ``0p75``,
    ``0p5``, ``15000``); None when it is not a number (a zero denominator)."""
    text = text.replace(",", "").strip()
    try:
        mixed = re.fullmatch(r"(\d+)\s*(?:-|\s)\s*(\d+)/(\d+)", text)
        if mixed:
            whole, num, den = (int(g) for g in mixed.groups())
            value = whole + Fraction(num, den) if num < den else None  # "2 2/1" is a typo, not 4
            if value is None:
                return None
        elif "/" in text:
            num, den = (int(g) for g in text.split("/"))
            value = Fraction(num, den)
        else:
            value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    rounded = round(float(value), 4)
    out = f"{rounded:.4f}".rstrip("0").rstrip(".")
    return out.replace(".", "p")


def _units(written: str) -> tuple[str, ...]:
    for pattern, units in _UNIT_OF:
        if pattern.match(written.strip()):
            return units
    return ()


def measure_tokens(text: str) -> list[str]:
    """The canonical tokens :func:`measures` adds to ``text`` (in order, without duplicates)."""
    tokens: list[str] = []
    for number, unit in _MEASURE.findall(text):
        value = canonical_number(number)
        if value is not None:
            tokens += [f"{value}{u}" for u in _units(unit)]
    for match in _DIMENSION.finditer(text):
        values = [canonical_number(n) for n in _DIM_NUMBERS.findall(match.group(0))]
        if None in values or len(values) < 2:
            continue
        tokens += values  # "2x4" holds no separate words "2" and "4"
        tokens += [f"{a}x{b}" for a, b in zip(values, values[1:], strict=False)]
        if len(values) > 2:
            tokens.append("x".join(values))
    for match in _MODEL.finditer(text):
        word = match.group(0)
        if any(c.isdigit() for c in word) and any(c.isalpha() for c in word):
            tokens.append(re.sub(r"[-/]", "", word).lower())
    for number, word in _GLUED.findall(text):
        tokens += [number, word.lower()]
    return list(dict.fromkeys(tokens))


def measures(text: str) -> str:
    """``text`` followed by its canonical measurement, dimension and model-number tokens."""
    tokens = measure_tokens(text or "")
    return f"{text} {' '.join(tokens)}" if tokens else (text or "")


def unchanged(text: str) -> str:
    return text or ""


NORMALISERS: dict[str, Callable[[str], str]] = {"none": unchanged, "measures": measures}


def normaliser(name: str) -> Callable[[str], str]:
    """The registered normaliser ``name``; ValueError naming the known ones otherwise."""
    try:
        return NORMALISERS[name]
    except KeyError:
        raise ValueError(f"unknown lexical normaliser {name!r}; known: {', '.join(sorted(NORMALISERS))}") from None
