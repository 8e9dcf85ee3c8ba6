"""Benchmarks: what the ONNX path buys against PyTorch — latency, throughput, cold start, size.

`pytest benchmarks` (quick smoke, as CI runs it) or `MHIST_BENCH_MODE=full pytest benchmarks`;
results land in benchmarks/results/<timestamp>/ (see benchmarks/results/README.md).
"""
