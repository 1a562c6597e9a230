"""Rules on saved tensors: gradients, activations, weights (AWS's parameter names and defaults)."""

from __future__ import annotations

import numpy as np
from smdebug.core.modes import ModeKeys

from insights.trial import LocalRule, bool_param, regex_list


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
        self.collections, self.regex = regex_list(collection_names), regex_list(tensor_regex)
        self.only_nan = bool_param(only_nan)

    def check(self, step):
        names = (
            self.names(self.collections, self.regex)
            if (self.collections or self.regex)
            else self.base_trial.tensor_names()
        )
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


class PoorWeightInitialization(LocalRule):
    """Over the first `steps` TRAIN steps: the variance of ReLU inputs differs across layers by
    more than `threshold` times; a gradient's 5th-95th percentile range is below
    `distribution_range`; or the loss has not decreased for `patience` steps."""

    def __init__(
        self,
        base_trial,
        activation_inputs_regex=".*relu_input",
        threshold=10.0,
        distribution_range=0.001,
        patience=5,
        steps=10,
    ):
        super().__init__(base_trial)
        self.activations = self.names(regex=regex_list(activation_inputs_regex))
        self.threshold, self.range = float(threshold), float(distribution_range)
        self.patience, self.steps = int(patience), int(steps)
        self.losses = self.loss_names()
        self.best_loss, self.since, self.losses_seen = np.inf, 0, 0

    def check(self, step):
        mode, mode_step = self.mode_of(step)
        if mode != ModeKeys.TRAIN or mode_step >= self.steps:
            return None
        variances = {
            n: float(np.var(v)) for n in self.activations if (v := self.value(n, step)) is not None and v.size > 1
        }
        if len(variances) > 1:
            self.judged += 1
            low, high = min(variances.values()), max(variances.values())
            if high > self.threshold * max(low, 1e-30):
                return (
                    f"ReLU input variance ranges from {low:.3g} ({min(variances, key=variances.__getitem__)}) "
                    f"to {high:.3g} ({max(variances, key=variances.__getitem__)}): over {self.threshold:g}x"
                )
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
        return (
            f"within the first {self.steps} TRAIN steps: no ReLU inputs of two layers, no gradients, and "
            f"{self.losses_seen} saved losses (more than {self.patience} needed)"
        )


class WeightUpdateRatio(LocalRule):
    """||w_t - w_prev|| / (||w_prev|| + epsilon) outside [small_threshold, large_threshold], w_prev
    being the previous saved TRAIN step at most `num_steps` earlier. Weights that did not change
    at all are frozen (trainable-layers), not slow, and are skipped."""

    def __init__(
        self, base_trial, num_steps=500, large_threshold=10.0, small_threshold=0.00000001, epsilon=0.000000001
    ):
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
        return (
            f"no trained weights saved at two TRAIN steps at most {self.num_steps} apart: "
            f"add weights to the collections (debugger-collections weights:N)"
        )
