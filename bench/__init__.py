"""tracker-agent benchmarks: figures measured next to their baselines, run by `python -m bench`.

Benchmarks print numbers; they never assert timings. See bench/README.md.
"""
