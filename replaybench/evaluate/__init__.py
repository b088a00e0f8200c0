"""Evaluate: disaggregated metrics, concept/demographic association tests, the report."""
