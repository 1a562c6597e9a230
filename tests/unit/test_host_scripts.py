"""The host scripts' safety checks: free disk before a build, bind mounts whose paths hold ':' and ',',
containers found by the project's label (never by a name pattern), no fixed names written in /tmp."""

from __future__ import annotations

import csv
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import container_engine
from container_engine import BUILD_SPACE_BYTES, GB, REBUILD_SPACE_BYTES, bind, space_shortfall
from launch.session import remove_local_containers

ROOT = Path(__file__).resolve().parents[2]
STORAGE = "/var/lib/containers/storage"


@pytest.mark.parametrize("build", sorted(BUILD_SPACE_BYTES))
def test_a_build_starts_only_with_the_space_it_needs(build):
    needed = BUILD_SPACE_BYTES[build]
    assert space_shortfall(build, needed, cached=False, where=STORAGE) is None
    reason = space_shortfall(build, needed - 1, cached=False, where=STORAGE)
    assert reason and f"needs about {needed // GB} GB free in {STORAGE}" in reason
    assert f"{(needed - 1) / GB:.1f} GB are free" in reason
    # a rebuild reuses the cached layers: it needs the small amount only
    assert space_shortfall(build, REBUILD_SPACE_BYTES, cached=True, where=STORAGE) is None
    assert space_shortfall(build, REBUILD_SPACE_BYTES - 1, cached=True, where=STORAGE)


def test_the_gpu_images_need_more_than_they_measure():
    """The finished sizes (README, "Image sizes") are a floor: a build needs more than its image."""
    measured_mb = {"train": 6716, "serve-gpu": 4833, "serve-cpu": 861}
    assert all(BUILD_SPACE_BYTES[build] > size * 10**6 * 1.5 for build, size in measured_mb.items())


def mount_fields(args: list[str]) -> list[str]:
    assert args[0] == "--mount" and len(args) == 2
    return next(csv.reader([args[1]]))


@pytest.mark.parametrize("name", ["plain", "a:b", "a,b", "x:y,z", 'quote"d'])
def test_a_bind_mount_keeps_a_path_with_colons_and_commas_whole(tmp_path, name):
    folder = tmp_path / name
    assert mount_fields(bind(folder, "/opt/ml", read_only=True)) == [
        "type=bind",
        f"source={folder}",
        "target=/opt/ml",
        "readonly",
    ]
    assert mount_fields(bind(folder, "/work")) == ["type=bind", f"source={folder}", "target=/work"]


def test_a_bind_mount_of_a_relative_path_names_the_folder_not_a_volume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mount_fields(bind("data", "/data"))[1] == f"source={tmp_path / 'data'}"


def test_a_line_break_in_a_mount_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="line break"):
        bind(tmp_path / "a\nb", "/x")


def test_a_path_with_colons_and_commas_mounts_in_a_real_container(engine, tmp_path):
    folder = tmp_path / "data:2024,v1"
    folder.mkdir()
    (folder / "file.txt").write_text("mounted")
    archive = tmp_path / "set:1,a.zip"
    archive.write_text("zip")
    command = [
        engine.cli,
        "run",
        "--rm",
        "--network",
        "none",
        *bind(folder, "/data", read_only=True),
        *container_engine.channel_mount(archive, "/channel"),
        engine.base_image,
        "sh",
        "-c",
        "cat /data/file.txt /channel/set:1,a.zip",
    ]
    out = subprocess.run(command, env=engine.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "mountedzip"


def test_stale_local_mode_containers_are_found_by_the_label_not_by_their_name(engine):
    """Local mode's leftovers are removed, exited or never started (an `up` whose attach failed); someone
    else's container with an alike name stays, and so does one of ours created a moment ago."""
    token = uuid.uuid4().hex[:8]
    ours, theirs = f"{token}-algo-1-ours", f"{token}-algo-1-theirs"
    never_started, just_created = f"{token}_algo-1_1", f"{token}_algo-2_1"
    made = [ours, theirs, never_started, just_created]
    try:
        for name, verb, flags in (
            (ours, "run", container_engine.label_flags()),
            (theirs, "run", []),
            (never_started, "create", container_engine.label_flags()),
        ):
            started = subprocess.run(
                [engine.cli, verb, "--name", name, *flags, "--network", "none", engine.base_image, "true"],
                env=engine.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert started.returncode == 0, started.stderr
        assert ours in container_engine.project_containers(engine.cli, "status=exited", env=engine.env)
        assert theirs not in container_engine.project_containers(engine.cli, env=engine.env)
        created = dict(container_engine.project_containers_created(engine.cli, "status=created", env=engine.env))
        assert abs(created[never_started] - time.time()) < 120, created

        time.sleep(2)
        subprocess.run(
            [engine.cli, "create", "--name", just_created, *container_engine.label_flags(), engine.base_image, "true"],
            env=engine.env,
            capture_output=True,
            timeout=120,
        )
        remove_local_containers(engine.cli, never_started_for_s=1.5)
        left = subprocess.run(
            [engine.cli, "ps", "-a", "--filter", f"name={token}", "--format", "{{.Names}}"],
            env=engine.env,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert sorted(left) == sorted([theirs, just_created])
    finally:
        for name in made:  # one at a time: podman 4.3's `rm -f A B` skips B when A is gone
            subprocess.run([engine.cli, "rm", "-f", name], env=engine.env, capture_output=True)
        left = subprocess.run(
            [engine.cli, "ps", "-a", "--filter", f"name={token}", "-q"], env=engine.env, capture_output=True, text=True
        )
        assert not left.stdout.split(), "the test's containers were left behind"


# a redirection (or `exec N>`) into a fixed name under /tmp: `> /tmp/x`, `2>"/tmp/x"`, `9>>/tmp/x`
FIXED_TMP_WRITE = re.compile(r"""\d?>>?\s*["']?/tmp/""")


def test_no_host_script_writes_to_a_fixed_name_in_tmp():
    """Root runs these; a fixed name in the shared /tmp may be another user's symbolic link."""
    scripts = [ROOT / "build_and_push.sh", ROOT / ".ci" / "run", *sorted((ROOT / "scripts").glob("*.sh"))]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scripts
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if FIXED_TMP_WRITE.search(line) and not line.lstrip().startswith("#")
    ]
    assert not found, "\n".join(found)
