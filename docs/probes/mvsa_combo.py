"""Every 1-, 2- and 3-member logit ensemble (mean log-probabilities) of the classifiers in an npz
from mvsa_logits.py, offsets tuned on the same split: the best 25 and each classifier alone."""
import itertools, sys, numpy as np
from scipy.special import log_softmax
sys.path.insert(0, ".")  # run from the repository root
from training.compact.calibrate import calibrate_bias, bias_metrics
d = np.load(sys.argv[1]); ds = sys.argv[2]; avg = sys.argv[3]
y = d[f"{ds}:y"]; keys = [k.split(":")[1] for k in d if k.startswith(ds) and not k.endswith(":y")]
res = []
for r in range(1, 4):
    for c in itertools.combinations(keys, r):
        z = np.mean([log_softmax(d[f"{ds}:{k}"], axis=-1) for k in c], 0)
        b, _ = calibrate_bias(z, y, avg)
        a, f = bias_metrics(z, y, b, avg)
        res.append((a, f, c, b))
for a, f, c, b in sorted(res, key=lambda t: -t[0] - t[1])[:25]:
    print(f"{a*100:.2f} {f:.4f} {'+'.join(c)} {b}")
print("singles:")
for a, f, c, b in res:
    if len(c) == 1: print(f"{a*100:.2f} {f:.4f} {c[0]} {b}")
