"""What a real server leaves behind: no worker after its master exits (even one cut off at the end of the
grace period), and no folder emptied or removed that it did not make (its scratch folders, rundir.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

import proctree
from helpers.serving import ServerProcess, encode, make_model_dir, sample_image
from server.rundir import MARKER
from server.settings import SHUTDOWN_GRACE_S

SAGEMAKER_KILL_S = 30  # SageMaker's SIGKILL, after its SIGTERM

HANGING_PREDICT_FN = """
    import time

    def predict_fn(data, model):
        time.sleep(120)  # past the grace period: only SIGKILL ends this worker
"""


def test_a_request_past_the_grace_period_is_cut_and_no_worker_outlives_the_master(tmp_path):
    model_dir = make_model_dir(tmp_path / "model", inference_code=HANGING_PREDICT_FN)
    answers: list = []
    # An orphaned worker becomes this process's child (a zombie until reaped), so the check below
    # sees it however soon it dies; under PID 1 it might be gone before the check looks.
    with proctree.adopting_orphans():
        server = ServerProcess(model_dir, tmp_path / "server.log")
        workers: dict[int, int | None] = {}
        try:
            server.wait_ready()
            workers = {pid: proctree.start_ticks(pid) for pid in server.worker_pids()}

            def ask():
                try:
                    answers.append(server.invoke(encode(sample_image(), "JPEG"), timeout=SAGEMAKER_KILL_S + 30))
                except requests.ConnectionError as exc:
                    answers.append(exc)

            client = threading.Thread(target=ask)
            client.start()
            time.sleep(1)  # the request is inside predict_fn now
            terminated = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=SAGEMAKER_KILL_S + 10) == 0
            stopped_after = time.monotonic() - terminated
            left = [pid for pid, ticks in workers.items() if proctree.exists(pid, ticks)]
            assert not left, f"workers {left} outlived the master:\n{server.log()[-3000:]}"
            assert SHUTDOWN_GRACE_S <= stopped_after < SAGEMAKER_KILL_S, stopped_after
            client.join(timeout=30)
            assert answers and isinstance(answers[0], requests.ConnectionError)  # cut, not answered
        finally:
            server.stop()
            for pid in workers:
                proctree.reap(pid)


# --- the scratch folders: only the server's own are emptied -------------------------------------------


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def opt_ml_like(folder: Path) -> Path:
    """A folder with someone else's files in it, as /opt/ml has."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.pt").write_bytes(b"weights")
    (folder / "input.json").write_text("{}")
    return folder


@pytest.mark.parametrize("variable", ["SAGEMAKER_SERVER_RUN_DIR", "PROMETHEUS_MULTIPROC_DIR"])
@pytest.mark.parametrize("case", ["holds other files", "a symbolic link"])
def test_a_scratch_folder_that_is_not_the_servers_is_refused_and_left_as_it_was(tmp_path, variable, case):
    target = opt_ml_like(tmp_path / "opt_ml")
    named = target
    if case == "a symbolic link":
        named = tmp_path / "link"
        named.symlink_to(target)
    before = tree(target)
    server = ServerProcess(make_model_dir(tmp_path / "model"), tmp_path / "server.log", **{variable: str(named)})
    try:
        assert server.process.wait(timeout=60) != 0
    finally:
        server.stop()
    last_line = server.log().strip().splitlines()[-1]
    reason = "holds files this server did not make" if case == "holds other files" else "is a symbolic link"
    assert last_line.startswith(f"serve: {variable}={named} ") and reason in last_line, server.log()[-2000:]
    assert tree(target) == before and not (target / MARKER).exists()
    if variable == "PROMETHEUS_MULTIPROC_DIR":  # the run folder claimed just before is not left behind
        assert not server.run_dir.exists()


def test_the_server_removes_the_folder_it_made_and_empties_the_one_it_found_empty(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    made, found = tmp_path / "made" / "run", tmp_path / "found"
    found.mkdir()
    env = {"SAGEMAKER_SERVER_RUN_DIR": str(made), "PROMETHEUS_MULTIPROC_DIR": str(found)}
    # killed (SIGKILL: no clean-up): its files stay, in folders it marked as its own
    with ServerProcess(model_dir, tmp_path / "killed.log", **env) as killed:
        assert killed.invoke(encode(sample_image(), "JPEG")).status_code == 200
        os.killpg(killed.process.pid, signal.SIGKILL)
        killed.process.wait(timeout=30)
    stale = set(os.listdir(found)) - {MARKER}
    assert stale and (made / MARKER).is_file()
    # the next server takes them over, empties them, and on SIGTERM removes (made) or empties (found) them
    with ServerProcess(model_dir, tmp_path / "server.log", **env) as server:
        assert not stale & set(os.listdir(found))
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=SAGEMAKER_KILL_S) == 0
    assert not made.exists() and made.parent.is_dir()
    assert found.is_dir() and not os.listdir(found)
