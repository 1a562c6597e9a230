"""What sm.py's commands share whichever SDK runs them: --hp, --tag and the job's environment, printing,
local channels."""

from __future__ import annotations

import os
import shutil
import signal
import time
from functools import partial
from pathlib import Path

from contract.spec import tracking
from contract.spec.hyperparameters import HyperparameterError, parse_assignments


def parse_hps(items: list[str]) -> dict:
    try:
        return parse_assignments(items)
    except HyperparameterError as exc:
        raise SystemExit(f"--hp: {exc}") from None


def parse_tags(items: list[str]) -> list[dict]:
    return [{"Key": k, "Value": v} for k, _, v in (item.partition("=") for item in items)]


def add_environment_arguments(parser) -> None:
    """A training or tuning job's environment: experiment tracking and free NAME=VALUE pairs."""
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="MLflow tracking server: http(s) URL or a SageMaker "
        "managed tracking server's ARN (the job's role needs sagemaker-mlflow:* on it)",
    )
    parser.add_argument("--mlflow-experiment", metavar="NAME", help=f"default {tracking.DEFAULT_EXPERIMENT}")
    parser.add_argument("--register-model", metavar="NAME", help="register the job's model in MLflow's registry")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="job environment")


def job_environment(args) -> dict:
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env takes NAME=VALUE, got {item!r}")
        env[name] = value
    if (args.mlflow_experiment or args.register_model) and not args.mlflow:
        raise SystemExit("--mlflow-experiment and --register-model need --mlflow URI")
    env.update(tracking.job_environment(args.mlflow, args.mlflow_experiment, args.register_model))
    return env


def print_leaderboard(space, rows: list[dict]) -> None:
    """A finished tuning job's trials, best first, as a markdown table."""
    print("| rank | training job | objective | " + " | ".join(p.name for p in space.parameters) + " |")
    for rank, row in enumerate(rows, start=1):
        values = " | ".join(str(row.get(p.name, "")) for p in space.parameters)
        print(f"| {rank} | {row['TrainingJobName']} | {row['FinalObjectiveValue']:.6f} | {values} |")


def print_top(source: str, result: dict) -> None:
    top = result["predictions"]
    print(f"{source}: " + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in top))


def local_channels(sources: dict, workdir: Path) -> dict:
    """Local mode mounts a file's whole folder as its channel (v2's LocalFileDataSource, v3's
    FileSystemDataSource), where SageMaker delivers the one object: a file (dogImages.zip, a .pth)
    gets a channel folder holding only it."""
    staged = dict(sources)
    for name, source in sources.items():
        path = Path(source) if source and not source.startswith(("s3://", "file://")) else None
        if path is None or not path.is_file():
            continue
        folder = workdir / "channels" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            os.link(path.resolve(), folder / path.name)  # no copy of a large archive where a link will do
        except OSError:
            shutil.copy2(path, folder / path.name)
        staged[name] = str(folder)
    return staged


def cleanup_endpoint(config, session, endpoint_name: str) -> None:
    """sm.py cleanup on either SDK: its inference components (if any) with their scaling, the autoscaling
    target (if any), then the endpoint, its configuration and its models (plain boto3 calls through the
    session: the same for v2 and v3). What a failed deploy left is found by its known name too: the model
    a deploy-component made before its component failed (no component names it), the configuration of an
    endpoint that was never made (or that a cleanup cut short removed)."""
    from launch import component_scaling, hosting

    if config.is_local:
        print("local endpoints stop when their deploy command stops; nothing to delete")
        return
    client = session.sagemaker_client
    removed = component_scaling.remove_components(session, endpoint_name)  # and their scaling, their models
    for item in removed:
        print(f"deleted {item}")
    try:
        session.boto_session.client("application-autoscaling").deregister_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=f"endpoint/{endpoint_name}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        )
    except Exception:  # not registered: nothing to undo
        pass
    try:
        deleted = hosting.cleanup(session, endpoint_name)
    except Exception as exc:  # botocore's ClientError
        if not (component_scaling.missing(exc) and getattr(exc, "operation_name", "") == "DescribeEndpoint"):
            raise
        print(f"endpoint {endpoint_name}: none")
        # every deploy here names the configuration after its endpoint
        delete_config = partial(client.delete_endpoint_config, EndpointConfigName=endpoint_name)
        deleted = component_scaling.delete_if_there(delete_config, "endpoint config", endpoint_name)
    model = hosting.endpoint_model_name(endpoint_name)
    if f"model {model}" not in removed + deleted:
        deleted += component_scaling.delete_if_there(partial(client.delete_model, ModelName=model), "model", model)
    for item in deleted:
        print(f"deleted {item}")


def tune_locally(args, config, space) -> None:
    """sm.py tune --local on either SDK (neither has local tuning jobs): the Optuna study on the same
    space, trials in the training image; with --mlflow, a parent run and a child run per trial."""
    from launch import local_tuning

    if not args.data:
        raise SystemExit("--data (a local folder or archive) is required")
    os.environ.update(job_environment(args))  # the study reads the tracking settings from the environment
    sampler = {"Bayesian": "tpe", "Random": "random", "Grid": "grid"}.get(args.strategy, "tpe")
    result = local_tuning.run_study(
        space,
        args.data,
        args.workdir / "tuning",
        args.max_jobs,
        sampler,
        parallel=args.max_parallel_jobs,
        runner="container",
        fixed_overrides=parse_hps(args.hp),
        image=config.train_image,
        storage=local_tuning.storage_url(args),
        study_name=args.study_name,
    )
    print(result.markdown())


