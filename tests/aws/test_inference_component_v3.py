"""deploy-component on SDK v3 (the default): every request validated against botocore's service models
with Stubber (no AWS reached) and checked with the expectations v2's test shares
(tests/helpers/component_requests.py)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from helpers import component_requests as expected
from helpers.sagemaker_requests import ARN, expect_invocations, invocations
from launch import inference_component
from launch.v3 import inference_component as component

CREATED = expected.CREATED


def expect_deployment(recorder, until: str | None = None) -> None:
    """What the v3 resources read back after each create (the endpoint configuration goes through the
    plain client: see launch/v3/inference_component.py); `until`: the create SageMaker refuses."""
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    if until == "create_endpoint":
        expected.fail(recorder, until)
        return
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": "dogs",
            "EndpointArn": ARN,
            "EndpointConfigName": "dogs",
            "EndpointStatus": "Creating",
            "CreationTime": CREATED,
            "LastModifiedTime": CREATED,
        },
    )
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect(
        "sagemaker", "describe_model", {"ModelName": "dogs-model", "ModelArn": ARN, "CreationTime": CREATED}
    )
    if until == "create_inference_component":
        expected.fail(recorder, until)
        return
    recorder.expect("sagemaker", "create_inference_component", {"InferenceComponentArn": ARN})
    recorder.expect("sagemaker", "describe_inference_component", expected.component_description("Creating"))


def test_deploy_component_with_scale_to_zero(aws):
    session, config, recorder = aws
    expected.expect_weights(recorder)
    expect_deployment(recorder)
    expected.expect_autoscaling(recorder)
    deploy = lambda *a: component.deploy(*a, wait=False)  # noqa: E731  (nothing comes InService here)
    inference_component.run(expected.arguments(), config, session, deploy, None)

    assert recorder.request("GetObject") == {"Bucket": "my-bucket", "Key": "byoc/output/job/output/model.tar.gz"}
    expected.check_endpoint_config(recorder.request("CreateEndpointConfig"))
    assert recorder.request("CreateEndpoint")["EndpointConfigName"] == "dogs"
    expected.check_model(recorder.request("CreateModel"))
    expected.check_component(recorder.request("CreateInferenceComponent"))
    expected.check_autoscaling(recorder)


def test_cleanup_removes_the_model_of_a_deploy_that_failed_before_its_component(aws, capsys):
    """The component was refused after the model was made: no component names the model, and cleanup
    finds it by the name deploy-component gives it."""
    session, config, recorder = aws
    expected.expect_weights(recorder)
    expect_deployment(recorder, until="create_inference_component")
    deploy = lambda *a: component.deploy(*a, wait=False)  # noqa: E731  (nothing comes InService here)
    with pytest.raises(ClientError, match="Insufficient capacity"):
        inference_component.run(expected.arguments(), config, session, deploy, None)
    assert recorder.request("CreateModel")["ModelName"] == "dogs-model"
    capsys.readouterr()

    expected.expect_cleanup_of_a_failed_deploy(recorder)
    cleaned_up = ["endpoint dogs", "endpoint config dogs", "model dogs-model"]
    assert expected.run_cleanup(config, session, capsys) == cleaned_up
    assert recorder.request("DeleteModel") == {"ModelName": "dogs-model"}


def test_cleanup_removes_the_configuration_of_an_endpoint_never_made(aws, capsys):
    """The endpoint was refused: its configuration is found by its name, and no model was made (not found
    is what cleanup expects then)."""
    session, config, recorder = aws
    expected.expect_weights(recorder)
    expect_deployment(recorder, until="create_endpoint")
    deploy = lambda *a: component.deploy(*a, wait=False)  # noqa: E731
    with pytest.raises(ClientError, match="Insufficient capacity"):
        inference_component.run(expected.arguments(), config, session, deploy, None)
    capsys.readouterr()

    expected.expect_cleanup_of_a_failed_deploy(recorder, endpoint_made=False)
    assert expected.run_cleanup(config, session, capsys) == ["endpoint dogs: none", "endpoint config dogs"]
    assert recorder.request("DeleteEndpointConfig") == {"EndpointConfigName": "dogs"}
    assert recorder.request("DeleteModel") == {"ModelName": "dogs-model"}  # asked, and not found


def test_invoke_by_component_name(aws, tmp_path):
    session, _, recorder = aws
    image = expect_invocations(recorder, tmp_path)
    assert component.invoke(session, "dogs", "dogs-ic", image, 2)["predictions"][0]["index"] == 39
    runtime = session.sagemaker_runtime_client
    assert inference_component.invoke_with_boto3(runtime, "dogs", "dogs-ic", image, 2)["predictions"][0]["index"] == 39
    for params in invocations(recorder):
        assert params["EndpointName"] == "dogs" and params["InferenceComponentName"] == "dogs-ic"
        assert params["CustomAttributes"] == "top_k=2" and params["ContentType"] == "image/png"


def test_cleanup_removes_every_resource(aws, capsys):
    session, config, recorder = aws
    expected.expect_cleanup(recorder)
    assert expected.run_cleanup(config, session, capsys) == expected.CLEANED_UP
    expected.check_cleanup(recorder)


def test_sm_invoke_names_the_component(aws, tmp_path, capsys):
    import sm
    from launch.v3 import commands

    session, config, recorder = aws
    image = expect_invocations(recorder, tmp_path)
    argv = ["invoke", "--endpoint-name", "dogs", "--component-name", "dogs-ic", str(image), "--top-k", "2"]
    commands.cmd_invoke(sm.build_parser().parse_args(argv), config, session)
    calls = invocations(recorder)
    assert [call["InferenceComponentName"] for call in calls] == ["dogs-ic", "dogs-ic"]
    assert capsys.readouterr().out.count("040.Bulldog 0.900") == 2


def test_cleanup_cut_short_before_finds_what_is_left(aws):
    """A cleanup that stopped after the policies went: the step policy's alarm is found by its name (no
    policy names it any more), and the endpoint's components are listed page by page."""
    from launch import component_scaling

    session, _, recorder = aws
    recorder.expect("sagemaker", "list_inference_components", {"InferenceComponents": [], "NextToken": "page-2"})
    recorder.expect("sagemaker", "list_inference_components", {"InferenceComponents": [expected.component_summary()]})
    recorder.expect("application-autoscaling", "describe_scaling_policies", {"ScalingPolicies": []})
    recorder.expect("cloudwatch", "delete_alarms")
    recorder.stubbers["application-autoscaling"].add_client_error(
        "deregister_scalable_target", service_error_code="ObjectNotFoundException", service_message="No scalable target"
    )
    recorder.expect("sagemaker", "describe_inference_component", expected.component_description())
    recorder.expect("sagemaker", "delete_inference_component")
    expected.not_found(recorder, "sagemaker", "describe_inference_component", "Could not find inference component.")
    recorder.expect("sagemaker", "delete_model")
    removed = component_scaling.remove_components(session, "dogs")
    assert removed == ["alarm dogs-ic-no-capacity", "inference component dogs-ic", "model dogs-model"]
    assert recorder.request("DeleteAlarms") == {"AlarmNames": ["dogs-ic-no-capacity"]}
    assert recorder.request("ListInferenceComponents") == {"EndpointNameEquals": "dogs", "NextToken": "page-2"}
