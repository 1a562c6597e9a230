"""sm.py's commands on the SageMaker Python SDK v2 (sagemaker<3: Estimator, HyperparameterTuner, Model,
MultiDataModel), `sm.py --sdk v2` until v2's end of support (2027-07-06).

The SDK calls are launch/{training,tuning,hosting,multi_model,session}.py, which also hold what v3 takes from
them (PROJECT_TAG, channel_uri, tuner_arguments, content_type); what the commands of both SDKs share is
launch/cli.py."""
