"""The analysis toolbox on data a test writes: the loss rules on synthetic trials, the evaluation report."""

from __future__ import annotations

import json

import numpy as np

from helpers.trials import overfitting_epochs, write_trial
from insights import report, rules


def verdict(path, rule):
    return rules.run(path, [rule])[rule]


def test_overfit_needs_validation_rising_over_its_best_while_training_falls(tmp_path):
    fired = verdict(write_trial(tmp_path / "overfit", overfitting_epochs()), "Overfit")
    assert fired["status"] == "IssuesFound" and "above its best" in fired["message"], fired
    # the same run stopped at its best epoch: validation fell every pass
    quiet = verdict(write_trial(tmp_path / "best", overfitting_epochs(epochs=3)), "Overfit")
    assert quiet["status"] == "NoIssuesFound" and quiet["judgements"] == 2, quiet


def test_passes_count_from_the_first_below_where_the_run_began(tmp_path):
    """From scratch: validation loss 13.74 and 2.1, above the first training loss (1.6), then 0.6 and 0.45."""
    epochs = [([1.6, 1.3, 1.03], [13.74]), ([0.9, 0.8, 0.7], [2.1]), ([0.5, 0.45, 0.4], [0.6])]
    epochs.append(([0.35, 0.3, 0.28], [0.45]))
    quiet = verdict(write_trial(tmp_path / "scratch", epochs), "Overfit")
    assert quiet["status"] == "NoIssuesFound" and quiet["judgements"] == 1, quiet  # 0.45 against 0.6
    settling = verdict(write_trial(tmp_path / "settling", epochs[:3]), "Overfit")  # 0.6 only sets the best
    assert settling["status"] == "NotEnoughData" and "1 of them from the first" in settling["message"], settling
    # from there on every pass counts, one back above the start too
    worse = epochs[:3] + [([0.2, 0.15, 0.1], [1.9])]
    fired = verdict(write_trial(tmp_path / "worse", worse), "Overfit")
    assert fired["status"] == "IssuesFound" and "above its best 0.6" in fired["message"], fired


def test_a_rise_while_the_training_loss_barely_moved_is_no_overfitting(tmp_path):
    """A real from-scratch run's first two passes (5 epochs, seed 2): validation 0.50 then 2.06 while the
    epoch's mean training loss went from 1.313 to 1.294, then both fell. The training loss fell by 1.4%,
    not by ratio_threshold (10%): nothing was learnt by heart."""
    epochs = [([1.45, 1.31, 1.18], [0.498]), ([1.33, 1.29, 1.263], [2.063]), ([0.8, 0.7, 0.64], [0.224])]
    quiet = verdict(write_trial(tmp_path / "noise", epochs), "Overfit")
    assert quiet["status"] == "NoIssuesFound" and quiet["judgements"] == 2, quiet


def test_overtraining_judges_validation_passes_not_batch_noise(tmp_path):
    fired = verdict(write_trial(tmp_path / "overfit", overfitting_epochs()), "Overtraining")
    assert fired["status"] == "IssuesFound", fired
    # converged: training losses at ~0 wander by more than delta between batches, validation still improves
    rng = np.random.RandomState(0)
    converged = [(list(0.02 + 0.05 * rng.rand(7)), [0.3 * 0.8**epoch]) for epoch in range(6)]
    converged[0][0][0] = 1.4  # the untrained model's first batch: where the run began
    quiet = verdict(write_trial(tmp_path / "converged", converged), "Overtraining")
    assert quiet["status"] == "NoIssuesFound" and quiet["judgements"] == 5, quiet
    # one pass without improvement is not yet a trend
    dip = converged[:4] + [(converged[4][0], [1.0])] + converged[5:]
    assert verdict(write_trial(tmp_path / "dip", dip), "Overtraining")["status"] == "NoIssuesFound"


def test_evaluation_report_from_plain_numbers(tmp_path):
    confusion = np.array([[5, 1], [0, 4]])
    built = report.build("test", confusion, ["cat", "dog"], 0.25, {"train": ["bad.jpg"]})
    assert built["accuracy"] == 0.9 and built["images"] == 10
    assert built["per_class"] == {"cat": {"accuracy": 5 / 6, "images": 6}, "dog": {"accuracy": 1.0, "images": 4}}
    assert built["skipped_images"] == {"count": 1, "by_split": {"train": ["bad.jpg"]}}
    report.write(built, tmp_path)
    assert json.loads((tmp_path / "evaluation.json").read_text())["confusion_matrix"] == [[5, 1], [0, 4]]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_tuning_figures_take_a_log_axis_when_losses_span_orders_of_magnitude(tmp_path):
    import optuna

    from insights import tuning_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def study_with(first_epoch_losses):
        study = optuna.create_study(direction="minimize")
        for first in first_epoch_losses:
            trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
            trial.report(first, 1)
            trial.report(first / 10, 2)
            study.tell(trial, first / 10)
        return study

    wide, narrow = study_with([372.0, 0.9, 1.2]), study_with([1.5, 0.9, 1.2])
    assert tuning_report.needs_log_scale(wide) and not tuning_report.needs_log_scale(narrow)
    for study, scale in ((wide, "log"), (narrow, None)):
        axes = {
            title: figure.layout.yaxis.type
            for title, figure, _ in tuning_report.figures(study, tmp_path)
            if title in tuning_report.LOSS_AXIS_FIGURES
        }
        assert axes == dict.fromkeys(tuning_report.LOSS_AXIS_FIGURES, scale)
