"""Checkpoints: a round trip restores the job exactly; a corrupt, foreign or unsafe file is moved aside."""

from __future__ import annotations

import pytest
import torch

from contract.model import Architecture
from helpers.tiny_loop import blobs, hp_for, make_loop
from trainer.checkpoint import Checkpointer, TrainingState, data_digest, frozen_keys, state_digest
from trainer.loop import train_one_epoch


def trained(tmp_path, *args):
    loop = make_loop(hp_for(*args))
    loop.arch, loop.frozen_digest = Architecture("resnet18", 2), "frozen"
    state = TrainingState()
    result = train_one_epoch(loop, blobs(48), 1, state)
    state.epoch, state.best_loss, state.best_epoch = 1, result.loss, 1
    state.history.append({"epoch": 1, "train_loss": result.loss})
    loop.skips.paths = {"train": {"bad.jpg"}}
    return loop, state, Checkpointer(tmp_path, writer=True)


def fresh(*args):
    loop = make_loop(hp_for(*args))
    loop.arch, loop.frozen_digest = Architecture("resnet18", 2), "frozen"
    return loop


def test_round_trip_restores_model_optimizer_schedule_and_state(tmp_path):
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    other = fresh()
    restored = checkpointer.restore(other)
    assert (restored.epoch, restored.global_step, restored.best_loss) == (1, 6, state.best_loss)
    assert restored.history == state.history
    for key, value in loop.model.state_dict().items():
        assert torch.equal(value, other.model.state_dict()[key]), key
    assert other.schedule.state_dict()["last_epoch"] == 6
    moments = other.optimizer.state_dict()["state"]
    assert moments and all(
        torch.equal(moments[k]["exp_avg"], loop.optimizer.state_dict()["state"][k]["exp_avg"]) for k in moments
    )
    assert other.skips.paths == {"train": {"bad.jpg"}}
    # the file holds tensors and plain values only
    assert torch.load(checkpointer.path, weights_only=True)["epoch"] == 1


def test_only_rank_0_writes(tmp_path):
    """The same save on the same state: rank 0's writes the file, another rank's writes nothing
    (so the test cannot pass by a save that does nothing at all)."""
    loop, state, _ = trained(tmp_path)
    other, main = tmp_path / "other-rank", tmp_path / "rank-0"
    Checkpointer(other, writer=False).save(loop, state)
    Checkpointer(main, writer=True).save(loop, state)
    assert not (other / "checkpoint.pt").exists()
    assert torch.load(main / "checkpoint.pt", weights_only=True)["epoch"] == state.epoch


def aside(tmp_path, kind: str) -> list:
    return sorted(tmp_path.glob(f"checkpoint.pt.{kind}-*"))


def test_a_corrupt_file_is_moved_aside(tmp_path, capsys):
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    corrupt = checkpointer.path.read_bytes()[:200]
    checkpointer.path.write_bytes(corrupt)
    assert checkpointer.restore(fresh()).epoch == 0
    [moved] = aside(tmp_path, "unreadable")
    assert moved.read_bytes() == corrupt and not checkpointer.path.exists()
    out = capsys.readouterr().out
    assert f"not resuming from checkpoint {checkpointer.path}: it is unreadable (" in out
    assert f"; moved it to {moved}" in out and out.count("\n") == 1


def test_another_jobs_checkpoint_is_moved_aside_and_kept(tmp_path, capsys):
    """Not overwritten by this job's first checkpoint: the other job's stays, renamed, byte for byte."""
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    theirs = checkpointer.path.read_bytes()
    other = fresh("--seed", "1")
    assert checkpointer.restore(other).epoch == 0
    assert "it was written by a job with other data or settings; moved it to" in capsys.readouterr().out
    checkpointer.save(other, TrainingState())  # this job's first epoch end
    [moved] = aside(tmp_path, "mismatch")
    assert moved.read_bytes() == theirs
    assert torch.load(checkpointer.path, weights_only=True)["fingerprint"]["hyperparameters"]["seed"] == 1
    # other frozen weights: a second mismatch, kept apart from the first
    checkpointer.save(loop, state)
    other = fresh()
    other.frozen_digest = "other frozen weights"
    assert checkpointer.restore(other).epoch == 0
    assert len(aside(tmp_path, "mismatch")) == 2


def test_a_checkpoint_of_this_job_missing_a_part_is_moved_aside(tmp_path, capsys):
    """Its fingerprint matches but a part is gone: read on rank 0 alone before the broadcast, a KeyError
    there left the other ranks waiting out the collective timeout."""
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    saved = torch.load(checkpointer.path, weights_only=True)
    del saved["scaler"]
    torch.save(saved, checkpointer.path)
    assert checkpointer.restore(fresh()).epoch == 0
    assert "it lacks scaler; moved it to" in capsys.readouterr().out
    assert len(aside(tmp_path, "mismatch")) == 1


