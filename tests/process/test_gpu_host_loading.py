"""On a GPU host the serving master never imports a user's inference.py nor converts the model: CUDA
started before the fork does not survive it, and the fp16/bf16 check belongs on the worker's GPU.

No GPU here: SM_NUM_GPUS makes the real server treat this host as a GPU host (gunicorn's real
pre_fork/post_fork pin each worker to a device); what the user's code saw at import tells where it ran.
"""

from __future__ import annotations

import re

from helpers.serving import ServerProcess, make_model_dir, sample_image

# a common top of inference.py: asks CUDA at import, which starts it in whichever process imports
USER_CODE = """
    import json
    import os

    import torch

    GPU = torch.cuda.is_available()
    IMPORTED_IN = os.getpid()
    VISIBLE_AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")

    def output_fn(prediction, accept):
        return json.dumps({"pid": os.getpid(), "imported_in": IMPORTED_IN, "visible": VISIBLE_AT_IMPORT}), accept
"""


def jpeg() -> bytes:
    import io

    buffer = io.BytesIO()
    sample_image().save(buffer, "JPEG")
    return buffer.getvalue()


def answers_of_every_worker(server: ServerProcess, workers: int) -> dict[int, dict]:
    """The user output_fn's answer, by worker pid, once every worker answered (bounded)."""
    seen: dict[int, dict] = {}
    for _ in range(40):
        response = ServerProcess.invoke(server, jpeg(), headers={"Accept": "application/json"}, timeout=30)
        assert response.status_code == 200, response.text
        seen[response.json()["pid"]] = response.json()
        if len(seen) == workers:
            break
    return seen


def test_user_code_is_imported_in_each_gpu_worker_after_its_pinning(tmp_path):
    model_dir = make_model_dir(tmp_path / "model", inference_code=USER_CODE)
    env = {"SM_NUM_GPUS": "2", "CUDA_VISIBLE_DEVICES": "4,6", "SAGEMAKER_MODEL_SERVER_WORKERS": ""}
    with ServerProcess(model_dir, tmp_path / "server.log", **env) as server:
        workers = server.wait_for_workers(2)
        seen = answers_of_every_worker(server, 2)
        assert sorted(seen) == sorted(workers), server.log()
        for pid, answer in seen.items():
            # imported by the worker itself (not inherited from the master), after post_fork pinned its GPU
            assert answer["imported_in"] == pid != server.process.pid, answer
        assert sorted(answer["visible"] for answer in seen.values()) == ["4", "6"], seen


def test_on_a_cpu_host_the_master_imports_once_for_all_workers(tmp_path):
    """The contrast that shows the observable discriminates: without GPUs the master imports (and the
    workers share what it loaded)."""
    model_dir = make_model_dir(tmp_path / "model", inference_code=USER_CODE)
    with ServerProcess(model_dir, tmp_path / "server.log", SAGEMAKER_MODEL_SERVER_WORKERS="2") as server:
        server.wait_for_workers(2)
        seen = answers_of_every_worker(server, 2)
        assert {answer["imported_in"] for answer in seen.values()} == {server.process.pid}, seen


def test_the_precision_check_runs_in_the_gpu_worker(tmp_path):
    """fp16's agreement check against fp32 runs in the worker (on its GPU where there is one), not in
    the master on the CPU."""
    model_dir = make_model_dir(tmp_path / "model")
    env = {"SM_NUM_GPUS": "1", "SAGEMAKER_MODEL_PRECISION": "bf16", "SAGEMAKER_MODEL_SERVER_WORKERS": ""}
    with ServerProcess(model_dir, tmp_path / "server.log", **env) as server:
        (worker,) = server.wait_for_workers(1)
        checked = re.findall(r"\[(\d+)\] \[INFO\] server\.precision: precision bf16 .* in effect", server.log())
        assert [int(pid) for pid in checked] == [worker], server.log()[-3000:]
