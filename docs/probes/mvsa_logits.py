"""Raw (offset-free) logits of saved classifiers on the dev files named on the command line -> npz."""
import sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, ".")  # run from the repository root
from transformers import AutoTokenizer
from model.backends.compact.text import load_classifier, minilm_path
from training.compact.calibrate import evaluate_classifier
from training.compact.features import Batches, load_sets, image_features, LABEL_INDEX
torch.set_num_threads(2)
C = {
 "def_post": ("model/weights/default", "classifier_post"),
 "v7_post": ("runs/compact_v7", "classifier_post"),
 "v7_aspect": ("runs/compact_v7", "classifier_aspect"),
 "v7_joint": ("runs/compact_v7", "classifier"),
 "v1": ("runs/compact_v1", "classifier"),
 "v4_aspect": ("runs/exp7/weights_v4_backup", "classifier_aspect"),
 "v3_post": ("runs/weights_v3", "classifier_post"),
 "v3_aspect": ("runs/weights_v3", "classifier_aspect"),
}
tok = AutoTokenizer.from_pretrained(minilm_path())
out = {}
for ds in sys.argv[1:]:
    dev = load_sets([ds])
    feats = image_features(dev, Path("runs/compact_v7/cache"), 160)
    out[f"{ds}:y"] = np.array([LABEL_INDEX[e.label] for e in dev])
    for k, (p, n) in C.items():
        m = load_classifier(p, n); m.label_bias.zero_()
        b = Batches(dev, feats, tok, m.cfg)
        acc, f1, lg = evaluate_classifier(m, b, dev)
        print(ds, k, round(acc*100, 2), round(f1, 4), flush=True)
        out[f"{ds}:{k}"] = lg
np.savez("runs/exp8/logits_" + "_".join(s.split("/")[0] for s in sys.argv[1:]) + ".npz", **out)
