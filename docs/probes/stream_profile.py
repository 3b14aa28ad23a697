"""Profile of the worker's hot path (issue 24 item 7) - probe.

Starts embedded Tansu + Valkey, preloads N bench posts (``stream.bench.make_posts``: ~21 KB
JPEGs inline), starts the real worker with the no-op student (thumbnails on, the default) and
samples it with py-spy (``pip install py-spy``) from its first result until every result is
in Redis (at most 10,000: what the recent index keeps). Prints the
top-20 functions by own samples and by samples including callees (every thread but idle ones).

    .venv/bin/python docs/probes/stream_profile.py [posts] [image_decode]   # 9000 auto
"""

import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")  # run from the repository root
from stream.bench import _wait_redis, make_posts  # noqa: E402
from stream.kafka import ensure_topics  # noqa: E402
from stream.producer import produce_records  # noqa: E402
from stream.services import WorkerProcess, embedded_services  # noqa: E402
from stream.settings import load_settings  # noqa: E402

posts = min(int(sys.argv[1]) if len(sys.argv) > 1 else 9000, 10_000)  # the recent index keeps 10,000
mode = sys.argv[2] if len(sys.argv) > 2 else "auto"
out = Path(tempfile.mkdtemp(prefix="mulcot-profile-"))
with embedded_services(log_dir=out) as (kafka, redis):
    s = load_settings(broker=kafka.bootstrap, redis_url=redis.url, model_spec="noop", group_id="prof", input_topic="prof.in",
                      output_topic="prof.out", dlq_topic="prof.dlq", metrics_port=0, max_batch=256, max_latency_ms=50,
                      work_dir=str(out), partitions=4, log_level="warn", image_decode=mode)  # fmt: skip
    asyncio.run(ensure_topics(s))
    asyncio.run(produce_records(s, make_posts(posts, 20), s.input_topic))
    worker = WorkerProcess(s, out / "worker.log")
    try:
        asyncio.run(_wait_redis(s, 1, 120, worker.proc))  # started and joined: the first results are in
        raw = out / "profile.txt"
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.pid), "--format", "raw", "--rate", "200",
                                "--nonblocking", "-o", str(raw)], stdout=subprocess.DEVNULL)  # fmt: skip
        t0 = time.monotonic()
        asyncio.run(_wait_redis(s, posts, 600, worker.proc))
        took = time.monotonic() - t0
        spy.send_signal(2)
        spy.wait(60)
    finally:
        worker.stop()

own: collections.Counter[str] = collections.Counter()
total: collections.Counter[str] = collections.Counter()
samples = 0
for line in raw.read_text().splitlines():
    stack, _, n = line.rpartition(" ")
    frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
    if not frames:
        continue
    k = int(n)
    samples += k
    own[frames[-1]] += k
    for f in set(frames):
        total[f] += k
print(f"{posts} posts, image_decode={mode}, {took:.1f} s after the first result, {samples} samples, profile {raw}")
for title, counter in (("own", own), ("including callees", total)):
    print(f"\ntop 20 by {title} samples")
    for f, k in counter.most_common(20):
        print(f"{100 * k / samples:5.1f}%  {f}")
