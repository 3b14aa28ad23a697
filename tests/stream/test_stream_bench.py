"""`mulcot bench stream` runs end to end and reports its keys (a smoke test; no timing asserted)."""

from __future__ import annotations

import math

from stream.bench import make_posts, run_bench


def test_bench_posts_have_20kb_images() -> None:
    import base64
    import io
    import json

    from PIL import Image

    posts = make_posts(8, 20)
    for _, value in posts:
        img = base64.b64decode(json.loads(value)["image_b64"])
        assert 15_000 < len(img) < 26_000
        assert Image.open(io.BytesIO(img)).size == (320, 240)
    assert "image_b64" not in json.loads(make_posts(1, 0)[0][1])


# default run (10-20 s on a quiet 2-core machine): embedded services, two loops, a worker start-up and a latency phase
def test_bench_stream_runs() -> None:
    r = run_bench(posts=300, image_kb=20, max_batch=64, quiet=True, latency_seconds=2.0)
    for key in ("posts_per_s", "raw_posts_per_s", "ratio", "p50_ms", "p99_ms", "full_decode_posts_per_s", "full_decode_ratio"):
        assert key in r and isinstance(r[key], float) and not math.isnan(r[key]) and r[key] > 0, (key, r.get(key))
    assert r["p50_ms"] <= r["p99_ms"]
    assert r["latency_posts"] >= 50
