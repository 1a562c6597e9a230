"""AWS-mode requests, validated against botocore's service models with Stubber (no AWS reached)."""

from __future__ import annotations

import io
import json

import pytest
from botocore.response import StreamingBody

from helpers.multi_model_requests import check_invocation, check_multi_model_deployment
from helpers.sagemaker_requests import (
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
from helpers.training import ROOT
from launch import config as configuration
from launch import hosting, multi_model, training

pytestmark = pytest.mark.sdk_v2  # scripts/test.sh runs these in .venv-sdk-v2 (sagemaker 2.x)


def test_create_training_job(aws):
    session, config, recorder = aws
    recorder.expect(
        "sagemaker", "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:1:training-job/x"}
    )
    name = "byoc-train-test"
    debugger = {"debugger_hook_config": False, "disable_profiler": True}
    estimator = training.estimator(
        session, config, TRAINING_HPS, name, debugger=debugger, tags=[{"Key": "team", "Value": "vision"}]
    )
    estimator.fit(training.inputs(session, config, TRAINING_CHANNELS), job_name=name, wait=False)
    request = recorder.request("CreateTrainingJob")
    assert request["TrainingJobName"] == name
    check_training_job(request, name)
    assert request["HyperParameters"] == {"lr": "0.01", "head": "256", "epochs": "3"}


def test_deploy_with_autoscaling(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/e"})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/e"})
    recorder.expect("application-autoscaling", "register_scalable_target")
    recorder.expect("application-autoscaling", "put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:p"})
    served = hosting.model(session, config, MODEL_DATA, name="dogs-model")
    predictor = hosting.deploy(served, config, "dogs", instance_count=2, wait=False)
    hosting.autoscale(session, "dogs", 1, 4, 100)

    check_deployment(recorder.request("CreateModel"), recorder.request("CreateEndpointConfig"), "dogs-model")
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == hosting.STARTUP_TIMEOUT_S
    assert variant["ModelDataDownloadTimeoutInSeconds"] == hosting.STARTUP_TIMEOUT_S
    assert recorder.request("CreateEndpoint")["EndpointName"] == "dogs"
    check_autoscaling(recorder.request("RegisterScalableTarget"), recorder.request("PutScalingPolicy"))
    assert predictor.endpoint_name == "dogs"


def test_multi_model_endpoint_deploys_and_invokes_by_target_model(aws, tmp_path):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/e"})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/e"})
    answer = json.dumps({"predictions": [{"label": "cats", "index": 0, "probability": 0.9}]}).encode()
    recorder.expect(
        "sagemaker-runtime",
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
    )
    mme = multi_model.multi_data_model(session, config, "pets-mme", "s3://b/models", memory_budget_mb=2048)
    predictor = multi_model.deploy(mme, config, "pets", instance_count=1, wait=False)
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8 fake jpeg")
    assert multi_model.invoke(predictor, "customer-a.tar.gz", image, 2)["predictions"][0]["label"] == "cats"

    check_multi_model_deployment(recorder, "pets")
    check_invocation(recorder, "pets")


def test_serverless_endpoint(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/e"})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/e"})
    hosting.deploy(
        hosting.model(session, config, "s3://b/model.tar.gz", name="m"),
        config,
        "dogs-sls",
        serverless=(4096, 5),
        wait=False,
    )
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    assert "InstanceType" not in variant


def test_invoke_both_ways(aws, tmp_path):
    session, config, recorder = aws
    image = expect_invocations(recorder, tmp_path)
    predictor = hosting.image_predictor_class()("dogs", sagemaker_session=session)
    assert hosting.invoke_with_predictor(predictor, image, 3)["predictions"][0]["label"] == "040.Bulldog"
    assert (
        hosting.invoke_with_boto3(session.sagemaker_runtime_client, "dogs", image, 3)["predictions"][0]["index"] == 39
    )
    calls = invocations(recorder)
    for params in calls:
        assert params["EndpointName"] == "dogs" and params["ContentType"] == "image/png"
        assert params["CustomAttributes"] == "top_k=3" and params["Accept"] == "application/json"
        assert params["Body"] == image.read_bytes()


def test_batch_transform(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:eu-west-1:1:t/t"})
    recorder.expect(
        "sagemaker",
        "describe_transform_job",
        {
            "TransformJobName": "t",
            "TransformJobArn": "arn:aws:sagemaker:eu-west-1:1:t/t",
            "TransformJobStatus": "Completed",
            "ModelName": "m",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
            "CreationTime": "2026-01-01T00:00:00Z",
        },
    )
    served = hosting.model(session, config, "s3://b/model.tar.gz", name="m")
    hosting.transform(served, config, "s3://b/in/", "s3://b/out/", max_payload_mb=20)
    check_transform_job(recorder.request("CreateTransformJob"), "m")


def test_cleanup_deletes_endpoint_config_and_model(aws):
    session, config, recorder = aws
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": "dogs",
            "EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/dogs",
            "EndpointConfigName": "dogs-config",
            "EndpointStatus": "InService",
            "CreationTime": "2026-01-01T00:00:00Z",
            "LastModifiedTime": "2026-01-01T00:00:00Z",
        },
    )
    recorder.expect(
        "sagemaker",
        "describe_endpoint_config",
        {
            "EndpointConfigName": "dogs-config",
            "EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/dogs-config",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "dogs-model"}],
            "CreationTime": "2026-01-01T00:00:00Z",
        },
    )
    recorder.expect("sagemaker", "delete_endpoint")
    recorder.expect("sagemaker", "delete_endpoint_config")
    recorder.expect("sagemaker", "delete_model")
    deleted = hosting.cleanup(session, "dogs")
    assert deleted == ["endpoint dogs", "endpoint config dogs-config", "model dogs-model"]
    assert recorder.request("DeleteModel") == {"ModelName": "dogs-model"}


