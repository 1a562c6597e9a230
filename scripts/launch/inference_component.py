"""An inference component of the serving image, on either SDK: what both send (plain boto3 calls through
the session) and SDK v2's deploy; SDK v3's deploy is launch/v3/inference_component.py.

    sm.py deploy-component --model-data s3://.../model.tar.gz --endpoint-name dogs --cores 2 --max-copies 4

One endpoint whose variant has managed instance scaling (instances follow the copies, down to
MinInstanceCount 0) and routes to the least busy copy, one model, and one component serving it: its
reservation (cores, memory) is the server's own sizing for the model's weights
(server/reservation.py), and its environment holds each copy to it. Autoscaling of the copy count, as
AWS documents scale to zero (endpoint-auto-scaling-zero-instances): a scalable target of 0..max copies,
target tracking on invocations per copy (scales in, to 0 when idle), and a step scaling policy that a
CloudWatch alarm on NoCapacityInvocationFailures sets off (target tracking cannot leave zero copies:
with none there is no per-copy metric): launch/component_scaling.py, whose remove_components
`sm.py cleanup` calls to remove all of it.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from contract.spec.artifact import WEIGHTS_FILE
from launch.config import is_gpu_instance
from launch.hosting import STARTUP_TIMEOUT_S, content_type, endpoint_model_name
from launch.training import PROJECT_TAG
from server.reservation import Reservation, reservation

VARIANT = "AllTraffic"
ROUTING = {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}


@dataclass(frozen=True)
class ComponentPlan:
    """What deploy-component creates, named once for both SDKs."""

    endpoint_name: str
    component_name: str
    model_name: str
    instance_type: str
    max_instances: int
    copies: int
    reservation: Reservation

    @classmethod
    def from_args(cls, args, config, weights: int) -> ComponentPlan:
        return cls(
            endpoint_name=args.endpoint_name,
            component_name=args.component_name or f"{args.endpoint_name}-ic",
            model_name=endpoint_model_name(args.endpoint_name),
            instance_type=config.instance("serve"),
            max_instances=args.max_instances,
            copies=args.copies,
            reservation=reservation(args.cores, weights, gpus=1 if is_gpu_instance(config.instance("serve")) else 0),
        )

    def compute_requirements(self) -> dict:
        """ComputeResourceRequirements (on a GPU instance, one GPU a copy: the server's one worker uses it)."""
        held = self.reservation
        gpus = {"NumberOfAcceleratorDevicesRequired": float(held.gpus)} if held.gpus else {}
        return {"NumberOfCpuCoresRequired": float(held.cores), **gpus, "MinMemoryRequiredInMb": self.memory_mb}

    @property
    def memory_mb(self) -> int:
        return self.reservation.memory_mb

    def managed_instance_scaling(self) -> dict:
        """Instances follow the copies: none when no copy runs (scale to zero needs MinInstanceCount 0)."""
        return {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": self.max_instances}


def add_arguments(parser) -> None:
    """deploy-component's flags (sm.py)."""
    parser.add_argument("--model-data", required=True, help="model.tar.gz: S3 URI or a local file")
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--component-name", help="default: ENDPOINT-ic")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores one copy reserves (workers: cores / 2)")
    parser.add_argument("--copies", type=int, default=1, help="copies to start with")
    parser.add_argument("--max-copies", type=int, default=4, help="autoscaling: most copies; 0 = no autoscaling")
    parser.add_argument("--max-instances", type=int, default=2, help="managed instance scaling: most instances")
    parser.add_argument("--invocations-per-copy", type=float, default=100.0, help="target tracking, per minute")
    parser.add_argument("--invoke", nargs="*", type=Path, default=[], metavar="IMAGE", help="then classify these")
    parser.add_argument("--top-k", type=int, default=3)


# -- what the model needs --------------------------------------------------------------------


def weights_in_archive(fileobj) -> int:
    """The size of model.pt in a model.tar.gz read as a stream (only headers are parsed; the data of
    other members is skipped). ValueError when the archive holds none."""
    with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
        for member in tar:
            if (
                member.isfile()
                and Path(member.name).name == WEIGHTS_FILE
                and Path(member.name).parent
                in (
                    Path("."),
                    Path(""),
                )
            ):
                return member.size
    raise ValueError(f"the model archive holds no {WEIGHTS_FILE} at its top")


def model_weights_bytes(session, model_data: str) -> int:
    """model.pt's size in the artifact, what the server sizes its workers by (settings.model_bytes):
    read from S3 as a stream (no copy on disk), or from a local file."""
    if model_data.startswith("s3://"):
        bucket, _, key = model_data[len("s3://") :].partition("/")
        body = session.boto_session.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return weights_in_archive(body)
        finally:
            body.close()
    with open(model_data.removeprefix("file://"), "rb") as f:
        return weights_in_archive(f)


def environment(plan: ComponentPlan) -> dict[str, str]:
    return plan.reservation.environment()


# -- invoking ---------------------------------------------------------------------------------


def invoke_with_boto3(runtime_client, endpoint_name: str, component_name: str, path: Path, top_k: int) -> dict:
    response = runtime_client.invoke_endpoint(
        EndpointName=endpoint_name,
        InferenceComponentName=component_name,
        ContentType=content_type(path),
        Accept="application/json",
        CustomAttributes=f"top_k={top_k}",
        Body=path.read_bytes(),
    )
    return json.loads(response["Body"].read())


# -- SDK v2's deploy --------------------------------------------------------------------------


def deploy_v2(session, config, plan: ComponentPlan, model_data: str, wait: bool = True):
    """Model.deploy with EndpointType.INFERENCE_COMPONENT_BASED: the endpoint (if it does not exist),
    the model and the component; -> a predictor that invokes the component."""
    from sagemaker.compute_resource_requirements.resource_requirements import ResourceRequirements
    from sagemaker.enums import EndpointType

    from launch.hosting import model

    served = model(session, config, model_data, name=plan.model_name, env=environment(plan))
    requests = {"num_cpus": plan.reservation.cores, "memory": plan.memory_mb, "copies": plan.copies}
    if plan.reservation.gpus:
        requests["num_accelerators"] = plan.reservation.gpus
    resources = ResourceRequirements(requests=requests)
    return served.deploy(
        initial_instance_count=1,
        instance_type=plan.instance_type,
        endpoint_name=plan.endpoint_name,
        inference_component_name=plan.component_name,
        endpoint_type=EndpointType.INFERENCE_COMPONENT_BASED,
        resources=resources,
        managed_instance_scaling={"MinInstanceCount": 0, "MaxInstanceCount": plan.max_instances},
        routing_config=ROUTING,
        container_startup_health_check_timeout=STARTUP_TIMEOUT_S,
        model_data_download_timeout=STARTUP_TIMEOUT_S,
        tags=[PROJECT_TAG],
        wait=wait,
    )


def invoke_with_predictor(predictor, path: Path, top_k: int) -> dict:
    """v2's predictor for the component (deploy_v2's, or ImagePredictor(component_name=...))."""
    from launch.hosting import invoke_with_predictor as invoke

    return invoke(predictor, path, top_k)


# -- the command, on either SDK -----------------------------------------------------------------


def run(args, config, session, deploy, invoke) -> None:
    """sm.py deploy-component: deploy(session, config, plan, model_data) with the SDK's calls, autoscaling,
    then --invoke images through invoke(path, top_k) (the SDK's) and boto3."""
    from launch.cli import print_top

    if config.is_local:
        raise SystemExit("inference components need SageMaker itself: local mode has none (use deploy --local)")
    if args.cores < 1 or args.copies < 1 or args.max_instances < 1 or args.max_copies < 0:
        raise SystemExit("--cores, --copies and --max-instances must be 1 or more, --max-copies 0 or more")
    try:
        weights = model_weights_bytes(session, args.model_data)
    except (ValueError, OSError, tarfile.TarError, EOFError) as exc:
        raise SystemExit(f"{args.model_data}: not a model archive this deploys ({exc})") from None
    plan = ComponentPlan.from_args(args, config, weights)
    held = plan.reservation
    print(
        f"component {plan.component_name}: {held.cores} cores, {plan.memory_mb} MB per copy "
        f"({held.workers} workers, {held.torch_threads} torch threads each), {plan.copies} copies"
    )
    deploy(session, config, plan, args.model_data)
    print(f"endpoint {plan.endpoint_name} is in service with inference component {plan.component_name}")
    if args.max_copies:
        from launch.component_scaling import autoscale

        autoscale(session, plan.component_name, args.max_copies, args.invocations_per_copy)
        print(f"autoscaling 0..{args.max_copies} copies at {args.invocations_per_copy} invocations per copy")
    for path in args.invoke:
        print_top(f"{path} ({plan.component_name})", invoke(plan, path, args.top_k))
        result = invoke_with_boto3(
            session.sagemaker_runtime_client, plan.endpoint_name, plan.component_name, path, args.top_k
        )
        print_top(f"{path} (boto3)", result)
