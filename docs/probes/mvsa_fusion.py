"""Late fusion of the served post classifier's log-probabilities with the fine-tuned image
top's (mvsa_imgft.py), weights 0.25 / 0.5 / 1, offsets tuned on MVSA-Single dev; and the
accuracy-only offsets of single classifiers (an upper bound of what offsets can do on dev)."""
import sys
import numpy as np
from scipy.special import log_softmax
sys.path.insert(0, ".")  # run from the repository root
from training.compact.calibrate import bias_metrics, calibrate_bias

d = np.load("runs/exp8/logits_mvsa_single.npz")
y = d["mvsa_single/dev.jsonl:y"]
z = d["mvsa_single/dev.jsonl:def_post"]
z = log_softmax(z, axis=-1)
for ep in range(6):
    im = np.load(f"runs/exp8/img_logits_ep{ep}.npy")
    for a in (0.25, 0.5, 1.0):
        s = z + a * im
        b, _ = calibrate_bias(s, y, "weighted")
        print("fusion", ep, a, [round(v, 4) for v in bias_metrics(s, y, b, "weighted")], b)
g = np.round(np.arange(-2, 2.01, 0.1), 2)
for k in ["def_post", "v3_post", "v7_joint", "v4_aspect"]:
    lg = d[f"mvsa_single/dev.jsonl:{k}"]
    best = max(((bias_metrics(lg, y, (a, 0, b), "weighted"), (a, b)) for a in g for b in g), key=lambda t: t[0][0])
    print("accuracy-only offsets", k, best)
