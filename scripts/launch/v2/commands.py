"""sm.py's commands on SDK v2 (`--sdk v2`), mirroring launch/v3/commands.py: same flags, same facts, same
outputs (`model: <uri>`, the top-k lines); the steps both share are launch/cli.py's."""

from __future__ import annotations

from launch import async_inference, cli, hosting, training, tuning
from launch.cli import job_environment, parse_hps, parse_tags, print_top


def cmd_train(args, config, session):
    sources = cli.train_sources(args, config)
    name = args.job_name or training.job_name()
    estimator = training.estimator(
        session,
        config,
        parse_hps(args.hp),
        name,
        debugger=debugger_settings(args, config),
        tags=parse_tags(args.tag),
        workdir=args.workdir,
        environment=job_environment(args),
    )
    estimator.fit(
        training.inputs(session, config, sources),
        job_name=name,
        wait=not args.no_wait,
        logs="All" if not args.no_wait else None,
    )
    if args.no_wait:
        print(f"training job {name} started")
    else:
        print(f"model: {estimator.model_data}")


def cmd_tune(args, config, session):
    def start(space, fixed, sources):
        if args.attach:
            return tuning.attach(session, args.attach)
        estimator = training.estimator(
            session,
            config,
            fixed,
            "byoc-tune-trial",
            debugger=None,
            tags=parse_tags(args.tag),
            environment=job_environment(args),
        )
        tuner = tuning.tuner(estimator, space, **cli.tuner_options(args, fixed))
        tuner.fit(training.inputs(session, config, sources), wait=False)
        print(f"tuning job {tuner.latest_tuning_job.name} started")
        return tuner

    cli.tune(args, config, session, start, tuning, cmd_train)


def debugger_settings(args, config) -> dict | None:
    """Debugger hook, rules and profiler for AWS jobs, from the rule list the local runner uses."""
    if args.no_debugger or config.is_local:
        return None
    from insights.rules import sagemaker_debugger_config

    return sagemaker_debugger_config(s3_output_path=f"{config.s3_prefix.rstrip('/')}/debug")


def cmd_deploy(args, config, session):
    asynchronous = async_inference.options(args, config)
    served = hosting.model(
        session, config, args.model_data, env=async_inference.environment() if asynchronous else None
    )
    name = cli.endpoint_name(args)
    predictor = hosting.deploy(
        served,
        config,
        name,
        args.instance_count,
        cli.serverless(args),
        async_config=async_inference.v2_config(asynchronous) if asynchronous else None,
    )
    print(f"endpoint {name} is in service")
    if not config.is_local:
        cli.autoscale(args, session, name, hosting)
        return
    try:
        cli.serve_locally(args, lambda path, top_k: hosting.invoke_with_predictor(predictor, path, top_k))
    finally:
        predictor.delete_endpoint()
        print(f"local endpoint {name} stopped")


def cmd_deploy_mme(args, config, session):
    from launch import multi_model

    name = cli.endpoint_name(args, "byoc-mme")
    mme = multi_model.multi_data_model(session, config, name, args.model_prefix, args.memory_budget_mb)
    predictor = multi_model.deploy(mme, config, name, args.instance_count)
    print(f"multi-model endpoint {name} is in service, models from {args.model_prefix}")
    for target in multi_model.add_models(mme, args.add_model):
        print(f"added {target}")
    for target in args.target_model:
        for path in args.invoke:
            print_top(f"{path} ({target})", multi_model.invoke(predictor, target, path, args.top_k))


def cmd_deploy_component(args, config, session):
    from launch import inference_component

    predictors = {}

    def deploy(session, config, plan, model_data):
        predictors[plan.component_name] = inference_component.deploy_v2(session, config, plan, model_data)

    def invoke(plan, path, top_k):
        return inference_component.invoke_with_predictor(predictors[plan.component_name], path, top_k)

    inference_component.run(args, config, session, deploy, invoke)


def cmd_invoke(args, config, session):
    component = {"component_name": args.component_name} if args.component_name else {}
    predictor = hosting.image_predictor_class()(args.endpoint_name, sagemaker_session=session, **component)
    cli.invoke_images(args, session, "Predictor", lambda p, k: hosting.invoke_with_predictor(predictor, p, k))


def cmd_transform(args, config, session):
    served = hosting.model(session, config, args.model_data)
    input_uri, output = cli.transform_locations(args, config, session)
    hosting.transform(served, config, input_uri, output, args.instance_count)
    print(f"predictions: {output}")


COMMANDS = {"train": cmd_train, "tune": cmd_tune, "deploy": cmd_deploy, "deploy-mme": cmd_deploy_mme}
COMMANDS.update(invoke=cmd_invoke, transform=cmd_transform, cleanup=cli.cmd_cleanup)
COMMANDS["deploy-component"] = cmd_deploy_component
COMMANDS["invoke-async"] = lambda args, config, session: async_inference.cmd_invoke_async(
    args, config, session, async_inference.invoke_with_boto3
)
