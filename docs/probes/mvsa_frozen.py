"""A frozen view: MiniLM sentence embedding (no LoRA) + EfficientNet-Lite0 feature, logistic
regression on MVSA-Single train; alone and mixed with the served post classifier on dev."""
import sys, numpy as np, torch
from scipy.special import log_softmax
from pathlib import Path
sys.path.insert(0, ".")  # run from the repository root
from transformers import AutoTokenizer, AutoModel
from model.backends.compact.text import minilm_path
from training.compact.calibrate import calibrate_bias, bias_metrics
from training.compact.features import load_sets, image_features, LABEL_INDEX
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(minilm_path()); enc = AutoModel.from_pretrained(minilm_path()).eval()
D = {}
for split in ["train", "dev"]:
    ex = load_sets([f"mvsa_single/{split}.jsonl"]); f = image_features(ex, Path("runs/compact_v7/cache"), 160)
    T = []
    with torch.inference_mode():
        for i in range(0, len(ex), 64):
            b = tok([e.text for e in ex[i:i+64]], padding=True, truncation=True, max_length=96, return_tensors="pt")
            h = enc(**b).last_hidden_state; m = b["attention_mask"].unsqueeze(-1).float()
            T.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    I = np.stack([f[str(e.image_path)][0] for e in ex]).astype(np.float32)
    D[split] = (np.concatenate([torch.cat(T).numpy(), I / np.linalg.norm(I, axis=1, keepdims=True)], 1),
                np.array([LABEL_INDEX[e.label] for e in ex]))
from sklearn.linear_model import LogisticRegression
d = np.load("runs/exp8/logits_mvsa_single.npz"); z = d["mvsa_single/dev.jsonl:def_post"]
yd = D["dev"][1]
for C in (0.3, 1, 3, 10):
    clf = LogisticRegression(C=C, max_iter=3000).fit(*D["train"])
    lp = clf.predict_log_proba(D["dev"][0])
    b, _ = calibrate_bias(lp, yd, "weighted"); alone = bias_metrics(lp, yd, b, "weighted")
    for w in (0.3, 0.5):
        s = (1 - w) * log_softmax(z, axis=-1) + w * lp; b, _ = calibrate_bias(s, yd, "weighted")
        print(C, [round(v, 4) for v in alone], w, [round(v, 4) for v in bias_metrics(s, yd, b, "weighted")])
