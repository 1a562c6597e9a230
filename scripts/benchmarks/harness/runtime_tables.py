"""The runtime benchmark's tables: in-process rates per runtime x precision (issue #23's table),
the endpoint against the best in-process limit of the same precision, and the verdicts."""

from __future__ import annotations

from benchmarks.harness.tables import GOAL_TAIL, GOAL_THROUGHPUT

GOAL_BATCH1 = 1.3  # c=1 p50 over the batch-1 forward pass plus one image's decode
PRECISIONS = ("fp32", "bf16", "int8")


def best_by_precision(rows: list[dict]) -> dict[str, dict]:
    """Per precision, the row of the runtime with the highest in-process limit."""
    best: dict[str, dict] = {}
    for row in rows:
        precision = row["mode"].split()[1]
        if precision not in best or row["best"] > best[precision]["best"]:
            best[precision] = row
    return best


def runtime_table(rows: list[dict], flags: str, decode_ms: float, images: int, cores: int) -> str:
    runtimes = list(dict.fromkeys(row["mode"].split()[0] for row in rows))
    by_mode = {row["mode"]: row for row in rows}
    lines = [
        f"CPU flags: {flags or 'none known'}; {cores} cores; decode + preprocess of one 500x375 JPEG "
        f"{decode_ms:.1f} ms; agreement on {images} photos\n",
        "In-process, images/s at the best batch (batch) and at batch 1:\n",
        "| runtime | " + " | ".join(f"{p} best | {p} batch 1" for p in PRECISIONS) + " |",
        "|---|" + "---|---|" * len(PRECISIONS),
    ]
    for runtime in runtimes:
        cells = []
        for precision in PRECISIONS:
            row = by_mode.get(f"{runtime} {precision}")
            cells += ["—", "—"] if row is None else [f"{row['best']:.1f} ({row['best_batch']})", f"{row['batch1']:.1f}"]
        lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
    best = best_by_precision(rows)
    lines += [
        "",
        "The endpoint (default settings but the workers), against the best in-process limit of its precision. "
        "The server's CPU per request at c=16 is split into the forward pass at the mode's own in-process "
        "limit (cores / limit), one image's decode, and the rest (HTTP, batching, threads waiting on each "
        "other). The decode bound is the best limit scaled by forward / (forward + decode): what an endpoint "
        "that decodes on the same cores could reach with nothing else to do.\n",
        "| runtime precision, workers (in effect) | c=16 req/s | / best limit | / best limit without the "
        "generator's share | server CPU ms per request: forward + decode + rest | / decode bound "
        "| c=16 p50 / p99 ms | c=1 p50 ms | / (batch-1 forward + decode) | top-1 agreement with fp32 "
        "(photos; trained) | ready after, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for row in rows:
        precision = row["mode"].split()[1]
        limit = best[precision]["best"]
        forward_ms = 1000 * cores / max(row["best"], 1e-9)
        best_forward_ms = 1000 * cores / max(limit, 1e-9)
        bound = limit * best_forward_ms / (best_forward_ms + decode_ms)
        floor_ms = 1000 / max(row["batch1"], 1e-9) + decode_ms
        trained = "—" if row["trained_agreement"] is None else f"{row['trained_agreement']:.1%}"
        for workers, point in row["endpoints"].items():
            c16, c1 = point["cells"][16], point["cells"][1]
            # The generator's share of the cores is what the server could not have: its limit, scaled down.
            share = min(c16["generator_cores"] / max(cores, 1), 0.99)
            server_ms = 1000 * c16["server_cores"] / max(c16["rps"], 1e-9)
            rest_ms = server_ms - forward_ms - decode_ms
            lines.append(
                f"| {row['mode']}, {workers} ({point['in_effect']}) | {c16['rps']:.1f} | {c16['rps'] / limit:.2f} | "
                f"{c16['rps'] / (limit * (1 - share)):.2f} (generator {c16['generator_cores']:.2f} cores) | "
                f"{server_ms:.1f} = {forward_ms:.1f} + {decode_ms:.1f} + {rest_ms:.1f} | {c16['rps'] / bound:.2f} | "
                f"{c16['p50']:.0f} / {c16['p99']:.0f} | {c1['p50']:.0f} | {c1['p50'] / floor_ms:.2f} | "
                f"{row['agreement']:.1%}; {trained} | {point['ready_s']:.0f} |"
            )
            checks = [
                f"c=16 {c16['rps'] / limit:.2f}x the best {precision} limit ({best[precision]['mode']}) "
                f"({'met' if c16['rps'] >= GOAL_THROUGHPUT * limit else 'NOT met'}; the decode bound is "
                f"{bound / limit:.2f}x)",
                f"p99/p50 {c16['p99'] / max(c16['p50'], 1e-9):.2f} "
                f"({'met' if c16['p99'] <= GOAL_TAIL * c16['p50'] else 'NOT met'})",
                f"c=1 {c1['p50'] / floor_ms:.2f}x batch-1 forward + decode "
                f"({'met' if c1['p50'] <= GOAL_BATCH1 * floor_ms else 'NOT met'})",
            ]
            verdicts.append(f"* {row['mode']}, {workers} worker(s): " + "; ".join(checks))
    return "\n".join([*lines, "", *verdicts])