def test_config_precedence(tmp_path):
    (tmp_path / "byoc.toml").write_text('region = "us-west-2"\nrole = "arn:file"\ntrain_instance = "ml.p3.2xlarge"\n')
    import argparse

    parser = argparse.ArgumentParser()
    configuration.add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "byoc.toml"), "--role", "arn:flag"])
    config = configuration.load(args, {"AWS_REGION": "eu-central-1", "BYOC_SPOT": "true"})
    assert (config.role, config.region, config.train_instance, config.spot) == (
        "arn:flag",
        "eu-central-1",
        "ml.p3.2xlarge",
        True,
    )
    configuration.default_image_uris(config, "123456789012")
    version = (ROOT / "VERSION").read_text().strip()
    assert config.train_image == f"123456789012.dkr.ecr.eu-central-1.amazonaws.com/byoc-train:{version}"
    assert config.serve_image.endswith(f"/byoc-serve-cpu:{version}")
    (tmp_path / "bad.toml").write_text('regoin = "x"\n')
    with pytest.raises(SystemExit, match="unknown keys regoin"):
        configuration.load(parser.parse_args(["--config", str(tmp_path / "bad.toml")]), {})


@pytest.mark.parametrize("strategy", ["Bayesian", "Hyperband"])
def test_create_tuning_job_from_the_search_space(aws, strategy):
    from contract.spec import search_space
    from launch import tuning

    session, config, recorder = aws
    recorder.expect(
        "sagemaker",
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": "arn:aws:sagemaker:eu-west-1:1:hyper-parameter-tuning-job/t"},
    )
    space = search_space.PRESETS["seed2"]
    estimator = training.estimator(session, config, {**space.fixed, "backbone": "resnet50"}, "trial")
    tuner = tuning.tuner(
        estimator, space, strategy, max_jobs=12, max_parallel_jobs=3, warm_start_parents=["byoc-tune-old"], epochs=5
    )
    tuner.fit(training.inputs(session, config, {"training": "s3://my-bucket/dogImages.zip"}), wait=False)

    check_tuning_job(recorder.request("CreateHyperParameterTuningJob"), strategy)


def test_grid_needs_categorical_parameters(aws):
    from contract.spec import search_space
    from launch import tuning

    session, config, _ = aws
    estimator = training.estimator(session, config, {}, "trial")
    with pytest.raises(search_space.SearchSpaceError, match="categorical"):
        tuning.tuner(estimator, search_space.PRESETS["seed1"], "Grid")


def test_training_job_carries_debugger_rules_and_profiler(aws):
    from insights.rules import RULES, sagemaker_debugger_config

    session, config, recorder = aws
    recorder.expect(
        "sagemaker", "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:1:training-job/d"}
    )
    debugger = sagemaker_debugger_config(s3_output_path="s3://my-bucket/byoc/debug")
    estimator = training.estimator(session, config, {"epochs": 2}, "byoc-train-debug", debugger=debugger)
    estimator.fit(
        training.inputs(session, config, {"training": "s3://my-bucket/data/"}), job_name="byoc-train-debug", wait=False
    )
    request = recorder.request("CreateTrainingJob")
    assert request["DebugHookConfig"]["S3OutputPath"] == "s3://my-bucket/byoc/debug"
    collections = {c["CollectionName"] for c in request["DebugHookConfig"]["CollectionConfigurations"]}
    assert {"losses", "weights", "gradients"} <= collections
    names = {r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]}
    assert {spec.name for spec in RULES} <= names
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    profiler_rules = {r["RuleConfigurationName"] for r in request["ProfilerRuleConfigurations"]}
    assert {"LowGPUUtilization", "CPUBottleneck"} <= profiler_rules


def test_debugger_objects_are_built_from_the_rules_list():
    # SageMaker's Debugger objects exist in SDK v2 only (v3's ModelTrainer has no Debugger fields)
    from insights import rules

    config = rules.sagemaker_debugger_config("s3://bucket/prefix", parameters={"Overfit": {"patience": 3}})
    built = {r.name: r for r in config["rules"]}
    assert set(rules.BY_NAME) <= set(built) and set(rules.PROFILER_RULES) <= set(built)
    assert built["Overfit"].rule_parameters["patience"] == "3"
    assert built["LossNotDecreasing"].rule_parameters["mode"] == "TRAIN"
    assert config["profiler_config"].system_monitor_interval_millis == 500
    hook = config["debugger_hook_config"]
    names = {c.name: c.parameters for c in hook.collection_configs}
    assert names["relu_input"]["include_regex"] == ".*relu_input" and names["weights"]["save_interval"] == "500"
    assert names["losses"]["save_interval"] == "1"  # the loss rules' windows need several losses each
    assert hook.s3_output_path == "s3://bucket/prefix"