def serve_until_stopped() -> None:
    """Block while a local endpoint serves; Ctrl-C or SIGTERM raise KeyboardInterrupt, which ends the
    caller's `with`/`finally` that deletes the endpoint. Both handlers are set here: a process that a
    non-interactive shell started in the background inherits SIGINT ignored, and Python then leaves
    it ignored (Ctrl-C would never reach it, and the endpoint's container would outlive it)."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)


# -- the commands' shared steps: launch/v3/commands.py and launch/v2/commands.py add only their SDK's calls --


def timestamped(base: str) -> str:
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_sources(args, config) -> dict:
    """sm.py train's channels; in local mode a file gets a channel folder of its own (local_channels)."""
    sources = {"training": args.data, "validation": args.validation, "test": args.test, "pretrained": args.pretrained}
    return local_channels(sources, args.workdir.resolve()) if config.is_local else sources


def tuner_options(args, fixed: dict) -> dict:
    """sm.py tune's flags as the keyword arguments of either SDK's tuning.tuner."""
    return dict(
        strategy=args.strategy,
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        warm_start_parents=args.warm_start.split(",") if args.warm_start else None,
        epochs=int(fixed.get("epochs", 5)),
    )


def tune(args, config, session, start, tuning, train) -> None:
    """sm.py tune on either SDK. start(space, fixed, sources) starts (or attaches to) the SDK's tuning job and
    returns its tuner; tuning is the SDK's module (leaderboard, best_hyperparameters); train its cmd_train."""
    from contract.spec import search_space

    space = search_space.load(args.space)
    fixed = {**space.fixed, **parse_hps(args.hp)}
    if config.is_local:  # no local tuning jobs in either SDK: the same space runs with Optuna
        tune_locally(args, config, space)
        return
    if args.storage:
        raise SystemExit("--storage is for --local (a SageMaker tuning job keeps its own trials)")
    if not (args.attach or args.data):
        raise SystemExit("--data (the training channel) is required to start a tuning job")
    tuner = start(space, fixed, {"training": args.data, "validation": args.validation, "test": args.test})
    if not (args.wait or args.train_best):
        return
    tuner.wait()
    print_leaderboard(space, tuning.leaderboard(tuner))
    best = tuning.best_hyperparameters(session, tuner)
    print(f"best hyperparameters: {best}")
    if args.train_best:  # the first seed's flow: train the final model with the best values
        args.hp = [f"{k}={v}" for k, v in best.items()]
        args.job_name, args.no_wait, args.no_debugger, args.pretrained = None, False, False, None
        args.subnet, args.security_group, args.network_isolation = [], [], False
        train(args, config, session)


def endpoint_name(args, base: str = "byoc") -> str:
    return args.endpoint_name or timestamped(base)


def serverless(args) -> tuple[int, int] | None:
    """--serverless MEMORY_MB:CONCURRENCY."""
    if not args.serverless:
        return None
    memory, concurrency = (int(x) for x in args.serverless.split(":"))
    return memory, concurrency


def autoscale(args, session, name: str, hosting) -> None:
    """deploy --autoscale MIN:MAX:INVOCATIONS with the SDK's hosting module."""
    if args.autoscale:
        low, high, target = args.autoscale.split(":")
        hosting.autoscale(session, name, int(low), int(high), float(target))
        print(f"autoscaling {low}..{high} instances at {target} invocations per instance")


def serve_locally(args, invoke) -> None:
    """deploy --local once the endpoint is in service: classify --invoke images with invoke(path, top_k), or
    serve until Ctrl-C or SIGTERM; the caller then deletes the endpoint."""
    try:
        if args.invoke:
            for path in args.invoke:
                print_top(str(path), invoke(path, args.top_k))
        else:
            print("serving on http://localhost:8080 (local mode); Ctrl-C or SIGTERM stops it")
            serve_until_stopped()
    except KeyboardInterrupt:
        pass


def invoke_images(args, session, label: str, invoke) -> None:
    """sm.py invoke: each image through the SDK's own call, invoke(path, top_k), named label, and boto3's."""
    from launch.hosting import invoke_with_boto3

    for path in args.images:
        if args.via in ("predictor", "both"):
            print_top(f"{path} ({label})", invoke(path, args.top_k))
        if args.via in ("boto3", "both"):
            runtime, endpoint, component = session.sagemaker_runtime_client, args.endpoint_name, args.component_name
            if component:  # an inference component's copies answer only when named
                from launch import inference_component

                result = inference_component.invoke_with_boto3(runtime, endpoint, component, path, args.top_k)
            else:
                result = invoke_with_boto3(runtime, endpoint, path, args.top_k)
            print_top(f"{path} (boto3)", result)


def transform_locations(args, config, session) -> tuple[str, str]:
    """sm.py transform's input (uploaded when it is a local folder outside local mode) and output URIs."""
    from launch.training import channel_uri, output_location

    input_uri = channel_uri(session, config, "transform-input", args.input)
    output = args.output or output_location(config, "transform", args.workdir)
    if config.is_local and not output.startswith("file://"):
        output = f"file://{Path(output).resolve()}"
    return input_uri, output


def cmd_cleanup(args, config, session) -> None:
    cleanup_endpoint(config, session, args.endpoint_name)
