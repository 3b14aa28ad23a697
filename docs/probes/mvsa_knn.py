"""kNN memory over the post classifier's penultimate features (MVSA-Single train) - probe."""
import sys
from pathlib import Path
import numpy as np, torch
from scipy.special import log_softmax
sys.path.insert(0, ".")  # run from the repository root
from transformers import AutoTokenizer
from model.backends.compact.text import load_classifier, minilm_path
from training.compact.features import Batches, load_sets, image_features, LABEL_INDEX, classifier_logits
torch.set_num_threads(2)
m = load_classifier("model/weights/default", "classifier_post"); m.label_bias.zero_()
feat = {}
m.head[3].register_forward_hook(lambda mod, i, o: feat.__setitem__("h", o))  # the head's hidden layer (after GELU)
tok = AutoTokenizer.from_pretrained(minilm_path())
out = {}
for split in ["train", "dev"]:
    ex = load_sets([f"mvsa_single/{split}.jsonl"])
    b = Batches(ex, image_features(ex, Path("runs/compact_v7/cache"), 160), tok, m.cfg)
    H, L = [], []
    with torch.inference_mode():
        for i in range(0, len(ex), 64):
            enc, imgs, has = b.encode(ex[i:i+64]); L.append(classifier_logits(m, enc, imgs, has)); H.append(feat["h"])
    out[split + "_h"] = torch.cat(H).numpy(); out[split + "_l"] = torch.cat(L).numpy()
    out[split + "_y"] = np.array([LABEL_INDEX[e.label] for e in ex])
np.savez("runs/exp8/knn_feats.npz", **out)

from training.compact.calibrate import bias_metrics, calibrate_bias
ht, hd, yt, yd = out["train_h"], out["dev_h"], out["train_y"], out["dev_y"]
print("train accuracy of the classifier (how well it fits its own training posts):", (out["train_l"].argmax(-1) == yt).mean())
unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
S = unit(hd) @ unit(ht).T
base = log_softmax(out["dev_l"], axis=-1)
b, _ = calibrate_bias(base, yd, "weighted")
print("served alone", bias_metrics(base, yd, b, "weighted"))
for k in (5, 20, 50):
    idx = np.argsort(-S, 1)[:, :k]
    p = np.stack([np.bincount(yt[r], minlength=3) for r in idx]) / k
    for lam in (0.2, 0.4):
        z = np.log((1 - lam) * np.exp(base) + lam * p + 1e-9)
        b, _ = calibrate_bias(z, yd, "weighted")
        print("kNN", k, lam, [round(v, 4) for v in bias_metrics(z, yd, b, "weighted")])
