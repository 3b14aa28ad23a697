"""Fine-tune the top of EfficientNet-Lite0 (blocks 11-15 + head) on MVSA-Single train images,
3 classes; lower blocks frozen and cached. Image-only dev accuracy per epoch."""
import sys, time, copy
import numpy as np, torch
from torch import nn
from PIL import Image, ImageOps
sys.path.insert(0, ".")  # run from the repository root
from model.backends.compact.vision import pretrained_net, ImageEncoder
from training.data import load_examples, data_dir
from training.compact.features import LABEL_INDEX
torch.manual_seed(0); torch.set_num_threads(2)
size = 160; CUT = 11
enc = ImageEncoder(size=size)
net = pretrained_net()
def low(x):
    x = net.act(net._bn0(net._conv_stem(x)))
    for b in net._blocks[:CUT]: x = b(x)
    return x
def cache(split):
    exs = load_examples(data_dir() / f"mvsa_single/{split}.jsonl")
    out, outf = [], []
    for i in range(0, len(exs), 64):
        ims = []
        for e in exs[i:i+64]:
            with Image.open(e.image_path) as im: ims.append(ImageOps.exif_transpose(im).convert("RGB"))
        x = enc.preprocess(ims).contiguous()
        with torch.inference_mode():
            out.append(low(x)); outf.append(low(torch.flip(x, dims=[3])))
    y = torch.tensor([LABEL_INDEX[e.label] for e in exs])
    return torch.cat(out), torch.cat(outf), y
t = time.time()
Xtr, Xtrf, ytr = cache("train"); Xdv, Xdvf, ydv = cache("dev")
print("cached", Xtr.shape, f"{time.time()-t:.0f}s", flush=True)
class Top(nn.Module):
    def __init__(s):
        super().__init__()
        s.blocks = copy.deepcopy(net._blocks[CUT:]); s.head = copy.deepcopy(net._conv_head); s.bn = copy.deepcopy(net._bn1)
        s.drop = nn.Dropout(0.3); s.fc = nn.Linear(1280, 3); s.act = nn.ReLU6()
    def feats(s, x):
        for b in s.blocks: x = b(x)
        return s.act(s.bn(s.head(x))).mean((2, 3))
    def forward(s, x): return s.fc(s.drop(s.feats(x)))
lr = float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4
m = Top()
opt = torch.optim.AdamW([{"params": [p for n, p in m.named_parameters() if not n.startswith("fc")], "lr": lr},
                         {"params": m.fc.parameters(), "lr": 3e-3}], weight_decay=0.01)
lossf = nn.CrossEntropyLoss(label_smoothing=0.1)
for ep in range(6):
    m.train(); perm = torch.randperm(len(ytr)); t = time.time()
    for i in range(0, len(ytr), 32):
        idx = perm[i:i+32]; flip = torch.rand(len(idx)) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), Xtrf[idx], Xtr[idx])
        loss = lossf(m(x), ytr[idx]); opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    with torch.inference_mode():
        lg = (m(Xdv).log_softmax(-1) + m(Xdvf).log_softmax(-1)) / 2
    acc = (lg.argmax(-1) == ydv).float().mean().item()
    print(f"ep {ep} dev image-only acc {acc*100:.2f} ({time.time()-t:.0f}s)", flush=True)
    np.save(f"runs/exp8/img_logits_ep{ep}.npy", lg.numpy())
