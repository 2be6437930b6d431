"""scikit-learn's parameter protocol (``get_params``, ``set_params``, ``repr``) for :class:`transferlab.Classifier`.

Written here rather than inherited from ``sklearn.base.BaseEstimator``: importing scikit-learn costs about a second
(it imports SciPy and pandas), more than half of what a cold ``transferlab predict`` may take (issue 25), and a
saved model answers without it. ``clone``, ``GridSearchCV`` and scikit-learn's own checks of parameters work on it
(``tests/test_api.py`` runs them), and anything that asks for the estimator's tags has scikit-learn loaded already.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any


class Parameters:
    """The parameters of ``__init__``'s signature (``__signature__`` where it is set), as scikit-learn reads them."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The constructor's parameter names, sorted (scikit-learn's order)."""
        skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind not in skip)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """This estimator's parameters.

        Parameters
        ----------
        deep
            Also the parameters of parameters that are estimators, as ``name__parameter``.

        Returns
        -------
        dict
            Parameter names to their values.
        """
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> Any:
        """Set parameters (``name`` or, for an estimator parameter, ``name__parameter``).

        Parameters
        ----------
        **params
            New values.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            For a name the constructor does not take (scikit-learn's error).
        """
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = defaultdict(dict)
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self}. Valid parameters are: {valid!r}.")
            if sep:
                nested[name][sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        """The class and the parameters that differ from their defaults (scikit-learn's ``print_changed_only``)."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params(deep=False).items()
            if not (k in defaults and type(v) is type(defaults[k]) and v == defaults[k])
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags of a plain estimator (``BaseEstimator``'s)."""
        from sklearn.utils import Tags, TargetTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=None,
            regressor_tags=None,
            classifier_tags=None,
        )
