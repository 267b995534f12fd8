"""The search service's domain code: request validation, the staged search pipeline with budgets
and fallbacks, spelling correction. The BentoML app in ``serving/`` wraps it."""
