"""AWS-mode requests, validated against botocore's service models with Stubber (no AWS reached)."""
from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from contract.spec.metrics import METRIC_DEFINITIONS
from helpers.training import ROOT
from launch import config as configuration
from launch import hosting, training

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
TRAIN_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/byoc-train:0.1.0"
SERVE_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/byoc-serve-cpu:0.1.0"


class Recorder:
    """Stubbed clients that keep every request they validated."""

    def __init__(self, boto_session):
        self.requests: list[tuple[str, dict]] = []
        self.stubbers: dict[str, Stubber] = {}
        self.clients = {}
        for service in ("sagemaker", "sagemaker-runtime", "application-autoscaling"):
            client = boto_session.client(service, region_name=REGION)
            client.meta.events.register("before-parameter-build.*.*", self._keep)
            self.clients[service] = client
            self.stubbers[service] = Stubber(client)
            self.stubbers[service].activate()

    def _keep(self, params, model, **kwargs):
        self.requests.append((model.name, dict(params)))

    def expect(self, service: str, operation: str, response: dict | None = None) -> None:
        self.stubbers[service].add_response(operation, response or {})

    def request(self, operation: str) -> dict:
        matches = [params for name, params in self.requests if name == operation]
        assert matches, f"no {operation} request; made: {[name for name, _ in self.requests]}"
        return matches[-1]


@pytest.fixture
def aws(monkeypatch):
    import sagemaker

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    boto_session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    recorder = Recorder(boto_session)
    session = sagemaker.Session(boto_session=boto_session, sagemaker_client=recorder.clients["sagemaker"],
                                sagemaker_runtime_client=recorder.clients["sagemaker-runtime"],
                                sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {
                                    "PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    # Application Auto Scaling's client comes from the boto session: hand out the stubbed one
    original_client = boto_session.client
    monkeypatch.setattr(boto_session, "client", lambda name, *a, **k: recorder.clients.get(name) or
                        original_client(name, *a, **k))
    config = configuration.Config(region=REGION, role=ROLE, s3_prefix="s3://my-bucket/byoc",
                                  train_image=TRAIN_IMAGE, serve_image=SERVE_IMAGE, spot=True,
                                  max_wait_s=7200, max_run_s=3600)
    yield session, config, recorder
    for stubber in recorder.stubbers.values():
        stubber.assert_no_pending_responses()


def test_create_training_job(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:1:training-job/x"})
    name = "byoc-train-test"
    debugger = {"debugger_hook_config": False, "disable_profiler": True}
    estimator = training.estimator(session, config, {"lr": 0.01, "head": [256], "epochs": 3}, name,
                                   debugger=debugger, tags=[{"Key": "team", "Value": "vision"}])
    estimator.fit(training.inputs(session, config, {"training": "s3://my-bucket/dogImages.zip",
                                                    "validation": "s3://my-bucket/valid/"}),
                  job_name=name, wait=False)
    request = recorder.request("CreateTrainingJob")
    assert request["TrainingJobName"] == name
    spec = request["AlgorithmSpecification"]
    assert spec["TrainingImage"] == TRAIN_IMAGE and spec["TrainingInputMode"] == "File"
    assert spec["MetricDefinitions"] == METRIC_DEFINITIONS
    assert request["HyperParameters"] == {"lr": "0.01", "head": "256", "epochs": "3"}
    assert request["RoleArn"] == ROLE
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://my-bucket/byoc/checkpoints/{name}"
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://my-bucket/byoc/output"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"training": "s3://my-bucket/dogImages.zip", "validation": "s3://my-bucket/valid/"}
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert {"Key": "project", "Value": "byoc-image-classifier"} in request["Tags"]
    assert {"Key": "team", "Value": "vision"} in request["Tags"]


def test_deploy_with_autoscaling(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/e"})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/e"})
    recorder.expect("application-autoscaling", "register_scalable_target")
    recorder.expect("application-autoscaling", "put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:p"})
    served = hosting.model(session, config, "s3://my-bucket/byoc/output/job/output/model.tar.gz", name="dogs-model")
    predictor = hosting.deploy(served, config, "dogs", instance_count=2, wait=False)
    hosting.autoscale(session, "dogs", 1, 4, 100)

    model = recorder.request("CreateModel")
    assert model["ModelName"] == "dogs-model"
    assert model["PrimaryContainer"]["Image"] == SERVE_IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://my-bucket/byoc/output/job/output/model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 2
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == hosting.STARTUP_TIMEOUT_S
    assert variant["ModelDataDownloadTimeoutInSeconds"] == hosting.STARTUP_TIMEOUT_S
    assert recorder.request("CreateEndpoint")["EndpointName"] == "dogs"
    target = recorder.request("RegisterScalableTarget")
    assert target["ResourceId"] == "endpoint/dogs/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    policy = recorder.request("PutScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert policy["TargetValue"] == 100.0
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert predictor.endpoint_name == "dogs"


def test_serverless_endpoint(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/e"})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/e"})
    hosting.deploy(hosting.model(session, config, "s3://b/model.tar.gz", name="m"), config, "dogs-sls",
                   serverless=(4096, 5), wait=False)
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    assert "InstanceType" not in variant


