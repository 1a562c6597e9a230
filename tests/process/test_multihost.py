"""Data-parallel training whose counts and metrics cover every rank, not rank 0's share.

Two torchrun processes on this machine (gloo), then two training containers
started as SageMaker starts a two-host job, training one model together.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from contract import artifact
from contract.spec import metrics
from helpers.training import FAST_HPS, ROOT, SDK_V2_PYTHON, build_image, run_trainer

CORRUPT = b"\xff\xd8\xff\xe0 this is not really a jpeg"
# few images and only the head trained: the shares, not the learning, are under test
HPS = dict(FAST_HPS, epochs=2, amp="false", **{"trainable-layers": 0, "num-workers": 0})
# what every rank prints of its own share (trainer/job.py)
RANK_EPOCH = re.compile(r"\[rank (\d+)/(\d+) on (\S+)\] epoch (\d+): trained on (\d+) images, skipped (\d+) unreadable")
RANK_EVAL = re.compile(r"\[rank (\d+)/(\d+) on (\S+)\] (\w+): scored (\d+) images, skipped (\d+) unreadable")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """8 training, 2 validation and 2 test images per class (and make_sample_data's corrupt one)."""
    import make_sample_data

    return make_sample_data.make(tmp_path_factory.mktemp("small") / "dogImages", per_class=8)


def data_with_corrupt_files(sample_data: Path, dest: Path) -> dict[str, set[str]]:
    """A copy of the sample data with unreadable files that the ranks share out unevenly.

    The evaluation shards are every 2nd image in sorted order, so three corrupt
    test files sorted first give rank 0 two and rank 1 one; the validation one
    goes to rank 0; the training one (from make_sample_data) to whichever rank
    the shuffled sampler gives it each epoch.
    """
    shutil.copytree(sample_data, dest)
    red = "001.red_disc"
    for name in ("corrupt_a.jpg", "corrupt_b.jpg", "corrupt_c.jpg"):
        (dest / "test" / red / name).write_bytes(CORRUPT)
    (dest / "valid" / red / "corrupt_v.jpg").write_bytes(CORRUPT)
    found = {"train": "train", "validation": "valid", "test": "test"}
    return {split: {p.name for p in (dest / folder).rglob("corrupt_*")} for split, folder in found.items()}


def readable_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("corrupt_"))


def check_global_counts(
    log: str, report_dir: Path, model_dir: Path, corrupt: dict[str, set[str]], test_dir: Path, world: int
) -> dict:
    """What the master reports is the sum (or union) of what every rank saw."""
    report = json.loads((report_dir / "evaluation.json").read_text())
    total = sum(len(names) for names in corrupt.values())
    by_split = {split: {Path(p).name for p in paths} for split, paths in report["skipped_images"]["by_split"].items()}
    assert by_split == corrupt, report["skipped_images"]
    assert report["skipped_images"]["count"] == total
    assert f"skipped {total} unreadable image(s)" in log
    # the test set scored over all ranks: every readable image once, every rank a share of it,
    # and the ranks skipped different numbers of its corrupt files (rank 0's alone would be wrong)
    scored = {
        int(m.group(1)): (int(m.group(5)), int(m.group(6))) for m in RANK_EVAL.finditer(log) if m.group(4) == "test"
    }
    assert sorted(scored) == list(range(world)), log[-3000:]
    assert report["images"] == readable_images(test_dir) == sum(n for n, _ in scored.values())
    assert sum(map(sum, report["confusion_matrix"])) == report["images"] and min(n for n, _ in scored.values()) > 0
    assert sum(k for _, k in scored.values()) == len(corrupt["test"]) and len({k for _, k in scored.values()}) > 1
    _, config = artifact.load(model_dir)
    assert config["training"]["skipped_images"] == total
    # each epoch's image count is the ranks' shares added up, and every rank had one
    shares: dict[int, dict[int, int]] = {}
    for m in RANK_EPOCH.finditer(log):
        shares.setdefault(int(m.group(4)), {})[int(m.group(1))] = int(m.group(5))
    history = config["training"]["history"]
    assert len(history) == len(shares) >= 1
    for entry in history:
        ranks = shares[entry["epoch"]]
        assert sorted(ranks) == list(range(world)) and min(ranks.values()) > 0, ranks
        assert entry["train_images"] == sum(ranks.values())
    return config["training"]


def test_two_processes_report_global_skips_and_metrics(small_data, tmp_path):
    data = tmp_path / "dogImages"
    corrupt = data_with_corrupt_files(small_data, data)
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": data}, dict(HPS, **{"processes-per-host": 2}))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "launching 2 process(es) per host on 1 host(s)" in result.stdout
    check_global_counts(result.stdout, opt_ml / "output" / "data", opt_ml / "model", corrupt, data / "test", world=2)


# -- two hosts: SageMaker local mode with instance_count=2 ----------------------

