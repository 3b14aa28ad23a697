"""Training the compact CPU student (spec ``default``) on ../shared/data.

Two trained parts on frozen pretrained encoders that install from PyPI:

* classifier: MiniLM (all-MiniLM-L6-v2) with LoRA + EfficientNet-Lite0 image features ->
  3 labels; trained on Twitter-2015 train (aspect), Twitter-2017 train (aspect, text only)
  and MVSA-Single train (post); chosen on the mean dev accuracy of Twitter-2015 and
  MVSA-Single; optional distillation from a frozen assistant classifier with
  ``training.losses``-style (1 - lambda) CE + lambda KL at temperature T;
* explainer: SmolLM2-135M-Instruct with LoRA, trained on the teacher chains of
  Twitter-2015 dev (those whose prediction matches the gold label), conditioned on the
  label, to write a concise five-field chain.

``mulcot distill compact RECIPE`` (or ``python -m training.compact RECIPE``) runs it.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import LABELS
from model.compact.text import ClassifierConfig, CompactClassifier, encode_pairs, load_classifier, minilm_path
from model.compact.vision import ImageEncoder

from .data import Example, data_dir, load_examples
from .losses import kl_on_label_space

LABEL_INDEX = {l: i for i, l in enumerate(LABELS)}


# --------------------------------------------------------------------------- features
def image_features(examples: list[Example], cache: Path, size: int, batch: int = 32) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Pooled EfficientNet-Lite0 features and top-3 ImageNet names per image path, cached."""
    cache.mkdir(parents=True, exist_ok=True)
    f = cache / f"images_{size}.npz"
    names_f = cache / f"images_{size}_names.json"
    store: dict[str, tuple[np.ndarray, list[str]]] = {}
    if f.exists():
        z = np.load(f)
        names = json.loads(names_f.read_text())
        store = {k: (z[k], names[k]) for k in z.files}
    todo = sorted({str(e.image_path) for e in examples if e.image_path and str(e.image_path) not in store})
    if todo:
        from PIL import Image, ImageOps
        from tqdm import tqdm

        enc = ImageEncoder(size=size)
        for i in tqdm(range(0, len(todo), batch), desc=f"image features @{size}"):
            paths = todo[i : i + batch]
            ims = []
            for p in paths:
                with Image.open(p) as im:
                    ims.append(ImageOps.exif_transpose(im).convert("RGB"))
            feats, logits = enc.encode(ims)
            for p, ft, nm in zip(paths, feats.numpy().astype(np.float16), enc.top_names(logits, 3)):
                store[p] = (ft, nm)
        np.savez(f, **{k: v[0] for k, v in store.items()})
        names_f.write_text(json.dumps({k: v[1] for k, v in store.items()}))
    return store


