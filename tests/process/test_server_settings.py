"""The server's settings are read once, by gunicorn's master, before any worker forks (server/master.py):
a bad value stops it with one line, and its workers use the master's settings, never the environment."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from helpers.serving import ServerProcess, encode, make_model_dir, sample_image

# gunicorn's master as serve starts it (server.master.main), with each call of Settings.from_env
# recorded (the calling process's pid) in the file named by its first argument.
COUNTING_MASTER = """
import os, sys
from server import master
from server.settings import Settings

read = Settings.from_env.__func__

def counted(cls, env=os.environ):
    with open(sys.argv[1], "a") as reads:
        reads.write(f"{os.getpid()}\\n")
    return read(cls, env)

Settings.from_env = classmethod(counted)
sys.exit(master.main())
"""


def wait_for_log(server: ServerProcess, lines: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(line in server.log() for line in lines) and time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()[-3000:]
        time.sleep(0.1)
    assert all(line in server.log() for line in lines), server.log()[-3000:]


def test_the_master_reads_the_settings_once_and_its_workers_never(tmp_path):
    reads = tmp_path / "reads"
    command = [sys.executable, "-c", COUNTING_MASTER, str(reads)]
    model_dir = make_model_dir(tmp_path / "model")
    with ServerProcess(model_dir, tmp_path / "server.log", command, SAGEMAKER_MODEL_SERVER_WORKERS="2") as server:
        workers = server.wait_for_workers(2)
        # a worker logs this after gunicorn made its app (create_app) and ran post_worker_init
        wait_for_log(server, [f"worker {pid} ready" for pid in workers])
        for _ in range(4):
            assert server.invoke(encode(sample_image(), "JPEG")).status_code == 200
        assert Path(reads).read_text().split() == [str(server.process.pid)], server.log()[-3000:]


def test_a_bad_value_stops_the_master_with_one_line_before_any_worker(tmp_path):
    server = ServerProcess(make_model_dir(tmp_path / "model"), tmp_path / "server.log", SAGEMAKER_BATCH_SIZE="many")
    try:
        assert server.process.wait(timeout=60) == 2
    finally:
        server.stop()
    assert server.log() == "serve: SAGEMAKER_BATCH_SIZE='many': expected a whole number >= 1\n"
    assert not server.run_dir.exists()  # nothing claimed, nothing listened
