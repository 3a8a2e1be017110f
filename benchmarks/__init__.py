"""Benchmarks and reports run from a checkout: `python -m benchmarks.generation`, `python -m
benchmarks.training`, `python -m benchmarks.model_card`. Results go to benchmarks/results/."""