# --------------------------------------------------------------------------- recipe
@dataclass
class CompactRecipe:
    """Recipe of the compact student. Every field can be set in the TOML/YAML recipe file."""

    out: str = "runs/compact"
    """Output directory (trained parts, model card, logs)."""
    seed: int = 13
    image_size: int = 160
    """EfficientNet-Lite0 input side in pixels (160 keeps labels-only above 50 posts/s on 2 cores)."""
    train_sets: list[str] = field(default_factory=lambda: ["t15/train.jsonl", "t17_text_only/train.jsonl", "mvsa_single/train.jsonl"])
    dev_sets: list[str] = field(default_factory=lambda: ["t15/dev.jsonl", "mvsa_single/dev.jsonl"])
    chain_sets: list[str] = field(default_factory=lambda: ["t15/dev.jsonl"])
    """Files whose teacher chains train the explainer."""
    routes: dict[str, str] = field(default_factory=lambda: {"aspect": "t15/dev.jsonl", "post": "mvsa_single/dev.jsonl"})
    """One classifier per route, each the epoch that is best on its own dev set (one of
    ``dev_sets``): posts with an aspect go to ``aspect``, the others to ``post``. Empty: one
    classifier, chosen on the mean dev accuracy."""
    calibrate: bool = True
    """After training, tune each route's per-label logit offsets on its dev set (objective:
    accuracy + macro F1 for ``aspect``, accuracy + weighted F1 for ``post``)."""
    specialise: dict[str, list[str]] = field(default_factory=dict)
    """Route -> train sets: after the joint training, continue that route's classifier on its
    own domain only (e.g. ``post = ["mvsa_single/train.jsonl"]``) for ``specialise_epochs``,
    keeping an epoch only when its calibrated dev score beats the classifier it started from."""
    specialise_epochs: int = 3
    specialise_lr: float = 3e-4
    average_last: int = 0
    """Also try, per route, the uniform average of the trained weights (LoRA factors and heads)
    of the last N epochs of the joint training, and of the specialise stage: a one-run "model
    soup", at no cost when serving. The average replaces the route's classifier only when its
    dev (accuracy, F1), offsets tuned, beats the classifier chosen without it. 0 or 1: off."""
    classifier: dict = field(default_factory=dict)
    """Overrides of ``ClassifierConfig``."""
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    lam: float = 0.0
    """Distillation weight lambda (0 = plain CE; the method's 0.3 needs ``assistant``)."""
    temperature: float = 2.0
    assistant: str | None = None
    """Directory of a trained classifier used as the frozen assistant for distillation."""
    threads: int = 2
    limit: int | None = None
    """Read at most this many posts per file (smoke tests and dry runs)."""
    explainer: dict = field(default_factory=dict)
    """Overrides of ``ExplainerConfig`` (LoRA shape, words per field, max new tokens)."""
    explainer_from: str | None = None
    """Reuse the chain writer of this earlier run (its ``explainer.*`` files) instead of training one."""
    explainer_epochs: int = 2
    explainer_batch_size: int = 8
    explainer_lr: float = 3e-4


def _load(paths: list[str], limit: int | None = None) -> list[Example]:
    """Examples of the given files (relative to the data directory)."""
    out: list[Example] = []
    for p in paths:
        out.extend(load_examples(data_dir() / p, limit=limit))
    return out


# --------------------------------------------------------------------------- classifier
class _Batches:
    def __init__(self, examples, feats, tokenizer, cfg: ClassifierConfig):
        self.examples, self.feats, self.tok, self.cfg = examples, feats, tokenizer, cfg

    def encode(self, exs: list[Example], cfg: ClassifierConfig | None = None):
        """Tokenised pairs, image features and image flags of ``exs``, in the input format of
        ``cfg`` (default: the model being trained)."""
        cfg = cfg or self.cfg
        posts, imgs, has = [], [], []
        for e in exs:
            f = self.feats.get(str(e.image_path)) if e.image_path else None
            posts.append((e.text, e.aspect, f[1][: cfg.image_words] if f else None))
            imgs.append(f[0].astype(np.float32) if f else np.zeros(cfg.image_dim, np.float32))
            has.append(1.0 if f else 0.0)
        enc = encode_pairs(self.tok, posts, cfg)
        return enc, torch.from_numpy(np.stack(imgs)), torch.tensor(has)


def _logits(model, enc, imgs, has):
    return model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), imgs, has, enc.get("target_mask"))


def evaluate_classifier(model, batches: _Batches, exs: list[Example], bs: int = 64) -> tuple[float, float, np.ndarray]:
    """Accuracy, macro F1 and the logits of ``model`` on ``exs``."""
    from sklearn.metrics import f1_score

    model.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(exs), bs):
            enc, imgs, has = batches.encode(exs[i : i + bs])
            logits.append(_logits(model, enc, imgs, has).float())
    p = torch.cat(logits).numpy()
    y = np.array([LABEL_INDEX[e.label] for e in exs])
    pred = p.argmax(-1)
    return float((pred == y).mean()), float(f1_score(y, pred, average="macro")), p


ROUTE_F1 = {"aspect": "macro", "post": "weighted"}


