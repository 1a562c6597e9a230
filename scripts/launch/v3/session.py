"""v3 sessions: a real one, or v3's LocalSession (no AWS account), with telemetry opted out.

v3 reads TelemetryOptOut from the SDK defaults file that SAGEMAKER_USER_CONFIG_OVERRIDE names, also
for the sessions it makes itself (ModelTrainer's local mode has none of ours); without it a local
run would try to reach AWS. `import sagemaker.serve` (and the v3 local session) needs a region.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch.config import Config, complete_from_session

DEFAULTS_FILE = Path(__file__).with_name("sagemaker_defaults.yaml")


def opt_out_of_telemetry(environ=os.environ) -> None:
    """Point the SDK at our defaults file unless the user names one of theirs (theirs should opt out too)."""
    environ.setdefault("SAGEMAKER_USER_CONFIG_OVERRIDE", str(DEFAULTS_FILE))


def make_session(config: Config):
    import boto3

    opt_out_of_telemetry()
    if config.is_local:
        from launch.session import prepare_local_environment

        prepare_local_environment(config)
        from sagemaker.core.local import LocalSession

        session = LocalSession(boto_session=boto3.Session(region_name=config.region))
        session.config = {"local": {"local_code": True}}
        return session
    from sagemaker.core.helper.session_helper import Session

    session = Session(boto_session=boto3.Session(region_name=config.region or None))
    complete_from_session(config, session)
    return session
