"""Training the compact classifier: the joint training over all train sets (one checkpoint per
route, chosen on the route's dev set) and the specialise stage (a route continued on its own
domain). Optional distillation from a frozen assistant classifier."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.backends.compact.text import ClassifierConfig, CompactClassifier, load_classifier, minilm_path

from ..data import Example
from ..losses import kl_on_label_space
from .calibrate import ROUTE_F1, calibrate_classifier, calibrated, evaluate_classifier, keep_last, try_average, tuned
from .export import save_classifier
from .features import LABEL_INDEX, Batches, classifier_logits, image_features, load_sets
from .recipe import CompactRecipe


def _assistant(r: CompactRecipe) -> CompactClassifier | None:
    """The frozen assistant classifier to distil from, or None when ``lam`` is 0."""
    if r.lam <= 0:
        return None
    if not r.assistant:
        raise ValueError("lam > 0 needs an assistant classifier (recipe field 'assistant')")
    return load_classifier(Path(r.assistant)).eval()


def train_epoch(model, teacher, batches: Batches, train: list[Example], opt, sched, r: CompactRecipe, log,
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
            logits = classifier_logits(model, enc, imgs, has)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, label_smoothing=0.05)
        if teacher is not None:
            with torch.inference_mode():
                # the assistant reads the posts in its own input format (e.g. without target marks)
                t_enc = enc if teacher.cfg.input_format() == batches.cfg.input_format() else batches.encode(exs, teacher.cfg)[0]
                t_logits = classifier_logits(teacher, t_enc, imgs, has).float()
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


def joint_optimizer(model: CompactClassifier, r: CompactRecipe, n_train: int):
    """AdamW over the LoRA factors (``r.lr``) and the image projection + head (``r.head_lr``), and
    its linear schedule with ``r.warmup`` of ``r.epochs`` epochs of ``n_train`` posts warm-up."""
    from transformers import get_linear_schedule_with_warmup

    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    head_params = list(model.image_proj.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(
        [{"params": lora_params, "lr": r.lr}, {"params": head_params, "lr": r.head_lr}], weight_decay=r.weight_decay
    )
    steps = r.epochs * math.ceil(n_train / r.batch_size)
    return opt, get_linear_schedule_with_warmup(opt, int(r.warmup * steps), steps)


def train_classifier(r: CompactRecipe, out: Path, log) -> dict:
    from transformers import AutoTokenizer

    torch.manual_seed(r.seed)
    random.seed(r.seed)
    cfg = ClassifierConfig(**r.classifier)
    train = load_sets(r.train_sets, r.limit)
    devs = {p: load_sets([p], r.limit) for p in r.dev_sets}
    feats = image_features(train + [e for d in devs.values() for e in d], out / "cache", r.image_size)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    batches = Batches(train, feats, tok, cfg)
    model = CompactClassifier(cfg)
    teacher = _assistant(r)
    opt, sched = joint_optimizer(model, r, len(train))
    missing = set(r.routes.values()) - set(r.dev_sets)
    if missing:
        raise ValueError(f"routes name dev sets that are not in dev_sets: {sorted(missing)}")
    best, history, route_best, states = None, [], {}, []
    for epoch in range(r.epochs):
        t0 = train_epoch(model, teacher, batches, train, opt, sched, r, log, epoch)
        states = keep_last(states, model, r.average_last)
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
                avg = try_average(model, states, batches, devs[info["dev"]], ROUTE_F1.get(route, "macro"),
                                   tuned(info["calibration"]), out, f"classifier_{route}", log, f"average_{route}")
                if avg is not None:
                    info["average"] = avg
    return result


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
        train, dev = load_sets(sets, r.limit), load_sets([r.routes[route]], r.limit)
        feats = image_features(train + dev, out / "cache", r.image_size)
        model = load_classifier(out, name)
        batches = Batches(train, feats, AutoTokenizer.from_pretrained(minilm_path()), model.cfg)
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
            t0 = train_epoch(model, teacher, batches, train, opt, sched, r, log, epoch, stage=f"specialise_{route}")
            states = keep_last(states, model, r.average_last)
            cal = calibrated(model, batches, dev, average)
            log({"stage": f"specialise_{route}", "epoch": epoch, "epoch_s": time.time() - t0, **cal})
            if tuned(cal) > tuned(best):
                best = {"epoch": epoch, **cal}
                model.cfg.label_bias = tuple(cal["label_bias"])
                save_classifier(model, model.cfg, out, name=name)
        avg = try_average(model, states, batches, dev, average, tuned(best), out, name, log, f"specialise_{route}")
        if avg is not None and avg["kept"]:
            best = {"epoch": f"average of the last {avg['epochs_averaged']}",
                    **{k: v for k, v in avg.items() if k not in ("epochs_averaged", "kept")}}
        report[route] = {"train_sets": list(sets), "train_n": len(train), "dev": r.routes[route],
                         "start": start, "kept_epoch": best["epoch"], "result": best}
        if avg is not None:
            report[route]["average"] = avg
    return report
