"""MLflow tracking and the model registry: runs, model versions, aliases and the promotion gate."""

from skulens.tracking.registry import GateDecision, decide_promotion, promote_if_better

__all__ = ["GateDecision", "decide_promotion", "promote_if_better"]
