"""Baseline (a) of scripts/bench.py serving: a plain Flask app in the style of the seeds.

One process, Flask's built-in server with threaded=False (what a notebook
or `flask run` gives), the model loaded at start-up from a torch.load'ed
state dict into torchvision's resnet50 with the new head, PIL + torchvision
transforms, fp32, model(x) under no_grad.

    python seed_flask_app.py MODEL_PT PORT [NUM_CLASSES] [HEAD]
"""

import io
import json
import sys

import torch
import torchvision
from flask import Flask, Response, request
from PIL import Image
from torchvision import transforms

model_path, port = sys.argv[1], int(sys.argv[2])
num_classes = int(sys.argv[3]) if len(sys.argv) > 3 else 133
head = [int(size) for size in sys.argv[4].split(",") if size] if len(sys.argv) > 4 else [256]

model = torchvision.models.resnet50()
layers, width = [], model.fc.in_features
for size in head:
    layers += [torch.nn.Linear(width, size), torch.nn.ReLU(inplace=True)]
    width = size
layers.append(torch.nn.Linear(width, num_classes))
model.fc = torch.nn.Sequential(*layers)
model.load_state_dict(torch.load(model_path, map_location="cpu"))
model.eval()

transform = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)

app = Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping():
    return Response(response="\n", status=200, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def invocations():
    image = Image.open(io.BytesIO(request.data)).convert("RGB")
    x = transform(image).unsqueeze(0)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[0].tolist()
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return Response(
        json.dumps({"class": best, "probabilities": probabilities}), status=200, mimetype="application/json"
    )


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port, threaded=False)
