"""Does fine-tuning the face embedder's top help? SFace's last N blocks trained on the bundled photos, measured
against the frozen embedder on the same splits (issue 18's question for face backbones).

    python benchmarks/finetune_faces.py [--seeds 3] [--epochs 20]

SFace is a torch module here (the shipped ONNX graph converted by onnx2torch, a plain chain of 14 depthwise-separable
blocks and an embedding block: BN, flatten, 6.4 M-weight linear, BN). For N = 1 (the embedding block) and N = 2 (+
the last convolutional block), per seed, on the same stratified 75/25 split as the accuracy benchmark:

1. every face of every photo is detected, aligned and embedded by the product's pipeline (cached face rows);
2. the frozen trunk's activation map entering the top N blocks is computed once per face and per mirror image;
3. the top blocks train on the training photos' faces (the face the default model's multiple-instance choice picked,
   one per photo): AdamW, cosine schedule with warm-up, label smoothing 0.1, a normalised-softmax classifier over the
   classes (initialised at the class means), random mirror images, early stopping on 15 % of the training photos;
4. every face is embedded again by the tuned top, and the default face head (logreg in a face bag: MIL, prototypes,
   the calibrated open set) is fitted and evaluated exactly as for the frozen embedder.

Prints, mean ± 95 % CI over seeds: accuracy as answered, the most probable class, per kind, known people answered
unknown, and strangers (each class left out of training and fine-tuning in turn: its photos answered unknown).
Photos without a detected face are left out of every row alike.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

import transferlab  # noqa: E402
from transferlab.backbones import create_backbone, get_backbone_cfg, split_blocks  # noqa: E402
from transferlab.backbones.face_align import similarity_transforms, warp_faces_remap  # noqa: E402
from transferlab.backbones.face_graphs import split_chain, torch_module  # noqa: E402
from transferlab.backbones.faces import FACE_DECODE_DRAFT, face_areas, face_landmarks  # noqa: E402
from transferlab.decode import decode_pixels  # noqa: E402
from transferlab.evaluate import fmt_ci  # noqa: E402
from transferlab.features import featurize_faces, open_cache  # noqa: E402
from transferlab.kinds import kind_of  # noqa: E402
from transferlab.options import validate_options  # noqa: E402
from transferlab.split import split_table  # noqa: E402

BLOCKS = (1, 2)  # top blocks trained: the embedding block, and it with the last depthwise-separable block


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def top_of(gm: torch.fx.GraphModule, n: int) -> tuple[str, torch.nn.Module]:
    """The product's cut (the registry's blocks, ``split_chain``) of a copy of SFace: the submodule whose output
    enters the top ``n`` blocks, and the top, whose parameters alone train."""
    gm = copy.deepcopy(gm)
    _, prefixes = split_blocks(get_backbone_cfg("sface"), gm, n)
    end, top = split_chain(gm, prefixes[0].rstrip("."))
    for name, p in gm.named_parameters():
        p.requires_grad_(name.startswith(tuple(prefixes)))
    return end, top


def faces_of(table, bb) -> tuple[list[np.ndarray], list[torch.Tensor], list[int]]:
    """Per photo: face rows, aligned crops (float, 0–255 RGB) and the largest face's index."""
    res = featurize_faces(table["path"].tolist(), bb, content_hashes=table["content_hash"].tolist(),
                          cache=open_cache(bb, "faces", None, True))  # fmt: skip
    rows, crops, largest = [], [], []
    for path, bag in zip(table["path"], res.bags, strict=True):
        bag = bag if bag is not None else np.zeros((0, bb.row_width("faces")), np.float32)
        rows.append(bag)
        largest.append(int(np.argmax(face_areas(bag))) if len(bag) else 0)
        if len(bag):
            img = decode_pixels(path, FACE_DECODE_DRAFT)
            crops.append(warp_faces_remap(img, similarity_transforms(face_landmarks(bag))))
        else:
            crops.append(torch.zeros((0, 3, 112, 112)))
    return rows, crops, largest


