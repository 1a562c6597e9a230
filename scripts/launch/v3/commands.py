"""sm.py's commands on SDK v3 (the default; `--sdk v2` runs launch/v2/commands.py's): same flags, same facts,
same outputs (`model: <uri>`, the top-k lines); the steps both share are launch/cli.py's."""

from __future__ import annotations

from launch import async_inference, cli
from launch.cli import job_environment, parse_hps, parse_tags
from launch.v3 import hosting, local, training, tuning


def cmd_train(args, config, session):
    sources = cli.train_sources(args, config)
    name = args.job_name or cli.timestamped("byoc-train")
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
    def start(space, fixed, sources):
        if args.attach:
            raise SystemExit("--attach is on --sdk v2 only (v3's HyperparameterTuner has no attach)")
        trainer = training.model_trainer(
            session,
            config,
            fixed,
            "byoc-tune-trial",
            tags=parse_tags(args.tag),
            environment=job_environment(args),
            tensorboard=False,
        )
        tuner = tuning.tuner(trainer, space, **cli.tuner_options(args, fixed))
        tuner.tune(inputs=training.input_data(session, config, sources), wait=False)
        print(f"tuning job {tuner.latest_tuning_job.hyper_parameter_tuning_job_name} started")
        return tuner

    cli.tune(args, config, session, start, tuning, cmd_train)


def cmd_deploy(args, config, session):
    name = cli.endpoint_name(args)
    if config.is_local:
        async_inference.options(args, config)  # refuses --async-output: no local asynchronous endpoints
        model_name = local.create_model(session, config, args.model_data, f"{name}-model")
        with local.LocalEndpoint(session, config, model_name, name, args.instance_count) as endpoint:
            print(f"endpoint {name} is in service")
            cli.serve_locally(args, endpoint.invoke)
        print(f"local endpoint {name} stopped")
        return
    asynchronous = async_inference.options(args, config)
    env = async_inference.environment() if asynchronous else None
    model = hosting.create_model(session, config, args.model_data, hosting.endpoint_model_name(name), env=env)
    async_config = async_inference.v3_config(asynchronous) if asynchronous else None
    hosting.deploy(
        session, config, model.model_name, name, args.instance_count, cli.serverless(args), async_config=async_config
    )
    print(f"endpoint {name} is in service")
    cli.autoscale(args, session, name, hosting)


def cmd_invoke(args, config, session):
    invoke = lambda path, top_k: hosting.invoke_with_endpoint(session, args.endpoint_name, path, top_k)  # noqa: E731
    if args.component_name:
        from launch.v3 import inference_component as component

        def invoke(path, top_k):
            return component.invoke(session, args.endpoint_name, args.component_name, path, top_k)

    cli.invoke_images(args, session, "Endpoint.invoke", invoke)


def cmd_transform(args, config, session):
    name = cli.timestamped("byoc-transform")
    input_uri, output = cli.transform_locations(args, config, session)
    if config.is_local:
        model_name = local.create_model(session, config, args.model_data, name)
    else:
        model_name = hosting.create_model(session, config, args.model_data, name).model_name
    hosting.transform(session, config, model_name, input_uri, output, args.instance_count)
    print(f"predictions: {output}")


def cmd_deploy_mme(args, config, session):
    from launch.v3 import multi_model

    if config.is_local:
        raise SystemExit("deploy-mme needs SageMaker itself (S3 and the endpoint): local mode has none")
    name = cli.endpoint_name(args, "byoc-mme")
    multi_model.deploy(session, config, name, args.model_prefix, args.instance_count, args.memory_budget_mb)
    print(f"multi-model endpoint {name} is in service, models from {args.model_prefix}")
    for target in multi_model.add_models(session, args.model_prefix, args.add_model):
        print(f"added {target}")
    for target in args.target_model:
        for path in args.invoke:
            cli.print_top(f"{path} ({target})", multi_model.invoke(session, name, target, path, args.top_k))


def cmd_deploy_component(args, config, session):
    from launch import inference_component
    from launch.v3 import inference_component as component

    def invoke(plan, path, top_k):
        return component.invoke(session, plan.endpoint_name, plan.component_name, path, top_k)

    inference_component.run(args, config, session, component.deploy, invoke)


COMMANDS = {"train": cmd_train, "tune": cmd_tune, "deploy": cmd_deploy, "invoke": cmd_invoke}
COMMANDS.update(transform=cmd_transform, cleanup=cli.cmd_cleanup)
COMMANDS["deploy-component"] = cmd_deploy_component
COMMANDS["deploy-mme"] = cmd_deploy_mme
COMMANDS["invoke-async"] = lambda args, config, session: async_inference.cmd_invoke_async(
    args, config, session, async_inference.invoke_with_endpoint
)
