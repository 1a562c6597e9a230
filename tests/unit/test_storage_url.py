"""The tuning storage URL is never shown with its password (scripts/storage_url.py), whatever the password."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import storage_url

passwords = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
users = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


@given(users, passwords, st.sampled_from(["127.0.0.1:5432", "db.example.org", "[::1]:6543"]))
def test_the_password_never_shows(user, password, host):
    written = quote(password, safe="")  # as a URL carries it
    url = f"postgresql+psycopg://{user}:{written}@{host}/tuning?sslmode=require"
    shown = storage_url.redact(url)
    assert shown == f"postgresql+psycopg://{user}:***@{host}/tuning?sslmode=require"
    assert storage_url.password(url) == written
    # an error message quoting it, decoded or as written
    assert storage_url.scrub(f"refused: {password}", url) == "refused: ***" or password in "refused: "
    assert storage_url.scrub(f"refused: {written}", url) == "refused: ***" or written in "refused: "


@given(st.text(max_size=200))
def test_any_text_is_redacted_or_shown_as_it_is(text):
    shown = storage_url.redact(text)  # never raises
    secret = storage_url.password(text)
    if secret:
        assert f":{secret}@" not in shown


def test_urls_without_a_password_are_shown_as_they_are():
    for url in ("sqlite:////work/build/tuning/study.db", "postgresql+psycopg://tuner@db:5432/tuning"):
        assert storage_url.redact(url) == url and storage_url.password(url) is None
    assert storage_url.on_loopback("postgresql+psycopg://t@127.0.0.1:5432/d")
    assert storage_url.on_loopback("postgresql+psycopg://t@localhost/d")
    assert not storage_url.on_loopback("postgresql+psycopg://t@db.example.org/d")


def test_run_local_gives_the_tuner_container_the_url_by_environment_only(monkeypatch):
    from workflow.containers import Containers

    box = object.__new__(Containers)  # no engine needed to make the flags
    box.env, box.tracking_env = {}, None
    monkeypatch.setenv("PGPASSWORD", "pg-secret")
    url = "postgresql+psycopg://tuner:url-secret@127.0.0.1:5432/tuning"
    flags = box.storage_flags(url)
    assert flags == ["-e", storage_url.STORAGE_ENV, "-e", "PGPASSWORD", "--network", "host"]
    assert box.env == {storage_url.STORAGE_ENV: url, "PGPASSWORD": "pg-secret"}  # the engine's own environment
    box.env, box.tracking_env = {}, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}  # --mlflow set the network
    monkeypatch.delenv("PGPASSWORD")
    assert box.storage_flags("postgresql+psycopg://tuner@db.example.org/tuning") == ["-e", storage_url.STORAGE_ENV]
    assert box.storage_flags(None) == []


def test_sm_tune_takes_a_storage_for_local_studies_only(monkeypatch):
    import types

    import sm
    from launch import cli, local_tuning

    url = "postgresql+psycopg://tuner@db.example.org:5432/tuning"
    args = sm.build_parser().parse_args(["tune", "--local", "--data", "d", "--storage", url, "--study-name", "dogs"])
    assert (args.storage, args.study_name) == (url, "dogs")
    monkeypatch.setenv(storage_url.STORAGE_ENV, "postgresql+psycopg://other@db/tuning")
    assert local_tuning.storage_url(args) == url  # --storage wins over the environment
    args.storage = None
    assert local_tuning.storage_url(args) == "postgresql+psycopg://other@db/tuning"
    defaults = sm.build_parser().parse_args(["tune", "--data", "s3://b/d.zip", "--storage", url])
    assert defaults.study_name == storage_url.STUDY_NAME
    remote = types.SimpleNamespace(is_local=False)
    with pytest.raises(SystemExit, match="--storage is for --local"):
        cli.tune(defaults, remote, None, None, None, None)  # refused before any call to AWS


@given(passwords, st.sampled_from(["password", "sslpassword", "PASSWORD"]))
def test_a_password_given_as_a_query_parameter_never_shows(password, key):
    """libpq also takes secrets as query parameters."""
    written = quote(password, safe="")
    shown = storage_url.redact(f"postgresql+psycopg://tuner@db:5432/tuning?sslmode=require&{key}={written}")
    assert shown == f"postgresql+psycopg://tuner@db:5432/tuning?sslmode=require&{key}=***"
