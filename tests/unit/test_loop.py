"""The training loop's plain functions on a tiny model: what an epoch, a stop and an evaluation do."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers.tiny_loop import blobs, hp_for, make_loop
from trainer import runtime
from trainer.checkpoint import TrainingState
from trainer.loop import evaluate, set_train_mode, train_one_epoch


def test_an_epoch_steps_the_optimizer_and_schedule_per_batch_and_the_loss_falls(tiny):
    hp, loop, train, _ = tiny
    state, results = TrainingState(), []
    for epoch in range(1, hp.epochs + 1):
        results.append(train_one_epoch(loop, train, epoch, state))
    assert [r.images for r in results] == [48] * 3 and state.global_step == 18  # 6 batches of 8 per epoch
    assert results[-1].loss < 0.5 * results[0].loss and results[-1].accuracy == 1.0
    steps = loop.reporter.steps
    assert [s for s, _, _ in steps] == list(range(1, 19))
    # cosine from lr to 0 over 18 steps, one value per optimizer step (the lr the step was taken with)
    expected = [hp.lr * 0.5 * (1 + math.cos(math.pi * k / 18)) for k in range(18)]
    assert [lr for _, lr, _ in steps] == pytest.approx(expected)


def test_max_steps_per_epoch_cuts_the_epoch():
    hp = hp_for("--max-steps-per-epoch", "2")
    loop = make_loop(hp, steps_per_epoch=2)
    result = train_one_epoch(loop, blobs(48), 1, state := TrainingState())
    assert result.images == 16 and state.global_step == 2


def test_unreadable_items_are_skipped_and_counted(tiny):
    hp, loop, _, _ = tiny
    result = train_one_epoch(loop, blobs(48, unreadable=(3, 17)), 1, TrainingState())
    assert result.images == 46
    assert loop.skips.summary() == {"train": ["img17.png", "img3.png"]}


def test_a_stop_mid_epoch_resumes_to_the_same_weights(tiny):
    """A stop after step 2 of epoch 2 keeps where and the sums so far; going on from the state (as a
    restarted job does from its checkpoint) ends with the uninterrupted run's weights and metrics."""
    hp, reference, train, _ = tiny
    state = TrainingState()
    expected = [train_one_epoch(reference, train, epoch, state) for epoch in (1, 2)]

    loop, state = make_loop(hp), TrainingState()
    train_one_epoch(loop, train, 1, state)
    stop_after = state.global_step + 2
    loop.stop.requested = False
    loop.stop.agreed = lambda device: state.global_step == stop_after  # SIGTERM after that step
    assert train_one_epoch(loop, train, 2, state) is None
    assert state.step == 2 and state.partial.seen == 16 and state.rng is not None
    loop.stop.agreed = lambda device: False
    result = train_one_epoch(loop, train, 2, state)
    assert result.loss == pytest.approx(expected[1].loss) and result.images == expected[1].images
    for key, value in reference.model.state_dict().items():
        assert torch.allclose(value, loop.model.state_dict()[key]), key


def test_a_non_finite_loss_fails_with_a_reason():
    hp = hp_for("--lr", "1e30", "--optimizer", "sgd")
    loop = make_loop(hp)
    with pytest.raises(runtime.TrainingFailure, match="lower the learning rate"):
        for epoch in (1, 2):
            train_one_epoch(loop, blobs(48), epoch, TrainingState())


def test_evaluate_gives_mean_loss_accuracy_and_the_confusion_matrix(tiny):
    hp, loop, _, validation = tiny
    loss, accuracy, confusion = evaluate(loop, validation, "validation")
    features = torch.stack(validation.features)
    labels = torch.tensor([y for _, y in validation.samples])
    with torch.no_grad():
        logits = loop.model.eval()(features)
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    predicted = logits.argmax(1)
    assert accuracy == pytest.approx((predicted == labels).float().mean().item())
    for true in (0, 1):
        for guess in (0, 1):
            assert confusion[true, guess] == ((labels == true) & (predicted == guess)).sum().item()


def test_frozen_modules_keep_their_batchnorm_statistics():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))
    set_train_mode(model, [model[0]])
    before = model[0].running_mean.clone()
    model(torch.randn(8, 4) + 5)
    assert model.training and torch.equal(model[0].running_mean, before)


@pytest.mark.parametrize(
    "trained, scored, validation_images, val_loss, reason",
    [
        (10, 4, 4, 0.7, None),
        (0, 0, 4, 0.0, "epoch 3 trained on no image"),
        (10, 0, 4, 0.0, "epoch 3 scored no validation image: all 4 were unreadable"),
        (10, 4, 4, float("nan"), "validation loss is nan at epoch 3: the model diverged"),
        (10, 4, 4, float("inf"), "validation loss is inf"),
    ],
)
def test_an_epoch_with_nothing_to_keep_fails_the_job(trained, scored, validation_images, val_loss, reason):
    """Loss 0.0 from no image, or nan, was kept as the best epoch and its model written by a job that succeeded."""
    from trainer.job import nothing_learnt

    found = nothing_learnt(3, trained, scored, validation_images, val_loss)
    assert found is None if reason is None else found.startswith(reason), found