# docker-compose's prefix on each container's lines: "<random>-algo-2-<job suffix>  | text" (v2),
# "algo-2_1  | text" (v3, whose compose file names no containers: compose names them <job>_algo-2_1)
COMPOSE_LINE = re.compile(r"^(?:\S*?-)?(algo-\d+)(?:[-_][a-z0-9]+)?\s+\| ?(.*)$")
HOST = re.compile(r"algo-\d+")  # a compose service's host: algo-1-<suffix> (v2), algo-1 (v3)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOCAL_NETWORK = "sagemaker-local"  # the one network the SDK's compose files name


def logs_by_host(output: str) -> dict[str, str]:
    lines: dict[str, list[str]] = {}
    for line in ANSI.sub("", output).splitlines():
        m = COMPOSE_LINE.match(line)
        if m:
            lines.setdefault(m.group(1), []).append(m.group(2))
    return {host: "\n".join(text) for host, text in lines.items()}


def remove_job_containers(engine, jobs_root: Path) -> None:
    """Local mode never runs `compose down`: remove this job's containers (named in its compose
    file), and the SDK's network unless another job still uses it (rm refuses then)."""
    names = [
        service.get("container_name", f"{compose.parent.name}_{host}_1")  # v3: compose's default name
        for compose in jobs_root.glob("*/docker-compose.yaml")
        for host, service in yaml.safe_load(compose.read_text())["services"].items()
    ]
    if names:
        for name in names:  # one at a time: podman 4.3's `rm -f A B` skips B when A is gone
            subprocess.run([engine.cli, "rm", "-f", name], env=engine.env, capture_output=True, timeout=120)
    subprocess.run([engine.cli, "network", "rm", LOCAL_NETWORK], env=engine.env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def train_image(engine):
    build_image(engine, "train")


@pytest.mark.parametrize("sdk", ["v3", "v2"])
def test_two_hosts_train_one_model_in_sagemaker_local_mode(engine, train_image, small_data, tmp_path, sdk):
    """v3: ModelTrainer(Mode.LOCAL_CONTAINER, instance_count=2); v2: Estimator(instance_type="local")."""
    data = tmp_path / "dogImages"
    corrupt = data_with_corrupt_files(small_data, data)
    # the job's folder: v2 makes it with tempfile.mkdtemp, v3 is given <workdir>/jobs/<job name>
    jobs_root = tmp_path / "jobs"
    jobs_root.mkdir()
    env = {k: v for k, v in engine.env.items() if not k.startswith(("AWS_", "BYOC_", "SAGEMAKER_"))}
    env.update(HOME=str(tmp_path), TMPDIR=str(jobs_root))  # HOME: no ~/.aws to find credentials in
    if sdk == "v2":
        env["SAGEMAKER_SUPPRESS_V2_WARNING"] = "1"
    python = sys.executable if sdk == "v3" else str(SDK_V2_PYTHON)
    command = [
        python,
        "scripts/sm.py",
        "train",
        "--sdk",
        sdk,
        "--local",
        "--train-instance-count",
        "2",
        "--workdir",
        str(tmp_path),
        "--data",
        str(data),
        "--job-name",
        "two-hosts",
        *[item for name, value in HPS.items() for item in ("--hp", f"{name}={value}")],
    ]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        remove_job_containers(engine, jobs_root)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert re.search(r"^model: file://\S+model\.tar\.gz$", result.stdout, re.MULTILINE), result.stdout[-2000:]

    logs = logs_by_host(result.stdout)
    assert sorted(logs) == ["algo-1", "algo-2"], result.stdout[-3000:]
    (compose,) = jobs_root.glob("*/docker-compose.yaml")
    hosts = sorted(yaml.safe_load(compose.read_text())["services"])
    assert [HOST.match(h).group(0) for h in hosts] == ["algo-1", "algo-2"]
    for node, host in enumerate(hosts):
        log = logs[HOST.match(host).group(0)]
        # each host started its own torchrun node, and its rank trained a share of every epoch
        launch = re.search(r"launching 1 process\(es\) per host on 2 host\(s\): .*", log)
        assert launch and f"--node-rank={node} --master-addr={hosts[0]}" in launch.group(0), log[-3000:]
        shares = re.findall(rf"\[rank {node}/2 on {host}\] epoch \d+: trained on [1-9]\d* images", log)
        assert len(shares) == 2, log[-3000:]
    master, worker = (logs[HOST.match(h).group(0)] for h in hosts)

    # one writer: the master prints the metrics and writes the model and the report
    assert len(metrics.parse_log(master)["validation:loss"]) == 2
    assert metrics.parse_log(worker) == {}
    assert "model written to" in master and "model written to" not in worker
    # local mode gives the hosts one model folder, and merges their output folders into output.tar.gz
    delivered = compose.parent / "compressed_artifacts" if sdk == "v3" else tmp_path / "output"
    with tarfile.open(delivered / "output.tar.gz") as archive:
        archive.extractall(tmp_path / "delivered", filter="data")
    training = check_global_counts(
        master + "\n" + worker,
        tmp_path / "delivered" / "data",
        compose.parent / "model",
        corrupt,
        data / "test",
        world=2,
    )
    assert training["world_size"] == 2 and training["hosts"] == hosts
