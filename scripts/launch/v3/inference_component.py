"""deploy-component on SDK v3 (launch/inference_component.py says what and why): the endpoint
configuration (managed instance scaling, least-outstanding-requests routing, the execution role on the
configuration, no model on the variant; through the plain client, see deploy), then sagemaker.core's
resources create the endpoint, the model and the component with the fields v2's Model.deploy sends;
Endpoint.invoke takes the component's name.
"""

from __future__ import annotations

import json
from pathlib import Path

from launch.config import Config
from launch.hosting import STARTUP_TIMEOUT_S, content_type
from launch.inference_component import ROUTING, VARIANT, ComponentPlan, environment
from launch.training import PROJECT_TAG
from launch.v3.hosting import _tags, create_model


def deploy(session, config: Config, plan: ComponentPlan, model_data: str, wait: bool = True):
    """-> the v3 InferenceComponent. The endpoint must be in service before a component can be placed on
    it, so with wait=False (tests) nothing waits and the component is created at once."""
    from sagemaker.core.resources import Endpoint, InferenceComponent
    from sagemaker.core.shapes import (
        InferenceComponentComputeResourceRequirements,
        InferenceComponentRuntimeConfig,
        InferenceComponentSpecification,
        InferenceComponentStartupParameters,
    )

    where = dict(session=session.boto_session, region=session.boto_region_name)
    # sagemaker-core 2.27 drops a field whose value is 0 when it serializes a shape, and scale to zero
    # needs ManagedInstanceScaling's MinInstanceCount 0 (a test caught it missing): the plain client takes
    # this one request, as for the serverless configuration (launch/v3/hosting.py)
    session.sagemaker_client.create_endpoint_config(
        EndpointConfigName=plan.endpoint_name,
        ExecutionRoleArn=config.role,
        Tags=[PROJECT_TAG],
        ProductionVariants=[
            {
                "VariantName": VARIANT,
                "InstanceType": plan.instance_type,
                "InitialInstanceCount": 1,
                "ManagedInstanceScaling": plan.managed_instance_scaling(),
                "RoutingConfig": ROUTING,
            }
        ],
    )
    endpoint = Endpoint.create(
        endpoint_name=plan.endpoint_name, endpoint_config_name=plan.endpoint_name, tags=_tags(), **where
    )
    if wait:
        endpoint.wait_for_status("InService")
    create_model(session, config, model_data, plan.model_name, env=environment(plan))
    requirements = plan.compute_requirements()
    component = InferenceComponent.create(
        inference_component_name=plan.component_name,
        endpoint_name=plan.endpoint_name,
        variant_name=VARIANT,
        specification=InferenceComponentSpecification(
            model_name=plan.model_name,
            startup_parameters=InferenceComponentStartupParameters(
                model_data_download_timeout_in_seconds=STARTUP_TIMEOUT_S,
                container_startup_health_check_timeout_in_seconds=STARTUP_TIMEOUT_S,
            ),
            compute_resource_requirements=InferenceComponentComputeResourceRequirements(
                number_of_cpu_cores_required=requirements["NumberOfCpuCoresRequired"],
                number_of_accelerator_devices_required=requirements.get("NumberOfAcceleratorDevicesRequired"),
                min_memory_required_in_mb=requirements["MinMemoryRequiredInMb"],
            ),
        ),
        runtime_config=InferenceComponentRuntimeConfig(copy_count=plan.copies),
        tags=_tags(),
        **where,
    )
    if wait:
        component.wait_for_status("InService")
    return component


def invoke(session, endpoint_name: str, component_name: str, path: Path, top_k: int) -> dict:
    from sagemaker.core.resources import Endpoint

    answer = Endpoint(endpoint_name=endpoint_name).invoke(
        body=path.read_bytes(),
        content_type=content_type(path),
        accept="application/json",
        custom_attributes=f"top_k={top_k}",
        inference_component_name=component_name,
        session=session.boto_session,
        region=session.boto_region_name,
    )
    body = answer.body
    return json.loads(body.read() if hasattr(body, "read") else body)
