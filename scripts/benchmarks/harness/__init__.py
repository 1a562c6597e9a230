"""The serving benchmark's parts: workload (images, model), load generator, in-process limits, tables.
benchmarks/serving.py (servers compared) and benchmarks/precision.py (precisions) only parse arguments."""
