"""What deploy-component must send on either SDK (tests/aws/test_inference_component*.py), checked field by
field after Stubber validated each request against botocore's service models: the endpoint
configuration, the model, the component with the server's reservation, autoscaling down to zero and
back, invoking by component name, and the cleanup of every resource."""

from __future__ import annotations

import argparse
import io
import tarfile

from botocore.response import StreamingBody

from helpers.sagemaker_requests import ARN, MODEL_DATA, ROLE, SERVE_IMAGE
from server.reservation import reservation

WEIGHTS = 94_000_000  # ResNet50's model.pt, about
CREATED = "2026-01-01T00:00:00Z"
STEP_POLICY_ARN = "arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:x:resource/sagemaker/from-zero"


def model_archive(weights: int = 1000) -> bytes:
    """A model.tar.gz as training writes it: the config, then model.pt (`weights` bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("model_config.json", b"{}"), ("model.pt", bytes(weights)), ("code/x.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def arguments(**overrides) -> argparse.Namespace:
    values = dict(
        model_data=MODEL_DATA,
        endpoint_name="dogs",
        component_name=None,
        cores=4,
        copies=1,
        max_copies=3,
        max_instances=2,
        invocations_per_copy=50.0,
        invoke=[],
        top_k=2,
    )
    return argparse.Namespace(**{**values, **overrides})


def expect_weights(recorder, weights: int = 1000) -> None:
    archive = model_archive(weights)
    recorder.expect("s3", "get_object", {"Body": StreamingBody(io.BytesIO(archive), len(archive))})


def expect_autoscaling(recorder) -> None:
    recorder.expect("application-autoscaling", "register_scalable_target")
    recorder.expect("application-autoscaling", "put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:tracking"})
    recorder.expect("application-autoscaling", "put_scaling_policy", {"PolicyARN": STEP_POLICY_ARN})
    recorder.expect("cloudwatch", "put_metric_alarm")


def check_endpoint_config(request: dict) -> None:
    assert request["EndpointConfigName"] == "dogs"
    assert request["ExecutionRoleArn"] == ROLE  # the component's model has it too; the endpoint needs its own
    (variant,) = request["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic" and "ModelName" not in variant
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 2}
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}


def check_model(request: dict, weights: int = 1000) -> None:
    assert request["ModelName"] == "dogs-model" and request["ExecutionRoleArn"] == ROLE
    container = request["PrimaryContainer"]
    assert container["Image"] == SERVE_IMAGE and container["ModelDataUrl"] == MODEL_DATA
    held = reservation(4, weights)
    assert container["Environment"] == {
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "SAGEMAKER_TORCH_THREADS": "2",
        "SAGEMAKER_DECODE_PIXELS_PER_WORKER": str(held.decode_pixels_per_worker),
    }


def check_component(request: dict, weights: int = 1000) -> None:
    assert request["InferenceComponentName"] == "dogs-ic"
    assert request["EndpointName"] == "dogs" and request["VariantName"] == "AllTraffic"
    specification = request["Specification"]
    assert specification["ModelName"] == "dogs-model"
    assert specification["ComputeResourceRequirements"] == {
        "NumberOfCpuCoresRequired": 4.0,
        "MinMemoryRequiredInMb": reservation(4, weights).memory_mb,
    }
    assert specification["StartupParameters"] == {
        "ModelDataDownloadTimeoutInSeconds": 600,
        "ContainerStartupHealthCheckTimeoutInSeconds": 600,
    }
    assert request["RuntimeConfig"] == {"CopyCount": 1}
    assert {"Key": "project", "Value": "byoc-image-classifier"} in request["Tags"]


def check_autoscaling(recorder) -> None:
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "inference-component/dogs-ic",
        "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
    }
    assert recorder.request("RegisterScalableTarget") == {**target, "MinCapacity": 0, "MaxCapacity": 3}
    tracking, step = [params for name, params in recorder.requests if name == "PutScalingPolicy"]
    assert {key: tracking[key] for key in target} == target == {key: step[key] for key in target}
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    configuration = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert configuration["TargetValue"] == 50.0
    assert configuration["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
    }
    assert step["PolicyType"] == "StepScaling"
    assert step["StepScalingPolicyConfiguration"] == {
        "AdjustmentType": "ChangeInCapacity",
        "MetricAggregationType": "Maximum",
        "Cooldown": 60,
        "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
    }
    alarm = recorder.request("PutMetricAlarm")
    assert alarm["AlarmActions"] == [STEP_POLICY_ARN]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SageMaker", "NoCapacityInvocationFailures")
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "dogs-ic"}]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Sum",
        1.0,
        "GreaterThanOrEqualToThreshold",
    )


def not_found(recorder, service: str, operation: str, message: str) -> None:
    recorder.stubbers[service].add_client_error(
        operation, service_error_code="ValidationException", service_message=message
    )


def expect_cleanup(recorder) -> None:
    """The answers cleanup reads: the endpoint's one component, its two policies (the step one with our
    alarm), the component gone on the second look, then the endpoint, its configuration (no model on
    the variant)."""
    recorder.expect(
        "sagemaker",
        "list_inference_components",
        {"InferenceComponents": [component_summary()]},
    )
    policy = {
        "PolicyARN": STEP_POLICY_ARN,
        "ServiceNamespace": "sagemaker",
        "ResourceId": "inference-component/dogs-ic",
        "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
        "CreationTime": CREATED,
    }
    recorder.expect(
        "application-autoscaling",
        "describe_scaling_policies",
        {
            "ScalingPolicies": [
                {
                    **policy,
                    "PolicyName": "dogs-ic-invocations",
                    "PolicyType": "TargetTrackingScaling",
                    "Alarms": [{"AlarmName": "TargetTracking-inference-component/dogs-ic-AlarmHigh", "AlarmARN": ARN}],
                },
                {
                    **policy,
                    "PolicyName": "dogs-ic-from-zero",
                    "PolicyType": "StepScaling",
                    "Alarms": [{"AlarmName": "dogs-ic-no-capacity", "AlarmARN": ARN}],
                },
            ]
        },
    )
    recorder.expect("cloudwatch", "delete_alarms")
    recorder.expect("application-autoscaling", "delete_scaling_policy")
    recorder.expect("application-autoscaling", "delete_scaling_policy")
    recorder.expect("application-autoscaling", "deregister_scalable_target")
    recorder.expect("sagemaker", "describe_inference_component", component_description())
    recorder.expect("sagemaker", "delete_inference_component")
    recorder.expect("sagemaker", "describe_inference_component", component_description("Deleting"))
    not_found(recorder, "sagemaker", "describe_inference_component", "Could not find inference component dogs-ic.")
    recorder.expect("sagemaker", "delete_model")
    # cleanup then looks for a variant's scalable target (sm.py deploy --autoscale): none here
    recorder.stubbers["application-autoscaling"].add_client_error(
        "deregister_scalable_target", service_error_code="ObjectNotFoundException", service_message="No scalable target"
    )
    expect_endpoint_teardown(recorder)


def expect_endpoint_teardown(recorder) -> None:
    """The answers cleanup reads as it removes endpoint "dogs" (one variant, naming no model) and its config."""
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": "dogs",
            "EndpointArn": ARN,
            "EndpointConfigName": "dogs",
            "EndpointStatus": "InService",
            "CreationTime": CREATED,
            "LastModifiedTime": CREATED,
        },
    )
    recorder.expect(
        "sagemaker",
        "describe_endpoint_config",
        {
            "EndpointConfigName": "dogs",
            "EndpointConfigArn": ARN,
            "CreationTime": CREATED,
            "ProductionVariants": [{"VariantName": "AllTraffic", "InstanceType": "ml.m5.large"}],
        },
    )
    recorder.expect("sagemaker", "delete_endpoint")
    recorder.expect("sagemaker", "delete_endpoint_config")


CLEANED_UP = [
    "alarm dogs-ic-no-capacity",
    "scaling policy dogs-ic-invocations",
    "scaling policy dogs-ic-from-zero",
    "scalable target inference-component/dogs-ic",
    "inference component dogs-ic",
    "model dogs-model",
    "endpoint dogs",
    "endpoint config dogs",
]


def expect_cleanup_of_a_failed_deploy(recorder, endpoint_made: bool = True) -> None:
    """The answers cleanup reads after a deploy-component that failed before its component existed: no
    component lists the model; the endpoint (its variant names no model), or none when its creation failed."""
    recorder.expect("sagemaker", "list_inference_components", {"InferenceComponents": []})
    recorder.stubbers["application-autoscaling"].add_client_error(
        "deregister_scalable_target", service_error_code="ObjectNotFoundException", service_message="No scalable target"
    )
    if endpoint_made:
        expect_endpoint_teardown(recorder)
        recorder.expect("sagemaker", "delete_model")
    else:
        not_found(recorder, "sagemaker", "describe_endpoint", 'Could not find endpoint "dogs".')
        recorder.expect("sagemaker", "delete_endpoint_config")
        not_found(recorder, "sagemaker", "delete_model", 'Could not find model "dogs-model".')


def fail(recorder, operation: str) -> None:
    """SageMaker refuses `operation` (a sagemaker call) as it does a request it cannot place."""
    recorder.stubbers["sagemaker"].add_client_error(
        operation, service_error_code="ValidationException", service_message="Insufficient capacity for ml.m5.large"
    )


def run_cleanup(config, session, capsys) -> list[str]:
    """sm.py cleanup's own path (launch/cli.py) -> the lines it printed, without 'deleted '."""
    from launch import cli

    cli.cleanup_endpoint(config, session, "dogs")
    return [line.removeprefix("deleted ") for line in capsys.readouterr().out.splitlines()]


def check_cleanup(recorder) -> None:
    names = [name for name, _ in recorder.requests]
    # the endpoint goes only once its component is gone (SageMaker refuses it before)
    assert names.index("DeleteEndpoint") > max(i for i, n in enumerate(names) if n == "DescribeInferenceComponent")
    assert recorder.request("DeleteAlarms") == {"AlarmNames": ["dogs-ic-no-capacity"]}  # not target tracking's
    assert recorder.request("DeleteInferenceComponent") == {"InferenceComponentName": "dogs-ic"}
    assert recorder.request("DeleteModel") == {"ModelName": "dogs-model"}
    assert recorder.request("DeleteEndpointConfig") == {"EndpointConfigName": "dogs"}


def component_summary() -> dict:
    return {
        "InferenceComponentName": "dogs-ic",
        "InferenceComponentArn": ARN,
        "EndpointName": "dogs",
        "EndpointArn": ARN,
        "VariantName": "AllTraffic",
        "CreationTime": CREATED,
        "LastModifiedTime": CREATED,
    }


def component_description(status: str = "InService") -> dict:
    return {
        **component_summary(),
        "InferenceComponentStatus": status,
        "Specification": {"ModelName": "dogs-model"},
    }