def bias_metrics(logits: np.ndarray, y: np.ndarray, bias, average: str = "macro") -> tuple[float, float]:
    """Accuracy and ``average`` F1 of ``logits + bias``."""
    from sklearn.metrics import f1_score

    pred = (logits + np.asarray(bias)).argmax(-1)
    return float((pred == y).mean()), float(f1_score(y, pred, average=average))


def calibrate_bias(logits: np.ndarray, y: np.ndarray, average: str = "macro",
                   grid: np.ndarray = np.round(np.arange(-1.5, 1.51, 0.1), 2)) -> tuple[tuple[float, float, float], float]:
    """Logit offsets (positive, 0, negative) maximising accuracy + F1 on (dev) logits.

    Neutral, the majority class of the aspect-level sets, stays the reference at 0; ties keep
    the smallest offsets, so a calibration that does not help leaves the classifier as it was.
    """

    def score(b) -> float:
        return sum(bias_metrics(logits, y, b, average))

    best, best_s = (0.0, 0.0, 0.0), score((0.0, 0.0, 0.0))
    for bp in grid:
        for bn in grid:
            b = (float(bp), 0.0, float(bn))
            sc = score(b)
            if sc > best_s + 1e-9 or (abs(sc - best_s) <= 1e-9 and abs(bp) + abs(bn) < sum(map(abs, best))):
                best, best_s = b, sc
    return best, best_s


def calibrated(model: CompactClassifier, batches: _Batches, dev: list[Example], average: str) -> dict:
    """Dev metrics of ``model`` before and after tuning its logit offsets on ``dev`` (the
    offsets it has are set aside for this)."""
    saved = model.label_bias.clone()
    model.label_bias.zero_()
    try:
        _, _, logits = evaluate_classifier(model, batches, dev)
    finally:
        model.label_bias.copy_(saved)
    y = np.array([LABEL_INDEX[e.label] for e in dev])
    bias, _ = calibrate_bias(logits, y, average)
    f1 = f"{average}_f1"
    before, after = bias_metrics(logits, y, (0.0, 0.0, 0.0), average), bias_metrics(logits, y, bias, average)
    return {"label_bias": list(bias), "dev_before": {"accuracy": before[0], f1: before[1]},
            "dev_after": {"accuracy": after[0], f1: after[1]}}


def _assistant(r: CompactRecipe) -> CompactClassifier | None:
    """The frozen assistant classifier to distil from, or None when ``lam`` is 0."""
    if r.lam <= 0:
        return None
    if not r.assistant:
        raise ValueError("lam > 0 needs an assistant classifier (recipe field 'assistant')")
    return load_classifier(Path(r.assistant)).eval()


