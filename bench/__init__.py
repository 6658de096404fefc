"""Load generator and benchmarks for chatsvc, with baselines measured in the same run.

Run ``python -m bench --help``; see bench/README.md.
"""
