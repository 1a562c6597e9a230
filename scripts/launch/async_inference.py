"""Asynchronous inference endpoints on either SDK: `sm.py deploy --async-output S3_URI` and
`sm.py invoke-async`.

SageMaker queues each request (its body in S3, up to 1 GB), POSTs it to the container's
/invocations within InvocationTimeoutSeconds (at most an hour), and writes the answer to the
endpoint's S3 output path, telling SNS topics if asked. The serving image takes archives of images
and answers JSON lines once its environment says it is asynchronous (SAGEMAKER_ASYNC_INFERENCE:
docs/async-inference.md). What the endpoint config gets is `endpoint_config` (boto3's
AsyncInferenceConfig), which v2 (`v2_config`) and v3 (`v3_config`) send as the same request;
the deploy commands add `environment` to the model's.
"""

from __future__ import annotations

import argparse
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from contract.spec.media import IMAGE_TYPES

# What the server takes as one asynchronous request (container/server/async_input.py), by suffix
REQUEST_TYPES = {".zip": "application/zip", ".tar": "application/x-tar", ".jsonl": "application/jsonlines"}
MAX_INVOCATION_TIMEOUT_S = 3600  # InvokeEndpointAsync's InvocationTimeoutSeconds, at most


@dataclass(frozen=True)
class AsyncOptions:
    output_path: str
    failure_path: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None
    max_concurrency: int | None = None  # requests one instance takes at once; SageMaker's default without


def add_deploy_arguments(deploy: argparse.ArgumentParser) -> None:
    group = deploy.add_argument_group("asynchronous inference (docs/async-inference.md)")
    group.add_argument("--async-output", metavar="S3_URI", help="deploy an asynchronous endpoint answering here")
    group.add_argument("--async-failure", metavar="S3_URI", help="where failed requests' errors go")
    group.add_argument("--async-success-topic", metavar="SNS_ARN", help="told of every answer")
    group.add_argument("--async-error-topic", metavar="SNS_ARN", help="told of every failure")
    group.add_argument("--async-max-concurrency", type=int, metavar="N", help="requests per instance at once")


def add_invoke_command(command) -> None:
    """sm.py invoke-async; `command(name, help)` makes a subcommand with the shared flags."""
    invoke = command("invoke-async", "send one request to an asynchronous endpoint")
    invoke.add_argument("--endpoint-name", required=True)
    invoke.add_argument("input", help="S3 URI, or a file (uploaded under --s3-prefix/async-input/)")
    invoke.add_argument("--content-type", help="default: from the suffix (.zip, .tar, .jsonl or an image's)")
    invoke.add_argument("--top-k", type=int, default=3)
    invoke.add_argument("--invocation-timeout-s", type=int, default=MAX_INVOCATION_TIMEOUT_S)


def options(args, config) -> AsyncOptions | None:
    """deploy's --async-* flags; None for a real-time endpoint."""
    extras = (args.async_failure, args.async_success_topic, args.async_error_topic, args.async_max_concurrency)
    if not args.async_output:
        if any(value is not None for value in extras):
            raise SystemExit("--async-failure, --async-*-topic and --async-max-concurrency need --async-output S3_URI")
        return None
    if config.is_local:
        raise SystemExit("local mode has no asynchronous endpoints: deploy one in AWS")
    if args.serverless:
        raise SystemExit("--async-output and --serverless exclude each other: SageMaker has no serverless async")
    if not args.async_output.startswith("s3://"):
        raise SystemExit(f"--async-output {args.async_output!r}: expected an s3:// URI")
    return AsyncOptions(args.async_output, *extras)


def environment() -> dict[str, str]:
    """What the serving image needs to hear to take asynchronous requests."""
    from server.settings import VARIABLE

    return {VARIABLE["async_inference"].name: "true"}


def endpoint_config(options: AsyncOptions) -> dict:
    """CreateEndpointConfig's AsyncInferenceConfig (boto3's shape)."""
    output: dict = {"S3OutputPath": options.output_path}
    if options.failure_path:
        output["S3FailurePath"] = options.failure_path
    topics = {"SuccessTopic": options.success_topic, "ErrorTopic": options.error_topic}
    if any(topics.values()):
        output["NotificationConfig"] = {key: value for key, value in topics.items() if value}
    config: dict = {"OutputConfig": output}
    if options.max_concurrency:
        config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": options.max_concurrency}
    return config