def test_only_rank_0_moves_a_checkpoint_aside(tmp_path):
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    assert Checkpointer(tmp_path, writer=False).restore(fresh("--seed", "1")).epoch == 0
    assert checkpointer.path.exists() and not aside(tmp_path, "mismatch")


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_file_with_pickled_code_is_not_loaded(tmp_path, capsys):
    """weights_only loading: a checkpoint that would run code when unpickled is refused, not run."""
    checkpointer = Checkpointer(tmp_path, writer=True)
    torch.save({"fingerprint": Payload()}, checkpointer.path)
    assert checkpointer.restore(fresh()).epoch == 0
    out = capsys.readouterr().out
    assert "it is unreadable" in out and "code ran" not in out


def test_frozen_keys_and_digest_identify_the_frozen_weights():
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    keys = frozen_keys(model, [model[0]])
    assert keys == {"0.weight", "0.bias", "0.running_mean", "0.running_var", "0.num_batches_tracked"}
    state = model.state_dict()
    digest = state_digest({k: state[k] for k in keys})
    with torch.no_grad():
        model[0].weight[0] += 1e-3
    assert state_digest({k: model.state_dict()[k] for k in keys}) != digest


def test_running_totals_are_a_list_on_disk_as_older_checkpoints_have_them(tmp_path):
    from trainer.checkpoint import FILE_NAME, RunningTotals

    loop, state, checkpointer = trained(tmp_path)
    state.step, state.partial = 3, RunningTotals(8.5, 21.0, 24.0, 0.25)
    checkpointer.save(loop, state)
    saved = torch.load(tmp_path / FILE_NAME, weights_only=True)
    assert saved["partial"] == [8.5, 21.0, 24.0, 0.25]
    restored = Checkpointer(tmp_path, writer=True).restore(fresh())
    assert restored.step == 3 and restored.partial == RunningTotals(8.5, 21.0, 24.0, 0.25)


@pytest.mark.parametrize(
    "change, resumes",
    [
        (("--lr", "0.5"), False),
        (("--epochs", "9"), True),  # training longer: what resuming is also for
        (("--weight-decay", "0.5"), False),
        (("--crop-scale", "0.5"), False),
        (("--num-workers", "3"), True),  # how the job runs, not what it learns
        (("--profiler", "false"), True),
    ],
)
def test_another_jobs_checkpoint_with_other_settings_is_not_resumed(tmp_path, capsys, change, resumes):
    """Two jobs given one checkpoint folder, the same classes and seed, but another learning rate, say: the
    second resumed the first's finished state and wrote its weights as its own. Now a setting that shapes
    what is learnt sets the checkpoint aside; one that only shapes how the job runs does not."""
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    assert checkpointer.restore(fresh(*change)).epoch == (1 if resumes else 0)
    assert ("written by a job with other data or settings" in capsys.readouterr().out) is not resumes


def test_a_checkpoint_of_other_data_is_not_resumed(tmp_path, capsys):
    loop, state, checkpointer = trained(tmp_path)
    loop.data_digest = data_digest({"train": [(tmp_path / "a.jpg", 0)]})
    checkpointer.save(loop, state)
    same = fresh()
    same.data_digest = loop.data_digest
    assert checkpointer.restore(same).epoch == 1
    (tmp_path / "b.jpg").write_bytes(b"an image more")
    other = fresh()
    other.data_digest = data_digest({"train": [(tmp_path / "a.jpg", 0), (tmp_path / "b.jpg", 1)]})
    assert checkpointer.restore(other).epoch == 0


def test_the_data_digest_is_the_files_not_where_they_were_unpacked(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder / "cat").mkdir(parents=True)
        (tmp_path / folder / "cat" / "1.jpg").write_bytes(b"xyz")
    one, two = ([(tmp_path / folder / "cat" / "1.jpg", 0)] for folder in ("one", "two"))
    assert data_digest({"train": one}) == data_digest({"train": two})
    assert data_digest({"train": one}) != data_digest({"validation": one})
    assert data_digest({"train": one}) != data_digest({"train": [(one[0][0], 1)]})  # relabelled
    (tmp_path / "two" / "cat" / "1.jpg").write_bytes(b"xyzw")
    assert data_digest({"train": one}) != data_digest({"train": two})


def test_the_temporaries_of_cut_short_saves_are_removed_and_the_checkpoint_kept(tmp_path, capsys):
    """A kill during a save leaves `.checkpoint.pt.XXXX`; SageMaker would carry each to S3 and back on
    every restart. Rank 0 removes them when it reads; the checkpoint itself and set-aside files stay."""
    loop, state, checkpointer = trained(tmp_path)
    checkpointer.save(loop, state)
    (tmp_path / ".checkpoint.pt.k1ll3d").write_bytes(b"half a checkpoint")
    (tmp_path / "checkpoint.pt.mismatch-20261206T000000Z").write_bytes(b"another job's")
    assert checkpointer.restore(fresh()).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.mismatch-20261206T000000Z"]
    assert "removed .checkpoint.pt.k1ll3d" in capsys.readouterr().out
