"""The converter child (runtimes/__init__.py starts it): `python -m server.runtimes.convert REQUEST`.

REQUEST is JSON: model_dir, runtime, precision, out_dir, threads, cpu_flags, parent_pid. Loads the
artifact, converts the network, runs the converted file as a worker would (served.py) and
compares it with fp32 torch on precision.py's check images. Prints one JSON line, the
verdict: path, images, agreeing, max_prob_diff, source, finite; or error. Logs to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback

import torch

from contract import artifact
from server import children, precision
from server.runtimes import onnx_model, openvino_model
from server.runtimes.served import RuntimeModel


def convert_and_check(request: dict) -> dict:
    torch.set_num_threads(request["threads"])
    model_dir, runtime, mode = request["model_dir"], request["runtime"], request["precision"]
    model, _ = artifact.load(model_dir, "cpu")
    model = model.eval()
    prep = artifact.preprocessing(artifact.read_config(model_dir))
    calibration = precision.calibration_inputs(model_dir, prep).contiguous()
    inputs = calibration[: precision.CHECK_IMAGES] if len(calibration) else precision.synthetic_inputs(prep)
    source = "calibration" if len(calibration) else "synthetic"
    inputs = inputs.contiguous()
    with torch.inference_mode():
        reference = torch.softmax(model(inputs), 1)
    with torch.no_grad():  # not inference_mode: the tracers that convert keep tensors of their own
        if runtime == "openvino":
            path = openvino_model.convert(model, mode, calibration, prep.image_size, request["out_dir"])
        else:
            path = onnx_model.export(model, prep.image_size, request["out_dir"])
    flags = set(request["cpu_flags"].split())
    served = RuntimeModel(runtime, mode, path, request["threads"], flags, workers=1)
    with torch.inference_mode():
        probabilities = torch.softmax(served(inputs).float(), 1)
    check = precision.compare(reference, probabilities, source)
    return {
        "path": path,
        "images": check.images,
        "agreeing": check.agreeing,
        "max_prob_diff": check.max_prob_diff if check.max_prob_diff != float("inf") else 1e9,
        "source": source,
        "finite": bool(torch.isfinite(probabilities).all()),
    }


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    children.die_with_parent(request["parent_pid"])  # no orphan converting on after its master died
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s converter %(message)s")
    logging.info("converting for the master %d (this process dies with it)", request["parent_pid"])
    try:
        verdict = convert_and_check(request)
    except Exception as exc:  # the master falls back to torch, with this as the reason
        traceback.print_exc()
        verdict = {"error": f"converting failed: {type(exc).__name__}: {str(exc)[:300]}"}
    print(json.dumps(verdict), flush=True)
    return 0 if "error" not in verdict else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
