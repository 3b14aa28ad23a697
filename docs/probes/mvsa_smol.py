"""SmolLM2-135M-Instruct as a frozen text encoder (mean-pooled layers 8/16/24/30), logistic
regression on MVSA-Single train; alone and mixed with the served post classifier on dev."""
import sys, time, numpy as np, torch
from scipy.special import log_softmax
sys.path.insert(0, ".")  # run from the repository root
from model.backends.compact.explainer import load_base
from training.compact.calibrate import calibrate_bias, bias_metrics
from training.compact.features import load_sets, LABEL_INDEX
torch.set_num_threads(2)
model, tok = load_base()
model.eval(); tok.padding_side = "right"
if tok.pad_token is None: tok.pad_token = tok.eos_token
LAYERS = (8, 16, 24, 30)
D = {}
for split in ["train", "dev"]:
    ex = load_sets([f"mvsa_single/{split}.jsonl"]); F = {l: [] for l in LAYERS}; t = time.time()
    with torch.inference_mode():
        for i in range(0, len(ex), 32):
            b = tok([e.text for e in ex[i:i+32]], padding=True, truncation=True, max_length=96, return_tensors="pt")
            hs = model.model(**b, output_hidden_states=True).hidden_states
            m = b["attention_mask"].unsqueeze(-1).float()
            for l in LAYERS: F[l].append(((hs[l] * m).sum(1) / m.sum(1)).numpy())
    print(split, len(ex), f"{len(ex)/(time.time()-t):.1f} posts/s (full 30 layers)", flush=True)
    D[split] = ({l: np.concatenate(v) for l, v in F.items()}, np.array([LABEL_INDEX[e.label] for e in ex]))
np.savez("runs/exp8/smol_feats.npz", **{f"{s}_{l}": D[s][0][l] for s in D for l in LAYERS}, train_y=D["train"][1], dev_y=D["dev"][1])
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
d = np.load("runs/exp8/logits_mvsa_single.npz"); z = d["mvsa_single/dev.jsonl:def_post"]
yd = D["dev"][1]
for l in LAYERS:
    sc = StandardScaler().fit(D["train"][0][l])
    for C in (0.01, 0.1):
        clf = LogisticRegression(C=C, max_iter=3000).fit(sc.transform(D["train"][0][l]), D["train"][1])
        lp = clf.predict_log_proba(sc.transform(D["dev"][0][l])); b, _ = calibrate_bias(lp, yd, "weighted")
        s = 0.5 * log_softmax(z, axis=-1) + 0.5 * lp; b2, _ = calibrate_bias(s, yd, "weighted")
        print(l, C, [round(v, 4) for v in bias_metrics(lp, yd, b, "weighted")], "ens", [round(v, 4) for v in bias_metrics(s, yd, b2, "weighted")], flush=True)
