"""State that every serving worker and replica shares: routing, experiments, canary statistics,
budgets (:mod:`skulens.control.store`, :mod:`skulens.control.routing`)."""
