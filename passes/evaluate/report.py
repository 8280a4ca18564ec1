"""The `evaluate` pass's report: comparisons with the baseline, Markdown, HTML and PNG charts.

Charts are drawn with matplotlib's Agg backend (no display needed). The HTML page is self-contained
apart from the PNGs next to it, which it embeds by relative path, so the folder can be copied as is.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from passes.evaluate.goals import goals_table

SCATTER_PNG = "accuracy_vs_latency.png"



def _cpu_text(env: dict[str, Any]) -> str:
    """The CPU and its instruction-set class (older metrics.json files have no `isa`)."""
    return f"{env['cpu']} ({env['isa']})" if env.get("isa") else str(env["cpu"])


def _inputs_text(cfg: dict[str, Any], results: dict[str, Any]) -> str:
    """What the timed inputs were: padded to a fixed length, or the split's texts as a deployment batches them."""
    if cfg.get("padding", "max_length") == "max_length":
        return f"{cfg['sequence_length']} tokens (padded)"
    tokens = {name: m["tokens_mean"] for name, m in results.items() if "tokens_mean" in m}
    if len(set(tokens.values())) > 1:  # models with different tokenizers: each its own count
        mean = ", tokens on average: " + ", ".join(f"{name} {t:.1f}" for name, t in tokens.items())
    else:
        mean = f", {next(iter(tokens.values())):.1f} tokens on average" if tokens else ""
    how = "unpadded" if cfg["batch_size"] == 1 else "in length-sorted batches padded to their longest"
    return f"the split's texts {how} (as deployed{mean}, at most {cfg['sequence_length']})"

def add_comparisons(results: dict[str, dict[str, Any]], baseline: str) -> None:
    """Add `speedup` (baseline p50 / p50), `size_ratio` (size / baseline size) and `accuracy_delta_pt`."""
    base = results[baseline]
    for metrics in results.values():
        if "latency_p50_ms" in metrics and metrics["latency_p50_ms"] > 0:
            metrics["speedup"] = base["latency_p50_ms"] / metrics["latency_p50_ms"]
        if "size_mb" in metrics and base.get("size_mb"):
            metrics["size_ratio"] = metrics["size_mb"] / base["size_mb"]
        if "accuracy" in metrics:
            metrics["accuracy_delta_pt"] = (metrics["accuracy"] - base["accuracy"]) * 100.0


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{format(value, spec)}{suffix}"


def model_line(name: str, m: dict[str, Any]) -> str:
    """One model in a line: `int8: acc 0.981 (+0.0 pt), p50 3.9 ms (4.6x), 23 MB` (parts that were measured)."""
    parts = []
    if "accuracy" in m:
        parts.append(f"acc {m['accuracy']:.3f} ({m['accuracy_delta_pt']:+.1f} pt)")
    elif "f1" in m:
        parts.append(f"f1 {m['f1']:.3f}")
    if "latency_p50_ms" in m:
        parts.append(f"p50 {m['latency_p50_ms']:.1f} ms ({m['speedup']:.1f}x)")
    if "size_mb" in m:
        parts.append(f"{m['size_mb']:.0f} MB")
    return f"{name}: " + ", ".join(parts)


def summary_line(results: dict[str, dict[str, Any]], baseline: str) -> str:
    """The step's one-line summary: each model compared with the baseline (the baseline alone if it is the only one)."""
    others = [n for n in results if n != baseline] or [baseline]
    return "; ".join(model_line(n, results[n]) for n in others)


def _table(results: dict[str, dict[str, Any]], baseline: str) -> list[list[str]]:
    header = ["model", "accuracy", "Δ acc (pt)", "f1", "p50 ms", "speedup", "size MB", "size ratio"]
    rows = [header]
    for name, m in results.items():
        rows.append([
            f"{name} (baseline)" if name == baseline else name,
            _fmt(m.get("accuracy"), ".4f"),
            _fmt(m.get("accuracy_delta_pt"), "+.1f"),
            _fmt(m.get("f1"), ".4f"),
            _fmt(m.get("latency_p50_ms"), ".2f"),
            _fmt(m.get("speedup"), ".1f", "x"),
            _fmt(m.get("size_mb"), ".1f"),
            _fmt(m.get("size_ratio"), ".2f"),
        ])
    return rows


