"""Baseline policies of the evaluation: guideline rules, offline RL (WD3QNE, d3rlpy CQL/BCQ, RLlib BC/MARWIL) and
an estimated behaviour policy, all behind one registry.

``build_baseline(name, train, val, cfg, selector)`` trains (or builds) the named baseline on the train split,
selects its checkpoint on the validation split with ``selector`` (default: WIS with the cohort's behaviour
propensities, :func:`common.wis_selector`) and returns a :class:`~sepsis_rl.eval.policy.Policy` whose ``info``
dict records training time, the selection history and the config. ``cfg`` is the family's config object or a
preset name, ``"tiny"`` (tests) or ``"default"`` (the cpu preset: a few minutes on 1-2 cores for a
10,000-patient cohort).
"""

from __future__ import annotations

from typing import Any, Callable

from sepsis_rl.eval.baselines.common import Selector, wis_selector, with_propensities
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import Policy

BASELINES = ("wd3qne", "cql", "bcq", "bc", "marwil", "guideline", "behaviour_estimate")


def config_class(name: str) -> type:
    """The training-config dataclass of a baseline family (each has ``tiny()`` and ``default()``)."""
    if name == "wd3qne":
        from sepsis_rl.eval.baselines.wd3qne import WD3QNEConfig

        return WD3QNEConfig
    if name in ("cql", "bcq"):
        from sepsis_rl.eval.baselines.d3rlpy_policies import D3rlpyConfig

        return D3rlpyConfig
    if name in ("bc", "marwil"):
        from sepsis_rl.eval.baselines.rllib_policies import RLlibConfig

        return RLlibConfig
    if name == "guideline":
        from sepsis_rl.eval.baselines.guideline import GuidelineConfig

        return GuidelineConfig
    if name == "behaviour_estimate":
        from sepsis_rl.eval.baselines.behaviour_estimate import BehaviourConfig

        return BehaviourConfig
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


def resolve_config(name: str, cfg: Any = None) -> Any:
    """``None``/"default" -> the family's default config, "tiny" -> its tiny one, a config object -> itself."""
    cls = config_class(name)
    if cfg is None or cfg == "default":
        return cls.default()
    if cfg == "tiny":
        return cls.tiny()
    if not isinstance(cfg, cls):
        raise TypeError(f"baseline {name!r} takes a {cls.__name__} (or 'tiny'/'default'), got {type(cfg).__name__}")
    return cfg


def build_baseline(name: str, train: LoggedData, val: LoggedData, cfg: Any = None,
                   selector: Selector | None = None) -> Policy:
    """Train/build baseline ``name`` on ``train``, select on ``val``; see the module docstring."""
    conf = resolve_config(name, cfg)
    builders: dict[str, Callable[[], Policy]] = {
        "wd3qne": lambda: _wd3qne(train, val, conf, selector),
        "cql": lambda: _d3rlpy("cql", train, val, conf, selector),
        "bcq": lambda: _d3rlpy("bcq", train, val, conf, selector),
        "bc": lambda: _rllib("bc", train, val, conf, selector),
        "marwil": lambda: _rllib("marwil", train, val, conf, selector),
        "guideline": lambda: _guideline(train, conf),
        "behaviour_estimate": lambda: _behaviour(train, val, conf),
    }
    policy = builders[name]()
    policy.name = name
    return policy


def _wd3qne(train: LoggedData, val: LoggedData, cfg: Any, selector: Selector | None) -> Policy:
    from sepsis_rl.eval.baselines.wd3qne import train_wd3qne

    return train_wd3qne(train, val, cfg, selector)


def _d3rlpy(name: Any, train: LoggedData, val: LoggedData, cfg: Any, selector: Selector | None) -> Policy:
    from sepsis_rl.eval.baselines.d3rlpy_policies import train_d3rlpy

    return train_d3rlpy(name, train, val, cfg, selector)


def _rllib(name: Any, train: LoggedData, val: LoggedData, cfg: Any, selector: Selector | None) -> Policy:
    from sepsis_rl.eval.baselines.rllib_policies import train_rllib

    return train_rllib(name, train, val, cfg, selector)


def _guideline(train: LoggedData, cfg: Any) -> Policy:
    from sepsis_rl.eval.baselines.guideline import GuidelinePolicy

    return GuidelinePolicy(train.spec, cfg)


def _behaviour(train: LoggedData, val: LoggedData, cfg: Any) -> Policy:
    from sepsis_rl.eval.baselines.behaviour_estimate import estimate_behaviour

    return estimate_behaviour(train, val, cfg)[0]


__all__ = ["BASELINES", "build_baseline", "config_class", "resolve_config", "wis_selector", "with_propensities"]
