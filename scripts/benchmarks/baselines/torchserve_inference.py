"""code/inference.py for AWS's stack (baseline b of scripts/bench.py serving).

The four handler functions as the seeds wrote them for SageMaker's PyTorch
framework image (sagemaker-pytorch-inference on TorchServe): a torchvision
resnet50 with the new head, torchvision transforms, fp32, raw image/jpeg
in and JSON class probabilities out.
"""

import io
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms

# set by benchmarks/serving.py from the artifact's model_config.json
NUM_CLASSES = int(os.environ.get("BENCH_NUM_CLASSES", "133"))
HEAD = [int(size) for size in os.environ.get("BENCH_HEAD", "256").split(",") if size]

TRANSFORM = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


def build_model():
    model = torchvision.models.resnet50()
    layers, width = [], model.fc.in_features
    for size in HEAD:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU(inplace=True)]
        width = size
    layers.append(torch.nn.Linear(width, NUM_CLASSES))
    model.fc = torch.nn.Sequential(*layers)
    return model


def model_fn(model_dir):
    model = build_model()
    with open(os.path.join(model_dir, "model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f, map_location="cpu"))
    return model.eval()


def input_fn(request_body, content_type="image/jpeg"):
    if content_type in ("image/jpeg", "application/x-image"):
        image = Image.open(io.BytesIO(request_body)).convert("RGB")
        return TRANSFORM(image).unsqueeze(0)
    raise ValueError(f"unsupported content type {content_type}")


def predict_fn(input_data, model):
    with torch.no_grad():
        return torch.softmax(model(input_data), dim=1)


def output_fn(prediction, accept="application/json"):
    probabilities = prediction[0].tolist()
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return json.dumps({"class": best, "probabilities": probabilities}), "application/json"
