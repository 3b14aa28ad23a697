"""The README's commands run as written.

* Its setup, local-loop and label blocks (bash, taken from README.md itself by their
  ``<!-- ... block -->`` markers) run verbatim with ``bash -e`` in a fresh ``git clone`` of this
  repository (of its last commit), with ``../shared/data`` beside it and on a ``PATH`` without
  ``.venv/bin``, so the README's own ``source .venv/bin/activate`` line is what puts ``mulcot`` on
  it. What is not fresh, to keep CI inside its budget: the clone's ``.venv`` is a link to the venv
  running the tests (``make setup`` in the clone then has nothing to do), and the environment sets
  free ports (``MULCOT_BROKER``, ``MULCOT_REDIS_URL``, ``MULCOT_SERVE_PORT``) so the run cannot
  clash with anything on the default ones, and the model-free student (``MULCOT_MODEL_SPEC=noop``;
  ``MULCOT_README_MODEL=default`` runs the block with the default student instead). ``PYTHONPATH``
  points at the clone so the clone's code is what runs.
* Its Python API snippet runs with the default student.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.services import free_port
from tests.support.stream_helpers import ROOT

README = (ROOT / "README.md").read_text()


def readme_block(name: str) -> str:
    """The fenced block right after ``<!-- {name} block`` in README.md."""
    m = re.search(r"<!-- " + re.escape(name) + r" block[^>]*-->\s*```(\w+)\n(.*?)\n```", README, re.DOTALL)
    assert m, f"README.md has no '<!-- {name} block -->' followed by a fenced block"
    return m.group(2) + "\n"


def _clean_env() -> dict[str, str]:
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_") and k not in ("REDIS_URL", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin))
    return env


@pytest.mark.timeout(960)
def test_readme_local_loop_runs_verbatim_in_a_fresh_clone(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("the README's local loop calls curl, which is not installed (.ci/run installs it)")
    venv = Path(sys.prefix)
    installed = venv / ".installed"
    if sys.prefix == sys.base_prefix or not installed.exists():
        pytest.skip(f"needs the venv that `make setup` builds (no {installed}); run the tests with .venv/bin/python")
    work = tmp_path / "w"
    work.mkdir()
    clone = work / "mulcot-stream"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True, timeout=120)
    (work / "shared").mkdir()
    (work / "shared" / "data").symlink_to(data_dir.resolve())
    (clone / ".venv").symlink_to(venv)
    old = installed.stat().st_mtime - 60
    os.utime(clone / "pyproject.toml", (old, old))  # older than .venv/.installed: `make setup` has nothing to do
    script = readme_block("setup") + readme_block("local-loop") + readme_block("label")
    assert "&& wait $SERVICES" in script and "SERVICES=$!" in script  # background processes stopped by PID
    env = _clean_env()
    env.update({
        "MULCOT_BROKER": f"127.0.0.1:{free_port()}", "MULCOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MULCOT_SERVE_PORT": str(free_port()), "MULCOT_METRICS_PORT": "0", "PYTHONPATH": str(clone),
        "MULCOT_MODEL_SPEC": os.environ.get("MULCOT_README_MODEL", "noop"), "OMP_NUM_THREADS": "1",
    })  # fmt: skip
    log = tmp_path / "readme.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["bash", "-e", "-x", "-c", script], cwd=clone, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(900)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _stop_group(proc.pid)
    out = log.read_text(errors="replace")
    assert rc == 0, f"README block failed (rc {rc}); last lines:\n" + "\n".join(out.splitlines()[-60:])
    assert "Nothing to be done for 'setup'" in out
    assert "produced 100 posts to posts (0 warned, 0 skipped)" in out
    assert "produced 19 posts to posts (2 warned, 0 skipped)" in out
    assert '"id": "t15-dev-17"' in out
    for code in ("invalid_json", "schema", "image_unreadable"):  # mulcot dead-letters and /api/dead-letters
        assert out.count(code) >= 2, code
    assert '{"count": 3, "kept": 3, "filters": {"recent": 3, "code": null}' in out
    rows = [json.loads(line) for line in (clone / "r.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200 and all(r["metadata"]["gold_label"] for r in rows)
    assert len((clone / "r.csv").read_text().splitlines()) == 1 + 16  # header + the samples' valid posts
    assert "labelled 16 posts -> stdout; 3 dead letters (image_unreadable 1, invalid_json 1, schema 1)" in out


def _stop_group(pgid: int) -> None:
    """Stop whatever the block left running (it stops its own by PID; this is for a failed run)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.mark.timeout(900)  # loads the default student: about 20 s on 2 idle cores, minutes on a loaded machine
def test_readme_python_api_snippet_runs(tmp_path: Path) -> None:
    code = readme_block("python-api")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**_clean_env(), "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert len(lines) == 4, p.stdout
    for line, pid in ((lines[0], "p1"), (lines[2], "p2")):
        assert re.fullmatch(rf"{pid} (positive|neutral|negative) [01]\.\d\d", line), line
    assert lines[1].strip() and lines[3].strip()  # each chain's conclusion
