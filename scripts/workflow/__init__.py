"""scripts/run_local.py's workflow: every stage of the project on this machine, in containers.

    stages      the stage runner: fingerprints, skipping unchanged stages, logs, progress, state.json
    containers  the container commands: the training image with the repository, GPUs, weights cache
    training    the stages images, data, tune, train, rules, profile
    serving     the stages serve and classify (one serving container)
    run         Workflow: the stages in order, then the summary

Standard library only, as run_local.py: the host needs nothing but python3 and a container engine.
"""
