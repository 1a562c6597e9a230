"""The GPU proof (scripts/gpu_proof.py) with --tiny on this CPU, as CI runs it so that it never rots:
every code path of the GPU run (the trainer stopped by SIGTERM mid-epoch and restarted, the
in-process limits, the data loader alone, the profiler's output, container/serve per precision under
load, the master's CUDA probe, a user inference.py touching CUDA at import) runs for real; the checks
that only mean something on a GPU read "n/a (no GPU)"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from helpers.training import ROOT

# Everything a GPU run proves, each a row of the table: its check here ("" for a figure).
EXPECTED = {
    ("training", "trainer runs until its SIGTERM, exit 0"): "PASS",
    ("training", "training device in effect"): "n/a (no GPU)",
    ("training", "SIGTERM after step 9 (mid-epoch 2): checkpoint at that step"): "PASS",
    ("training", "both runs' optimizer steps and learning rates = the schedule's, none repeated or missed"): "PASS",
    ("training", "restart resumes mid-epoch and writes the model"): "PASS",
    ("profiler", "system samples with GPU readings"): "n/a (no GPU)",
    ("profiler", "torch.profiler trace written"): "PASS",
    ("profiler", "CUDA kernels in the trace"): "n/a (no GPU)",
    ("serving", "bf16, 1 workers: ready, precision in effect"): "n/a (no GPU)",
    ("serving", "bf16, 1 workers: top-1 agreement with fp32 (bar 99%)"): "PASS",
    ("serving", "bf16, 1 workers: c=4 requests all answered"): "PASS",
    ("serving", "bf16, 1 workers: CUDA never initialised in gunicorn's master"): "n/a (no GPU)",
    ("serving", "inference.py touching CUDA at import: serves, top-1 agreement with fp32"): "PASS",
    ("serving", "inference.py touching CUDA at import: CUDA never initialised in gunicorn's master"): "n/a (no GPU)",
}
# figures that must be measured (> 0) even on a CPU
MEASURED = (
    "trainer images/s",
    "in-process forward+backward limit",
    "data loader alone",
    "bf16, 1 workers: c=4 req/s",
    "bf16, 1 workers: in-process forward limit",
)


def test_tiny_proof_runs_every_path_and_writes_the_table(tmp_path):
    out = tmp_path / "out"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_proof.py"), "--tiny", "--out", str(out)]
        + ["--work", str(tmp_path / "work")],
        # one torch thread a process: on a busy 2-core machine more spin against each other
        env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    print(f"the tiny proof took {time.monotonic() - began:.0f} s")  # CI's budget: under 3 minutes
    document = json.loads((out / "gpu_proof.json").read_text())
    assert document["passed"] is True and document["gpu"] is False
    rows = {(row["part"], row["what"]): row for row in document["rows"]}
    for key, check in EXPECTED.items():
        assert key in rows, sorted(rows)
        assert rows[key]["check"] == check, rows[key]
    assert not [row for row in document["rows"] if row["check"] == "FAIL"]
    for prefix in MEASURED:
        value = next(row["value"] for row in document["rows"] if row["what"].startswith(prefix))
        assert float(value.split()[0].replace(",", "")) > 0, (prefix, value)
    # the same table printed and written as markdown, one line per row
    table = (out / "gpu_proof.md").read_text()
    assert table.strip() in result.stdout
    assert "| part | what | value | check |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(document["rows"]) + 1
    with tarfile.open(out / "gpu_proof_logs.tar.gz") as logs:  # the evidence of a one-shot run
        names = logs.getnames()
    assert "training/trainer-stopped.log" in names and "training/trainer-resumed.log" in names
    assert any(name.startswith("serve-bf16") for name in names)


def test_the_master_probe_sees_cuda_initialised(tmp_path):
    """The probe (probe/sitecustomize.py) reports a master whose torch.cuda was initialised, once and for
    ever after, which no CPU can produce for real: a stand-in torch says so, in a process that has
    imported gunicorn's arbiter as the master has."""
    probe = tmp_path / "probe.json"
    program = textwrap.dedent(
        """
        import sys, time, types
        cuda = types.SimpleNamespace(initialised=False)
        cuda.is_initialized = lambda: cuda.initialised
        sys.modules["torch"] = types.SimpleNamespace(cuda=cuda)
        sys.modules["gunicorn.arbiter"] = types.ModuleType("gunicorn.arbiter")
        time.sleep(1.0)
        cuda.initialised = True
        time.sleep(1.0)
        cuda.initialised = False  # gone again: the probe still says it happened
        time.sleep(1.0)
        """
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "scripts" / "benchmarks" / "gpu_proof" / "probe"),
        GPU_PROOF_MASTER_PROBE=str(probe),
    )
    subprocess.run([sys.executable, "-c", program], env=env, timeout=60, check=True)
    state = json.loads(probe.read_text())
    assert state == {"pid": state["pid"], "torch_imported": True, "cuda_initialized": False, "ever": True}


def test_without_a_gpu_the_full_proof_refuses_to_start(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_proof.py"), "--out", str(tmp_path)],
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--tiny" in result.stderr
    assert not (tmp_path / "gpu_proof.json").exists()


def test_a_server_whose_model_cannot_load_is_given_up_at_once(tmp_path):
    """/ping never answers 200 then: the proof reads the server's own failure line instead of waiting out
    its start timeout, which would spend a one-shot GPU run's budget."""
    from benchmarks.gpu_proof import serving
    from benchmarks.gpu_proof.profile import TINY

    model_dir = serving.fallback_model_dir(tmp_path / "model", TINY)
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text("def model_fn(model_dir):\n    raise RuntimeError('no weights')\n")
    server = serving.Server(model_dir, tmp_path, "broken", {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    try:
        began = time.monotonic()
        with pytest.raises(RuntimeError, match="loading the model from .* failed"):
            server.wait_ready(deadline=time.monotonic() + 600)
        assert time.monotonic() - began < serving.START_TIMEOUT_S / 2
    finally:
        server.stop()
    assert server.process.poll() is not None
