"""The benchmarks: one module each, every one printing its own table; `python3 scripts/bench.py NAME [args]`
(or `python3 -m benchmarks.NAME [args]` from scripts/) runs one, `scripts/bench.py --list` names them.
harness/ holds the serving benchmarks' parts, baselines/ the servers ours is compared with.
docs/benchmarks.md has the measured tables."""

# name on the command line -> (module under benchmarks/, one line on what it measures)
BENCHMARKS = {
    "training": ("training", "training throughput: our trainer against a plain loop in the seeds' style"),
    "debugger": ("debugger", "what the debugger hook and the profiler cost in training throughput"),
    "quality": ("quality", "test accuracy of training recipes on real photographs (Fashion-MNIST)"),
    "tuning": ("tuning", "local tuning: trials per hour with and without the feature cache"),
    "shared-tuning": ("shared_tuning", "trials per hour of one and of several tuners sharing a study (PostgreSQL)"),
    "serving": ("serving", "our server against a seed-style Flask app and TorchServe (--quick: short cells)"),
    "precision": ("precision", "serving at the machine's limit per precision (fp32, bf16, int8)"),
    "runtimes": ("runtimes", "serving at the machine's limit per runtime x precision (torch, OpenVINO, ONNX Runtime)"),
    "serving-memory": ("serving_memory", "serving image's readiness, memory per worker count, soak, request bounds"),
    "gpu-proof": ("gpu_proof", "the CUDA paths proven on one GPU (--tiny: on a CPU, as CI runs it)"),
    "async-request": ("async_request", "asynchronous inference: one large zip per size, images/s and peak RSS"),
    "push": ("push", "build_and_push.sh timings and pushed sizes against a local registry and moto's ECR"),
}