def test_invoke_both_ways(aws, tmp_path):
    session, config, recorder = aws
    image = tmp_path / "dog.png"
    image.write_bytes(b"\x89PNG fake bytes")
    answer = json.dumps({"predictions": [{"label": "040.Bulldog", "index": 39, "probability": 0.9}]}).encode()
    for _ in range(2):
        recorder.expect("sagemaker-runtime", "invoke_endpoint", {
            "Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"})
    predictor = hosting.image_predictor_class()("dogs", sagemaker_session=session)
    assert hosting.invoke_with_predictor(predictor, image, 3)["predictions"][0]["label"] == "040.Bulldog"
    assert hosting.invoke_with_boto3(session.sagemaker_runtime_client, "dogs", image, 3)["predictions"][0]["index"] == 39
    calls = [params for name, params in recorder.requests if name == "InvokeEndpoint"]
    for params in calls:
        assert params["EndpointName"] == "dogs" and params["ContentType"] == "image/png"
        assert params["CustomAttributes"] == "top_k=3" and params["Accept"] == "application/json"
        assert params["Body"] == image.read_bytes()


def test_batch_transform(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": "arn:aws:sagemaker:eu-west-1:1:model/m"})
    recorder.expect("sagemaker", "create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:eu-west-1:1:t/t"})
    recorder.expect("sagemaker", "describe_transform_job", {
        "TransformJobName": "t", "TransformJobArn": "arn:aws:sagemaker:eu-west-1:1:t/t", "TransformJobStatus": "Completed",
        "ModelName": "m", "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "CreationTime": "2026-01-01T00:00:00Z"})
    served = hosting.model(session, config, "s3://b/model.tar.gz", name="m")
    hosting.transform(served, config, "s3://b/in/", "s3://b/out/", max_payload_mb=20)
    job = recorder.request("CreateTransformJob")
    assert job["ModelName"] == "m"
    assert job["BatchStrategy"] == "SingleRecord" and job["MaxPayloadInMB"] == 20
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/in/"
    assert job["TransformOutput"] == {"S3OutputPath": "s3://b/out/", "Accept": "application/json"}
    assert job["Environment"] == {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}


def test_cleanup_deletes_endpoint_config_and_model(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "describe_endpoint", {
        "EndpointName": "dogs", "EndpointArn": "arn:aws:sagemaker:eu-west-1:1:endpoint/dogs",
        "EndpointConfigName": "dogs-config", "EndpointStatus": "InService",
        "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z"})
    recorder.expect("sagemaker", "describe_endpoint_config", {
        "EndpointConfigName": "dogs-config", "EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:1:ec/dogs-config",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "dogs-model"}],
        "CreationTime": "2026-01-01T00:00:00Z"})
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
    assert (config.role, config.region, config.train_instance, config.spot) == ("arn:flag", "eu-central-1",
                                                                                "ml.p3.2xlarge", True)
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
    recorder.expect("sagemaker", "create_hyper_parameter_tuning_job", {
        "HyperParameterTuningJobArn": "arn:aws:sagemaker:eu-west-1:1:hyper-parameter-tuning-job/t"})
    space = search_space.PRESETS["seed2"]
    estimator = training.estimator(session, config, {**space.fixed, "backbone": "resnet50"}, "trial")
    tuner = tuning.tuner(estimator, space, strategy, max_jobs=12, max_parallel_jobs=3,
                         warm_start_parents=["byoc-tune-old"], epochs=5)
    tuner.fit(training.inputs(session, config, {"training": "s3://my-bucket/dogImages.zip"}), wait=False)

    request = recorder.request("CreateHyperParameterTuningJob")
    job = request["HyperParameterTuningJobConfig"]
    assert job["Strategy"] == strategy
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    assert job["TrainingJobEarlyStoppingType"] == ("Auto" if strategy == "Bayesian" else "Off")
    continuous = {r["Name"]: r for r in job["ParameterRanges"]["ContinuousParameterRanges"]}
    assert continuous["lr"] == {"Name": "lr", "MinValue": "1e-05", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
    assert continuous["eps"]["ScalingType"] == "Logarithmic" and continuous["eps"]["MinValue"] == "1e-09"
    assert continuous["weight-decay"]["MaxValue"] == "0.1"
    categorical = job["ParameterRanges"]["CategoricalParameterRanges"]
    assert categorical == [{"Name": "batch-size", "Values": ["64", "128"]}]
    if strategy == "Hyperband":
        assert job["StrategyConfig"]["HyperbandStrategyConfig"] == {"MinResource": 1, "MaxResource": 5}
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    static = definition["StaticHyperParameters"]
    assert static["optimizer"] == "adamw" and static["head"] == "256,128" and static["backbone"] == "resnet50"
    assert not {"lr", "eps", "weight-decay", "batch-size"} & set(static)
    assert request["WarmStartConfig"] == {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "byoc-tune-old"}],
                                          "WarmStartType": "IdenticalDataAndAlgorithm"}


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
    recorder.expect("sagemaker", "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:1:training-job/d"})
    debugger = sagemaker_debugger_config(s3_output_path="s3://my-bucket/byoc/debug")
    estimator = training.estimator(session, config, {"epochs": 2}, "byoc-train-debug", debugger=debugger)
    estimator.fit(training.inputs(session, config, {"training": "s3://my-bucket/data/"}),
                  job_name="byoc-train-debug", wait=False)
    request = recorder.request("CreateTrainingJob")
    assert request["DebugHookConfig"]["S3OutputPath"] == "s3://my-bucket/byoc/debug"
    collections = {c["CollectionName"] for c in request["DebugHookConfig"]["CollectionConfigurations"]}
    assert {"losses", "weights", "gradients"} <= collections
    names = {r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]}
    assert {spec.name for spec in RULES} <= names
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    profiler_rules = {r["RuleConfigurationName"] for r in request["ProfilerRuleConfigurations"]}
    assert {"LowGPUUtilization", "CPUBottleneck"} <= profiler_rules
