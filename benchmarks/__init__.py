"""Benchmarks: every algorithm x seed of a suite under one shared config and one NFE budget (docs/benchmarks.md).

`genrl bench SUITE --out DIR` or `genrl.benchmarks.harness.run_suite(SUITE, DIR)`;
suites are YAML files in `benchmarks/suites/` (schema in `genrl.benchmarks.suite`).
"""
