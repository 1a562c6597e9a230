"""A tuning study's storage URL (SQLAlchemy's form, as Optuna takes it), for the host scripts and the
tuner alike: the environment variable that carries it, and how it may be shown. Standard library only
(run_local.py runs with the system Python).

    postgresql+psycopg://tuner:secret@db.example.org:5432/tuning  ->  postgresql+psycopg://tuner:***@db.example.org:5432/tuning
"""

from __future__ import annotations

import os
import re
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
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}")
    # libpq also takes secrets as query parameters (?password=..., ?sslpassword=...)
    query = "&".join(
        f"{key}=***" if key.lower().endswith("password") else item
        for item in parts.query.split("&")
        for key in [item.partition("=")[0]]
    )
    redacted = parts._replace(query=query)
    # unchanged URLs as written: urlunsplit would drop the empty host of sqlite:///study.db
    return url if redacted == urlsplit(url) else urlunsplit(redacted)


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
    forms = sorted({form for form in (secret, unquote(secret or "")) if form}, key=len, reverse=True)
    if not forms:
        return text
    # both forms in one pass: replacing one after the other would find the password "*" in the first's ***
    return re.sub("|".join(map(re.escape, forms)), "***", text)


def on_loopback(url: str) -> bool:
    """The database is on this machine's loopback: a container must share the host's network to reach it."""
    try:
        return urlsplit(url).hostname in LOOPBACK
    except ValueError:
        return False


def from_environment() -> str | None:
    """$TUNING_STORAGE_URL, or None when unset or empty."""
    return os.environ.get(STORAGE_ENV, "").strip() or None
