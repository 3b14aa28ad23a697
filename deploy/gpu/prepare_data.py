#!/usr/bin/env python
"""Copy a small subset of ``../shared/data/t15/test.jsonl`` (posts with images) into an
ignored folder of the repo, so it can travel to a GPU machine with the working tree.

    python deploy/gpu/prepare_data.py --n 64 --out .gpu_data    # then carry .gpu_data
    python3 deploy/gpu/check_hf.py --data-dir .gpu_data ...     # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prepare(src: Path, out: Path, n: int, split: str = "test") -> int:
    """Copy the first ``n`` posts with an image of ``<src>/t15/<split>.jsonl`` (and their images)
    to ``<out>/t15``; returns how many were copied."""
    dst = out / "t15"
    (dst / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    with open(src / "t15" / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if not row.get("image") or not (src / "t15" / row["image"]).exists():
                continue
            shutil.copy2(src / "t15" / row["image"], dst / row["image"])
            rows.append(line if line.endswith("\n") else line + "\n")
            if len(rows) >= n:
                break
    (dst / f"{split}.jsonl").write_text("".join(rows), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / ".gpu_data"))
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args(argv)
    n = prepare(Path(args.src), Path(args.out), args.n)
    print(f"copied {n} posts with images to {args.out}/t15 (add it to .git/info/exclude and carry it)")
    return n


if __name__ == "__main__":
    main()
