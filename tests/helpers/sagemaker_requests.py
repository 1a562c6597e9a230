"""What the v2 and the v3 launch paths must both send to AWS, checked field by field against
botocore's service models (Stubber): the stubbed clients, the test configuration, and one check per
request that tests/aws/test_sagemaker_aws.py (v2, in .venv-sdk-v2) and tests/aws/test_sagemaker_aws_v3.py
(v3) both apply, so the two generations send the same image, channels, hyperparameters, metric
definitions, checkpoint and output paths."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
from botocore.response import StreamingBody
from botocore.stub import Stubber

from contract.spec.hyperparameters import parse_value
from contract.spec.metrics import METRIC_DEFINITIONS
from launch import config as configuration

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
TRAIN_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/byoc-train:0.1.0"
SERVE_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/byoc-serve-cpu:0.1.0"
MODEL_DATA = "s3://my-bucket/byoc/output/job/output/model.tar.gz"
TRAINING_HPS = {"lr": 0.01, "head": [256], "epochs": 3}
TRAINING_CHANNELS = {"training": "s3://my-bucket/dogImages.zip", "validation": "s3://my-bucket/valid/"}
ARN = "arn:aws:sagemaker:eu-west-1:123456789012:x/y"


class Recorder:
    """Stubbed clients that keep every request they validated."""

    def __init__(self, boto_session):
        self.requests: list[tuple[str, dict]] = []
        self.stubbers: dict[str, Stubber] = {}
        self.clients = {}
        for service in ("sagemaker", "sagemaker-runtime", "application-autoscaling", "cloudwatch", "s3"):
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


ANSWER = {"predictions": [{"label": "040.Bulldog", "index": 39, "probability": 0.9}]}


def expect_invocations(recorder: Recorder, folder: Path, count: int = 2) -> Path:
    """An image to send, and `count` answers (ANSWER) from the runtime's invoke_endpoint, in order."""
    image = folder / "dog.png"
    image.write_bytes(b"\x89PNG fake bytes")
    answer = json.dumps(ANSWER).encode()
    for _ in range(count):
        body = StreamingBody(io.BytesIO(answer), len(answer))
        recorder.expect("sagemaker-runtime", "invoke_endpoint", {"Body": body, "ContentType": "application/json"})
    return image


def invocations(recorder: Recorder) -> list[dict]:
    return [params for name, params in recorder.requests if name == "InvokeEndpoint"]


def stubbed_boto_session(monkeypatch) -> tuple[boto3.Session, Recorder]:
    """A boto session whose clients for SageMaker, its runtime, Application Auto Scaling, CloudWatch and S3
    are stubbed."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    boto_session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    recorder = Recorder(boto_session)
    original_client = boto_session.client
    monkeypatch.setattr(
        boto_session, "client", lambda name, *a, **k: recorder.clients.get(name) or original_client(name, *a, **k)
    )
    return boto_session, recorder


def aws_config() -> configuration.Config:
    return configuration.Config(
        region=REGION,
        role=ROLE,
        s3_prefix="s3://my-bucket/byoc",
        train_image=TRAIN_IMAGE,
        serve_image=SERVE_IMAGE,
        spot=True,
        max_wait_s=7200,
        max_run_s=3600,
    )


def parsed(hyperparameters: dict) -> dict:
    """Hyperparameters as the trainer reads them: v2 sends "256", v3 "[256]"; both parse to [256].
    The SDK's own entries (v2's tuner adds _tuning_objective_metric) are left out."""
    return {
        name: parse_value(name, value)
        for name, value in hyperparameters.items()
        if not name.startswith(("_", "sagemaker_"))
    }


def check_training_job(request: dict, name: str) -> None:
    spec = request["AlgorithmSpecification"]
    assert spec["TrainingImage"] == TRAIN_IMAGE and spec["TrainingInputMode"] == "File"
    assert spec["MetricDefinitions"] == METRIC_DEFINITIONS
    assert parsed(request["HyperParameters"]) == {"lr": 0.01, "head": [256], "epochs": 3}
    assert request["RoleArn"] == ROLE
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://my-bucket/byoc/checkpoints/{name}"
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://my-bucket/byoc/output"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == TRAINING_CHANNELS
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 1
    assert {"Key": "project", "Value": "byoc-image-classifier"} in request["Tags"]
    assert {"Key": "team", "Value": "vision"} in request["Tags"]


def check_deployment(model: dict, endpoint_config: dict, model_name: str) -> None:
    assert model["ModelName"] == model_name
    assert model["PrimaryContainer"]["Image"] == SERVE_IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert model["ExecutionRoleArn"] == ROLE
    variant = endpoint_config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 2
    assert variant["ModelName"] == model_name


def check_autoscaling(target: dict, policy: dict) -> None:
    assert target["ResourceId"] == "endpoint/dogs/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 100.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def check_transform_job(job: dict, model_name: str) -> None:
    assert job["ModelName"] == model_name
    assert job["BatchStrategy"] == "SingleRecord" and job["MaxPayloadInMB"] == 20
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/in/"
    assert job["TransformOutput"]["S3OutputPath"] == "s3://b/out/"
    assert job["TransformOutput"]["Accept"] == "application/json"
    assert job["Environment"] == {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}


def check_tuning_job(request: dict, strategy: str) -> None:
    job = request["HyperParameterTuningJobConfig"]
    assert job["Strategy"] == strategy
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    assert job["TrainingJobEarlyStoppingType"] == ("Auto" if strategy == "Bayesian" else "Off")
    continuous = {r["Name"]: r for r in job["ParameterRanges"]["ContinuousParameterRanges"]}
    assert continuous["lr"] == {"Name": "lr", "MinValue": "1e-05", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
    assert continuous["eps"]["ScalingType"] == "Logarithmic" and continuous["eps"]["MinValue"] == "1e-09"
    assert continuous["weight-decay"]["MaxValue"] == "0.1"
    assert job["ParameterRanges"]["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["64", "128"]}]
    if strategy == "Hyperband":
        assert job["StrategyConfig"]["HyperbandStrategyConfig"] == {"MinResource": 1, "MaxResource": 5}
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    static = parsed(definition["StaticHyperParameters"])
    assert static["optimizer"] == "adamw" and static["head"] == [256, 128] and static["backbone"] == "resnet50"
    assert not {"lr", "eps", "weight-decay", "batch-size"} & set(static)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]}
    assert channels == {"training": "s3://my-bucket/dogImages.zip"}
    assert definition["OutputDataConfig"]["S3OutputPath"] == "s3://my-bucket/byoc/output"
    assert "CheckpointConfig" not in definition  # trials start fresh
    assert request["WarmStartConfig"] == {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "byoc-tune-old"}],
        "WarmStartType": "IdenticalDataAndAlgorithm",
    }
