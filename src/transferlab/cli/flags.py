"""The command line's shared flags: one declaration each (name, type, help), used by every command that takes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..choices import EngineName, HeadName, Pool, Recipe, Runtime

__all__ = [
    "BackboneOpt",
    "CacheDir",
    "Device",
    "Download",
    "Engine",
    "GroupBy",
    "HeadOpt",
    "Manifest",
    "Master",
    "NoCache",
    "Partitions",
    "PoolOpt",
    "Quiet",
    "RecipeOpt",
    "RuntimeOpt",
    "SecondLook",
    "Weights",
]

CacheDir = Annotated[
    Path | None, typer.Option("--cache-dir", help="Feature cache directory (default: the user cache dir).")
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Compute features without reading or writing the cache.")]
Weights = Annotated[
    Path | None, typer.Option("--weights", help="Local backbone weights file (timm/torchvision state dict).")
]
Download = Annotated[
    bool, typer.Option("--download", help="Allow downloading backbone weights from the Hugging Face hub.")
]
Manifest = Annotated[
    Path | None, typer.Option("--manifest", help="CSV with a file/path column and extra columns such as kind.")
]
GroupBy = Annotated[str | None, typer.Option("--group-by", help="Also report accuracy per value of this column.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
RuntimeOpt = Annotated[
    Runtime,
    typer.Option(
        "--runtime",
        help="torch, or onnxruntime (CPU: the network exported once to ONNX; faster for large jobs, same features).",
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N.",
    ),
]
Engine = Annotated[
    EngineName, typer.Option("--engine", help="Where features are computed: local (this process) or spark.")
]
Master = Annotated[
    str | None,
    typer.Option(
        "--master",
        help="Spark master URL for --engine spark: local[2] (default; under spark-submit, its --master), "
        "spark://host:7077, yarn, k8s://https://...",
    ),
]
Partitions = Annotated[
    int | None, typer.Option("--partitions", min=1, help="Spark: partitions of the image list (default: one per core).")
]


PoolOpt = Annotated[Pool, typer.Option(help="avg (pooled features) or flatten (the seed's flattened map).")]
BackboneOpt = Annotated[
    str, typer.Option(help="Backbone name; see `transferlab backbones`. sface: detected, aligned faces.")
]
RecipeOpt = Annotated[
    Recipe | None,
    typer.Option(
        "--recipe",
        help="How features are made on a GPU: portable (CPU decoding, fp32: the same answers on every device; the "
        "default for training) or fast (nvJPEG, bf16). Default for a saved model: the recipe it was trained with.",
    ),
]
HeadOpt = Annotated[HeadName, typer.Option(help="Head: logreg, svm or mlp (the seed's).")]
SecondLook = Annotated[
    bool,
    typer.Option(
        "--second-look/--no-second-look",
        help="Face backbones: look again (enlarged, in tiles, turned) at photos in which no face is found, before "
        "answering 'no face found'; photos with a face cost nothing more.",
    ),
]
