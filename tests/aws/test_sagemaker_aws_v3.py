"""SDK v3 requests for the AWS-only steps, validated against botocore's service models with Stubber
(no AWS reached), and checked with the same expectations as the v2 requests (tests/helpers/sagemaker_requests.py)."""

from __future__ import annotations

import pytest

from helpers.sagemaker_requests import (
    ARN,
    MODEL_DATA,
    TRAINING_CHANNELS,
    TRAINING_HPS,
    check_autoscaling,
    check_deployment,
    check_training_job,
    check_transform_job,
    check_tuning_job,
    expect_invocations,
    invocations,
)
from launch.v3 import hosting, training, tuning

CREATED = "2026-01-01T00:00:00Z"


def training_job_description(name: str) -> dict:
    return {
        "TrainingJobName": name,
        "TrainingJobArn": ARN,
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Starting",
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {},
        "CreationTime": CREATED,
        "ModelArtifacts": {"S3ModelArtifacts": "s3://x/model.tar.gz"},
    }


def test_telemetry_is_opted_out(aws):
    session, _, _ = aws
    from sagemaker.core.common_utils import resolve_value_from_config
    from sagemaker.core.config.config_schema import TELEMETRY_OPT_OUT_PATH

    assert resolve_value_from_config(config_path=TELEMETRY_OPT_OUT_PATH, sagemaker_session=session) is True


def test_create_training_job_as_v2_does(aws):
    session, config, recorder = aws
    name = "byoc-train-test"
    recorder.expect("sagemaker", "create_training_job", {"TrainingJobArn": ARN})
    recorder.expect("sagemaker", "describe_training_job", training_job_description(f"{name}-x"))
    trainer = training.model_trainer(
        session,
        config,
        TRAINING_HPS,
        name,
        tags=[{"Key": "team", "Value": "vision"}],
        environment={"BYOC_LOG": "1"},
        subnets=["subnet-1"],
        security_group_ids=["sg-1"],
        network_isolation=True,
    )
    trainer.train(input_data_config=training.input_data(session, config, TRAINING_CHANNELS), wait=False, logs=False)
    request = recorder.request("CreateTrainingJob")
    check_training_job(request, name)
    assert request["TrainingJobName"].startswith(f"{name}-")  # v3 appends a timestamp to the base name
    # typed on the way in: numbers and lists as JSON, as the trainer's spec parses them
    assert request["HyperParameters"] == {"lr": "0.01", "head": "[256]", "epochs": "3"}
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://my-bucket/byoc/tensorboard/{name}",
        "LocalPath": training.TENSORBOARD_LOCAL_PATH,
    }
    assert request["Environment"] == {"BYOC_LOG": "1"}
    assert request["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}
    assert request["EnableNetworkIsolation"] is True


def test_hyperparameters_are_checked_before_anything_is_sent():
    with pytest.raises(ValueError, match="unknown hyperparameter 'learning-rate'"):
        training.typed_hyperparameters({"learning-rate": 0.1})
    assert training.typed_hyperparameters({"head": "512,256", "amp": "auto", "epochs": "4"}) == {
        "head": [512, 256],
        "amp": "auto",
        "epochs": 4,
    }


@pytest.mark.parametrize("strategy", ["Bayesian", "Hyperband"])
def test_create_tuning_job_from_the_search_space(aws, strategy):
    from contract.spec import search_space

    session, config, recorder = aws
    recorder.expect("sagemaker", "create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_hyper_parameter_tuning_job",
        {
            "HyperParameterTuningJobName": "byoc-tune-x",
            "HyperParameterTuningJobArn": ARN,
            "HyperParameterTuningJobConfig": {"Strategy": strategy, "ResourceLimits": {"MaxParallelTrainingJobs": 3}},
            "HyperParameterTuningJobStatus": "InProgress",
            "CreationTime": CREATED,
            "TrainingJobStatusCounters": {},
            "ObjectiveStatusCounters": {},
        },
    )
    space = search_space.PRESETS["seed2"]
    trainer = training.model_trainer(
        session, config, {**space.fixed, "backbone": "resnet50"}, "trial", tensorboard=False
    )
    tuner = tuning.tuner(
        trainer, space, strategy, max_jobs=12, max_parallel_jobs=3, warm_start_parents=["byoc-tune-old"], epochs=5
    )
    tuner.tune(inputs=training.input_data(session, config, {"training": "s3://my-bucket/dogImages.zip"}), wait=False)
    check_tuning_job(recorder.request("CreateHyperParameterTuningJob"), strategy)


def test_grid_needs_categorical_parameters(aws):
    from contract.spec import search_space

    session, config, _ = aws
    with pytest.raises(search_space.SearchSpaceError, match="categorical"):
        tuning.tuner(training.model_trainer(session, config, {}, "trial"), search_space.PRESETS["seed1"], "Grid")


def expect_deployment(recorder, model_name: str, endpoint: str, serverless: bool = False) -> None:
    """The responses the v3 resources read back (each create is followed by a describe), except for
    the serverless endpoint config, which goes through the plain client (see launch/v3/hosting.py)."""
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect("sagemaker", "describe_model", {"ModelName": model_name, "ModelArn": ARN, "CreationTime": CREATED})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    if not serverless:
        recorder.expect(
            "sagemaker",
            "describe_endpoint_config",
            {
                "EndpointConfigName": endpoint,
                "EndpointConfigArn": ARN,
                "CreationTime": CREATED,
                "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": model_name}],
            },
        )
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": endpoint,
            "EndpointArn": ARN,
            "EndpointConfigName": endpoint,
            "EndpointStatus": "Creating",
            "CreationTime": CREATED,
            "LastModifiedTime": CREATED,
        },
    )


