"""The comparison benchmark's tables and its verdict against the targets (benchmarks/serving.py)."""

from __future__ import annotations

import os

import numpy as np
import torch

from benchmarks.harness.servers import image_size_mb
from benchmarks.harness.workload import IMAGE_SIZES

TOLERANCE = 1e-4
TARGET_THROUGHPUT_RATIO = 1.3
TARGET_P50_SLACK = 0.15
AWS_IMAGE_MB = {"cpu": 4900, "gpu": 14000}


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def report(results: dict, floor: dict, decode: dict, images: dict, notes: list, counts: dict, cell_seconds: float):
    cpu = f"CPU x{len(os.sched_getaffinity(0))}"
    kb = {name: np.mean([len(d) for d in datas]) / 1024 for name, datas in images.items()}
    print(f"\n## Serving benchmark: ResNet50 (+256 head, 133 classes), {cpu}, torch {torch.__version__}\n")
    print(
        "Random weights (seeded; no weights can be downloaded here). Images: synthetic photo-like JPEGs "
        "(smooth random colour fields, blurred shapes, texture, grain; quality 90; mean "
        + ", ".join(f"{name} {size:.0f} KB" for name, size in kb.items())
        + "), no real photos being available offline. One request per connection, all on 127.0.0.1; "
        f"requests per cell: c=1 {counts[1]}, c=4 {counts[4]}, c=16 {counts[16]}, at most {cell_seconds:.0f} s "
        "per cell (p99 of so few requests is close to the maximum).\n"
    )
    print(
        "At concurrency 1 each request follows the in-process decode and forward pass of the same image "
        "(the floor column, medians); req/s there counts request time only.\n"
    )
    print("| server | image | concurrency | ok / errors | req/s | p50 ms | p90 ms | p99 ms | floor + decode ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for server, record in results.items():
        for (name, concurrency), cell in record["cells"].items():
            paired = f"{cell['floor_ms']:.1f} + {cell['decode_ms']:.1f}" if "floor_ms" in cell else ""
            print(
                f"| {server} | {name} | {concurrency} | {cell['ok']} / {cell['errors']}"
                f"{' (capped)' if cell['capped'] else ''} | {cell['rps']:.2f} | {fmt(cell['p50'])} | "
                f"{fmt(cell['p90'])} | {fmt(cell['p99'])} | {paired} |"
            )
    print(
        "\n| server | /ping 200 after start | first /invocations answered | RSS after load (processes) "
        "| max abs diff vs in-process eval_transform |"
    )
    print("|---|---|---|---|---|")
    for server, record in results.items():
        diff = record.get("max_abs_diff")
        print(
            f"| {server} | {record['ping_s']:.1f} s | {record['first_s']:.1f} s | "
            f"{record['rss_mb']:,.0f} MB ({record['processes']}) | {'-' if diff is None else f'{diff:.1e}'} |"
        )
    print("\n| in-process, batch 1 | " + " | ".join(IMAGE_SIZES) + " |")
    print("|---|" + "---|" * len(IMAGE_SIZES))
    print(
        "| forward, channels_last (ours) | "
        + " | ".join(f"{floor[name]['channels_last']:.1f} ms" for name in IMAGE_SIZES)
        + " |"
    )
    print(
        "| forward, contiguous (seeds) | "
        + " | ".join(f"{floor[name]['contiguous']:.1f} ms" for name in IMAGE_SIZES)
        + " |"
    )
    print(
        "| decode + preprocess, ours (draft JPEG, eval_transform) | "
        + " | ".join(f"{decode[name]['ours']:.1f} ms" for name in IMAGE_SIZES)
        + " |"
    )
    print(
        "| decode + preprocess, seeds (PIL, torchvision) | "
        + " | ".join(f"{decode[name]['seeds']:.1f} ms" for name in IMAGE_SIZES)
        + " |"
    )
    sizes = {variant: image_size_mb(f"byoc-serve:{variant}") for variant in ("cpu", "gpu")}
    print("\n| serving image | uncompressed size | AWS's framework image |")
    print("|---|---|---|")
    for variant, size in sizes.items():
        print(f"| byoc-serve:{variant} | {size} | ~{AWS_IMAGE_MB[variant]:,} MB |")

    print("\n### Verdict\n")
    ours = results.get("ours")
    ts = results.get("(b) TorchServe")
    seed = results.get("(a) seed Flask")
    for name in IMAGE_SIZES:
        if ours and ts:
            ratio = ours["cells"][(name, 16)]["rps"] / max(ts["cells"][(name, 16)]["rps"], 1e-9)
            verdict = "met" if ratio >= TARGET_THROUGHPUT_RATIO else "NOT met"
            print(
                f"* {name}, concurrency 16: ours {ours['cells'][(name, 16)]['rps']:.2f} req/s vs (b) "
                f"{ts['cells'][(name, 16)]['rps']:.2f} req/s = {ratio:.2f}x (target >= "
                f"{TARGET_THROUGHPUT_RATIO}x): {verdict}"
            )
        elif ours:
            print(f"* {name}, concurrency 16: no (b) result, throughput target not judged")
        if ours and seed:
            ratio = ours["cells"][(name, 16)]["rps"] / max(seed["cells"][(name, 16)]["rps"], 1e-9)
            print(f"* {name}, concurrency 16: ours vs (a) seed Flask = {ratio:.2f}x")
        if ours:
            cell = ours["cells"][(name, 1)]
            bound = (cell["floor_ms"] + cell["decode_ms"]) * (1 + TARGET_P50_SLACK)
            verdict = "met" if cell["p50"] <= bound else "NOT met"
            print(
                f"* {name}, concurrency 1: ours p50 {fmt(cell['p50'])} ms vs floor {cell['floor_ms']:.1f} + decode "
                f"{cell['decode_ms']:.1f} ms, each measured in-process right before each request "
                f"(+15% = {bound:.1f} ms): {verdict}"
            )
    if ours:
        diff = ours.get("max_abs_diff", float("nan"))
        print(
            f"* correctness: ours vs in-process eval_transform, max |dp| {diff:.1e} "
            f"({'within' if diff <= TOLERANCE else 'NOT within'} {TOLERANCE:g})"
        )
    for name in IMAGE_SIZES:
        if floor[name]["channels_last"] > 1.15 * floor[name]["contiguous"]:
            print(
                f"* note ({name} cells): batch-1 forward in channels_last (how our server runs it) took "
                f"{floor[name]['channels_last']:.1f} ms vs {floor[name]['contiguous']:.1f} ms contiguous"
            )
    for variant, size in sizes.items():
        if size.endswith(" MB"):
            mb = float(size[:-3].replace(",", ""))
            print(
                f"* byoc-serve:{variant}: {size}, {mb / AWS_IMAGE_MB[variant]:.2f}x AWS's ~{AWS_IMAGE_MB[variant]:,} MB"
            )
    if ts:
        print(
            "* (b)'s /ping answers 200 before its workers have loaded the model (TorchServe's frontend "
            "reports itself healthy), so its first answered /invocations is its real readiness"
        )
    for note in notes:
        print(f"* {note}")
