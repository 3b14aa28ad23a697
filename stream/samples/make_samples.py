"""Regenerate the bundled demo samples: images drawn here with Pillow, texts written for
the project (not research data). ``python -m stream.samples.make_samples``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
IMAGES = HERE / "images"
SIZE = (256, 256)


def _sun(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 180], fill=(120, 190, 250))
    d.rectangle([0, 180, 256, 256], fill=(90, 170, 80))
    d.ellipse([160, 30, 220, 90], fill=(255, 215, 0))
    for k in range(8):
        a = k * math.pi / 4
        d.line([190 + 38 * math.cos(a), 60 + 38 * math.sin(a), 190 + 52 * math.cos(a), 60 + 52 * math.sin(a)], fill=(255, 200, 0), width=4)


def _rain(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(90, 95, 110))
    for x0 in (20, 90, 150):
        d.ellipse([x0, 30, x0 + 90, 90], fill=(60, 62, 70))
    for i in range(40):
        x, y = (i * 37) % 250, 100 + (i * 53) % 150
        d.line([x, y, x - 6, y + 16], fill=(170, 190, 230), width=2)


def _cake(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(255, 240, 245))
    d.rectangle([58, 130, 198, 210], fill=(200, 120, 80))
    d.rectangle([58, 120, 198, 140], fill=(255, 255, 255))
    for x in (90, 128, 166):
        d.rectangle([x - 4, 80, x + 4, 120], fill=(120, 170, 255))
        d.ellipse([x - 6, 64, x + 6, 82], fill=(255, 170, 0))


def _broken_phone(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(230, 230, 230))
    d.rounded_rectangle([78, 28, 178, 228], radius=14, fill=(30, 30, 35))
    d.rectangle([86, 44, 170, 210], fill=(70, 90, 120))
    for seg in ([(100, 60), (130, 110), (115, 150), (150, 200)], [(130, 110), (165, 95)], [(115, 150), (92, 170)]):
        d.line(seg, fill=(240, 240, 240), width=2)


def _coffee(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(245, 225, 200))
    d.ellipse([60, 170, 200, 210], fill=(255, 255, 255))
    d.rectangle([80, 100, 176, 190], fill=(250, 250, 250))
    d.ellipse([80, 90, 176, 112], fill=(110, 70, 40))
    d.arc([166, 115, 206, 165], 270, 90, fill=(250, 250, 250), width=8)
    for x in (105, 128, 151):
        d.arc([x - 8, 50, x + 8, 85], 90, 270, fill=(180, 180, 180), width=3)


def _traffic(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(150, 150, 155))
    d.rectangle([0, 100, 256, 200], fill=(70, 70, 75))
    colours = [(200, 40, 40), (40, 90, 200), (230, 200, 40), (240, 240, 240), (40, 160, 80)]
    for i in range(10):
        x = (i % 5) * 52 + 4
        y = 110 if i < 5 else 158
        d.rounded_rectangle([x, y, x + 44, y + 30], radius=6, fill=colours[i % 5])


def _trophy(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(30, 40, 90))
    d.polygon([(78, 50), (178, 50), (160, 130), (96, 130)], fill=(240, 190, 40))
    d.rectangle([118, 130, 138, 180], fill=(240, 190, 40))
    d.rectangle([88, 180, 168, 200], fill=(150, 100, 30))
    for i in range(25):
        d.ellipse([(i * 41) % 250, (i * 29) % 240, (i * 41) % 250 + 5, (i * 29) % 240 + 5], fill=(255, 255, 255))


def _empty_shelf(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(235, 235, 225))
    for y in (60, 130, 200):
        d.rectangle([20, y, 236, y + 10], fill=(140, 100, 60))
    d.rectangle([30, 40, 50, 60], fill=(200, 60, 60))


def _building(d: ImageDraw.ImageDraw) -> None:
    d.rectangle([0, 0, 256, 256], fill=(200, 220, 235))
    d.rectangle([70, 40, 186, 240], fill=(170, 170, 180))
    for row in range(7):
        for col in range(3):
            d.rectangle([84 + col * 34, 52 + row * 26, 104 + col * 34, 68 + row * 26], fill=(90, 120, 160))


DRAWINGS = {
    "sunny_park.png": _sun, "rain_cloud.png": _rain, "birthday_cake.png": _cake,
    "cracked_phone.png": _broken_phone, "coffee_cup.png": _coffee, "traffic_jam.png": _traffic,
    "trophy.png": _trophy, "empty_shelf.png": _empty_shelf, "office_building.png": _building,
}  # fmt: skip

POSTS = [
    {"id": "demo-01", "text": "Finally a free afternoon in the park, the sun is out and everyone is smiling!", "image": "images/sunny_park.png"},
    {"id": "demo-02", "text": "Third day of rain. My weekend plans are ruined again.", "image": "images/rain_cloud.png"},
    {"id": "demo-03", "text": "Grandma turned 90 today and baked her own cake, what a legend", "image": "images/birthday_cake.png"},
    {"id": "demo-04", "text": "Dropped my new phone on day two. Great. Just great.", "image": "images/cracked_phone.png"},
    {"id": "demo-05", "text": "The new cafe on Elm Street makes the best flat white in town.", "aspect": "cafe on Elm Street", "image": "images/coffee_cup.png"},
    {"id": "demo-06", "text": "Stuck behind a truck on the ring road for forty minutes, thanks city council.", "aspect": "city council", "image": "images/traffic_jam.png"},
    {"id": "demo-07", "text": "Our under-12 team won the regional cup! Coach Rivera deserves all the credit.", "aspect": "Coach Rivera", "image": "images/trophy.png"},
    {"id": "demo-08", "text": "Supermarket out of bread and milk again on a Saturday morning.", "aspect": "Supermarket", "image": "images/empty_shelf.png"},
    {"id": "demo-09", "text": "The city library opens at 9 am on weekdays, according to its website.", "aspect": "city library", "image": "images/office_building.png"},
    {"id": "demo-10", "text": "Oh wonderful, another software update that moved every button I use.", "image": "images/cracked_phone.png"},
    {"id": "demo-11", "text": "Just watched the sunrise from the hill. No words needed.", "image": "images/sunny_park.png"},
    {"id": "demo-12", "text": "Meeting moved to Thursday at 3 pm in room 204.", "image": "images/office_building.png"},
    {"id": "demo-13", "text": "Honestly the new bus timetable is a big improvement for commuters.", "aspect": "bus timetable"},
    {"id": "demo-14", "text": "Customer support kept me on hold for two hours and then hung up.", "aspect": "Customer support"},
    {"id": "demo-15", "text": "The museum is located next to the river on Park Avenue.", "aspect": "museum"},
    {"id": "demo-16", "text": "Can't stop listening to this album, every track is a gem."},
]  # fmt: skip

# Records the worker must set aside (dead-letter path): broken JSON, a post without an id,
# an inline "image" that is not an image.
INVALID = [
    '{"id": "demo-bad-json", "text": "this line is cut off',
    json.dumps({"text": "a post without an id is rejected by the schema"}),
    json.dumps({"id": "demo-bad-image", "text": "the image bytes are not a picture", "image_b64": "bm90IGFuIGltYWdl"}),
]


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, draw in DRAWINGS.items():
        img = Image.new("RGB", SIZE, "white")
        draw(ImageDraw.Draw(img))
        img.save(IMAGES / name, optimize=True)
    lines = [json.dumps(p) for p in POSTS[:6]] + [INVALID[0]] + [json.dumps(p) for p in POSTS[6:12]]
    lines += [INVALID[1]] + [json.dumps(p) for p in POSTS[12:]] + [INVALID[2]]
    (HERE / "posts.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(DRAWINGS)} images and {len(lines)} posts to {HERE}")


if __name__ == "__main__":
    main()
