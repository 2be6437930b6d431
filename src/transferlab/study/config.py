"""A study's configuration: the TOML file's schema (declared with pydantic, validated once) and the flat
:class:`StudyConfig` the runner reads. Relative paths are relative to the config file's folder."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..augment import AugmentConfig
from ..errors import TransferlabError
from ..options import EngineName, HeadName, Pool

PER_CLASS = [1, 3, 5, 10, 25, 50, 100, 150]
FINETUNED = "+finetune"  # Table 1's fine-tuned rows: backbone "mobilenet_v2+finetune2" (its last 2 blocks trained)


def split_backbone(name: str) -> tuple[str, int]:
    """``"mobilenet_v2+finetune2"`` → ``("mobilenet_v2", 2)``; a frozen backbone's name → ``(name, 0)``."""
    base, _, n = name.partition(FINETUNED)
    return base, int(n or 0)


class _Table1(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbones: list[str] = Field(default_factory=lambda: ["available"])
    heads: list[HeadName] = Field(default_factory=lambda: [HeadName.mlp, HeadName.logreg, HeadName.svm])
    pool: Pool = Pool.avg
    epochs: int = Field(30, ge=1)
    finetune: int = Field(0, ge=0)


class _Table2(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = "best"
    head: HeadName = HeadName.mlp
    per_class: list[int] = Field(default_factory=lambda: list(PER_CLASS))
    augment: list[bool] = Field(default_factory=lambda: [False, True])


class StudyFile(BaseModel):
    """The keys of a study's TOML file (see ``studies/seed.toml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    data: str
    manifest: str | None = None
    group_by: str | None = None
    test_size: float = Field(0.25, gt=0.0, lt=1.0)
    seeds: int = Field(5, ge=1)
    limit_per_class: int | None = Field(None, ge=1)
    table1: _Table1 = Field(default_factory=_Table1)
    table2: _Table2 = Field(default_factory=_Table2)
    augment: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, str] = Field(default_factory=dict)
    workers: int | Literal["auto"] = "auto"
    engine: EngineName = EngineName.local
    master: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> StudyFile:
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError(f'workers = {self.workers!r}; a positive number of processes, or "auto"')
        if self.master is not None and self.engine != EngineName.spark:
            raise ValueError(f'master = {self.master!r} applies to engine = "spark" only')
        return self


@dataclass
class StudyConfig:
    """A study, as read from TOML (:meth:`from_toml`), with paths resolved."""

    name: str
    data: Path
    manifest: Path | None = None
    group_by: str | None = None
    test_size: float = 0.25
    seeds: int = 5
    limit_per_class: int | None = None
    backbones: list[str] = field(default_factory=lambda: ["available"])
    heads: list[str] = field(default_factory=lambda: ["mlp", "logreg", "svm"])
    pool: str = "avg"
    epochs: int = 30
    finetune: int = 0  # Table 1 also fine-tunes this many top blocks of each whole-image backbone (0: frozen only)
    table2_backbone: str = "best"
    table2_head: str = "mlp"
    per_class: list[int] = field(default_factory=lambda: list(PER_CLASS))
    augment_modes: list[bool] = field(default_factory=lambda: [False, True])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weights: dict[str, str] = field(default_factory=dict)
    workers: int | None = None  # processes for the runs (None: one per core, at most 4, when the runs pay for them)
    engine: str = "local"
    master: str | None = None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> StudyConfig:
        """Read and validate a study config; an error names the file, the key and the allowed values."""
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise TransferlabError(f"{path}: no such study config") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TransferlabError(f"{path}: not valid TOML ({exc})") from None
        try:
            f = StudyFile.model_validate(doc)
        except ValidationError as exc:
            raise TransferlabError(f"{path}: {_problem(exc)}") from None
        base = path.parent

        def rel(p: str | None) -> Path | None:
            return None if p is None else (Path(p) if os.path.isabs(p) else (base / p).resolve())

        try:
            augment = AugmentConfig.from_dict(f.augment)
        except TransferlabError as exc:
            raise TransferlabError(f"{path}: {exc}") from None
        return cls(
            name=f.name or path.stem,
            data=rel(f.data),  # type: ignore[arg-type]
            manifest=rel(f.manifest),
            group_by=f.group_by,
            test_size=f.test_size,
            seeds=f.seeds,
            limit_per_class=f.limit_per_class,
            backbones=f.table1.backbones,
            heads=[h.value for h in f.table1.heads],
            pool=f.table1.pool.value,
            epochs=f.table1.epochs,
            finetune=f.table1.finetune,
            table2_backbone=f.table2.backbone,
            table2_head=f.table2.head.value,
            per_class=f.table2.per_class,
            augment_modes=f.table2.augment,
            augment=augment,
            weights={k: str(rel(v)) for k, v in f.weights.items()},
            workers=None if f.workers == "auto" else int(f.workers),
            engine=f.engine.value,
            master=f.master,
        )


def _problem(exc: ValidationError) -> str:
    """One line for the first problem pydantic found: the key, its value and what is allowed."""
    err = exc.errors()[0]
    if not err["loc"]:  # a rule across keys
        return str(err["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "config"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = (
            StudyFile.model_fields
            if len(err["loc"]) == 1
            else {"table1": _Table1, "table2": _Table2}.get(str(err["loc"][0]), StudyFile).model_fields
        )
        return f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}"
    if err["type"] == "missing":
        return f'needs {key} = "..."' if key != "data" else 'needs data = "FOLDER"'
    if err["type"] == "enum":
        expected = str((err.get("ctx") or {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{key} = {value!r}; choose one of: {expected}"
    return f"{key} = {value!r}; {err['msg'].removeprefix('Value error, ')}"
