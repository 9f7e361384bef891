"""Meal (Meta-Aligner) engine: preference-weight net + weight-conditioned LLM policy, trained bi-level.

This package is a library with no knowledge of the web app or the worker; see docs/algorithm.md.
"""

__version__ = "0.1.0"
