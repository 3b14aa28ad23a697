"""``mulcot label``: label a file of posts offline, with the worker's own batch step and no Kafka.

Each non-blank line of the input (a ``Post`` or a research-format row, converted exactly as
``mulcot produce`` converts it) becomes an :class:`~stream.messages.InRecord` whose coordinates
are the file (``topic``: the path as given, ``partition`` 0, ``offset``: the line number), and
batches of them go through :meth:`stream.pipeline.BatchProcessor.process`: the same schema
validation, image checks and decoding, student call and dead-letter codes as the worker.

Results are written one ``SentimentResult`` JSON per line (``metadata`` of the post, such as
a research row's ``gold_label``, is kept as an extra ``metadata`` field), or as a flat CSV;
dead letters one ``DeadLetter`` JSON per line to a second file. Both files are flushed after
every batch, so a run killed with SIGKILL loses at most the batch in flight, and ``resume``
skips the ids (and dead-lettered lines) already written, after cutting a torn last line.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .messages import InRecord, Outcome
from .producer import MISSING_IMAGE, Line, convert
from .settings import Settings

CSV_FIELDS = ["id", "label", "confidence", "text_analysis", "image_analysis", "conflict_resolution",
              "final_conclusion", "prediction", "gold_label"]  # fmt: skip


class LabelError(RuntimeError):
    """A ``mulcot label`` run cannot start or go on; ``str()`` is one line."""


@dataclass
class LabelReport:
    labelled: int = 0
    dead: Counter = field(default_factory=Counter)  # type: ignore[type-arg]
    resumed: int = 0  # lines skipped because their id or dead letter was already written
    duplicates: list[tuple[int, str]] = field(default_factory=list)  # (line, id) of ids seen earlier in this file
    without_image: list[int] = field(default_factory=list)  # research rows whose image file is missing

    def summary(self, out: str, dead_to: str | None) -> str:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(self.dead.items()))
        text = f"labelled {self.labelled} posts -> {out}; {sum(self.dead.values())} dead letters"
        text += f" ({codes})" if codes else ""
        text += f" -> {dead_to}" if dead_to and self.dead else ""
        if self.resumed:
            text += f"; {self.resumed} lines already done (resumed)"
        if self.duplicates:
            text += f"; {len(self.duplicates)} lines skipped as duplicate ids (first at line {self.duplicates[0][0]})"
        if self.without_image:
            text += f"; {len(self.without_image)} labelled without their missing image file"
        return text


# --- the output files ------------------------------------------------------------------------
def _complete_lines(path: Path) -> list[bytes]:
    """The complete lines of ``path``; a torn last line (no newline: the run was killed while
    writing it) is cut off the file."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    return [line for line in data[:cut].split(b"\n") if line.strip()]


def done_results(path: Path, fmt: str) -> set[str]:
    """Ids already in the output file ``path`` (after cutting a torn last line)."""
    if not path.exists():
        return set()
    lines = _complete_lines(path)
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(b"\n".join(lines).decode("utf-8", "replace"))))
        return {row[0] for row in rows[1:] if row}
    ids = set()
    for n, line in enumerate(lines, 1):
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            raise LabelError(f"{path}: line {n} is not a result; cannot resume from it (fix or move the file)") from None
    return ids


def done_dead(path: Path | None) -> tuple[set[str], set[int]]:
    """Post ids and input line numbers already in the dead-letter file."""
    if path is None or not path.exists():
        return set(), set()
    ids, lines = set(), set()
    for n, line in enumerate(_complete_lines(path), 1):
        try:
            obj = json.loads(line)
            lines.add(int(obj["source"]["offset"]))
            if obj.get("post_id"):
                ids.add(str(obj["post_id"]))
        except (ValueError, KeyError, TypeError):
            raise LabelError(f"{path}: line {n} is not a dead letter; cannot resume from it (fix or move the file)") from None
    return ids, lines


def _flat(text: str | None) -> str:
    return " ".join((text or "").split())


