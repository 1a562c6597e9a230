"""`aws`, the fixture of every test here: a SageMaker session whose boto3 clients are botocore Stubbers
(helpers/sagemaker_requests.py: every request checked against the service models, no AWS reached), the
run's Config and the recorder of expected requests. SDK v2's session in modules marked sdk_v2 (they run
in .venv-sdk-v2), else SDK v3's. A request the test expected and the code never sent fails the test."""

from __future__ import annotations

import pytest

from helpers.sagemaker_requests import aws_config, stubbed_boto_session
from launch import component_scaling

# SDK v2's own configuration file, kept from reaching AWS for its telemetry
V2_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


@pytest.fixture
def aws(request, monkeypatch):
    monkeypatch.setattr(component_scaling, "DELETE_POLL_S", 0)  # cleanup's polls: no sleeping against stubs
    boto_session, recorder = stubbed_boto_session(monkeypatch)
    clients = {
        "boto_session": boto_session,
        "sagemaker_client": recorder.clients["sagemaker"],
        "sagemaker_runtime_client": recorder.clients["sagemaker-runtime"],
    }
    if request.node.get_closest_marker("sdk_v2"):
        import sagemaker

        session = sagemaker.Session(**clients, sagemaker_config=V2_CONFIG)
    else:
        from launch.v3 import session as v3_session

        monkeypatch.delenv("SAGEMAKER_USER_CONFIG_OVERRIDE", raising=False)
        monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # v3 would check the role through IAM (AWS)
        v3_session.opt_out_of_telemetry()
        from sagemaker.core.helper.session_helper import Session

        session = Session(**clients)
    yield session, aws_config(), recorder
    for stubber in recorder.stubbers.values():
        stubber.assert_no_pending_responses()
