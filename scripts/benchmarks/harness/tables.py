"""The precision benchmark's markdown table and its verdict against issue #16's goals."""

from __future__ import annotations

GOAL_THROUGHPUT = 0.9  # req/s at c=16 over the in-process limit of the same precision
GOAL_TAIL = 1.5  # p99 over p50 at c=16
GOAL_AGREEMENT = 0.99


def flips(row: dict) -> str:
    """Where top-1 differs: the largest fp32 top-1/top-2 probability gap among those images."""
    gap = row.get("flipped_gap")
    return "" if gap is None else f" (flips where fp32's top-2 gap was <= {gap:.3f})"


def precision_table(rows: list[dict], flags: str, decode: dict[str, float], images: int) -> str:
    lines = [
        f"CPU flags: {flags or 'none known'}; decode + preprocess of one 500x375 JPEG: "
        f"{decode['draft']:.1f} ms with draft mode, {decode['full']:.1f} ms full decode; "
        f"agreement on {images} images\n",
        "| precision (in effect) | in-process limit img/s (batch) | c=1 req/s | c=4 req/s | c=16 req/s "
        "| c=16 / limit | c=16 p50 / p99 ms | top-1 agreement with fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = row["cells"]
        ratio = cells[16]["rps"] / max(row["limit"], 1e-9)
        lines.append(
            f"| {row['precision']} ({row['in_effect']}) | {row['limit']:.1f} ({row['batch']}) | "
            f"{cells[1]['rps']:.1f} | {cells[4]['rps']:.1f} | {cells[16]['rps']:.1f} | {ratio:.2f} | "
            f"{cells[16]['p50']:.0f} / {cells[16]['p99']:.0f} | {row['agreement']:.1%}{flips(row)} |"
        )
    lines.append("")
    for row in rows:
        c16 = row["cells"][16]
        verdicts = [
            f"c=16 {c16['rps'] / max(row['limit'], 1e-9):.2f}x limit "
            f"({'met' if c16['rps'] >= GOAL_THROUGHPUT * row['limit'] else 'NOT met'})",
            f"p99/p50 {c16['p99'] / max(c16['p50'], 1e-9):.2f} "
            f"({'met' if c16['p99'] <= GOAL_TAIL * c16['p50'] else 'NOT met'})",
        ]
        if row["precision"] != "fp32":
            verdicts.append(
                f"agreement {row['agreement']:.1%} ({'met' if row['agreement'] >= GOAL_AGREEMENT else 'NOT met'})"
            )
        lines.append(f"* {row['precision']}: " + "; ".join(verdicts))
    return "\n".join(lines)
