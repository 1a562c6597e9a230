"""SageMaker Debugger's built-in rules, evaluated locally with smdebug's rule invoker.

    python -m insights.rules TRIAL_DIR_OR_S3_URI [--out summary.json] [--rule Overfit ...]
                            [--param Overfit.patience=3 ...]

prints `IssuesFound` / `NoIssuesFound` / `NotEnoughData` per rule, with the
first step that triggered it (or what the rule would need), and writes a JSON
summary. A rule that could not make a single comparison says NotEnoughData:
"no issues" would claim more than it looked at. The rules are the ones the seeds
attached (VanishingGradient, Overfit, Overtraining, PoorWeightInitialization,
LossNotDecreasing) plus ExplodingTensor and WeightUpdateRatio, with the
parameter names and defaults AWS documents for its built-in rules.

RULES is the one list both sides use: `sagemaker_debugger_config()` builds the
SageMaker SDK objects (Rule.sagemaker(rule_configs...), DebuggerHookConfig,
ProfilerConfig and the profiler rules) from it, so the rules run locally and
in AWS agree. Steps are smdebug's global steps; "TRAIN step" / "EVAL step"
mean a step's number within its mode.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

if "google.protobuf" not in sys.modules:  # smdebug's protobuf code needs the pure-Python implementation
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")

import numpy as np  # noqa: E402
from smdebug.core.modes import ModeKeys  # noqa: E402
from smdebug.exceptions import TensorUnavailableForStep  # noqa: E402
from smdebug.rules import Rule, invoke_rule  # noqa: E402

LOSS_NAME = "CrossEntropyLoss_output_0"
ISSUES, NO_ISSUES, NOT_ENOUGH_DATA = "IssuesFound", "NoIssuesFound", "NotEnoughData"


def _regex_list(value) -> list[str]:
    if value is None or value == "":
        return []
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


class LocalRule(Rule):
    """smdebug Rule that remembers the first step it fired at, and why, and counts its
    judgements: the comparisons it could make. `check` adds to `judged` whenever it had
    the data to decide; with none, the verdict is NotEnoughData and `needs` says why."""

    def __init__(self, base_trial):
        super().__init__(base_trial, action_str="")
        self.first_step, self.message, self.checked, self.judged = None, "", 0, 0

    def invoke_at_step(self, step):
        message = self.check(step)
        self.checked += 1
        if message and self.first_step is None:
            self.first_step, self.message = step, message
        return bool(message)

    def check(self, step) -> str | None:
        raise NotImplementedError

    def needs(self) -> str:
        """What the rule lacked, for a NotEnoughData verdict."""
        raise NotImplementedError

    def verdict(self) -> tuple[str, str]:
        if self.first_step is not None:
            return ISSUES, self.message
        return (NO_ISSUES, "") if self.judged else (NOT_ENOUGH_DATA, self.needs())

    # helpers over the trial
    def mode_of(self, step) -> tuple[ModeKeys, int]:
        return self.base_trial.mode(step), self.base_trial.mode_step(step)

    def names(self, collections=(), regex=()) -> list[str]:
        names = set()
        for collection in collections:
            try:
                names.update(self.base_trial.tensor_names(collection=collection))
            except Exception:  # collection absent from this trial
                pass
        if regex:
            names.update(self.base_trial.tensor_names(regex=list(regex)))
        return sorted(names)

    def value(self, name, step, mode=ModeKeys.GLOBAL):
        try:
            return np.asarray(self.base_trial.tensor(name).value(step, mode=mode), dtype=np.float64)
        except TensorUnavailableForStep:
            return None

    def loss_names(self, collection_names=(), tensor_regex=(), use_losses_collection=True) -> list[str]:
        names = self.names(list(collection_names) + (["losses"] if use_losses_collection else []), tensor_regex)
        return [n for n in names if not n.startswith("scalar/")]


class VanishingGradient(LocalRule):
    """Any gradient whose mean absolute value is below `threshold`."""

    def __init__(self, base_trial, threshold=0.0000001):
        super().__init__(base_trial)
        self.threshold = float(threshold)

    def check(self, step):
        for name in self.names(["gradients"]):
            value = self.value(name, step)
            if value is not None and value.size:
                self.judged += 1
                if np.mean(np.abs(value)) < self.threshold:
                    return f"{name}: mean |gradient| {np.mean(np.abs(value)):.3g} < {self.threshold:g}"
        return None

    def needs(self):
        return "no gradients saved: add gradients to the collections (debugger-collections gradients:N)"


class ExplodingTensor(LocalRule):
    """Any NaN (or, unless `only_nan`, infinite) value in the selected tensors (all when none selected)."""

    def __init__(self, base_trial, collection_names=None, tensor_regex=None, only_nan=False):
        super().__init__(base_trial)
        self.collections, self.regex = _regex_list(collection_names), _regex_list(tensor_regex)
        self.only_nan = _bool(only_nan)

    def check(self, step):
        names = self.names(self.collections, self.regex) if (self.collections or self.regex) \
            else self.base_trial.tensor_names()
        for name in names:
            value = self.value(name, step)
            if value is None:
                continue
            self.judged += 1
            bad = np.isnan(value) if self.only_nan else ~np.isfinite(value)
            if bad.any():
                return f"{name}: {int(bad.sum())} non-finite value(s)"
        return None

    def needs(self):
        return "no tensors of the selected collections saved"


# One saved loss is one batch's: comparing two of them compares two batches' difficulty (and an
# epoch's last batch may hold one image). A window's median of this many saved losses or more is
# the loss there: one odd batch cannot move it.
MIN_LOSSES_PER_WINDOW = 3
# A loss this far below its first window's (or epoch's) has converged, not stalled: its plateau is no issue
CONVERGED_DECREASE = 0.25
# The trainer's per-epoch mean losses (debugger.save_scalar), smoothed over every batch of an epoch
EPOCH_LOSSES = {ModeKeys.TRAIN: "scalar/train_loss", ModeKeys.EVAL: "scalar/validation_loss"}


class LossNotDecreasing(LocalRule):
    """AWS's rule, on smoothed losses. The losses of `mode` saved in each window of `num_steps`
    steps are reduced to their median; each window's must be `diff_percent` % below the previous
    window's, unless the loss has already fallen CONVERGED_DECREASE below the first window's (a
    converged run's plateau), and may not rise `increase_threshold_percent` % above the lowest
    before it and over the previous window's upper quartile (a rise above the batches' noise). A
    window counts when the run covered all its steps, with MIN_LOSSES_PER_WINDOW saved losses. Where
    the saved losses are too sparse for two such windows (a short run, a long save interval), the
    epochs' mean losses that the trainer records are compared instead, epoch after epoch; with
    neither, the verdict is NotEnoughData.
    Without `mode`, the first of EVAL, TRAIN, GLOBAL with losses is used (as AWS documents)."""

    def __init__(self, base_trial, collection_names=None, tensor_regex=None, use_losses_collection=True,
                 num_steps=10, diff_percent=0.0, increase_threshold_percent=5.0, mode=None):
        super().__init__(base_trial)
        self.num_steps, self.diff = int(num_steps), float(diff_percent)
        self.increase = float(increase_threshold_percent)
        self.tensors = self.loss_names(_regex_list(collection_names), _regex_list(tensor_regex),
                                       _bool(use_losses_collection))
        self.mode = ModeKeys[mode.upper()] if isinstance(mode, str) and mode else mode
        self.findings = None  # global step -> message ("" = the loss decreased there)

    def _mode(self):
        if self.mode is None:
            for mode in (ModeKeys.EVAL, ModeKeys.TRAIN, ModeKeys.GLOBAL):
                if any(self.base_trial.tensor(n).steps(mode=mode) for n in self.tensors):
                    self.mode = mode
                    break
        return self.mode

    def _global(self, mode, mode_step) -> int:
        return mode_step if mode == ModeKeys.GLOBAL else self.base_trial.global_step(mode, mode_step)

    def windows(self, name, mode) -> list[tuple[int, str, float]]:
        """(global step ending it, its steps, median loss) of each window with enough saved losses."""
        groups: dict[int, list[int]] = {}
        saved = self.base_trial.tensor(name).steps(mode=mode)
        for step in saved:
            groups.setdefault(step // self.num_steps, []).append(step)
        series, previous = [], None
        for window, steps in sorted(groups.items()):
            # A window counts when the run covered all of it, with enough saved losses: the run's
            # last few steps alone (often one short epoch's tail) are too few to judge a trend by.
            if len(steps) < MIN_LOSSES_PER_WINDOW or (window + 1) * self.num_steps - 1 > saved[-1]:
                continue
            if previous is not None and window != previous + 1:
                series.append(None)  # a gap: the windows either side are not compared
            values = [self.value(name, s, mode) for s in steps]
            series.append((self._global(mode, steps[-1]), f"{mode.name} steps {steps[0]}-{steps[-1]}",
                           float(np.median(values)), float(np.percentile(values, 75))))
            previous = window
        return series

    def epochs(self, mode) -> list[tuple[int, str, float]]:
        name = EPOCH_LOSSES.get(mode)
        if name not in self.base_trial.tensor_names():
            return []
        tensor = self.base_trial.tensor(name)
        return [(step, f"epoch {number} ({name})", float(tensor.value(step)), float(tensor.value(step)))
                for number, step in enumerate(tensor.steps(), start=1)]

    def compare(self, label, series) -> dict[int, str]:
        """series: (global step, what, median loss, its upper quartile) per window or epoch; None = gap."""
        findings, lowest = {}, np.inf
        start = next((point[2] for point in series if point is not None), None)
        for before, now in zip(series, series[1:], strict=False):
            if before is None or now is None:
                continue
            lowest = min(lowest, before[2])
            message = ""
            # A plateau is an issue while the loss is still near where the run began (stuck), not
            # once it has fallen far (converged): there, two windows' medians differ by noise alone.
            converged = now[2] <= start * (1 - CONVERGED_DECREASE)
            if not now[2] <= before[2] * (1 - self.diff / 100) and not converged:
                message = (f"{label}: {now[2]:.4g} over {now[1]}, not {self.diff:g}% below "
                           f"{before[2]:.4g} over {before[1]}, and within {CONVERGED_DECREASE:.0%} of "
                           f"where the run began ({start:.4g})")
            # a rise counts when it is above the noise: over the earlier window's upper quartile
            elif now[2] > lowest * (1 + self.increase / 100) and now[2] > before[3]:
                message = (f"{label}: {now[2]:.4g} over {now[1]} is over {self.increase:g}% above "
                           f"the lowest before it, {lowest:.4g}")
            findings[now[0]] = message
        return findings

    def _findings(self) -> dict[int, str]:
        mode, findings = self._mode(), {}
        if mode is None:
            return findings
        for name in self.tensors:
            found = self.compare(f"{name} ({mode.name})", self.windows(name, mode))
            findings.update({step: findings.get(step) or message for step, message in found.items()})
        if not findings:
            findings = self.compare(f"{mode.name} loss per epoch", self.epochs(mode))
        return findings

    def check(self, step):
        if self.findings is None:
            self.findings = self._findings()
        if step not in self.findings:
            return None
        self.judged += 1
        return self.findings[step] or None

    def needs(self):
        mode = self.mode.name if self.mode else "any mode"
        return (f"no two {self.num_steps}-step windows of {mode} with {MIN_LOSSES_PER_WINDOW} saved losses each, "
                f"and fewer than two epochs' mean losses: save losses every step (debugger-collections "
                f"losses:1) and train for at least {2 * self.num_steps} steps")


def _phase_means(trial, name) -> list[tuple[int, float, float]]:
    """(last global step of an EVAL phase, mean TRAIN loss before it, mean EVAL loss in it)."""
    tensor = trial.tensor(name)
    train, evals = set(tensor.steps(mode=ModeKeys.TRAIN)), set(tensor.steps(mode=ModeKeys.EVAL))
    phases, train_values, eval_values, last_eval = [], [], [], None
    for step in trial.steps():
        mode, mode_step = trial.mode(step), trial.mode_step(step)
        if mode == ModeKeys.TRAIN and mode_step in train:
            if eval_values and train_values:
                phases.append((last_eval, np.mean(train_values), np.mean(eval_values)))
                train_values, eval_values = [], []
            train_values.append(float(tensor.value(mode_step, mode=mode)))
        elif mode == ModeKeys.EVAL and mode_step in evals:
            eval_values.append(float(tensor.value(mode_step, mode=mode)))
            last_eval = step
    if eval_values and train_values:
        phases.append((last_eval, np.mean(train_values), np.mean(eval_values)))
    return phases


class Overfit(LocalRule):
    """After each validation pass: (mean validation loss - mean training loss since the
    previous pass) / mean training loss above `ratio_threshold` for `patience` passes."""

    def __init__(self, base_trial, tensor_regex=None, start_step=0, patience=1, ratio_threshold=0.1):
        super().__init__(base_trial)
        self.start, self.patience, self.ratio = int(start_step), int(patience), float(ratio_threshold)
        self.tensors = self.loss_names(tensor_regex=_regex_list(tensor_regex))
        self.phases = None
        self.streak = self.passes = 0

    def check(self, step):
        if self.phases is None:
            self.phases = {n: {p[0]: p for p in _phase_means(self.base_trial, n)} for n in self.tensors}
        for name in self.tensors:
            phase = self.phases[name].get(step)
            if phase is None or step < self.start:
                continue
            _, train, val = phase
            self.passes += 1
            self.judged += self.passes >= self.patience  # fewer passes than patience cannot trigger it
            ratio = (val - train) / max(abs(train), 1e-12)
            self.streak = self.streak + 1 if ratio > self.ratio else 0
            if self.streak >= self.patience:
                return (f"{name}: validation {val:.4g} vs training {train:.4g}, ratio {ratio:.3g} > "
                        f"{self.ratio:g} for {self.streak} validation pass(es)")
        return None

    def needs(self):
        return (f"{self.passes} validation pass(es) with saved training and validation losses after step "
                f"{self.start}; patience is {self.patience}")


class Overtraining(LocalRule):
    """Training loss not better by `delta` for `patience_train` TRAIN steps, or validation loss
    not better by `delta` for `patience_validation` EVAL steps; the loss at a step being the
    median of the last MIN_LOSSES_PER_WINDOW saved (one lucky batch is not a best to beat)."""

    def __init__(self, base_trial, patience_train=5, patience_validation=10, delta=0.01):
        super().__init__(base_trial)
        self.patience = {ModeKeys.TRAIN: int(patience_train), ModeKeys.EVAL: int(patience_validation)}
        self.delta = float(delta)
        self.tensors = self.loss_names()
        self.best, self.since, self.seen, self.recent = {}, {}, {}, {}

    def check(self, step):
        mode, mode_step = self.mode_of(step)
        if mode not in self.patience:
            return None
        for name in self.tensors:
            value = self.value(name, mode_step, mode)
            if value is None:
                continue
            key = (name, mode)
            recent = self.recent.setdefault(key, [])
            recent.append(float(value))
            if len(recent) < MIN_LOSSES_PER_WINDOW:
                continue
            value = np.median(recent[-MIN_LOSSES_PER_WINDOW:])
            self.seen[key] = self.seen.get(key, 0) + 1
            self.judged += self.seen[key] > self.patience[mode]  # only then can `since` reach patience
            if float(value) < self.best.get(key, np.inf) - self.delta:
                self.best[key], self.since[key] = float(value), 0
            else:
                self.since[key] = self.since.get(key, 0) + 1
            if self.since[key] >= self.patience[mode]:
                return (f"{name} ({mode.name}): no improvement by {self.delta:g} over {self.best[key]:.4g} "
                        f"for {self.since[key]} steps")
        return None

    def needs(self):
        seen = {mode.name: len(values) for (_, mode), values in self.recent.items()}
        return (f"saved losses {seen or 'none'}: more than {self.patience[ModeKeys.TRAIN]} TRAIN or "
                f"{self.patience[ModeKeys.EVAL]} EVAL steps (after the first {MIN_LOSSES_PER_WINDOW - 1}) "
                f"are needed")


class PoorWeightInitialization(LocalRule):
    """Over the first `steps` TRAIN steps: the variance of ReLU inputs differs across layers by
    more than `threshold` times; a gradient's 5th-95th percentile range is below
    `distribution_range`; or the loss has not decreased for `patience` steps."""

    def __init__(self, base_trial, activation_inputs_regex=".*relu_input", threshold=10.0,
                 distribution_range=0.001, patience=5, steps=10):
        super().__init__(base_trial)
        self.activations = self.names(regex=_regex_list(activation_inputs_regex))
        self.threshold, self.range = float(threshold), float(distribution_range)
        self.patience, self.steps = int(patience), int(steps)
        self.losses = self.loss_names()
        self.best_loss, self.since, self.losses_seen = np.inf, 0, 0

    def check(self, step):
        mode, mode_step = self.mode_of(step)
        if mode != ModeKeys.TRAIN or mode_step >= self.steps:
            return None
        variances = {n: float(np.var(v)) for n in self.activations
                     if (v := self.value(n, step)) is not None and v.size > 1}
        if len(variances) > 1:
            self.judged += 1
            low, high = min(variances.values()), max(variances.values())
            if high > self.threshold * max(low, 1e-30):
                return (f"ReLU input variance ranges from {low:.3g} ({min(variances, key=variances.get)}) "
                        f"to {high:.3g} ({max(variances, key=variances.get)}): over {self.threshold:g}x")
        for name in self.names(["gradients"]):
            value = self.value(name, step)
            if value is not None and value.size > 1:
                self.judged += 1
                spread = float(np.subtract(*np.percentile(value, [95, 5])))
                if spread < self.range:
                    return f"{name}: 5th-95th percentile range {spread:.3g} < {self.range:g}"
        for name in self.losses[:1]:
            value = self.value(name, mode_step, ModeKeys.TRAIN)
            if value is None:
                continue
            self.losses_seen += 1
            self.judged += self.losses_seen > self.patience
            if float(value) < self.best_loss:
                self.best_loss, self.since = float(value), 0
            else:
                self.since += 1
            if self.since >= self.patience:
                return f"{name}: loss has not decreased for {self.since} of the first {self.steps} steps"
        return None

    def needs(self):
        return (f"within the first {self.steps} TRAIN steps: no ReLU inputs of two layers, no gradients, and "
                f"{self.losses_seen} saved losses (more than {self.patience} needed)")


class WeightUpdateRatio(LocalRule):
    """||w_t - w_prev|| / (||w_prev|| + epsilon) outside [small_threshold, large_threshold], w_prev
    being the previous saved TRAIN step at most `num_steps` earlier. Weights that did not change
    at all are frozen (trainable-layers), not slow, and are skipped."""

    def __init__(self, base_trial, num_steps=500, large_threshold=10.0, small_threshold=0.00000001,
                 epsilon=0.000000001):
        super().__init__(base_trial)
        self.num_steps, self.large, self.small = int(num_steps), float(large_threshold), float(small_threshold)
        self.epsilon = float(epsilon)

    def check(self, step):
        mode, mode_step = self.mode_of(step)
        if mode != ModeKeys.TRAIN:
            return None
        for name in self.names(["weights"]):
            steps = self.base_trial.tensor(name).steps(mode=ModeKeys.TRAIN)
            earlier = [s for s in steps if mode_step - self.num_steps <= s < mode_step]
            if mode_step not in steps or not earlier:
                continue
            now = self.value(name, mode_step, ModeKeys.TRAIN)
            before = self.value(name, earlier[-1], ModeKeys.TRAIN)
            update = float(np.linalg.norm(now - before))
            if update == 0.0:
                continue
            self.judged += 1
            ratio = update / (float(np.linalg.norm(before)) + self.epsilon)
            if not self.small <= ratio <= self.large:
                return f"{name}: update/weight ratio {ratio:.3g} outside [{self.small:g}, {self.large:g}]"
        return None

    def needs(self):
        return (f"no trained weights saved at two TRAIN steps at most {self.num_steps} apart: "
                f"add weights to the collections (debugger-collections weights:N)")


@dataclass(frozen=True)
class RuleSpec:
    cls: type
    sdk_config: str  # the function in sagemaker.debugger.rule_configs
    parameters: dict = field(default_factory=dict)  # overrides of AWS's defaults, for both sides

    @property
    def name(self) -> str:
        return self.cls.__name__


RULES = [
    RuleSpec(VanishingGradient, "vanishing_gradient"),
    RuleSpec(Overfit, "overfit"),
    RuleSpec(Overtraining, "overtraining"),
    RuleSpec(PoorWeightInitialization, "poor_weight_initialization"),
    # TRAIN: a validation pass is a handful of steps, too few for num_steps=10 to compare anything
    RuleSpec(LossNotDecreasing, "loss_not_decreasing", {"mode": "TRAIN"}),
    RuleSpec(ExplodingTensor, "exploding_tensor"),
    RuleSpec(WeightUpdateRatio, "weight_update_ratio"),
]
BY_NAME = {spec.name: spec for spec in RULES}
# Collections the rules read, with the save interval AWS's rule configs use; but the losses every
# step (one number each): LossNotDecreasing and Overtraining take medians of several saved losses.
COLLECTIONS = {"losses": 1, "weights": 500, "gradients": 500, "relu_input": 500}
PROFILER_RULES = ["ProfilerReport", "LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "BatchSize",
                  "StepOutlier"]


def sagemaker_debugger_config(s3_output_path: str | None = None, rule_names: list[str] | None = None,
                              parameters: dict | None = None, collections: dict | None = None,
                              system_monitor_interval_millis: int = 500) -> dict:
    """Estimator keyword arguments: rules, debugger_hook_config, profiler_config.

    `parameters` = {"Overfit": {"patience": 3}} overrides RULES' parameters;
    `collections` = {"losses": 10} overrides COLLECTIONS' save intervals.
    """
    from sagemaker.debugger import (
        CollectionConfig,
        DebuggerHookConfig,
        ProfilerConfig,
        ProfilerRule,
        Rule,
        rule_configs,
    )

    rules = []
    for spec in (BY_NAME[n] for n in (rule_names or [s.name for s in RULES])):
        values = {**spec.parameters, **(parameters or {}).get(spec.name, {})}
        rules.append(Rule.sagemaker(getattr(rule_configs, spec.sdk_config)(),
                                    rule_parameters={k: str(v) for k, v in values.items()}))
    intervals = {**COLLECTIONS, **(collections or {})}
    configs = [CollectionConfig(name, parameters={"save_interval": str(every)}) for name, every in intervals.items()]
    if "relu_input" in intervals:
        configs[list(intervals).index("relu_input")].parameters["include_regex"] = ".*relu_input"
    hook = DebuggerHookConfig(s3_output_path=s3_output_path, collection_configs=configs)
    profiler_rules = [ProfilerRule.sagemaker(getattr(rule_configs, name)()) for name in PROFILER_RULES]
    return {"rules": rules + profiler_rules, "debugger_hook_config": hook,
            "profiler_config": ProfilerConfig(system_monitor_interval_millis=system_monitor_interval_millis)}


def open_trial(trial_path: str):
    """smdebug's trial; a local folder without the hook's collection files is refused at
    once, because create_trial would otherwise wait for them forever."""
    from pathlib import Path

    from smdebug.trials import create_trial

    if not str(trial_path).startswith("s3://") and not list(Path(trial_path).glob("collections/*/*collections.json")):
        raise SystemExit(f"no smdebug trial in {trial_path}: did the job run with the debugger on?")
    return create_trial(trial_path)


def run(trial_path: str, rule_names: list[str] | None = None, parameters: dict | None = None) -> dict:
    """Evaluate the rules over a finished trial; {rule: {status, first_step, message, parameters,
    judgements}}, status IssuesFound, NoIssuesFound or NotEnoughData (message: what was missing)."""
    trial = open_trial(trial_path)
    steps = trial.steps()
    results = {}
    for spec in (BY_NAME[n] for n in (rule_names or [s.name for s in RULES])):
        values = {**spec.parameters, **(parameters or {}).get(spec.name, {})}
        rule = spec.cls(trial, **values)
        if steps:
            # end_step: a trial's last step is known, and invoke_rule would otherwise wait for more
            invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1)
        status, message = rule.verdict()
        results[spec.name] = {"status": status, "first_step": rule.first_step, "message": message,
                              "parameters": values, "steps_checked": rule.checked, "judgements": rule.judged}
    return results


def _parse_params(items: list[str]) -> dict:
    params: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        rule, _, name = key.partition(".")
        if rule not in BY_NAME or not name:
            raise SystemExit(f"--param {item!r}: expected Rule.parameter=value, Rule one of {', '.join(BY_NAME)}")
        params.setdefault(rule, {})[name] = value
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m insights.rules", description=__doc__.split("\n\n")[0])
    parser.add_argument("trial", help="smdebug trial folder or s3:// URI (e.g. /opt/ml/output/tensors)")
    parser.add_argument("--out", help="JSON summary file")
    parser.add_argument("--rule", action="append", choices=list(BY_NAME), help="only these rules")
    parser.add_argument("--param", action="append", default=[], help="Rule.parameter=value")
    args = parser.parse_args(argv)
    results = run(args.trial, args.rule, _parse_params(args.param))
    for name, result in results.items():
        where = f" at step {result['first_step']}" if result["first_step"] is not None else ""
        why = f": {result['message']}" if result["message"] else ""
        print(f"{name:26s} {result['status']}{where}{why}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"trial": args.trial, "rules": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
