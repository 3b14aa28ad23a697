"""Rich rendering of results (``mulcot results``, the demo)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from .protocol import SentimentResult

COLOURS = {"positive": "green", "neutral": "yellow", "negative": "red"}


def label_text(label: str) -> Text:
    return Text(label, style=f"bold {COLOURS.get(label, 'white')}")


def results_table(results: Sequence[SentimentResult], chains: bool = False, title: str = "results") -> Table:
    table = Table(title=title, show_lines=chains)
    table.add_column("post")
    table.add_column("aspect")
    table.add_column("label")
    table.add_column("conf", justify="right")
    table.add_column("model")
    table.add_column("e2e ms", justify="right")
    if chains:
        table.add_column("reasoning chain")
    for r in results:
        row = [r.id, r.aspect or "-", label_text(r.label), f"{r.confidence:.2f}", f"{r.model_name} {r.model_version}",
               f"{r.timings.end_to_end_ms:.0f}"]
        if chains:
            row.append(chain_text(r))
        table.add_row(*row)
    return table


def chain_text(r: SentimentResult) -> Text:
    if r.chain is None:
        return Text("(labels-only mode: no chain)", style="dim")
    c = r.chain
    t = Text()
    for name, value in (("Text", c.text_analysis), ("Image", c.image_analysis), ("Conflict", c.conflict_resolution),
                        ("Conclusion", c.final_conclusion)):
        t.append(f"{name}: ", style="bold")
        t.append((value or "-") + "\n")
    t.append("Prediction: ", style="bold")
    t.append(c.prediction, style=COLOURS.get(c.prediction, ""))
    if not c.parsed:
        t.append("  (chain did not parse fully)", style="dim")
    return t


def result_line(r: SentimentResult) -> Text:
    """One result on one line (``mulcot results --follow``)."""
    t = Text()
    t.append(f"{r.processed_at:%H:%M:%S} ", style="dim")
    t.append(r.id, style="bold")
    t.append("  ")
    t.append_text(label_text(r.label))
    t.append(f" {r.confidence:.2f}")
    if r.aspect:
        t.append(f"  aspect: {r.aspect}", style="cyan")
    t.append(f"  {r.timings.end_to_end_ms:.0f} ms", style="dim")
    if r.chain is not None and r.chain.final_conclusion:
        t.append(f"  {r.chain.final_conclusion[:120]}", style="italic")
    return t


def result_panel(r: SentimentResult, footer: bool = True):  # type: ignore[no-untyped-def]
    """One result as a full-width panel: id, label, confidence and aspect in the title, the chain
    inside (``mulcot results --post``, the demo; reads well in 80 columns)."""
    from rich.panel import Panel

    title = Text.assemble(r.id, "  ", label_text(r.label), f"  {r.confidence:.2f}")
    if r.aspect:
        title.append(f"  aspect: {r.aspect}", style="cyan")
    foot = Text(f"{r.model_name} {r.model_version}  {r.timings.end_to_end_ms:.0f} ms end to end", style="dim") if footer else None
    return Panel(chain_text(r), title=title, title_align="left", subtitle=foot, subtitle_align="right", expand=True)