def test_deploy_with_autoscaling(aws):
    session, config, recorder = aws
    expect_deployment(recorder, "dogs-model", "dogs")
    recorder.expect("application-autoscaling", "register_scalable_target")
    recorder.expect("application-autoscaling", "put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:p"})
    model = hosting.create_model(session, config, MODEL_DATA, "dogs-model")
    endpoint = hosting.deploy(session, config, model.model_name, "dogs", instance_count=2, wait=False)
    hosting.autoscale(session, "dogs", 1, 4, 100)
    check_deployment(recorder.request("CreateModel"), recorder.request("CreateEndpointConfig"), "dogs-model")
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == hosting.STARTUP_TIMEOUT_S
    assert variant["ModelDataDownloadTimeoutInSeconds"] == hosting.STARTUP_TIMEOUT_S
    assert recorder.request("CreateEndpoint") == {
        "EndpointName": "dogs",
        "EndpointConfigName": "dogs",
        "Tags": [{"Key": "project", "Value": "byoc-image-classifier"}],
    }
    check_autoscaling(recorder.request("RegisterScalableTarget"), recorder.request("PutScalingPolicy"))
    assert endpoint.endpoint_name == "dogs"


def test_serverless_endpoint(aws):
    session, config, recorder = aws
    expect_deployment(recorder, "m", "dogs-sls", serverless=True)
    hosting.deploy(
        session,
        config,
        hosting.create_model(session, config, MODEL_DATA, "m").model_name,
        "dogs-sls",
        serverless=(4096, 5),
        wait=False,
    )
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    assert "InstanceType" not in variant


def test_invoke_through_the_endpoint_resource_and_boto3(aws, tmp_path):
    session, _, recorder = aws
    image = expect_invocations(recorder, tmp_path)
    assert hosting.invoke_with_endpoint(session, "dogs", image, 3)["predictions"][0]["label"] == "040.Bulldog"
    assert (
        hosting.invoke_with_boto3(session.sagemaker_runtime_client, "dogs", image, 3)["predictions"][0]["index"] == 39
    )
    calls = invocations(recorder)
    assert len(calls) == 2
    for params in calls:
        assert params["EndpointName"] == "dogs" and params["ContentType"] == "image/png"
        assert params["CustomAttributes"] == "top_k=3" and params["Accept"] == "application/json"
        assert params["Body"] == image.read_bytes()


def test_batch_transform(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_transform_job", {"TransformJobArn": ARN})
    hosting.transform(session, config, "m", "s3://b/in/", "s3://b/out/", max_payload_mb=20, wait=False)
    check_transform_job(recorder.request("CreateTransformJob"), "m")
    assert recorder.request("CreateTransformJob")["TransformJobName"] == "m"


def test_cleanup_deletes_endpoint_config_and_model(aws):
    session, _, recorder = aws
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": "dogs",
            "EndpointArn": ARN,
            "EndpointConfigName": "dogs-config",
            "EndpointStatus": "InService",
            "CreationTime": CREATED,
            "LastModifiedTime": CREATED,
        },
    )
    recorder.expect(
        "sagemaker",
        "describe_endpoint_config",
        {
            "EndpointConfigName": "dogs-config",
            "EndpointConfigArn": ARN,
            "CreationTime": CREATED,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "dogs-model"}],
        },
    )
    for operation in ("delete_endpoint", "delete_endpoint_config", "delete_model"):
        recorder.expect("sagemaker", operation)
    assert hosting.cleanup(session, "dogs") == ["endpoint dogs", "endpoint config dogs-config", "model dogs-model"]
