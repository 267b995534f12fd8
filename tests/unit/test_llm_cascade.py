"""The LLM cascade: tier 0 rules, schema and catalogue validation, escalation, budgets, timeouts,
circuit breakers, cache; the hosted tiers through the real clients against a local fake server."""

from __future__ import annotations

import pytest

from skulens.serving.llm.cascade import Cascade, CircuitBreaker, DailyBudget, TierPolicy
from skulens.serving.llm.tiers import LLM_TIERS, AnthropicTier, OpenAICompatibleTier, RuleTier, TierAnswer, make_tier
from skulens.serving.llm.understanding import InvalidAnswer, Vocabulary, first_json_object, validate
from tests.support.fake_llm import FakeProvider

VOCAB = Vocabulary(frozenset({"shoes", "shirts"}), {"colour": frozenset({"red", "navy blue"})})


class Scripted:
    """A tier that answers from a script (text or exception), counting its calls."""

    def __init__(self, name, *answers):
        self.name, self.answers, self.calls = name, list(answers), 0

    def ready(self):
        return True

    def answer(self, query, timeout_s):
        self.calls += 1
        value = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(value, Exception):
            raise value
        return TierAnswer(value, 100, 20)


@pytest.mark.parametrize(("query", "expected"), [
    ("red shoes under $50", {"query": "red shoes", "price_max": 50.0}),
    ("shirts below 30 dollars", {"query": "shirts", "price_max": 30.0}),
    ("watch over $100", {"query": "watch", "price_min": 100.0}),
    ("boots $20-$40", {"query": "boots", "price_min": 20.0, "price_max": 40.0}),
    ("lamp between 10 and 25 usd", {"query": "lamp", "price_min": 10.0, "price_max": 25.0}),
    ("navy shirt", {"query": "navy shirt"}),
])
def test_rules_tier_reads_price_limits_and_keeps_the_rest(query, expected):
    understanding = validate(RuleTier().answer(query).payload)
    assert understanding.query == expected["query"]
    assert understanding.price_min == expected.get("price_min") and understanding.price_max == expected.get("price_max")


def test_rules_tier_reads_intent():
    assert validate(RuleTier().answer("gift for dad").payload).intent == "gift"
    assert validate(RuleTier().answer("return my order").payload).intent == "support"


def test_validation_names_the_broken_rule():
    with pytest.raises(InvalidAnswer, match="query"):
        validate({"category": "shoes"})
    with pytest.raises(InvalidAnswer, match="price_min"):
        validate({"query": "x", "price_min": -3})
    with pytest.raises(InvalidAnswer, match="not in the catalogue"):
        validate({"query": "x", "category": "spaceships"}, VOCAB)
    with pytest.raises(InvalidAnswer, match="colour"):
        validate({"query": "x", "attributes": {"colour": "ultraviolet"}}, VOCAB)
    with pytest.raises(InvalidAnswer, match="price_max 50 is not a number in the query"):
        validate({"query": "drill", "price_max": 50}, typed="cordless drill")  # an invented limit
    assert validate({"query": "drill", "price_max": 50}, typed="drill under $50").price_max == 50
    with pytest.raises(InvalidAnswer, match="no JSON"):
        validate("I think you mean shoes")
    ok = validate('Sure! {"query": "red shoes", "attributes": {"Colour": "Red"}} hope that helps', VOCAB)
    assert ok.query == "red shoes" and ok.filters() == {"attributes": {"colour": "Red"}}
    assert first_json_object('x {"a": {"b": 1}} y') == {"a": {"b": 1}}


def test_cascade_escalates_on_invalid_answers_and_on_useless_ones():
    cheap = Scripted("cheap", "not json at all")
    middle = Scripted("middle", '{"query": "red shose"}')
    best = Scripted("best", '{"query": "red shoes"}')
    cascade = Cascade([(t, TierPolicy()) for t in (cheap, middle, best)], VOCAB)
    result = cascade.understand("red shose", useful=lambda u: u.query == "red shoes")
    assert result.tier == "best" and result.understanding.query == "red shoes"
    assert [(s.tier, s.outcome) for s in result.steps] == [("cheap", "invalid"), ("middle", "not_useful"),
                                                           ("best", "accepted")]
    again = cascade.understand("red shose", useful=lambda u: True)  # served from the cache, no call
    assert again.tier == "cache" and best.calls == 1