class _Writer:
    """Results as JSONL or CSV, dead letters as JSONL; flushed after every batch."""

    def __init__(self, out: IO[str], fmt: str, dead: IO[str] | None, header: bool) -> None:
        self.out, self.fmt, self.dead = out, fmt, dead
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None and header:
            self.csv.writerow(CSV_FIELDS)

    def result(self, r: Any, metadata: dict[str, Any]) -> None:
        if self.csv is not None:
            c = r.chain
            self.csv.writerow([r.id, r.label, f"{r.confidence:.4f}", *(_flat(getattr(c, f, "") if c else "") for f in
                               ("text_analysis", "image_analysis", "conflict_resolution", "final_conclusion",
                                "prediction")), _flat(str(metadata.get("gold_label") or ""))])  # fmt: skip
            return
        obj = r.model_dump(mode="json")
        if metadata:
            obj["metadata"] = metadata
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def dead_letter(self, d: Any) -> None:
        if self.dead is not None:
            self.dead.write(d.model_dump_json() + "\n")

    def flush(self) -> None:
        for fh in (self.dead, self.out):  # dead letters first: a kill between leaves results to redo, not lines lost
            if fh is not None:
                fh.flush()
                if fh is not sys.stdout:
                    os.fsync(fh.fileno())


# --- the run ---------------------------------------------------------------------------------
@dataclass
class Done:
    """What a previous run already wrote (``--resume``): result and dead-letter post ids, and
    the input lines that were dead-lettered."""

    ids: set[str] = field(default_factory=set)
    lines: set[int] = field(default_factory=set)

    def has(self, number: int, pid: str | None) -> bool:
        """Whether input line ``number`` (whose post id is ``pid``) is done."""
        return number in self.lines or (pid is not None and pid in self.ids)


@dataclass
class LabelJob:
    """One ``mulcot label`` run (see the module docstring)."""

    settings: Settings
    path: Path
    out: str = "-"  # a file or "-" (stdout)
    fmt: str = "jsonl"
    dead_letters: str | None = None  # a file; None: next to the output (stderr lines with stdout output)
    batch_size: int = 32
    limit: int = 0
    resume: bool = False
    overwrite: bool = False
    note: Callable[[str], None] = lambda text: print(text, file=sys.stderr)

    @property
    def dead_path(self) -> Path | None:
        if self.dead_letters:
            return Path(self.dead_letters)
        if self.out == "-":
            return None
        out = Path(self.out)
        return out.with_name(out.name.removesuffix(out.suffix) + ".dead.jsonl")

    def check(self) -> None:
        """Refuse what would lose or overwrite results, before the student loads."""
        if self.resume and self.out == "-":
            raise LabelError("--resume needs --out FILE (the ids already labelled are read from it)")
        if self.out != "-" and not self.resume and not self.overwrite:
            for p in (Path(self.out), self.dead_path):
                if p is not None and p.exists() and p.stat().st_size:
                    raise LabelError(f"{p} exists: add --resume to continue it, --overwrite to replace it")
        if self.out != "-" and self.dead_path is not None and Path(self.out).resolve() == self.dead_path.resolve():
            raise LabelError("--dead-letters must be another file than --out")

    def numbered(self) -> Iterator[tuple[int, str, str | None]]:
        """The input's non-blank lines, the first ``limit`` of them: each one's line number, its
        text and the post id read from it (None: it names none). Labelling and the progress
        total both walk the input through this."""
        n = 0
        with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
            for number, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                n += 1
                if self.limit and n > self.limit:
                    return
                yield number, text, _peek_id(text)

    def lines(self, done: Done, report: LabelReport) -> Iterator[Line]:
        """The input lines still to label, converted as ``mulcot produce`` converts them."""
        seen: set[str] = set()
        for number, text, pid in self.numbered():
            if done.has(number, pid):
                report.resumed += 1
                continue
            if pid is not None and pid in seen:
                report.duplicates.append((number, pid))
                self.note(f"line {number}: duplicate id {pid!r} (first seen earlier in the file): skipped")
                continue
            if pid is not None:
                seen.add(pid)
            got = convert(text, self.path.parent, number)
            if got.kind == MISSING_IMAGE:
                report.without_image.append(number)
                self.note(f"line {number}: {got.problem}")
            yield got


