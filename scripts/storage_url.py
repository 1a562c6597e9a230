"""A tuning study's storage URL (SQLAlchemy's form, as Optuna takes it), for the host scripts and the
tuner alike: the environment variable that carries it, and how it may be shown. Standard library only
(run_local.py runs with the system Python).

    postgresql+psycopg://tuner:secret@db.example.org:5432/tuning  ->  postgresql+psycopg://tuner:***@db.example.org:5432/tuning
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

STORAGE_ENV = "TUNING_STORAGE_URL"  # the URL when --storage is not given: out of the command line and `ps`
STUDY_NAME = "local-tuning"  # the study's name in its storage unless told another (--study-name)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def redact(url: str) -> str:
    """The URL with its password, if any, as ***: the only form of it that is ever printed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable storage URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def password(url: str) -> str | None:
    """The password written in the URL, as written (percent-encoded or not), or None."""
    try:
        userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    except ValueError:
        return None
    return userinfo.split(":", 1)[1] if at and ":" in userinfo else None


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with the URL's password replaced by ***, written or decoded."""
    from urllib.parse import unquote

    secret = password(url)
    for form in {secret, unquote(secret)} if secret else ():
        if form:
            text = text.replace(form, "***")
    return text


def on_loopback(url: str) -> bool:
    """The database is on this machine's loopback: a container must share the host's network to reach it."""
    try:
        return urlsplit(url).hostname in LOOPBACK
    except ValueError:
        return False


def from_environment() -> str | None:
    """$TUNING_STORAGE_URL, or None when unset or empty."""
    return os.environ.get(STORAGE_ENV, "").strip() or None
