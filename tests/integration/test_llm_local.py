"""The cascade's local tier for real: the packaged SmolLM2-135M GGUF loaded through transformers,
answering through the cascade (validated, timed, tokens counted). No quality is claimed here; the
cascade benchmark measures what the tier adds (docs/benchmarks/llm_cascade.md)."""

from __future__ import annotations

import pytest

from skulens.serving.llm.cascade import Cascade, TierPolicy
from skulens.serving.llm.tiers import LocalGGUFTier, RuleTier, packaged_gguf

pytestmark = pytest.mark.integration


def test_local_gguf_tier_loads_in_the_background_and_answers():
    assert packaged_gguf().suffix == ".gguf"
    tier = LocalGGUFTier(max_new_tokens=40).start()
    assert tier.wait(300), tier._error
    cascade = Cascade([(tier, TierPolicy(timeout_ms=60_000)), (RuleTier(), TierPolicy())])
    result = cascade.understand("red runing shoes under $50")
    step = result.steps[0]
    assert step.tier == "local" and step.tokens_in > 50 and 0 < step.tokens_out <= 40
    assert step.outcome in {"accepted", "invalid"}  # a 135M model often breaks the schema: then rules answer
    assert result.understanding is not None and result.tier in {"local", "rules"}
