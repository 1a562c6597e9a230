"""An inference component's autoscaling, as AWS documents scale to zero (endpoint-auto-scaling-zero-instances),
and the removal of components with all they brought (sm.py cleanup): plain boto3 calls through the session,
the same on either SDK. What and why: launch/inference_component.py."""

from __future__ import annotations

import time

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
# a component being deleted holds its endpoint: delete_endpoint fails until it is gone
DELETE_WAIT_S = 900
DELETE_POLL_S = 10


def resource_id(component_name: str) -> str:
    return f"inference-component/{component_name}"


def alarm_name(component_name: str) -> str:
    return f"{component_name}-no-capacity"


def autoscale(session, component_name: str, max_copies: int, invocations_per_copy: float) -> None:
    """Copy count 0..max_copies: target tracking (in and out, down to zero copies), and the step policy +
    alarm that bring the first copy back when a request finds none."""
    scaling = session.boto_session.client("application-autoscaling")
    target = dict(ServiceNamespace=NAMESPACE, ResourceId=resource_id(component_name), ScalableDimension=DIMENSION)
    scaling.register_scalable_target(**target, MinCapacity=0, MaxCapacity=max_copies)
    scaling.put_scaling_policy(
        **target,
        PolicyName=f"{component_name}-invocations",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(invocations_per_copy),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )
    step = scaling.put_scaling_policy(
        **target,
        PolicyName=f"{component_name}-from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Maximum",
            "Cooldown": 60,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )
    # AWS's example alarms on Sum > 1, which one refused request (one per minute) never sets off: >= 1 does
    session.boto_session.client("cloudwatch").put_metric_alarm(
        AlarmName=alarm_name(component_name),
        AlarmDescription=f"a request found no copy of {component_name}: start one",
        AlarmActions=[step["PolicyARN"]],
        Namespace="AWS/SageMaker",
        MetricName="NoCapacityInvocationFailures",
        Dimensions=[{"Name": "InferenceComponentName", "Value": component_name}],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        DatapointsToAlarm=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching",
    )


# -- cleaning up -------------------------------------------------------------------------------


def missing(exc: Exception) -> bool:
    """SageMaker's and Application Auto Scaling's 'no such thing' (a ValidationException or ObjectNotFound)."""
    error = getattr(exc, "response", {}).get("Error", {})
    text = f"{error.get('Code', '')} {error.get('Message', '')}".lower()
    return any(sign in text for sign in ("not found", "notfound", "could not find", "does not exist"))


def delete_if_there(delete, kind: str, name: str) -> list[str]:
    """delete() of something found by its known name, not through what refers to it: [f"{kind} {name}"],
    or [] when it does not exist (never made, or removed already)."""
    try:
        delete()
    except Exception as exc:
        if not missing(exc):
            raise
        return []
    return [f"{kind} {name}"]


def remove_scaling(session, component_name: str) -> list[str]:
    """The component's scaling policies, the alarms of its step policies (target tracking's own alarms go
    with their policy), and its scalable target."""
    scaling = session.boto_session.client("application-autoscaling")
    target = dict(ServiceNamespace=NAMESPACE, ResourceId=resource_id(component_name), ScalableDimension=DIMENSION)
    removed = []
    policies = scaling.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=resource_id(component_name))
    # ours by its name too: once its policy is gone (a cleanup cut short), no policy names it any more
    alarms = sorted(
        {alarm_name(component_name)}
        | {
            alarm["AlarmName"]
            for p in policies["ScalingPolicies"]
            if p["PolicyType"] == "StepScaling"
            for alarm in p.get("Alarms", [])
        }
    )
    try:
        session.boto_session.client("cloudwatch").delete_alarms(AlarmNames=alarms)
        removed += [f"alarm {name}" for name in alarms]
    except Exception as exc:
        if not missing(exc):
            raise
    for policy in policies["ScalingPolicies"]:
        scaling.delete_scaling_policy(PolicyName=policy["PolicyName"], **target)
        removed.append(f"scaling policy {policy['PolicyName']}")
    try:
        scaling.deregister_scalable_target(**target)
        removed.append(f"scalable target {resource_id(component_name)}")
    except Exception as exc:
        if not missing(exc):
            raise
    return removed


def remove_components(session, endpoint_name: str) -> list[str]:
    """Every inference component on the endpoint, with its scaling and its model; waits (bounded) until
    each is gone, since the endpoint cannot be deleted before. -> what was removed."""
    client = session.sagemaker_client
    names: list[str] = []
    page: dict[str, str] = {}
    while True:  # a page holds 10 by default
        listed = client.list_inference_components(EndpointNameEquals=endpoint_name, **page)
        names += [c["InferenceComponentName"] for c in listed["InferenceComponents"]]
        if not listed.get("NextToken"):
            break
        page = {"NextToken": listed["NextToken"]}
    removed, models = [], []
    for name in names:
        removed += remove_scaling(session, name)
        specification = client.describe_inference_component(InferenceComponentName=name).get("Specification", {})
        models += [specification["ModelName"]] if specification.get("ModelName") else []
        client.delete_inference_component(InferenceComponentName=name)
        removed.append(f"inference component {name}")
    wait_s = DELETE_WAIT_S
    deadline = time.monotonic() + wait_s
    for name in names:
        while True:
            try:
                client.describe_inference_component(InferenceComponentName=name)
            except Exception as exc:
                if missing(exc):
                    break
                raise
            if time.monotonic() > deadline:
                raise SystemExit(f"inference component {name} still exists after {wait_s:.0f} s; run cleanup again")
            time.sleep(DELETE_POLL_S)
    for model in models:
        client.delete_model(ModelName=model)
        removed.append(f"model {model}")
    return removed
