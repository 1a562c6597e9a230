"""server/allocator.py: the memory allocator `serve` chooses before it becomes gunicorn's master."""

import pytest

from server import allocator


@pytest.fixture
def jemalloc(monkeypatch, tmp_path) -> str:
    """An installed jemalloc, as far as the glob can tell."""
    fake = tmp_path / "libjemalloc.so.2"
    fake.write_bytes(b"")
    monkeypatch.setattr(allocator, "JEMALLOC_GLOB", str(fake))
    return str(fake)


def test_jemalloc_is_preloaded_without_its_eager_purging_arena(jemalloc):
    assert allocator.preload_env({}) == {"LD_PRELOAD": jemalloc, "MALLOC_CONF": "oversize_threshold:0"}


def test_a_callers_jemalloc_options_are_kept(jemalloc):
    assert allocator.preload_env({"MALLOC_CONF": "narenas:1"}) == {"LD_PRELOAD": jemalloc, "MALLOC_CONF": "narenas:1"}


def test_a_callers_allocator_is_left_alone(jemalloc):
    assert allocator.preload_env({"LD_PRELOAD": "/x/libtcmalloc.so"}) == {}
    assert allocator.preload_env({"MALLOC_ARENA_MAX": "4"}) == {}


def test_glibc_gets_two_arenas_where_jemalloc_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "JEMALLOC_GLOB", str(tmp_path / "absent" / "*.so"))
    assert allocator.preload_env({}) == {"MALLOC_ARENA_MAX": "2"}


def test_the_start_up_line_names_the_allocator_chosen(jemalloc):
    chosen = allocator.preload_env({})
    assert allocator.described(chosen) == f"LD_PRELOAD={jemalloc} MALLOC_CONF=oversize_threshold:0"
    assert allocator.described({"MALLOC_ARENA_MAX": "2", "PATH": "/bin"}) == "MALLOC_ARENA_MAX=2"
    assert allocator.described({}) == "glibc's malloc, its defaults"


def test_openvino_servers_keep_glibcs_malloc(jemalloc):
    # OpenVINO's CPU plugin aborts at compile_model under a preloaded jemalloc
    assert allocator.preload_env({"SAGEMAKER_MODEL_RUNTIME": "OpenVINO "}) == {"MALLOC_ARENA_MAX": "2"}
    assert allocator.preload_env({"SAGEMAKER_MODEL_RUNTIME": "torch"})["LD_PRELOAD"] == jemalloc
