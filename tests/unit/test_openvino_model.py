"""OpenVINO's model (server/runtimes/): where int8 puts its FakeQuantize nodes (openvino_model.py,
NNCF's placement, which keeps a residual block in int8), and how a worker runs the converted file
(served.py: a lone image on one stream of all threads, a batch split over single-threaded streams,
one batcher model thread per stream). Converted from a small ResNet on random data."""

from __future__ import annotations

import collections

import numpy as np
import openvino
import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st

from contract.preprocess import Preprocessing
from server.handlers import DefaultHandlers
from server.runtimes import openvino_model
from server.runtimes.served import RuntimeModel
from server.settings import Settings


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=4).eval()
    with torch.no_grad():
        model = openvino.convert_model(network, example_input=torch.zeros(1, 3, 32, 32), input=[-1, 3, 32, 32])
    openvino_model.quantize(model, torch.randn(8, 3, 32, 32))
    return model


def quantizer(value):
    node = value.get_node()
    return node if node.get_type_name() == "FakeQuantize" else None


def test_every_convolution_takes_quantized_activations_and_weights(quantized):
    convolutions = [node for node in quantized.get_ordered_ops() if node.get_type_name() == "Convolution"]
    assert len(convolutions) == 20
    for node in convolutions:
        assert quantizer(node.input_value(0)) is not None, node.get_friendly_name()
        weights = quantizer(node.input_value(1))
        assert weights is not None and int(weights.get_attributes()["levels"]) == 255


def test_both_branches_of_every_residual_add_are_quantized(quantized):
    joins = [
        node
        for node in quantized.get_ordered_ops()
        if node.get_type_name() == "Add"
        and all(node.input_value(i).get_node().get_type_name() != "Constant" for i in (0, 1))
    ]
    assert len(joins) == 8  # resnet18: two blocks in each of four stages
    for node in joins:
        assert quantizer(node.input_value(0)) and quantizer(node.input_value(1)), node.get_friendly_name()


def test_one_quantizer_per_tensor_shared_by_its_consumers(quantized):
    quantized_sources = collections.Counter(
        openvino_model.source_key(node.input_value(0))
        for node in quantized.get_ordered_ops()
        if node.get_type_name() == "FakeQuantize" and node.input_value(0).get_node().get_type_name() != "Constant"
    )
    assert quantized_sources and max(quantized_sources.values()) == 1
    pooled = [node for node in quantized.get_ordered_ops() if node.get_type_name() in ("MaxPool", "ReduceMean")]
    assert pooled and all(quantizer(node.input_value(0)) for node in pooled)


def test_quantized_model_still_ranks_like_fp32(quantized):
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=4).eval()
    inputs = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference = network(inputs)
    compiled = openvino.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    logits = torch.from_numpy(compiled({0: inputs.numpy()})[0])
    assert torch.corrcoef(torch.stack([reference.flatten(), logits.flatten()]))[0, 1] > 0.9


@given(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
)
def test_activation_bounds_keep_zero_on_the_int8_grid(a, b):
    low, high = openvino_model.activation_bounds(min(a, b), max(a, b))
    assert high > low
    step = (float(high) - float(low)) / 255
    zero_at = -float(low) / step
    assert abs(zero_at - round(zero_at)) < 1e-3  # zero (ReLU's output, padding) is exact
    if min(a, b) >= 0:
        assert low == 0 and high >= np.float32(max(a, b)) - 1e-6
    else:
        assert low <= min(a, b) and round(zero_at) == 128


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=4).eval()
    with torch.no_grad():
        return openvino_model.convert(network, "fp32", torch.empty(0), 32, str(tmp_path_factory.mktemp("ov")))


def test_a_batch_is_split_over_single_threaded_streams_with_the_same_answers(model_file):
    served = RuntimeModel("openvino", "fp32", model_file, threads=2, flags=set(), workers=1)
    inputs = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        batched = served(inputs)
        singles = torch.cat([served(image[None]) for image in inputs])
    assert torch.allclose(batched, singles, atol=1e-4)
    pair = served.compiled()
    assert int(pair.latency.get_property("NUM_STREAMS")) == 1
    assert int(pair.throughput.get_property("NUM_STREAMS")) == 2
    assert len(served._per_thread.throughput) == 2  # both streams took a share of the batch


def test_one_thread_compiles_one_stream_only(model_file):
    served = RuntimeModel("openvino", "fp32", model_file, threads=1, flags=set(), workers=2)
    with torch.inference_mode():
        assert served(torch.randn(3, 3, 32, 32)).shape == (3, 4)
    assert served.compiled().throughput is None


def test_one_model_thread_per_stream_and_a_lone_image_on_the_latency_stream_only_when_alone(model_file):
    served = RuntimeModel("openvino", "fp32", model_file, threads=2, flags=set(), workers=1)
    assert served.model_threads == 2  # the batcher runs as many passes at once as there are streams
    image = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        alone = served(image)
        assert not hasattr(served._per_thread, "throughput")  # a lone pass: the all-thread stream
        served._running = 1  # as if another model thread's pass were running
        beside = served(image)
    assert torch.allclose(alone, beside, atol=1e-4)
    assert len(served._per_thread.throughput) == 2  # beside another pass: a single-threaded stream
    assert served._running == 1  # counted in and out


def test_runtimes_with_one_pool_of_threads_run_one_pass_at_a_time(model_file):
    assert RuntimeModel("openvino", "fp32", model_file, threads=1, flags=set(), workers=2).model_threads == 1
    assert RuntimeModel("onnxruntime", "fp32", "unused.onnx", threads=2, flags=set(), workers=1).model_threads == 1


def test_the_default_handlers_batch_with_one_model_thread_per_stream(model_file, tmp_path):
    settings = Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_BATCH_SIZE": "4"})
    handlers = DefaultHandlers(tmp_path, settings)  # no config: ImageNet's sizes; this network's is 32 px
    handlers.prep = Preprocessing.for_image_size(32)
    served = RuntimeModel("openvino", "fp32", model_file, threads=2, flags=set(), workers=1)
    handlers.bind(served)
    try:
        assert len(handlers.batcher.model_threads) == 2
    finally:
        handlers.batcher.close()