def _peek_id(text: str) -> str | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return str(obj["id"]) if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) else None


def _batches(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    batch: list[Line] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _metadata(line: Line) -> dict[str, Any]:
    try:
        obj = json.loads(line.value)
    except ValueError:
        return {}
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


async def _label(job: LabelJob, student: Any, writer: _Writer, lines: Iterator[Line], report: LabelReport,
                 advance: Callable[[int], None]) -> None:  # fmt: skip
    from .pipeline import BatchProcessor

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mulcot-model")
    processor = BatchProcessor(student, job.settings, executor=executor, worker="mulcot-label", thumbnails=False)
    skipped = 0

    def passed() -> int:  # lines skipped as duplicates since the last call: they count as done
        nonlocal skipped
        now = len(report.duplicates)
        delta, skipped = now - skipped, now
        return delta

    try:
        for batch in _batches(lines, job.batch_size):
            records = [InRecord(value=ln.value, key=ln.key, topic=str(job.path), partition=0, offset=ln.number) for ln in batch]
            outcome: Outcome = await processor.process(records)
            meta = {ln.number: _metadata(ln) for ln in batch}
            for r in outcome.results:
                writer.result(r.result, meta.get(r.result.source.offset if r.result.source else -1, {}))
            for d in sorted(outcome.dead, key=lambda d: d.dead.source.offset):
                writer.dead_letter(d.dead)
                report.dead[d.dead.error.value] += 1
                if writer.dead is None:
                    job.note(f"dead letter: line {d.dead.source.offset}: {d.dead.error.value}: {d.dead.message}")
            writer.flush()
            report.labelled += len(outcome.results)
            advance(len(batch) + passed())
        advance(passed())
    finally:
        await processor.aclose()
        executor.shutdown(wait=False)


def already_done(job: LabelJob) -> Done:
    """With ``resume``: read (and cut the torn last line of) the output and dead-letter files."""
    if not job.resume:
        return Done()
    ids = done_results(Path(job.out), job.fmt)
    dead_ids, lines = done_dead(job.dead_path)
    return Done(ids | dead_ids, lines)


def to_label(job: LabelJob, done: Done) -> int:
    """How many lines of the input (the first ``limit``) are not done yet (the progress total)."""
    return sum(not done.has(number, pid) for number, _, pid in job.numbered())


def run_label(job: LabelJob, student: Any, progress: Any = None, done: Done | None = None) -> LabelReport:
    """Label ``job.path`` with ``student``, skipping what ``done`` (default: :func:`already_done`)
    holds; returns the report. ``progress`` (a :class:`stream.progress.Progress`) is advanced per
    batch by the lines labelled, dead-lettered or skipped as duplicates."""
    report = LabelReport()
    done = done if done is not None else already_done(job)
    dead_path = job.dead_path
    out_exists = job.out != "-" and Path(job.out).exists() and Path(job.out).stat().st_size > 0
    mode = "a" if job.resume else "w"
    out_fh: IO[str] = sys.stdout if job.out == "-" else open(job.out, mode, encoding="utf-8", newline="")
    dead_fh = open(dead_path, mode, encoding="utf-8") if dead_path is not None else None
    try:
        writer = _Writer(out_fh, job.fmt, dead_fh, header=not (job.resume and out_exists))
        lines = job.lines(done, report)

        def advance(n: int) -> None:
            if progress is not None:
                progress.advance(n)

        asyncio.run(_label(job, student, writer, lines, report, advance))
    finally:
        if out_fh is not sys.stdout:
            out_fh.close()
        if dead_fh is not None:
            dead_fh.close()
    return report


__all__ = ["LabelJob", "LabelReport", "LabelError", "Done", "already_done", "to_label", "run_label", "done_results",
           "done_dead", "CSV_FIELDS"]
