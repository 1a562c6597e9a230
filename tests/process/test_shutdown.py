"""What a real server leaves behind: no worker after its master exits (even one cut off at the end of the
grace period), no runtime converter after a master stopped while loading, and no folder emptied or removed
that it did not make (its scratch folders, rundir.py)."""

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


# --- the runtimes' converter: never outlives its master ----------------------------------------------

CONVERTER = "server.runtimes.convert"


@pytest.fixture(scope="module")
def slow_to_convert(tmp_path_factory) -> Path:
    """A model whose conversion and check take about a minute at one thread (ResNet50 at 640 px): still
    converting at any bound below, so an orphaned converter is seen, not gone because it finished."""
    return make_model_dir(tmp_path_factory.mktemp("slow") / "model", backbone="resnet50", image_size=640)


def converter_of(server: ServerProcess, timeout: float) -> tuple[int, int | None]:
    """(pid, start ticks) of the converter child below the master, found by its command line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()[-3000:]
        for pid in proctree.descendants(server.process.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            if CONVERTER.encode() in command:
                return pid, proctree.start_ticks(pid)
        time.sleep(0.02)
    raise AssertionError(f"no converter within {timeout} s:\n{server.log()[-3000:]}")


def maps_openvino(pid: int) -> bool:
    try:
        return "libopenvino" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def gone_within(pid: int, ticks: int | None, timeout: float) -> bool:
    """Whether the process is out of the process table within `timeout`, reaping it if it became this
    process's child (adopting_orphans) and died."""
    deadline = time.monotonic() + timeout
    while True:
        proctree.reap(pid)
        if not proctree.exists(pid, ticks):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@pytest.mark.parametrize(
    "stop, when",
    [
        # the master's own stop: it kills and reaps the converter before it exits
        (signal.SIGTERM, "converting"),
        # no code runs in the master: the kernel kills the converter (prctl PR_SET_PDEATHSIG) ...
        (signal.SIGKILL, "converting"),
        # ... or the converter, orphaned before it asked the kernel (still importing), sees it and exits
        (signal.SIGKILL, "starting"),
    ],
    ids=["sigterm", "sigkill", "sigkill-before-prctl"],
)
def test_a_converter_does_not_outlive_a_master_stopped_while_loading(tmp_path, slow_to_convert, stop, when):
    env = {"SAGEMAKER_MODEL_RUNTIME": "openvino", "SAGEMAKER_TORCH_THREADS": "1", "SAGEMAKER_CPU_FLAGS": "avx2"}
    # An orphaned converter becomes this process's child, so it is seen (as a zombie) however soon it dies.
    with proctree.adopting_orphans():
        server = ServerProcess(slow_to_convert, tmp_path / "server.log", **env)
        converter: tuple[int, int | None] | None = None
        try:
            converter = converter_of(server, timeout=120)
            if when == "converting":  # OpenVINO loaded: well past the start of its main (and its prctl)
                deadline = time.monotonic() + 90
                while not maps_openvino(converter[0]) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert maps_openvino(converter[0]), server.log()[-3000:]
            assert proctree.running(converter[0]) and "in effect" not in server.log()  # still converting
            server.process.send_signal(stop)
            status = server.process.wait(timeout=30)
            if stop == signal.SIGTERM:
                assert status == 0, server.log()[-3000:]
                # reaped by the master before it exited: not even a zombie left for this process
                assert not proctree.exists(*converter), server.log()[-3000:]
            assert gone_within(*converter, timeout=10), f"the converter outlived its master:\n{server.log()[-3000:]}"
        finally:
            server.stop()  # the whole group: a converter left behind too
            if converter:
                gone_within(*converter, timeout=10)


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