def trunk_maps(gm: torch.fx.GraphModule, crops: list[torch.Tensor], cut: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation at ``cut`` for every face and its mirror image (one flat list over photos)."""
    seen: list[torch.Tensor] = []
    hook = gm.get_submodule(cut).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    flat = torch.cat(crops)
    out = []
    with torch.no_grad():
        for x in (flat, flat.flip(-1)):
            seen.clear()
            for i in range(0, len(x), 128):
                gm(x[i : i + 128].contiguous(memory_format=torch.channels_last))
            out.append(torch.cat(seen))
    hook.remove()
    return out[0], out[1]


def finetune(
    top: torch.nn.Module,
    maps: tuple[torch.Tensor, torch.Tensor],
    y: np.ndarray,
    epochs: int,
    seed: int,
    lr: float = 1e-4,
) -> torch.nn.Module:
    """Train ``top`` (a copy) with a normalised-softmax classifier on faces ``maps`` labelled ``y``."""
    gen = torch.Generator().manual_seed(seed)
    top = copy.deepcopy(top)
    classes, yi = np.unique(y, return_inverse=True)
    yt = torch.as_tensor(yi)
    n = len(yt)
    perm = torch.randperm(n, generator=gen)
    n_val = max(len(classes), int(0.15 * n))
    val, tr = perm[:n_val], perm[n_val:]
    with torch.no_grad():
        top.eval()
        e = _unit(top(maps[0][tr]))
        w0 = torch.stack([_unit(e[yt[tr] == k].mean(0, keepdim=True))[0] for k in range(len(classes))])
    weight = torch.nn.Parameter(w0.clone())
    params = [p for p in top.parameters() if p.requires_grad] + [weight]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(tr) / 64)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    best, best_state, bad = float("inf"), copy.deepcopy(top.state_dict()), 0
    for _ in range(epochs):
        top.eval()  # batch norm keeps its running statistics (600 faces are too few to re-estimate them)
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            flip = torch.rand(len(b), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], maps[1][b], maps[0][b])
            logits = 16.0 * _unit(top(x)) @ _unit(weight).T
            loss = loss_fn(logits, yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            v = loss_fn(16.0 * _unit(top(maps[0][val])) @ _unit(weight).T, yt[val]).item()
        if v < best - 1e-4:
            best, best_state, bad = v, copy.deepcopy(top.state_dict()), 0
        else:
            bad += 1
            if bad >= 4:
                break
    top.load_state_dict(best_state)
    return top.eval()


def embed_all(top: torch.nn.Module | None, maps: torch.Tensor, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Per photo, its faces' unit embeddings (the frozen rows' when ``top`` is None)."""
    if top is None:
        return [r[:, :128] for r in rows]
    with torch.no_grad():
        e = torch.cat([_unit(top(maps[i : i + 256])) for i in range(0, len(maps), 256)]).numpy()
    return np.split(e, np.cumsum([len(r) for r in rows])[:-1])


def evaluate(bags, y, kinds, largest, train, test) -> dict[str, float]:
    """The default face head fitted on the training photos' bags, answering the test photos'."""
    head = kind_of("sface").make_head(validate_options(backbone="sface"))
    head.fit([bags[i] for i in train], y[train], start=[largest[i] for i in train])
    pred = head.predict([bags[i] for i in test], start=[largest[i] for i in test])
    closed = head.classes_[np.argmax(head.predict_proba([bags[i] for i in test], start=[largest[i] for i in test]), 1)]
    ok = pred == y[test]
    out = {"all": ok.mean(), "closed": (closed == y[test]).mean(), "unknown": (pred == "unknown").mean()}
    for kind in ("aligned-face-crop", "web-photo"):
        out[kind] = ok[kinds[test] == kind].mean()
    return out


def strangers(bags_of, y, largest, train, test) -> float:
    """Each class left out of training in turn: the share of its test photos answered unknown."""
    rates = []
    for c in np.unique(y):
        tr, te = train[y[train] != c], test[y[test] == c]
        bags = bags_of(tr)
        head = kind_of("sface").make_head(validate_options(backbone="sface"))
        head.fit([bags[i] for i in tr], y[tr], start=[largest[i] for i in tr])
        rates.append((head.predict([bags[i] for i in te], start=[largest[i] for i in te]) == "unknown").mean())
    return float(np.mean(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the top blocks")
    args = ap.parse_args()
    import pandas as pd

    data = REPO / "data" / "presidents"
    table = transferlab.Classifier().read(data).table
    kinds_of = pd.read_csv(data / "manifest.csv").set_index("file")["kind"]
    table["kind"] = [kinds_of.get(str(Path(p).relative_to(data)), "") for p in table["path"]]
    bb = create_backbone("sface")
    rows, crops, largest = faces_of(table, bb)
    has_face = np.array([len(r) > 0 for r in rows])
    gm = torch_module(bb.pipeline.graphs["embedder"]).eval()
    face_photo = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    y, kinds = table["label"].astype(str).to_numpy(), table["kind"].to_numpy()
    print(f"{int(has_face.sum())} of {len(rows)} photos with a face, {len(face_photo)} faces", flush=True)
    cuts = {n: top_of(gm, n) for n in BLOCKS}
    maps = {n: trunk_maps(gm, crops, cuts[n][0]) for n in BLOCKS}
    tops = {n: cuts[n][1] for n in BLOCKS}
    first = np.cumsum([0] + [len(r) for r in rows])
    results: dict[str, list[dict[str, float]]] = {"frozen": [], "N=1": [], "N=2": []}
    for seed in range(args.seeds):
        split = split_table(table, test_size=0.25, seed=seed)
        train = np.array([i for i in split.train if has_face[i]])
        test = np.array([i for i in split.test if has_face[i]])
        frozen = embed_all(None, maps[1][0], rows)
        head = kind_of("sface").make_head(validate_options(backbone="sface"))
        head.fit([frozen[i] for i in train], y[train], start=[largest[i] for i in train])
        chosen = dict(zip(train, head.chosen_, strict=True))

        def tuned_bags(n: int, photos: np.ndarray, chosen=chosen, seed=seed) -> list[np.ndarray]:
            faces = np.array([first[i] + chosen[i] for i in photos])
            top = finetune(tops[n], (maps[n][0][faces], maps[n][1][faces]), y[photos], args.epochs, seed, args.lr)
            return embed_all(top, maps[n][0], rows)

        r = evaluate(frozen, y, kinds, largest, train, test)
        r["strangers"] = strangers(lambda tr, f=frozen: f, y, largest, train, test)
        results["frozen"].append(r)
        for n in BLOCKS:
            r = evaluate(tuned_bags(n, train), y, kinds, largest, train, test)
            r["strangers"] = strangers(lambda tr, n=n: tuned_bags(n, tr), y, largest, train, test)
            results[f"N={n}"].append(r)
        print(
            f"seed {seed}: "
            + "; ".join(f"{k} {v[-1]['all']:.3f}/{v[-1]['strangers']:.3f}" for k, v in results.items()),
            flush=True,
        )
    keys = ("all", "closed", "aligned-face-crop", "web-photo", "unknown", "strangers")
    print(f"\n| SFace ({args.seeds} seeds, mean ± 95% CI) | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, rs in results.items():
        print(f"| {name} | " + " | ".join(fmt_ci([r[k] for r in rs]) for k in keys) + " |")


if __name__ == "__main__":
    main()