def _latency_table(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [["model", "provider", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "samples/s"]]
    for name, m in results.items():
        if "latency_p50_ms" in m:
            rows.append([name, m["provider"]] + [f"{m[k]:.2f}" for k in (
                "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "latency_std_ms")]
                + [f"{m['throughput_sps']:.1f}"])
    return rows if len(rows) > 1 else []


def _extra_table(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    keys = [k for k in ("precision", "recall") if any(k in m for m in results.values())]
    if not keys:
        return []
    return [["model", *keys]] + [[n, *(_fmt(m.get(k), ".4f") for k in keys)] for n, m in results.items()]


def _md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def _page(step: str, body: list[str]) -> str:
    """A self-contained HTML page (the PNGs next to it are linked by relative path)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation: {html.escape(step)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def _confusion_rows(matrix: list[list[int]], labels: list[str]) -> list[list[str]]:
    return [["true \\ predicted", *labels]] + [[labels[i], *map(str, row)] for i, row in enumerate(matrix)]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def draw_charts(out_dir: Path, results: dict[str, dict[str, Any]], labels: list[str], baseline: str) -> dict[str, str]:
    """Write the PNG charts; returns {chart key: file name} (`scatter`, `cm:<model>`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: dict[str, str] = {}
    points = [(n, m["latency_p50_ms"], m["accuracy"]) for n, m in results.items() if "latency_p50_ms" in m and "accuracy" in m]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for name, x, y in points:
            ax.scatter([x], [y], s=60, marker="*" if name == baseline else "o", zorder=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
        ax.set_xlabel("p50 latency (ms, lower is better)")
        ax.set_ylabel("accuracy")
        ax.set_title("Accuracy vs latency")
        ax.grid(True, alpha=0.3)
        ax.margins(0.2)
        fig.tight_layout()
        fig.savefig(out_dir / SCATTER_PNG, dpi=110)
        plt.close(fig)
        charts["scatter"] = SCATTER_PNG
    for name, m in results.items():
        if "confusion_matrix" not in m:
            continue
        matrix = m["confusion_matrix"]
        fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.1 * len(labels) + 2))
        ax.imshow(matrix, cmap="Blues")
        peak = max(max(r) for r in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: confusion matrix")
        fig.tight_layout()
        file = f"confusion_{_safe(name)}.png"
        fig.savefig(out_dir / file, dpi=110)
        plt.close(fig)
        charts[f"cm:{name}"] = file
    return charts


def _parallel_note(results: dict[str, dict[str, Any]]) -> str:
    """The cores' parallel speedup when timing began (passes/evaluate/machine.py), when it was measured."""
    first = next(iter(results.values()), {})
    if "parallel_speedup" not in first:
        return ""
    waited = first.get("settle_wait_s") or 0
    return (f" The cores' parallel speedup when timing began: {first['parallel_speedup']:.2f}x"
            f"{f' (after waiting {waited:.0f} s for them to settle)' if waited >= 1 else ''}; "
            "well under 1.4x with 2 threads means multi-threaded latencies read high.")


def write_report(out_dir: Path, payload: dict[str, Any], step: str) -> list[str]:
    """Write `report.md`, `report.html` and the charts from the metrics payload; returns the file names."""
    out_dir = Path(out_dir)
    results, baseline, labels = payload["models"], payload["baseline"], payload["labels"]
    env, cfg = payload["environment"], payload["config"]
    charts = draw_charts(out_dir, results, labels, baseline)
    sections: list[tuple[str, list[list[str]] | None, str | None]] = [
        ("Models", _table(results, baseline), None),
        ("Other metrics", _extra_table(results) or None, None),
        ("Latency", _latency_table(results) or None, None),
    ]
    if payload.get("goals"):
        sections.insert(0, ("Goals", goals_table(payload["goals"]), None))
    if "scatter" in charts:
        sections.append(("Accuracy vs latency", None, charts["scatter"]))
    for name, m in results.items():
        if "confusion_matrix" in m:
            sections.append((f"Confusion matrix: {name}", _confusion_rows(m["confusion_matrix"], labels), charts.get(f"cm:{name}")))
    setup = (
        f"Split `{cfg['split']}` ({next(iter(results.values())).get('samples', '?')} rows), baseline `{baseline}`. "
        f"Latency: batch {cfg['batch_size']}, {_inputs_text(cfg, results)}, {env['threads']} thread(s), "
        f"{cfg['warmup']} warmup + {cfg['repeats']} timed runs per model in {cfg['blocks']} interleaved, shuffled blocks "
        f"(all models in one process). Speedup = baseline p50 / model p50; Δ acc in percentage points. "
        f"CPU: {_cpu_text(env)}; onnxruntime {env['onnxruntime']}, torch {env['torch']}."
    ) + _parallel_note(results)
    md = [f"# Evaluation: {step}", "", summary_line(results, baseline), "", setup, ""]
    body = [f"<h1>Evaluation: {html.escape(step)}</h1>", f"<p><b>{html.escape(summary_line(results, baseline))}</b></p>", f"<p>{html.escape(setup)}</p>"]
    for title, rows, image in sections:
        if rows is None and image is None:
            continue
        md += [f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        if rows:
            md += [_md(rows), ""]
            body.append(_html_table(rows))
        if image:
            md += [f"![{title}]({image})", ""]
            body.append(f'<img src="{html.escape(image)}" alt="{html.escape(title)}">')
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.html").write_text(_page(step, body))
    return ["report.md", "report.html", *charts.values()]


# --- causal LMs ---------------------------------------------------------------------------------------

LM_SCATTER_PNG = "perplexity_vs_tokens_per_second.png"


def lm_model_line(name: str, m: dict[str, Any]) -> str:
    """`int4: ppl 7.9 (1.04x), 150 tok/s (8.1x), 110 MB` (the parts that were measured)."""
    parts = []
    if "perplexity" in m:
        parts.append(f"ppl {m['perplexity']:.2f} ({m.get('perplexity_ratio', 1.0):.2f}x)")
    if "tokens_per_second" in m:
        parts.append(f"{m['tokens_per_second']:.1f} tok/s ({m.get('tokens_per_second_ratio', 1.0):.1f}x)")
    if "time_to_first_token_ms" in m:
        parts.append(f"TTFT {m['time_to_first_token_ms']:.0f} ms")
    if "size_mb" in m:
        parts.append(f"{m['size_mb']:.0f} MB")
    return f"{name}: " + ", ".join(parts)


def lm_summary_line(results: dict[str, dict[str, Any]], baseline: str) -> str:
    """Every model, the baseline first (perplexity before and after tuning is the point of the step)."""
    return "; ".join(lm_model_line(n, m) for n, m in results.items())


def _lm_table(results: dict[str, dict[str, Any]], baseline: str) -> list[list[str]]:
    rows = [["model", "runtime", "perplexity", "vs baseline", "tokens/s", "vs baseline", "TTFT ms", "size MB"]]
    for name, m in results.items():
        rows.append([
            f"{name} (baseline)" if name == baseline else name, m.get("runtime", ""),
            _fmt(m.get("perplexity"), ".3f"), _fmt(m.get("perplexity_ratio"), ".3f", "x"),
            _fmt(m.get("tokens_per_second"), ".1f"), _fmt(m.get("tokens_per_second_ratio"), ".2f", "x"),
            _fmt(m.get("time_to_first_token_ms"), ".0f"), _fmt(m.get("size_mb"), ".1f"),
        ])
    return rows


def _lm_chart(out_dir: Path, results: dict[str, dict[str, Any]], baseline: str) -> str | None:
    points = [(n, m["tokens_per_second"], m["perplexity"]) for n, m in results.items()
              if "tokens_per_second" in m and "perplexity" in m]
    if not points:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=110)
    ax = fig.add_subplot()
    for name, x, y in points:
        ax.scatter([x], [y], s=60, marker="*" if name == baseline else "o", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel("decode tokens/s (higher is better)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Perplexity vs decode speed")
    ax.grid(True, alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    fig.savefig(out_dir / LM_SCATTER_PNG)
    return LM_SCATTER_PNG


def write_lm_report(out_dir: Path, payload: dict[str, Any], step: str) -> list[str]:
    """`report.md` and `report.html` for causal LMs: the table, the chart, the sample answers."""
    out_dir = Path(out_dir)
    results, baseline, cfg = payload["models"], payload["baseline"], payload["config"]
    env = payload["environment"]
    chart = _lm_chart(out_dir, results, baseline)
    first = next(iter(results.values()))
    setup = (
        f"Split `{cfg['split']}`, baseline `{baseline}`. Perplexity: exp(mean negative log-likelihood) of the "
        f"{first.get('perplexity_tokens', '?')} response tokens of {first.get('samples', '?')} pairs, the prompt as "
        f"context (chat template: {'yes' if payload['chat'].get('chat_template') else 'no'}). Decode speed: greedy, "
        f"{cfg['max_new_tokens']} new tokens after one prompt, {env['threads']} thread(s) for PyTorch (genai folders: "
        f"the threads in their runtime column), median of "
        f"{cfg['generation_runs']} runs per model interleaved in shuffled order; tokens/s counts the tokens after the "
        f"first, TTFT is prefill plus the first token. CPU: {_cpu_text(env)}."
    )
    summary = lm_summary_line(results, baseline)
    md = [f"# Evaluation: {step}", "", summary, "", setup, "", "## Models", "", _md(_lm_table(results, baseline)), ""]
    body = [f"<h1>Evaluation: {html.escape(step)}</h1>", f"<p><b>{html.escape(summary)}</b></p>",
            f"<p>{html.escape(setup)}</p>", "<h2>Models</h2>", _html_table(_lm_table(results, baseline))]
    if payload.get("goals"):
        md += ["## Goals", "", _md(goals_table(payload["goals"])), ""]
        body += ["<h2>Goals</h2>", _html_table(goals_table(payload["goals"]))]
    if chart:
        md += ["## Perplexity vs decode speed", "", f"![perplexity vs tokens/s]({chart})", ""]
        body.append(f'<h2>Perplexity vs decode speed</h2><img src="{chart}" alt="perplexity vs tokens/s">')
    if payload.get("samples"):
        md += ["## Sample answers", ""]
        body.append("<h2>Sample answers</h2>")
        for sample in payload["samples"]:
            md += [f"**Prompt:** {sample['prompt']}", ""]
            body.append(f"<p><b>Prompt:</b> {html.escape(sample['prompt'])}</p><ul>")
            for name, text in sample["answers"].items():
                md.append(f"- `{name}`: {text}")
                body.append(f"<li><code>{html.escape(name)}</code>: {html.escape(text)}</li>")
            md.append("")
            body.append("</ul>")
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.html").write_text(_page(step, body))
    return ["report.md", "report.html"] + ([chart] if chart else [])
