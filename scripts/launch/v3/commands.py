"""sm.py's commands on SDK v3 (the default; `--sdk v2` runs sm.py's own v2 commands).

Same flags, same facts, same outputs (`model: <uri>`, the top-k lines) as the v2 commands."""

from __future__ import annotations

import time
from pathlib import Path

from launch.cli import (
    cleanup_endpoint,
    job_environment,
    local_channels,
    parse_hps,
    parse_tags,
    print_leaderboard,
    print_top,
    serve_until_stopped,
    tune_locally,
)
from launch.v3 import hosting, local, training, tuning


def _job_name(base: str = "byoc-train") -> str:
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args, config, session):
    sources = {"training": args.data, "validation": args.validation, "test": args.test, "pretrained": args.pretrained}
    if config.is_local:
        sources = local_channels(sources, args.workdir.resolve())
    name = args.job_name or _job_name()
    root = args.workdir.resolve() / "jobs" / name
    trainer = training.model_trainer(
        session,
        config,
        parse_hps(args.hp),
        name,
        tags=parse_tags(args.tag),
        environment=job_environment(args),
        container_root=root,
        subnets=args.subnet or None,
        security_group_ids=args.security_group or None,
        network_isolation=args.network_isolation,
    )
    trainer.train(
        input_data_config=training.input_data(session, config, sources), wait=not args.no_wait, logs=not args.no_wait
    )
    if config.is_local:
        print(f"model: file://{training.local_artifacts(root)}")
    elif args.no_wait:
        print(f"training job {trainer._latest_training_job.training_job_name} started")
    else:
        job = trainer._latest_training_job.refresh()
        print(f"model: {job.model_artifacts.s3_model_artifacts}")


def cmd_tune(args, config, session):
    from contract.spec import search_space

    space = search_space.load(args.space)
    fixed = {**space.fixed, **parse_hps(args.hp)}
    if config.is_local:  # no local tuning jobs in either SDK: the same space runs with Optuna
        tune_locally(args, config, space)
        return
    if args.attach:
        raise SystemExit("--attach is on --sdk v2 only (v3's HyperparameterTuner has no attach)")
    if not args.data:
        raise SystemExit("--data (the training channel) is required to start a tuning job")
    sources = {"training": args.data, "validation": args.validation, "test": args.test}
    trainer = training.model_trainer(
        session,
        config,
        fixed,
        "byoc-tune-trial",
        tags=parse_tags(args.tag),
        environment=job_environment(args),
        tensorboard=False,
    )
    tuner = tuning.tuner(
        trainer,
        space,
        args.strategy,
        args.max_jobs,
        args.max_parallel_jobs,
        args.warm_start.split(",") if args.warm_start else None,
        epochs=int(fixed.get("epochs", 5)),
    )
    tuner.tune(inputs=training.input_data(session, config, sources), wait=False)
    print(f"tuning job {tuner.latest_tuning_job.hyper_parameter_tuning_job_name} started")
    if not (args.wait or args.train_best):
        return
    tuner.wait()
    print_leaderboard(space, tuning.leaderboard(tuner))
    best = tuning.best_hyperparameters(session, tuner)
    print(f"best hyperparameters: {best}")
    if args.train_best:  # the first seed's flow: train the final model with the best values
        args.hp = [f"{k}={v}" for k, v in best.items()]
        args.job_name, args.no_wait, args.pretrained = None, False, None
        args.subnet, args.security_group, args.network_isolation = [], [], False
        cmd_train(args, config, session)


def cmd_deploy(args, config, session):
    serverless = tuple(int(x) for x in args.serverless.split(":")) if args.serverless else None
    name = args.endpoint_name or f"byoc-{time.strftime('%Y%m%d-%H%M%S')}"
    if config.is_local:
        model_name = local.create_model(session, config, args.model_data, f"{name}-model")
        with local.LocalEndpoint(session, config, model_name, name, args.instance_count) as endpoint:
            print(f"endpoint {name} is in service")
            try:
                if args.invoke:
                    for path in args.invoke:
                        print_top(str(path), endpoint.invoke(path, args.top_k))
                else:
                    print("serving on http://localhost:8080 (local mode); Ctrl-C or SIGTERM stops it")
                    serve_until_stopped()
            except KeyboardInterrupt:
                pass
        print(f"local endpoint {name} stopped")
        return
    model = hosting.create_model(session, config, args.model_data, f"{name}-model")
    hosting.deploy(session, config, model.model_name, name, args.instance_count, serverless)
    print(f"endpoint {name} is in service")
    if args.autoscale:
        low, high, target = args.autoscale.split(":")
        hosting.autoscale(session, name, int(low), int(high), float(target))
        print(f"autoscaling {low}..{high} instances at {target} invocations per instance")


def cmd_invoke(args, config, session):
    for path in args.images:
        if args.via in ("predictor", "both"):
            print_top(
                f"{path} (Endpoint.invoke)", hosting.invoke_with_endpoint(session, args.endpoint_name, path, args.top_k)
            )
        if args.via in ("boto3", "both"):
            result = hosting.invoke_with_boto3(session.sagemaker_runtime_client, args.endpoint_name, path, args.top_k)
            print_top(f"{path} (boto3)", result)


def cmd_transform(args, config, session):
    from launch.training import channel_uri, output_location

    name = f"byoc-transform-{time.strftime('%Y%m%d-%H%M%S')}"
    input_uri = channel_uri(session, config, "transform-input", args.input)
    output = args.output or output_location(config, "transform", args.workdir)
    if config.is_local and not output.startswith("file://"):
        output = f"file://{Path(output).resolve()}"
    if config.is_local:
        model_name = local.create_model(session, config, args.model_data, name)
    else:
        model_name = hosting.create_model(session, config, args.model_data, name).model_name
    hosting.transform(session, config, model_name, input_uri, output, args.instance_count)
    print(f"predictions: {output}")


def cmd_cleanup(args, config, session):
    cleanup_endpoint(config, session, args.endpoint_name)


COMMANDS = {
    "train": cmd_train,
    "tune": cmd_tune,
    "deploy": cmd_deploy,
    "invoke": cmd_invoke,
    "transform": cmd_transform,
    "cleanup": cmd_cleanup,
}