def _tuned(cal: dict) -> tuple[float, float]:
    """(accuracy, F1) after the offsets were tuned, from a :func:`calibrated` record."""
    return tuple(cal["dev_after"].values())


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of trained states with the same keys (``CompactClassifier.trained_state``)."""
    if not states:
        raise ValueError("nothing to average")
    return {k: torch.stack([st[k].float() for st in states]).mean(0) for k in states[0]}


def _keep_last(states: list[dict], model: CompactClassifier, n: int) -> list[dict]:
    """``states`` with a copy of ``model``'s trained state appended, the last ``n`` kept (none
    kept when ``n`` < 2: nothing to average)."""
    if n < 2:
        return []
    return [*states[-(n - 1):], {k: v.float().clone() for k, v in model.trained_state().items()}]


def _try_average(model: CompactClassifier, states: list[dict], batches: _Batches, dev: list[Example],
                 average: str, beat: tuple[float, float], out: Path, name: str, log, stage: str) -> dict | None:
    """Load the average of ``states`` (from :func:`_keep_last`) into ``model`` and tune its
    offsets on ``dev``; saved as ``name`` only when its tuned (accuracy, F1) beats ``beat``.
    None when fewer than two states are there to average."""
    if len(states) < 2:
        return None
    model.load_trained_state(average_states(states))
    cal = calibrated(model, batches, dev, average)
    kept = _tuned(cal) > beat
    if kept:
        model.cfg.label_bias = tuple(cal["label_bias"])
        save_classifier(model, model.cfg, out, name=name)
    rec = {"epochs_averaged": len(states), "kept": kept, **cal}
    log({"stage": stage, "average": rec})
    return rec


def _train_epoch(model, teacher, batches: _Batches, train: list[Example], opt, sched, r: CompactRecipe, log,
                 epoch: int, stage: str = "classifier") -> float:
    """One shuffled pass over ``train``: CE (label smoothing 0.05), plus the method's
    (1 - lambda) CE + lambda T^2 KL(assistant || student) when ``teacher`` is given.
    Returns the epoch's start time."""
    model.train()
    order = list(range(len(train)))
    random.shuffle(order)
    t0, run_loss = time.time(), 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    for n, bi in enumerate(range(0, len(order), r.batch_size), start=1):
        exs = [train[i] for i in order[bi : bi + r.batch_size]]
        enc, imgs, has = batches.encode(exs)
        y = torch.tensor([LABEL_INDEX[e.label] for e in exs])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = _logits(model, enc, imgs, has)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, label_smoothing=0.05)
        if teacher is not None:
            with torch.inference_mode():
                # the assistant reads the posts in its own input format (e.g. without target marks)
                t_enc = enc if teacher.cfg.input_format() == batches.cfg.input_format() else batches.encode(exs, teacher.cfg)[0]
                t_logits = _logits(teacher, t_enc, imgs, has).float()
            # lam=1 gives the pure T^2-scaled KL(assistant || student) of the shared loss;
            # the CE side keeps this trainer's label smoothing
            kl = kl_on_label_space(logits, t_logits, y, lam=1.0, T=r.temperature)
            loss = (1 - r.lam) * loss + r.lam * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run_loss += loss.item()
        if n % 20 == 0:
            log({"stage": stage, "epoch": epoch, "step": n, "loss": run_loss / 20,
                 "ex_per_s": (bi + len(exs)) / (time.time() - t0)})
            run_loss = 0.0
    return t0


