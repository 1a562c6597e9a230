"""Hyperparameter presets the local tools share (values as Python values; SageMaker's strings via
contract.spec.hyperparameters.as_strings)."""

from __future__ import annotations

# Small and quick on the synthetic sample data (scripts/make_sample_data.py), yet it learns the
# classes well above chance in seconds; for real data e.g. --hp backbone=resnet50 --hp pretrained=imagenet
QUICK_MODEL = {"backbone": "resnet18", "pretrained": "none", "image-size": 64, "trainable-layers": 5}
# scripts/run_local.py's training on the sample data, and the tests' trainer runs
DEMO = {**QUICK_MODEL, "epochs": 5, "batch-size": 16, "lr": 0.001}
# scripts/tune_local.py on the sample data: lr and batch-size left to the search
TUNING_SAMPLE = {**QUICK_MODEL, "epochs": 3}
# the final training of scripts/run_local.py: losses every step (the loss rules judge medians over
# windows of them; a run of 5 epochs has 35 steps), weights and gradients now and then, the profiler
DEBUG = {"debugger": "true", "debugger-collections": "losses:1,weights:10,gradients:10", "profiler": "true"}
