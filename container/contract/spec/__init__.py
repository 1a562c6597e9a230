"""The facts training, serving and the host tools share, in the Python standard library only.

    hyperparameters  every trainer hyperparameter: type, default, meaning; the `--hp name=value` parser
    search_space     tuning search spaces (presets and JSON files) over those hyperparameters
    metrics          the trainer's metric lines, SageMaker's regexes for them, and their reader
    paths            the /opt/ml tree and the writer of input/config
    artifact         the model directory's layout and its declared TrainingSummary
    presets          hyperparameter presets (the quick demo settings)
    images           local image names and tags
    architecture     the backbone names and freezable stages

No module here imports torch (or anything outside the standard library): the host scripts run with
the system python, and tests/unit/test_spec.py checks it. Import the modules themselves, e.g.
`from contract.spec import hyperparameters`; this file imports nothing.
"""
