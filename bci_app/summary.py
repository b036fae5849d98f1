"""The session summary as text: what ``bci-app`` prints at exit, headless or with the
window (the summary itself is :meth:`bci_app.pipeline.LiveSession.summary`)."""

from __future__ import annotations

import json
import sys

__all__ = ["fmt_pct", "format_summary", "report_summary"]


def fmt_pct(x: float | None, missing: str = "–") -> str:
    """A share as a percentage with one decimal, or ``missing`` when it is not known."""
    return missing if x is None else f"{100 * x:.1f} %"


def format_summary(summary: dict) -> str:
    """The lines ``bci-app`` prints (to stderr) when a session ends."""
    st, av = summary["single_trial"], summary["averaged"]
    rej = summary["epochs_rejected"]
    reasons = ", ".join(f"{k}: {v}" for k, v in rej.items() if v)
    lines = [
        f"summary: {summary['epochs_decoded']} epochs decoded, {summary['markers_seen']} markers seen "
        f"({summary['markers_unknown']} unknown, {summary['catch_markers']} catch), "
        f"{sum(rej.values())} rejected" + (f" ({reasons})" if reasons else "")
        + f", {summary['epochs_pending']} pending at exit",
        f"  stream: {summary['samples_received']} samples, {summary['samples_lost']} lost, {summary['gaps']} gap(s), "
        f"{summary['stalls']} stall(s)",
        f"  single trial: top-1 {fmt_pct(st['top1'], '-')}, top-5 {fmt_pct(st['top5'], '-')} over {st['n']} epochs "
        "with a known stimulus",
        f"  averaged repetitions: top-1 {fmt_pct(av['top1'], '-')}, top-5 {fmt_pct(av['top5'], '-')} over "
        f"{av['n_stimuli']} stimuli",
    ]
    for end, st_ in (summary.get("provisional") or {}).items():
        lat = st_.get("marker_to_decision_latency")
        lines.append(f"  provisional at {end} s: top-1 {fmt_pct(st_['top1'], '-')}, top-5 {fmt_pct(st_['top5'], '-')} over "
                     f"{st_['n']} epochs with a known stimulus ({st_['decided']} decided"
                     + (f", marker -> decision p50 {lat['p50_ms']:.0f} ms)" if lat else ")"))
    for key, name in (("decision_latency", "decision latency (ready -> decided)"),
                      ("decision_wait", "  of it waiting (ready -> taken up)"),
                      ("decision_compute", "  of it computing (per batch)"),
                      ("marker_to_decision_latency", "marker -> decision")):
        lat = summary.get(key)
        if lat:
            lines.append(f"  {name}: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms")
    for note in summary.get("problems", []):
        lines.append(f"  problem: {note}")
    if summary.get("recording"):
        lines.append(f"  recording: {summary['recording']}")
    return "\n".join(lines)


def report_summary(summary: dict, path: str | None = None) -> None:
    """Print the summary (stderr) and, with ``path``, write it as strict JSON (atomically)."""
    from trainer.files import atomic_write_text

    print(format_summary(summary), file=sys.stderr, flush=True)
    if path:
        atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
