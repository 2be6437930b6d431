"""Fine-tuning's cost, side by side in one run (issue 18's targets), on the bundled photos.

    python benchmarks/finetune.py [--backbone mobilenet_v2] [--blocks 2] [--whole-epochs 2]

Rows (each `transferlab.train` call on the same 75/25 split, seed 0, in this process):
  frozen train, cold                 features computed, head fitted, held-out evaluation
  frozen train, features cached      the same again
  fine-tuned train, cold             trunk maps computed (photos + augmented copies), epochs, features, head
  fine-tuned train, another seed     a new fine-tuning whose epochs run on the cached trunk maps
  the same fine-tuned train again    the tuned blocks (keyed by network, photos, labels, parameters) and features
                                     come from the cache
  the same epochs through the whole network: every photo decoded, augmented and pushed through the whole network
  each epoch (what peers do), DataLoader workers for decoding as they use them; --whole-epochs epochs are measured
  and scaled to the fine-tuned run's epoch count (epochs are identical work).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import transferlab  # noqa: E402
from transferlab._runtime import tune_allocator  # noqa: E402


def _timed_train(data: Path, out: Path, cache: Path, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    res = transferlab.train(data, out, manifest=data / "manifest.csv", group_by="kind", seed=0, cache_dir=cache, **kw)
    return time.perf_counter() - t, res


class _Photos:
    """Training photos as the whole-network protocol reads them: decoded and (with probability copies / (copies +
    1), like the cached protocol's draw) augmented afresh every epoch, then resized and cropped."""

    def __init__(self, paths: list[str], labels: np.ndarray, backbone, copies: int, epoch: int) -> None:
        self.paths, self.labels, self.bb, self.copies, self.epoch = paths, labels, backbone, copies, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch
        from torchvision.transforms.v2.functional import pil_to_tensor

        from transferlab.augment import AugmentConfig, augment_image
        from transferlab.decode import as_rgb

        rng = np.random.default_rng([self.epoch, i])
        img = as_rgb(self.paths[i])
        if rng.random() < self.copies / (self.copies + 1):
            img = augment_image(img, AugmentConfig(self.copies), int(rng.integers(2**31)))
        return self.bb.transform(pil_to_tensor(img)), torch.tensor(int(self.labels[i]))


def whole_network_epochs(paths: list[str], labels: list[str], name: str, blocks: int, epochs: int, cfg) -> float:
    """Seconds for ``epochs`` epochs of the same training through the whole network (frozen trunk in no_grad)."""
    import torch
    from torch import nn

    from transferlab.backbones import create_backbone

    bb = create_backbone(name)
    full = bb.cfg.build(bb.weights_file).eval()
    parts = bb.cfg.blocks(full)
    trunk, top = nn.Sequential(*parts[:-blocks]).requires_grad_(False), nn.Sequential(*parts[-blocks:])
    classes, y = np.unique(labels, return_inverse=True)
    with torch.no_grad():
        width = int(top(trunk(torch.zeros(1, *bb.cfg.input_size))).shape[1])
    linear = nn.Linear(width, len(classes))
    opt = torch.optim.AdamW([*top.parameters(), *linear.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mean = torch.tensor(bb.cfg.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(bb.cfg.std).view(1, 3, 1, 1) * 255.0
    workers = min(2, os.cpu_count() or 1)
    t = time.perf_counter()
    for epoch in range(epochs):
        loader = torch.utils.data.DataLoader(
            _Photos(paths, y, bb, cfg.copies, epoch), batch_size=cfg.batch_size, shuffle=True, num_workers=workers
        )
        for x, yb in loader:
            x = (x.permute(0, 3, 1, 2).float() - mean) / std
            with torch.no_grad():
                fmap = trunk(x)
            loss = loss_fn(linear(top(fmap).mean(dim=(2, 3))), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "presidents"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--whole-epochs", type=int, default=2, help="epochs measured through the whole network")
    args = ap.parse_args()
    tune_allocator()
    import torch

    data, kw = Path(args.data), {"backbone": args.backbone}
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{args.backbone}, last {args.blocks} blocks fine-tuned, bundled photos, 75/25 split (seed 0)\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frozen_cold, fr = _timed_train(data, tmp / "f", tmp / "cf", **kw)
        frozen_warm, _ = _timed_train(data, tmp / "f", tmp / "cf", **kw)
        ft_cold, ft = _timed_train(data, tmp / "t", tmp / "ct", finetune=args.blocks, **kw)
        # another seed: a new fine-tuning (its own epochs and features) on the cached trunk maps
        other = {"finetune": args.blocks, "finetune_params": {"seed": 1}}
        ft_warm, ft2 = _timed_train(data, tmp / "t", tmp / "ct", **other, **kw)
        ft_again, ft3 = _timed_train(data, tmp / "t", tmp / "ct", finetune=args.blocks, **kw)  # the same run again
        assert ft3.classifier.finetune_.reused
        result = ft2.classifier.finetune_
        n_epochs = len(result.history)
        per_epoch_cached = result.seconds["epochs"] / n_epochs
        table = ft.intake.table
        train_rows = ft.split.train
        paths = table["path"].to_numpy()[train_rows].tolist()
        labels = table["label"].to_numpy()[train_rows].astype(str).tolist()
        cfg = ft2.classifier.options_.finetune_config()
        measured = whole_network_epochs(paths, labels, args.backbone, args.blocks, args.whole_epochs, cfg)
        whole = measured / args.whole_epochs * n_epochs

    def acc(res) -> str:
        m = res.metrics
        return f"{m['accuracy']:.3f} (web {m['groups']['web-photo']['accuracy']:.3f})"

    trunk = ft.classifier.finetune_.seconds["trunk"]
    print("| row | seconds | ratio |")
    print("|---|---:|---|")
    print(f"| frozen train, cold (accuracy {acc(fr)}) | {frozen_cold:.1f} | 1.00 |")
    print(f"| frozen train, features cached | {frozen_warm:.1f} | {frozen_warm / frozen_cold:.2f} × frozen cold |")
    print(
        f"| fine-tuned train, cold (accuracy {acc(ft)}; trunk maps {trunk:.1f} s) | {ft_cold:.1f} | "
        f"{ft_cold / frozen_cold:.2f} × frozen cold |"
    )
    print(
        f"| fine-tuned train, another seed on the cached trunk maps ({n_epochs} epochs, {per_epoch_cached:.2f} s "
        f"each; accuracy {acc(ft2)}) | {ft_warm:.1f} | {ft_warm / frozen_cold:.2f} × frozen cold, "
        f"{ft_warm / frozen_warm:.2f} × frozen cached; target ≤ 3 |"
    )
    print(
        f"| the same fine-tuned train again (tuned blocks and features cached) | {ft_again:.1f} | "
        f"{ft_again / frozen_warm:.2f} × frozen cached |"
    )
    print(
        f"| the same {n_epochs} epochs through the whole network ({args.whole_epochs} measured, "
        f"{measured / args.whole_epochs:.2f} s each) | {whole:.1f} | "
        f"{whole / result.seconds['epochs']:.1f} × the cached epochs; target ≥ 5 |"
    )
    print(
        f"| … against the whole fine-tuning, trunk maps included (cold) | | "
        f"{whole / ft.classifier.fit_seconds_['finetune']:.1f} × |"
    )
    assert math.isfinite(whole)


if __name__ == "__main__":
    main()
