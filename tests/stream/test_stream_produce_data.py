"""`mulcot produce` reads the research JSONL files (skipped when ../shared/data is absent)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from stream.producer import read_posts
from stream.protocol import Post


@pytest.mark.data
@pytest.mark.parametrize("split", ["t15/dev.jsonl", "mvsa_single/dev.jsonl", "t17_text_only/dev.jsonl"])
def test_research_rows_become_posts(data_dir, split: str) -> None:  # type: ignore[no-untyped-def]
    rows = list(read_posts(data_dir / split, limit=20))
    assert len(rows) == 20
    for key, value in rows:
        post = Post.model_validate_json(value)
        assert key == post.id.encode()
        assert post.metadata["gold_label"] in ("positive", "neutral", "negative")
        if split.startswith("t17"):
            assert post.image_b64 is None and post.aspect
        else:
            img = Image.open(io.BytesIO(base64.b64decode(post.image_b64)))
            assert max(img.size) <= 320