def v2_config(options: AsyncOptions):
    """The same as SDK v2's AsyncInferenceConfig (Model.deploy(async_inference_config=...))."""
    from sagemaker.async_inference import AsyncInferenceConfig

    output = endpoint_config(options)["OutputConfig"]
    return AsyncInferenceConfig(
        output_path=options.output_path,
        failure_path=options.failure_path,
        notification_config=output.get("NotificationConfig"),
        max_concurrent_invocations_per_instance=options.max_concurrency,
    )


def v3_config(options: AsyncOptions):
    """The same as sagemaker.core's shape (EndpointConfig.create(async_inference_config=...))."""
    from sagemaker.core.shapes import (
        AsyncInferenceClientConfig,
        AsyncInferenceConfig,
        AsyncInferenceNotificationConfig,
        AsyncInferenceOutputConfig,
    )

    output = AsyncInferenceOutputConfig(s3_output_path=options.output_path)
    if options.failure_path:
        output.s3_failure_path = options.failure_path
    if options.success_topic or options.error_topic:
        notification = AsyncInferenceNotificationConfig()
        if options.success_topic:
            notification.success_topic = options.success_topic
        if options.error_topic:
            notification.error_topic = options.error_topic
        output.notification_config = notification
    config = AsyncInferenceConfig(output_config=output)
    if options.max_concurrency:
        config.client_config = AsyncInferenceClientConfig(
            max_concurrent_invocations_per_instance=options.max_concurrency
        )
    return config


def request_type(path: str, given: str | None = None) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower()
    found = REQUEST_TYPES.get(suffix) or IMAGE_TYPES.get(suffix)
    if not found:
        raise SystemExit(f"{path}: say --content-type (known suffixes: {', '.join([*REQUEST_TYPES, *IMAGE_TYPES])})")
    return found


def input_location(session, s3_prefix: str, source: str) -> str:
    """`source` itself when it is in S3; a local file is put under s3_prefix/async-input/ first."""
    if source.startswith("s3://"):
        return source
    path = Path(source)
    if not path.is_file():
        raise SystemExit(f"{source}: neither an s3:// URI nor a file")
    bucket, _, prefix = s3_prefix.removeprefix("s3://").partition("/")
    key = "/".join(part for part in (prefix.strip("/"), "async-input", path.name) if part)
    with open(path, "rb") as body:  # streamed: a request may be 1 GB
        session.boto_session.client("s3").put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        )
    return f"s3://{bucket}/{key}"


def invoke_arguments(args, location: str) -> dict:
    """InvokeEndpointAsync's parameters (boto3's names) for sm.py invoke-async."""
    if not 1 <= args.invocation_timeout_s <= MAX_INVOCATION_TIMEOUT_S:
        raise SystemExit(f"--invocation-timeout-s: 1 to {MAX_INVOCATION_TIMEOUT_S}")
    return {
        "EndpointName": args.endpoint_name,
        "InputLocation": location,
        "ContentType": request_type(args.input, args.content_type),
        "Accept": "application/jsonlines",
        "CustomAttributes": f"top_k={args.top_k}",
        "InvocationTimeoutSeconds": args.invocation_timeout_s,
    }


def invoke_with_boto3(session, arguments: dict) -> dict:
    """v2's way (and anyone's): boto3's sagemaker-runtime client."""
    return session.sagemaker_runtime_client.invoke_endpoint_async(**arguments)


def invoke_with_endpoint(session, arguments: dict) -> dict:
    """v3's way: the Endpoint resource's invoke_async."""
    from sagemaker.core.resources import Endpoint

    answer = Endpoint(endpoint_name=arguments["EndpointName"]).invoke_async(
        input_location=arguments["InputLocation"],
        content_type=arguments["ContentType"],
        accept=arguments["Accept"],
        custom_attributes=arguments["CustomAttributes"],
        invocation_timeout_seconds=arguments["InvocationTimeoutSeconds"],
        session=session.boto_session,
        region=session.boto_region_name,
    )
    return {"InferenceId": answer.inference_id, "OutputLocation": answer.output_location}


def print_queued(answer: dict) -> None:
    print(f"queued {answer.get('InferenceId', '')}: the answer will be at {answer['OutputLocation']}")
    if answer.get("FailureLocation"):
        print(f"or, if it fails, its error at {answer['FailureLocation']}")


def cmd_invoke_async(args, config, session, invoke) -> None:
    """sm.py invoke-async on either SDK, with its invoke(session, arguments)."""
    if config.is_local:
        raise SystemExit("local mode has no asynchronous endpoints: deploy one in AWS")
    location = input_location(session, config.s3_prefix, args.input)
    print_queued(invoke(session, invoke_arguments(args, location)))
