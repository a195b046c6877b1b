"""Stage 1's filter report: the table printed on the terminal and the funnel chart."""

from __future__ import annotations

from pathlib import Path


def has_extraction(report: dict) -> bool:
    """Step 0 is shown when a source was a web archive or HTML, or when records were not kept."""
    ex = report.get("extraction")
    return bool(ex and (ex.get("web_archives") or ex["removed"]))


def summary_table(report: dict) -> str:
    rows = [("step", "applies to", "in", "out", "removed", "chars removed")]
    ex = report.get("extraction")
    if has_extraction(report):  # WARC/WET/HTML records, and those that did not become documents
        rows.append(("records", "", "", str(ex["records"]), "", ""))
        rows.append(("0. extraction", "web", str(ex["records"]), str(ex["documents_out"]), str(ex["removed"]), ""))
    else:
        rows.append(("input", "", "", str(report["input"]["documents"]), "", ""))
    for i, f in enumerate(report["filters"], 1):
        rows.append((f"{i}. {f['name']}", "+".join(f["applies_to"]), str(f["documents_in"]), str(f["documents_out"]),
                     str(f["removed"]), f"{f['characters_removed']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    out = report["output"]
    lines.append(f"kept {out['documents']} documents ({out['web']} web, {out['code']} code), {out['characters']:,} characters")
    if report["input"]["skipped_null_or_empty_text"]:
        lines.append(f"skipped {report['input']['skipped_null_or_empty_text']} rows with null or empty text")
    if ex and ex["removed"]:
        lines.append("extraction removed: " + ", ".join(f"{k} {v}" for k, v in ex["reasons"].items()))
    return "\n".join(lines)


def funnel_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(report["filters"])
    ex = report.get("extraction")
    if has_extraction(report):  # the funnel starts from the WARC/HTML records: step 0, extraction
        steps.insert(0, {"name": "extraction", "documents_out": ex["documents_out"], "removed": ex["removed"], "reasons": ex["reasons"]})
    first = 0 if has_extraction(report) else 1
    labels = ["records" if first == 0 else "input"] + [f"{i}. {f['name']}" for i, f in enumerate(steps, first)]
    counts = [ex["records"] if first == 0 else report["input"]["documents"]] + [f["documents_out"] for f in steps]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bars = ax.barh(labels[::-1], counts[::-1], color=["#4c72b0"] * len(steps) + ["#8c8c8c"])
    for bar, f in zip(bars[::-1][1:], steps):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(f["reasons"].items(), key=lambda kv: -kv[1])[:3])
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f"  {bar.get_width():,}  (-{f['removed']}: {reasons})"
                if f["removed"] else f"  {bar.get_width():,}", va="center", fontsize=8)
    ax.text(bars[-1].get_width(), bars[-1].get_y() + bars[-1].get_height() / 2, f"  {counts[0]:,}", va="center", fontsize=8)
    ax.set_xlim(0, max(counts) * 1.9 or 1)
    ax.set_xlabel("documents remaining")
    ax.set_title("data_preparation.py: documents kept after each filter")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
