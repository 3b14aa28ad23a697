"""Text in the picture (``model.backends.compact.ocr``, RapidOCR's PP-OCRv4 models from its wheel): the OCR
check set of issue 22 (text drawn with Pillow over real tweet photos, and real photos without text)
and pictures OCR cannot read, which get no quote and no error."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from model.backends.compact.ocr import Reader, normalise
from tests.support.ocr_checkset import cases, char_accuracy, font


@pytest.fixture(scope="module")
def reader():
    return Reader()


def test_reads_printed_text_and_splits_glued_words(reader):
    im = Image.new("RGB", (320, 120), "white")
    ImageDraw.Draw(im).text((12, 40), "worst day ever :(", font=font("DejaVuSans-Bold.ttf", 30), fill="black")
    got = reader.read(im)
    assert got is not None and char_accuracy("worst day ever", got.text) >= 0.9, got
    glued = normalise([[[[0, 0], [9, 0], [9, 5], [0, 5]], "Thepeoplewillbelievewhat", 0.95]])
    assert glued.text == "The people will believe what"
    assert normalise([[[[0, 0], [9, 0], [9, 5], [0, 5]], "家", 0.99]]) is None  # not Latin text
    assert normalise([[[[0, 0], [9, 0], [9, 5], [0, 5]], "blurry", 0.4]]) is None  # not confident


def test_pictures_it_cannot_read_get_no_quote_and_no_error(reader):
    assert reader.read(Image.new("RGB", (1, 1), "white")) is None
    assert reader.read(Image.new("RGB", (320, 240), (90, 140, 200))) is None
    assert reader.read(Image.new("L", (64, 64), 0).convert("RGB")) is None


@pytest.mark.data
def test_ocr_check_set(data_dir, reader):
    """>= 90% of the drawn texts quoted with character accuracy >= 0.9; <= 5% of text-free photos
    get a quote (issue 22's done criterion)."""
    cs = cases(data_dir)
    drawn = [c for c in cs if c.text is not None]
    free = [c for c in cs if c.text is None]
    good = []
    for c in drawn:
        got = reader.read(c.image)
        good.append(got is not None and char_accuracy(c.text, got.text) >= 0.9)
    quoted_free = [c.what for c in free if reader.read(c.image) is not None]
    assert sum(good) >= 0.9 * len(drawn), [c.what for c, g in zip(drawn, good) if not g]
    assert len(quoted_free) <= 0.05 * len(free), quoted_free
