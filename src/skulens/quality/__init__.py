"""Data-quality gates (Great Expectations 1.x) that stop a pipeline on bad data."""

from skulens.quality.gate import GateResult, QualityGateError, load_suite_spec, run_gate

__all__ = ["GateResult", "QualityGateError", "load_suite_spec", "run_gate"]
