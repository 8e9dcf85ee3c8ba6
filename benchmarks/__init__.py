"""Benchmarks: what the ONNX path buys against PyTorch — latency, throughput, cold start, size.

`pytest benchmarks` (quick smoke, as CI runs it) or `MHIST_BENCH_MODE=full pytest benchmarks`;
results land in benchmarks/results/<timestamp>/ (see benchmarks/results/README.md).
"""

# The PyTorch baseline (benchmarks/baseline): a yardstick, never a serving target, so it is not
# in services/targets.py. Its name in test ids and result keys, beside the registry's targets.
BASELINE = "torch"
