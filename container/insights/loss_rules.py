"""Rules on the loss: LossNotDecreasing, Overfit, Overtraining, each judged on smoothed losses.

One saved loss is one batch's, so single steps are never compared: a window's
median, a validation pass's mean, or the trainer's per-epoch means stand for
the loss there.
"""

from __future__ import annotations

import numpy as np
from smdebug.core.modes import ModeKeys

from insights.trial import EPOCH_LOSSES, LocalRule, bool_param, phase_means, regex_list

# One saved loss is one batch's: comparing two of them compares two batches' difficulty (and an
# epoch's last batch may hold one image). A window's median of this many saved losses or more is
# the loss there: one odd batch cannot move it.
MIN_LOSSES_PER_WINDOW = 3
# A loss this far below its first window's (or epoch's) has converged, not stalled: its plateau is no issue
CONVERGED_DECREASE = 0.25

# a window's or epoch's losses: (global step, what, median, upper quartile)
Point = tuple[int, str, float, float]


class LossNotDecreasing(LocalRule):
    """AWS's rule, on smoothed losses. The losses of `mode` saved in each window of `num_steps`
    steps are reduced to their median; each window's must be `diff_percent` % below the previous
    window's, unless the loss has already fallen CONVERGED_DECREASE below the first window's (a
    converged run's plateau), and may not rise `increase_threshold_percent` % above the lowest
    before it and over the previous window's upper quartile (a rise above the batches' noise). A
    window counts when the run covered all its steps, with MIN_LOSSES_PER_WINDOW saved losses.
    Where the saved losses are too sparse for two such windows (a short run, a long save
    interval), the epochs' mean losses that the trainer records are compared instead, epoch
    after epoch; with neither, the verdict is NotEnoughData.
    Without `mode`, the first of EVAL, TRAIN, GLOBAL with losses is used (as AWS documents)."""

    def __init__(
        self,
        base_trial,
        collection_names=None,
        tensor_regex=None,
        use_losses_collection=True,
        num_steps=10,
        diff_percent=0.0,
        increase_threshold_percent=5.0,
        mode=None,
    ):
        super().__init__(base_trial)
        self.num_steps, self.diff = int(num_steps), float(diff_percent)
        self.increase = float(increase_threshold_percent)
        self.tensors = self.loss_names(
            regex_list(collection_names), regex_list(tensor_regex), bool_param(use_losses_collection)
        )
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

    def windows(self, name, mode) -> list[Point | None]:
        """(global step ending it, its steps, median loss) of each window with enough saved losses."""
        groups: dict[int, list[int]] = {}
        saved = self.base_trial.tensor(name).steps(mode=mode)
        for step in saved:
            groups.setdefault(step // self.num_steps, []).append(step)
        series: list[Point | None] = []
        previous = None
        for window, steps in sorted(groups.items()):
            # A window counts when the run covered all of it, with enough saved losses: the run's
            # last few steps alone (often one short epoch's tail) are too few to judge a trend by.
            if len(steps) < MIN_LOSSES_PER_WINDOW or (window + 1) * self.num_steps - 1 > saved[-1]:
                continue
            if previous is not None and window != previous + 1:
                series.append(None)  # a gap: the windows either side are not compared
            values = [self.value(name, s, mode) for s in steps]
            series.append(
                (
                    self._global(mode, steps[-1]),
                    f"{mode.name} steps {steps[0]}-{steps[-1]}",
                    float(np.median(values)),
                    float(np.percentile(values, 75)),
                )
            )
            previous = window
        return series

    def epochs(self, mode) -> list[Point]:
        name = EPOCH_LOSSES.get(mode)
        if name not in self.base_trial.tensor_names():
            return []
        tensor = self.base_trial.tensor(name)
        return [
            (step, f"epoch {number} ({name})", float(tensor.value(step)), float(tensor.value(step)))
            for number, step in enumerate(tensor.steps(), start=1)
        ]

    def compare(self, label, series) -> dict[int, str]:
        """series: (global step, what, median loss, its upper quartile) per window or epoch; None = gap."""
        findings: dict[int, str] = {}
        lowest = np.inf
        start = next((point[2] for point in series if point is not None), None)
        if start is None:  # no window at all: nothing to compare
            return findings
        for before, now in zip(series, series[1:], strict=False):
            if before is None or now is None:
                continue
            lowest = min(lowest, before[2])
            message = ""
            # A plateau is an issue while the loss is still near where the run began (stuck), not
            # once it has fallen far (converged): there, two windows' medians differ by noise alone.
            converged = now[2] <= start * (1 - CONVERGED_DECREASE)
            if not now[2] <= before[2] * (1 - self.diff / 100) and not converged:
                message = (
                    f"{label}: {now[2]:.4g} over {now[1]}, not {self.diff:g}% below "
                    f"{before[2]:.4g} over {before[1]}, and within {CONVERGED_DECREASE:.0%} of "
                    f"where the run began ({start:.4g})"
                )
            # a rise counts when it is above the noise: over the earlier window's upper quartile
            elif now[2] > lowest * (1 + self.increase / 100) and now[2] > before[3]:
                message = (
                    f"{label}: {now[2]:.4g} over {now[1]} is over {self.increase:g}% above "
                    f"the lowest before it, {lowest:.4g}"
                )
            findings[now[0]] = message
        return findings

    def _findings(self) -> dict[int, str]:
        mode, findings = self._mode(), dict[int, str]()
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
        return (
            f"no two {self.num_steps}-step windows of {mode} with {MIN_LOSSES_PER_WINDOW} saved losses each, "
            f"and fewer than two epochs' mean losses: save losses every step (debugger-collections "
            f"losses:1) and train for at least {2 * self.num_steps} steps"
        )


# Evidence for a trend in the validation loss: this many passes after its best, none of them better
PASSES_AFTER_BEST = 2


class ValidationPassRule(LocalRule):
    """Overfit's and Overtraining's ground: each validation pass's mean loss and the mean training
    loss since the pass before (phase_means), judged from the first pass whose validation loss is
    below the loss the run began with (its first saved training loss: the untrained model's, near
    chance) on. Before that pass the model has learnt nothing that carries to unseen images, or,
    trained from scratch, BatchNorm's running statistics have not settled: four seeds of one such run
    had validation losses of 220 to 3,100 against training losses of 1.6 to 4.6, moving 2x from pass
    to pass for six passes. Overfitting is generalisation lost, overtraining generalisation no longer
    gained: neither can be read from those passes."""

    def __init__(self, base_trial):
        super().__init__(base_trial)
        self.tensors = self.loss_names()
        self.phases: dict | None = None  # per tensor: its validation passes by step, read at the first call
        self.began: dict = {}  # per tensor: its first saved training loss
        self.seen, self.passes = {}, {}  # per tensor: passes seen; passes judged (from the first that generalises)

    def judged_pass(self, name, step):
        """The validation pass that ends at `step`, when it is one to judge; else None."""
        if self.phases is None:
            self.phases = {n: {p.step: p for p in phase_means(self.base_trial, n)} for n in self.tensors}
            self.began = {n: self.first_training_loss(n) for n in self.tensors}
        phase = self.phases[name].get(step)
        if phase is None:
            return None
        self.seen[name] = self.seen.get(name, 0) + 1
        if not self.passes.get(name) and not phase.validation < self.began[name]:
            return None  # not generalising yet
        self.passes[name] = self.passes.get(name, 0) + 1
        return phase

    def first_training_loss(self, name) -> float:
        steps = self.base_trial.tensor(name).steps(mode=ModeKeys.TRAIN)
        value = self.value(name, steps[0], ModeKeys.TRAIN) if steps else None
        return float("inf") if value is None else float(value)

    def passes_found(self) -> str:
        seen, passes = max(self.seen.values(), default=0), max(self.passes.values(), default=0)
        began = ", ".join(f"{v:.4g}" for v in (self.began or {}).values()) or "none saved"
        return (
            f"{seen} validation pass(es) with saved training and validation losses, {passes} of them from the "
            f"first whose validation loss was below the loss the run began with ({began})"
        )


class Overfit(ValidationPassRule):
    """Overfitting, shown by the validation passes' mean losses: the validation loss has risen
    `ratio_threshold` (a fraction) above its own best of the earlier passes while the training loss
    (its mean since the previous pass) fell `ratio_threshold` below what it was at that best, and the
    validation loss is `ratio_threshold` above the training loss (AWS's measure), for `patience`
    passes in a row. AWS's rule compares validation with training loss alone, so a from-scratch
    run's first passes (BatchNorm statistics not yet settled: validation loss 100x the training
    loss) are "overfitting" there; here passes count as ValidationPassRule says, the first of them
    only a best to compare with, and a training loss that moved by noise alone is no fall. Without
    a pass to compare, the verdict is NotEnoughData."""

    def __init__(self, base_trial, tensor_regex=None, start_step=0, patience=1, ratio_threshold=0.1):
        super().__init__(base_trial)
        self.start, self.patience, self.ratio = int(start_step), int(patience), float(ratio_threshold)
        if tensor_regex:
            self.tensors = self.loss_names(tensor_regex=regex_list(tensor_regex))
        self.best, self.streak = {}, {}  # per tensor: best pass, overfitting passes in a row

    def check(self, step):
        for name in self.tensors:
            phase = self.judged_pass(name, step) if step >= self.start else None
            if phase is None:
                continue
            best = self.best.get(name)
            if best is None or phase.validation < best.validation:
                self.best[name], self.streak[name] = phase, 0
                self.judged += best is not None and self.passes[name] > self.patience
                continue
            self.judged += self.passes[name] > self.patience  # a best before, and room for the streak
            rose = phase.validation > best.validation * (1 + self.ratio)
            fell = phase.train < best.train * (1 - self.ratio)
            gap = (phase.validation - phase.train) / max(abs(phase.train), 1e-12)
            self.streak[name] = self.streak[name] + 1 if rose and fell and gap > self.ratio else 0
            if self.streak[name] >= self.patience:
                return (
                    f"{name}: validation loss {phase.validation:.4g} is over {self.ratio:.0%} above its best "
                    f"{best.validation:.4g} (step {best.step}) while the training loss fell from "
                    f"{best.train:.4g} to {phase.train:.4g}, for {self.streak[name]} validation pass(es)"
                )
        return None

    def needs(self):
        return (
            f"{self.passes_found()}, counting passes after step {self.start}: a first to set the best, "
            f"then {self.patience} more (patience) are needed"
        )


class Overtraining(ValidationPassRule):
    """Training that goes on after the validation loss stopped improving, judged on the validation
    passes' mean losses (counted as ValidationPassRule says): no pass has been `delta` (a fraction of
    the best) below the best one for PASSES_AFTER_BEST passes or more, and since that best the job
    trained `patience_train` TRAIN steps or ran `patience_validation` EVAL steps. AWS's rule also
    fires when single TRAIN steps' losses stop improving, which batch noise does in any converged
    run; a still-improving validation loss is no overtraining."""

    def __init__(self, base_trial, patience_train=5, patience_validation=10, delta=0.01):
        super().__init__(base_trial)
        self.patience_train, self.patience_validation = int(patience_train), int(patience_validation)
        self.delta = float(delta)
        self.best, self.since = {}, {}  # per tensor: best pass, passes since (+ their steps)

    def check(self, step):
        for name in self.tensors:
            phase = self.judged_pass(name, step)
            if phase is None:
                continue
            best = self.best.get(name)
            if best is not None:
                self.judged += 1
            if best is None or phase.validation < best.validation * (1 - self.delta):
                self.best[name], self.since[name] = phase, []
                continue
            since = self.since[name]
            since.append(phase)
            train_steps, eval_steps = sum(p.train_steps for p in since), sum(p.eval_steps for p in since)
            if len(since) >= PASSES_AFTER_BEST and (
                train_steps >= self.patience_train or eval_steps >= self.patience_validation
            ):
                return (
                    f"{name}: validation loss not {self.delta:.0%} below its best {best.validation:.4g} "
                    f"(step {best.step}) for {len(since)} passes, {train_steps} TRAIN steps of training"
                )
        return None

    def needs(self):
        return (
            f"{self.passes_found()}: two or more such passes are needed (save losses in both modes: "
            f"debugger-collections losses:1)"
        )
