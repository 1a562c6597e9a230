"""Which tuner ran a trial of a shared study (launch/local_tuning/claims.py): a tuner restarted on its workdir
is the same one (it re-queues its own old trials at once); two whose host and path look alike are not."""

from __future__ import annotations

import shutil

from launch.local_tuning.claims import TUNER_ID_FILE, tuner_id


def test_a_tuner_keeps_its_identity_on_its_workdir(tmp_path):
    assert tuner_id(tmp_path) == tuner_id(tmp_path)
    assert (tmp_path / TUNER_ID_FILE).is_file()


def test_lookalike_tuners_are_told_apart(tmp_path):
    """run_local runs every tuner as /work in a container on the host's network (its hostname too): the
    same host and path, other workdirs. Each took the other's running trials for its own dead ones."""
    work = tmp_path / "work"
    work.mkdir()
    first = tuner_id(work)
    shutil.rmtree(work)  # another workdir mounted at the same path
    work.mkdir()
    assert tuner_id(work) != first