def test_cascade_respects_request_and_daily_budgets():
    paid = Scripted("paid", '{"query": "q"}')
    policy = TierPolicy(usd_per_mtok_in=1000.0, usd_per_mtok_out=1000.0, max_tokens=200)  # $0.2+ a call
    cascade = Cascade([(paid, policy)], per_request_usd=0.1)
    result = cascade.understand("anything")
    assert result.steps[0].outcome == "over_budget" and paid.calls == 0
    roomy = Cascade([(paid, policy)], per_request_usd=10.0, per_day_usd=0.5)
    assert roomy.understand("first").tier == "paid"
    assert roomy.daily.spent == pytest.approx(policy.cost(100, 20))
    assert roomy.understand("second").tier == "paid"
    assert roomy.understand("third").steps[0].outcome == "over_budget"  # the day's budget is spent
    day = {"d": "2026-01-01"}
    budget = DailyBudget(1.0, today=lambda: day["d"])
    budget.spend(0.9)
    assert not budget.can_spend(0.2)
    day["d"] = "2026-01-02"
    assert budget.can_spend(0.2)


def test_circuit_breaker_opens_after_failures_and_recovers():
    now = {"t": 0.0}
    breaker = CircuitBreaker(failures=2, reset_s=10, clock=lambda: now["t"])
    breaker.record(False)
    assert breaker.allow()
    breaker.record(False)
    assert not breaker.allow() and breaker.state == "open"
    now["t"] = 11
    assert breaker.allow() and breaker.state == "half_open"
    breaker.record(True)
    assert breaker.state == "closed"

    flaky = Scripted("flaky", RuntimeError("provider down"))
    backup = Scripted("backup", '{"query": "q"}')
    cascade = Cascade([(flaky, TierPolicy()), (backup, TierPolicy())], breaker_failures=2)
    for _ in range(3):
        result = cascade.understand("q", use_cache=False)
        assert result.tier == "backup"
    assert flaky.calls == 2 and result.steps[0].outcome == "circuit_open"


def test_every_registered_tier_is_made_by_name():
    assert {"rules", "local", "anthropic", "openai"} <= set(LLM_TIERS)
    for name in LLM_TIERS:
        assert make_tier(name).name == name
    with pytest.raises(ValueError, match="unknown LLM tier"):
        make_tier("oracle")


def test_local_tier_is_skipped_while_loading():
    local = make_tier("local")  # not started: not loaded
    result = Cascade([(local, TierPolicy()), (RuleTier(), TierPolicy())]).understand("red shoes")
    assert [s.outcome for s in result.steps] == ["unavailable", "accepted"] and result.tier == "rules"


@pytest.mark.parametrize("tier_class", [AnthropicTier, OpenAICompatibleTier])
def test_hosted_tiers_through_the_official_clients(tier_class, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "test-key")
    with FakeProvider() as fake:
        base = fake.url if tier_class is AnthropicTier else fake.url + "/v1"
        tier = tier_class(model="fake-model", base_url=base, api_key_env="FAKE_LLM_KEY")
        policy = TierPolicy(timeout_ms=2000, usd_per_mtok_in=1.0, usd_per_mtok_out=5.0)
        cascade = Cascade([(tier, policy)], VOCAB)
        result = cascade.understand("red runing shoes under $50")
        assert result.tier == tier.name and result.understanding.price_max == 50
        step = result.steps[0]
        assert step.tokens_in > 0 and step.tokens_out > 0 and step.cost_usd == pytest.approx(policy.cost(
            step.tokens_in, step.tokens_out))
        sent = fake.calls[-1]
        assert sent["body"]["model"] == "fake-model" and "red runing shoes" in str(sent["body"]["messages"])

        fake.reply = "Sorry, I cannot help with that."
        assert cascade.understand("another query").steps[0].outcome == "invalid"
        fake.status = 500
        assert cascade.understand("third query").steps[0].outcome == "error"
        fake.status, fake.delay_s = 200, 1.0
        slow = Cascade([(tier, TierPolicy(timeout_ms=200))]).understand("fourth query")
        assert slow.steps[0].outcome == "timeout" and slow.understanding is None


def test_hosted_tier_without_a_key_is_unavailable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    result = Cascade([(AnthropicTier(api_key_env="NO_SUCH_KEY"), TierPolicy())]).understand("q")
    assert result.steps[0].outcome == "unavailable" and "NO_SUCH_KEY" in result.steps[0].detail