def train_classifier(r: CompactRecipe, out: Path, log) -> dict:
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(r.seed)
    random.seed(r.seed)
    cfg = ClassifierConfig(**r.classifier)
    train = _load(r.train_sets, r.limit)
    devs = {p: _load([p], r.limit) for p in r.dev_sets}
    feats = image_features(train + [e for d in devs.values() for e in d], out / "cache", r.image_size)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    batches = _Batches(train, feats, tok, cfg)
    model = CompactClassifier(cfg)
    teacher = _assistant(r)
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    head_params = list(model.image_proj.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(
        [{"params": lora_params, "lr": r.lr}, {"params": head_params, "lr": r.head_lr}], weight_decay=r.weight_decay
    )
    steps = r.epochs * math.ceil(len(train) / r.batch_size)
    sched = get_linear_schedule_with_warmup(opt, int(r.warmup * steps), steps)
    missing = set(r.routes.values()) - set(r.dev_sets)
    if missing:
        raise ValueError(f"routes name dev sets that are not in dev_sets: {sorted(missing)}")
    best, history, route_best, states = None, [], {}, []
    for epoch in range(r.epochs):
        t0 = _train_epoch(model, teacher, batches, train, opt, sched, r, log, epoch)
        states = _keep_last(states, model, r.average_last)
        scores = {}
        for p, exs in devs.items():
            acc, f1, _ = evaluate_classifier(model, batches, exs)
            scores[p] = {"accuracy": acc, "macro_f1": f1}
        mean_acc = float(np.mean([s["accuracy"] for s in scores.values()]))
        mean_f1 = float(np.mean([s["macro_f1"] for s in scores.values()]))
        rec = {"stage": "classifier", "epoch": epoch, "dev": scores, "dev_mean_accuracy": mean_acc, "dev_mean_f1": mean_f1,
               "epoch_s": time.time() - t0}
        log(rec)
        history.append(rec)
        if best is None or (mean_acc, mean_f1) > (best["dev_mean_accuracy"], best["dev_mean_f1"]):
            best = rec
            save_classifier(model, cfg, out)
        for route, dev in r.routes.items():
            key = (scores[dev]["accuracy"], scores[dev]["macro_f1"])
            if route not in route_best or key > route_best[route]["key"]:
                route_best[route] = {"key": key, "epoch": epoch, "dev": dev, **scores[dev]}
                save_classifier(model, cfg, out, name=f"classifier_{route}")
    result = {"best": best, "history": history, "train_n": len(train)}
    if r.routes:
        result["routes"] = {k: {kk: vv for kk, vv in v.items() if kk != "key"} for k, v in route_best.items()}
        if r.calibrate:
            for route, info in result["routes"].items():
                info["calibration"] = calibrate_classifier(out, f"classifier_{route}", devs[info["dev"]], batches,
                                                           ROUTE_F1.get(route, "macro"))
                log({"stage": "calibrate", "route": route, **info["calibration"]})
                avg = _try_average(model, states, batches, devs[info["dev"]], ROUTE_F1.get(route, "macro"),
                                   _tuned(info["calibration"]), out, f"classifier_{route}", log, f"average_{route}")
                if avg is not None:
                    info["average"] = avg
    return result


def calibrate_classifier(out: Path, name: str, dev: list[Example], batches: _Batches, average: str) -> dict:
    """Tune a saved classifier's logit offsets on ``dev`` and store them in its json."""
    model = load_classifier(out, name)
    cal = calibrated(model, batches, dev, average)
    model.cfg.label_bias = tuple(cal["label_bias"])
    (out / f"{name}.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    return cal


def specialise_routes(r: CompactRecipe, out: Path, log) -> dict:
    """Continue each route of ``r.specialise`` on its own train sets (see the recipe field).

    Starts from the run's ``classifier_<route>``; after every epoch the offsets are tuned on
    the route's dev set, and the classifier is replaced only when its tuned (accuracy, F1)
    beats the best so far, starting with the classifier's own.
    """
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    report = {}
    for route, sets in r.specialise.items():
        if route not in r.routes:
            raise ValueError(f"specialise names route {route!r}, which is not in routes {sorted(r.routes)}")
        torch.manual_seed(r.seed)
        random.seed(r.seed)
        name, average = f"classifier_{route}", ROUTE_F1.get(route, "macro")
        train, dev = _load(sets, r.limit), _load([r.routes[route]], r.limit)
        feats = image_features(train + dev, out / "cache", r.image_size)
        model = load_classifier(out, name)
        batches = _Batches(train, feats, AutoTokenizer.from_pretrained(minilm_path()), model.cfg)
        start = calibrated(model, batches, dev, average)
        best = {"epoch": None, **start}
        teacher = _assistant(r)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=r.specialise_lr, weight_decay=r.weight_decay)
        steps = r.specialise_epochs * math.ceil(len(train) / r.batch_size)
        sched = get_linear_schedule_with_warmup(opt, int(r.warmup * steps), steps)
        model.label_bias.zero_()
        states = []
        for epoch in range(r.specialise_epochs):
            t0 = _train_epoch(model, teacher, batches, train, opt, sched, r, log, epoch, stage=f"specialise_{route}")
            states = _keep_last(states, model, r.average_last)
            cal = calibrated(model, batches, dev, average)
            log({"stage": f"specialise_{route}", "epoch": epoch, "epoch_s": time.time() - t0, **cal})
            if _tuned(cal) > _tuned(best):
                best = {"epoch": epoch, **cal}
                model.cfg.label_bias = tuple(cal["label_bias"])
                save_classifier(model, model.cfg, out, name=name)
        avg = _try_average(model, states, batches, dev, average, _tuned(best), out, name, log, f"specialise_{route}")
        if avg is not None and avg["kept"]:
            best = {"epoch": f"average of the last {avg['epochs_averaged']}",
                    **{k: v for k, v in avg.items() if k not in ("epochs_averaged", "kept")}}
        report[route] = {"train_sets": list(sets), "train_n": len(train), "dev": r.routes[route],
                         "start": start, "kept_epoch": best["epoch"], "result": best}
        if avg is not None:
            report[route]["average"] = avg
    return report


def save_classifier(model: CompactClassifier, cfg: ClassifierConfig, out: Path, name: str = "classifier") -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.trained_state().items()}
    save_file(state, out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(cfg.to_dict(), indent=2))


