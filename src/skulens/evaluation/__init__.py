"""Relevance metrics through a standard IR library (ir-measures / pytrec_eval), and dense runs."""

from skulens.evaluation.metrics import dense_run, evaluate, zero_useful_rate

__all__ = ["dense_run", "evaluate", "zero_useful_rate"]
