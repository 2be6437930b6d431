"""The seed's study as one command: Table 1 (source models × heads) and Table 2 (training images per class ×
augmentation), with repeated seeds, 95% intervals, plots, and resumption after an interruption.

- :mod:`.config`: the TOML file's schema and :class:`StudyConfig`;
- :mod:`.runner`: the runs (:func:`run_study`, ``runs.csv``);
- :mod:`.report`: the tables, plots and ``report.md``.
"""

from .config import StudyConfig
from .runner import Cell, RunLog, StudyResult, run_study

__all__ = ["Cell", "RunLog", "StudyConfig", "StudyResult", "run_study"]