# --------------------------------------------------------------------------- export
STUDENT_FILES = ("classifier.safetensors", "classifier.json", "explainer.safetensors", "explainer.json")
ROUTES = ("aspect", "post")


def export_student(run: Path, dest: Path, *, name: str = "mulcot-compact", version: str | None = None,
                   image_size: int = 160) -> Path:
    """Copy a run's trained parts into a loadable student directory (``compact:<dest>``).

    When the run has a classifier per route (``classifier_aspect``, ``classifier_post``), those
    are exported and named in ``student.json``; otherwise the single ``classifier``.
    """
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    routes = {r: f"classifier_{r}" for r in ROUTES if (run / f"classifier_{r}.safetensors").exists()}
    files = [f for f in STUDENT_FILES if not (routes and f.startswith("classifier."))]
    files += [f"{n}.{ext}" for n in routes.values() for ext in ("safetensors", "json")]
    for f in files:
        shutil.copy2(run / f, dest / f)
    card = json.loads((run / "model_card.json").read_text()) if (run / "model_card.json").exists() else {}
    version = version or time.strftime("%Y.%m.%d")
    meta = {"name": name, "version": version, "image_size": image_size}
    if routes:
        meta["classifiers"] = routes
    (dest / "student.json").write_text(json.dumps(meta, indent=2))
    (dest / "model_card.json").write_text(json.dumps(card, indent=2))
    return dest


# --------------------------------------------------------------------------- driver
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_recipe(path: str | Path | None) -> CompactRecipe:
    if path is None:
        return CompactRecipe()
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        import tomllib

        data = tomllib.loads(text)
    return CompactRecipe(**data)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", help="TOML or YAML recipe (fields of CompactRecipe)")
    ap.add_argument("--stage", choices=["classifier", "specialise", "explainer", "all"], default="all")
    ap.add_argument("--out", help="override the recipe's output directory")
    ap.add_argument("--threads", type=int, help="override the recipe's torch thread count")
    ap.add_argument("--export", metavar="DIR", help="after training, write a loadable student to DIR")
    ap.add_argument("--version", help="version written into the exported student.json (default: today's date)")
    args = ap.parse_args(argv)
    r = load_recipe(args.recipe)
    if args.out:
        r.out = args.out
    if args.threads:
        r.threads = args.threads
    torch.set_num_threads(r.threads)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = (out / "train_log.jsonl").open("a")

    def log(rec: dict) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        print(json.dumps(rec), flush=True)

    card_path = out / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    card.update({"recipe": asdict(r), "git_commit": git_commit()})
    if args.stage in ("classifier", "all"):
        card["classifier"] = train_classifier(r, out, log)
        card_path.write_text(json.dumps(card, indent=2))
    if args.stage in ("specialise", "all") and r.specialise:
        card["specialise"] = specialise_routes(r, out, log)
        card_path.write_text(json.dumps(card, indent=2))
    if args.stage in ("explainer", "all"):
        if r.explainer_from:
            import shutil

            src = Path(r.explainer_from)
            for f in ("explainer.safetensors", "explainer.json"):
                shutil.copy2(src / f, out / f)
            prev = json.loads((src / "model_card.json").read_text()) if (src / "model_card.json").exists() else {}
            card["explainer"] = {"from": str(src), **(prev.get("explainer") or {})}
        else:
            from .compact_explainer import train_explainer

            card["explainer"] = train_explainer(r, out, log)
        card_path.write_text(json.dumps(card, indent=2))
    if args.export:
        export_student(out, Path(args.export), image_size=r.image_size, version=args.version)


if __name__ == "__main__":
    main()
