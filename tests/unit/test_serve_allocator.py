"""container/serve's choice of memory allocator (a script, loaded here as a module)."""

import importlib.util
import os
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

SERVE = Path(__file__).resolve().parents[2] / "container" / "serve"


@pytest.fixture
def serve(monkeypatch, tmp_path):
    # the script puts container/ on sys.path and PYTHONPATH as it loads: undone after each test,
    # so later tests' subprocesses do not inherit it
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    loader = SourceFileLoader("serve_script", str(SERVE))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("serve_script", loader))
    loader.exec_module(module)
    fake = tmp_path / "libjemalloc.so.2"
    fake.write_bytes(b"")
    monkeypatch.setattr(module, "JEMALLOC_GLOB", str(fake))
    return module, str(fake)


def test_jemalloc_is_preloaded_without_its_eager_purging_arena(serve):
    module, library = serve
    assert module.allocator_env({}) == {"LD_PRELOAD": library, "MALLOC_CONF": "oversize_threshold:0"}


def test_a_callers_jemalloc_options_are_kept(serve):
    module, library = serve
    assert module.allocator_env({"MALLOC_CONF": "narenas:1"}) == {"LD_PRELOAD": library, "MALLOC_CONF": "narenas:1"}


def test_a_callers_allocator_is_left_alone(serve):
    module, _ = serve
    assert module.allocator_env({"LD_PRELOAD": "/x/libtcmalloc.so"}) == {}
    assert module.allocator_env({"MALLOC_ARENA_MAX": "4"}) == {}


def test_glibc_gets_two_arenas_where_jemalloc_is_missing(serve, monkeypatch, tmp_path):
    module, _ = serve
    monkeypatch.setattr(module, "JEMALLOC_GLOB", str(tmp_path / "absent" / "*.so"))
    assert module.allocator_env({}) == {"MALLOC_ARENA_MAX": "2"}


def test_openvino_servers_keep_glibcs_malloc(serve):
    # OpenVINO's CPU plugin aborts at compile_model under a preloaded jemalloc (container/serve)
    module, library = serve
    assert module.allocator_env({"SAGEMAKER_MODEL_RUNTIME": "openvino"}) == {"MALLOC_ARENA_MAX": "2"}
    assert module.allocator_env({"SAGEMAKER_MODEL_RUNTIME": "torch"})["LD_PRELOAD"] == library
