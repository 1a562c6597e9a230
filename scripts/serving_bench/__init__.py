"""The serving benchmark's parts: workload (images, model), load generator, in-process limits, tables.
scripts/bench_serving.py (servers compared) and scripts/bench_precision.py (precisions) only parse arguments."""
