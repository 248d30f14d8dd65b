"""Turn a pytest-benchmark JSON file into a Markdown table and a PNG plot.

Every row's figures come from the benchmarks' extra_info (medians of interleaved
rounds, ratios against baselines timed in the same run), so the table shows what the
run measured side by side, with the machine named above it.

    python -m pytest benchmarks/test_bench_nearest_code.py benchmarks/test_bench_dual_codebook.py \\
        benchmarks/test_bench_residual_quantize.py --benchmark-only --benchmark-json bench.json
    python benchmarks/report.py bench.json --md benchmarks/results/search.md --png benchmarks/results/search.png
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

# Ratio columns shown when a group has them (extra_info key -> column title).
RATIOS = {
    "fraction_of_fp32_gemm": "x fp32 GEMM rate",
    "speedup_vs_fp32_vqfast": "x vqfast fp32",
    "speedup_vs_addmm": "x addmm+argmin",
    "speedup_vs_cdist": "x cdist+argmin",
    "speedup_vs_faiss": "x faiss",
    "speedup_vs_vqp": "x vector-quantize-pytorch",
    "speedup_vs_reference": "x reference",
    "time_vs_one_nearest_code": "time / one nearest_code",
    "speedup_vs_torch_split": "x torch split",
    "speedup_vs_loop_nearest": "x D nearest_code calls",
    "speedup_vs_loop_addmm": "x D addmm calls",
    "speedup_vs_index_add": "x bincount+index_add_",
    "speedup_vs_one_hot": "x one-hot matmul",
    "time_vs_torch_read": "time / torch read of x",
    "index_add_over_read": "index_add_ / torch read",
    "x_read_once_at_copy_bw": "time / read once at copy bw",
    "speedup_vs_separate": "x separate passes",
    "speedup_vs_vector_quantize_pytorch": "x vector-quantize-pytorch",
    "x_read_once": "time / read once",
    "exp_ceiling_x_read_once": "exp ceiling / read once",
    "x_copy": "time / copy",
    "speedup_vs_chain": "x anchor chain",
    "speedup_vs_anchor_sample": "x softmax+multinomial",
    "speedup_vs_anchor_topk": "x topk+multinomial",
    "speedup_vs_anchor_maskgit_argmax": "x MaskGIT chain (argmax)",
    "speedup_vs_anchor_maskgit_sample": "x MaskGIT chain (sample)",
    "speedup_vs_anchor_put": "x PUT chain",
    "peak_rss_MiB": "peak RSS MiB",
    "extra_rss_MiB": "extra RSS MiB",
}


def load(path: str) -> tuple[dict, dict[str, list[dict]]]:
    """-> (machine info of the run, group -> rows [{name, info}])."""
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, list[dict]] = defaultdict(list)
    machine = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        name = info.get("row") or (b["param"] if b.get("param") else b["name"].split("[")[0].removeprefix("test_bench_"))
        groups[b.get("group") or b["name"]].append({"name": name, "info": info})
        machine = machine or {k: info[k] for k in ("cpu", "threads", "torch", "commit", "load_avg_1min") if k in info}
    return machine, groups


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def markdown(machine: dict, groups: dict[str, list[dict]]) -> str:
    """One table per benchmark group; ratio columns only where a row has them."""
    lines = [f"Machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads | PyTorch "
             f"{machine.get('torch', '?')} | commit {machine.get('commit', '?')} | load average "
             f"{machine.get('load_avg_1min', '?')} (shared machine: compare ratios, not times)", ""]
    for group, rows in groups.items():
        cols = [k for k in RATIOS if any(k in r["info"] for r in rows)]
        has_flops = any("GFLOPs" in r["info"] for r in rows)
        head = ["row", "median ms"] + (["GFLOP/s"] if has_flops else []) + [RATIOS[k] for k in cols]
        lines += [f"**{group}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in rows:
            info = r["info"]
            cells = [r["name"], _fmt(info.get("median_ms", float("nan")))]
            if has_flops:
                cells.append(_fmt(info["GFLOPs"]) if "GFLOPs" in info else "")
            cells += [_fmt(info[k]) if k in info else "" for k in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(groups: dict[str, list[dict]], path: str) -> None:
    """One horizontal bar chart per group: median time of each row (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {g: [r for r in rows if "median_ms" in r["info"]] for g, rows in groups.items()}
    groups = {g: rows for g, rows in groups.items() if rows}
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.2 + 0.35 * sum(len(r) for r in groups.values())),
                             squeeze=False)
    for ax, (group, rows) in zip(axes[:, 0], groups.items()):
        names = [r["name"] for r in rows]
        ms = [r["info"]["median_ms"] for r in rows]
        colors = ["tab:orange" if n.startswith(("vqfast", "quantize", "dual", "residual")) else "tab:gray" for n in names]
        ax.barh(names, ms, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("median ms (log; orange: vqfast)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--md", help="write the Markdown table here (default: print it)")
    parser.add_argument("--png", help="write the plot here")
    args = parser.parse_args()
    machine, groups = load(args.json)
    text = markdown(machine, groups)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.png:
        plot(groups, args.png)


if __name__ == "__main__":
    main()
