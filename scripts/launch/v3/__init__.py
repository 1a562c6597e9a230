"""The launch path on the SageMaker Python SDK v3 (sagemaker>=3: ModelTrainer, the v3 HyperparameterTuner,
sagemaker.core resources, the v3 Transformer and LocalSession), the default of scripts/sm.py.

The v2 path (scripts/launch/v2/commands.py over launch/{training,tuning,hosting}.py) stays for `sm.py --sdk v2`
until v2's end of support; both take the same facts (hyperparameters, metric definitions, image names) from
one place, and the steps their commands share from launch/cli.py."""
