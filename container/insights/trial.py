"""What the rules stand on: a finished smdebug trial, opened safely, and the rule base class.

`LocalRule` is smdebug's Rule plus a verdict: IssuesFound (with the first
step that triggered it), NoIssuesFound (only after at least one comparison),
or NotEnoughData (with what the rule would need). The rules themselves are in
tensor_rules.py and loss_rules.py; rules.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from smdebug.core.modes import ModeKeys
from smdebug.exceptions import TensorUnavailableForStep
from smdebug.rules import Rule

LOSS_NAME = "CrossEntropyLoss_output_0"
ISSUES, NO_ISSUES, NOT_ENOUGH_DATA = "IssuesFound", "NoIssuesFound", "NotEnoughData"
# The trainer's per-epoch mean losses (debugger.save_scalar), smoothed over every batch of an epoch
EPOCH_LOSSES = {ModeKeys.TRAIN: "scalar/train_loss", ModeKeys.EVAL: "scalar/validation_loss"}


def open_trial(trial_path: str):
    """smdebug's trial; a local folder without the hook's collection files is refused at
    once, because create_trial would otherwise wait for them forever."""
    from pathlib import Path

    from smdebug.trials import create_trial

    if not str(trial_path).startswith("s3://") and not list(Path(trial_path).glob("collections/*/*collections.json")):
        raise SystemExit(f"no smdebug trial in {trial_path}: did the job run with the debugger on?")
    return create_trial(trial_path)


def regex_list(value) -> list[str]:
    if value is None or value == "":
        return []
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


def bool_param(value) -> bool:
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


@dataclass(frozen=True)
class Phase:
    """One validation pass and the training since the one before, as smoothed losses (means)."""

    step: int  # global step of the pass's last EVAL step
    train: float  # mean saved TRAIN loss since the previous pass
    validation: float  # mean saved EVAL loss of the pass (the whole validation set when every step is saved)
    train_steps: int  # TRAIN steps saved in between
    eval_steps: int


def phase_means(trial, name) -> list[Phase]:
    """Every validation pass that follows saved training steps, in order."""
    tensor = trial.tensor(name)
    train, evals = set(tensor.steps(mode=ModeKeys.TRAIN)), set(tensor.steps(mode=ModeKeys.EVAL))
    phases: list[Phase] = []
    train_values: list[float] = []
    eval_values: list[float] = []
    last_eval = -1  # set by the pass's first EVAL value, before its phase can close

    def close_phase():
        phases.append(
            Phase(
                last_eval,
                float(np.mean(train_values)),
                float(np.mean(eval_values)),
                len(train_values),
                len(eval_values),
            )
        )

    for step in trial.steps():
        mode, mode_step = trial.mode(step), trial.mode_step(step)
        if mode == ModeKeys.TRAIN and mode_step in train:
            if eval_values and train_values:
                close_phase()
                train_values, eval_values = [], []
            train_values.append(float(tensor.value(mode_step, mode=mode)))
        elif mode == ModeKeys.EVAL and mode_step in evals:
            eval_values.append(float(tensor.value(mode_step, mode=mode)))
            last_eval = step
    if eval_values and train_values:
        close_phase()
    return phases
