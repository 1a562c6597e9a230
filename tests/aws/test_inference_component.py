"""deploy-component on SDK v2 (`--sdk v2`, Model.deploy with EndpointType.INFERENCE_COMPONENT_BASED):
every request validated against botocore's service models with Stubber (no AWS reached) and checked
with the expectations the v3 test shares (tests/helpers/component_requests.py)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from helpers import component_requests as expected
from helpers.sagemaker_requests import ARN, expect_invocations, invocations
from launch import inference_component

pytestmark = pytest.mark.sdk_v2  # scripts/test.sh runs these in .venv-sdk-v2 (sagemaker 2.x)


def test_deploy_component_with_scale_to_zero(aws):
    session, config, recorder = aws
    expected.expect_weights(recorder)
    # Model.deploy first asks whether the endpoint exists
    expected.not_found(recorder, "sagemaker", "describe_endpoint", "Could not find endpoint dogs.")
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect("sagemaker", "create_inference_component", {"InferenceComponentArn": ARN})
    expected.expect_autoscaling(recorder)
    deploy = lambda *a: inference_component.deploy_v2(*a, wait=False)  # noqa: E731  (nothing comes InService here)
    inference_component.run(expected.arguments(), config, session, deploy, None)

    expected.check_endpoint_config(recorder.request("CreateEndpointConfig"))
    assert recorder.request("CreateEndpoint")["EndpointConfigName"] == "dogs"
    expected.check_model(recorder.request("CreateModel"))
    expected.check_component(recorder.request("CreateInferenceComponent"))
    expected.check_autoscaling(recorder)


def test_cleanup_removes_the_model_of_a_deploy_that_failed_before_its_component(aws, capsys):
    """The component was refused after Model.deploy made the model: no component names the model, and
    cleanup finds it by the name deploy-component gives it."""
    session, config, recorder = aws
    expected.expect_weights(recorder)
    expected.not_found(recorder, "sagemaker", "describe_endpoint", "Could not find endpoint dogs.")
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    expected.fail(recorder, "create_inference_component")
    deploy = lambda *a: inference_component.deploy_v2(*a, wait=False)  # noqa: E731  (nothing comes InService here)
    with pytest.raises(ClientError, match="Insufficient capacity"):
        inference_component.run(expected.arguments(), config, session, deploy, None)
    assert recorder.request("CreateModel")["ModelName"] == "dogs-model"
    capsys.readouterr()

    expected.expect_cleanup_of_a_failed_deploy(recorder)
    cleaned_up = ["endpoint dogs", "endpoint config dogs", "model dogs-model"]
    assert expected.run_cleanup(config, session, capsys) == cleaned_up
    assert recorder.request("DeleteModel") == {"ModelName": "dogs-model"}


def test_invoke_by_component_name(aws, tmp_path):
    from launch.hosting import image_predictor_class

    session, _, recorder = aws
    image = expect_invocations(recorder, tmp_path)
    predictor = image_predictor_class()("dogs", sagemaker_session=session, component_name="dogs-ic")
    assert inference_component.invoke_with_predictor(predictor, image, 2)["predictions"][0]["index"] == 39
    runtime = session.sagemaker_runtime_client
    assert inference_component.invoke_with_boto3(runtime, "dogs", "dogs-ic", image, 2)["predictions"][0]["index"] == 39
    calls = invocations(recorder)
    assert len(calls) == 2
    for params in calls:
        assert params["EndpointName"] == "dogs" and params["InferenceComponentName"] == "dogs-ic"
        assert params["CustomAttributes"] == "top_k=2" and params["ContentType"] == "image/png"


def test_cleanup_removes_every_resource(aws, capsys):
    session, config, recorder = aws
    expected.expect_cleanup(recorder)
    assert expected.run_cleanup(config, session, capsys) == expected.CLEANED_UP
    expected.check_cleanup(recorder)


def test_sm_invoke_names_the_component(aws, tmp_path, capsys):
    import sm
    from launch.v2 import commands

    session, config, recorder = aws
    image = expect_invocations(recorder, tmp_path)
    argv = ["invoke", "--endpoint-name", "dogs", "--component-name", "dogs-ic", str(image), "--top-k", "2"]
    commands.cmd_invoke(sm.build_parser().parse_args(argv), config, session)
    calls = invocations(recorder)
    assert [call["InferenceComponentName"] for call in calls] == ["dogs-ic", "dogs-ic"]
    assert capsys.readouterr().out.count("040.Bulldog 0.900") == 2
