"""The learner's dashboard metrics: one literal name each (dashboards and tests find them by name), every one
tagged with the run id; the per-phase iteration times are one gauge with a ``phase`` tag."""

from __future__ import annotations

from typing import Any

from sepsis_rl.telemetry import run_tags


class LearnerMetrics:
    """Gauges set from an RL iteration's record (``rl_stage._gauges``); unknown names are an error, not a new metric."""

    def __init__(self) -> None:
        from ray.util.metrics import Gauge

        tags = ("run_id",)  # a literal: the dashboard test reads tag keys from the source
        self.gauges = {
            "loss": Gauge("sepsis_rl_learner_loss", "RL loss of the last update", tag_keys=tags),
            "kl": Gauge("sepsis_rl_learner_kl", "KL(policy || reference) of the last update", tag_keys=tags),
            "kl_to_previous": Gauge("sepsis_rl_learner_kl_to_previous",
                                    "KL(previous policy || updated policy) per generated token", tag_keys=tags),
            "clip_frac": Gauge("sepsis_rl_learner_clip_frac", "fraction of tokens whose ratio was clipped", tag_keys=tags),
            "entropy": Gauge("sepsis_rl_learner_entropy", "sampled entropy per generated token of the rollouts",
                             tag_keys=tags),
            "group_reward_std": Gauge("sepsis_rl_learner_group_reward_std", "mean std of the returns within a group",
                                      tag_keys=tags),
            "zero_variance_group_frac": Gauge("sepsis_rl_learner_zero_variance_group_frac",
                                              "fraction of groups whose returns were all equal", tag_keys=tags),
            "groups_refilled": Gauge("sepsis_rl_learner_groups_refilled",
                                     "groups played to replace zero-variance ones (dynamic sampling)", tag_keys=tags),
            "heldout_decisions_changed": Gauge("sepsis_rl_learner_heldout_decisions_changed",
                                               "fraction of held-out greedy decisions that differ from stage 2's",
                                               tag_keys=tags),
            "tokens_per_s": Gauge("sepsis_rl_learner_tokens_per_s", "trained tokens per second", tag_keys=tags),
            "train_mean_return": Gauge("sepsis_rl_learner_train_mean_return", "mean return of the iteration's episodes",
                                       tag_keys=tags),
            "heldout_mean_return": Gauge("sepsis_rl_learner_heldout_mean_return",
                                         "mean return on held-out starting states", tag_keys=tags),
            "logprob_mismatch_after_sync": Gauge("sepsis_rl_learner_logprob_mismatch_after_sync",
                                                 "mean |log p learner - log p engine| after a weight sync", tag_keys=tags),
            "behaviour_logprob_mismatch": Gauge("sepsis_rl_learner_behaviour_logprob_mismatch",
                                                "mean |log p learner - log p behaviour| before the update", tag_keys=tags),
        }
        self.phase = Gauge("sepsis_rl_learner_phase_seconds", "wall seconds of each phase of the last iteration",
                           tag_keys=("run_id", "phase"))
        for g in self.gauges.values():
            g.set_default_tags(run_tags())
        self.phase.set_default_tags(run_tags())

    def publish(self, values: dict[str, Any]) -> None:
        """``<name>_s`` values are phase times (``phase=<name>``); the rest must be declared gauges."""
        for name, value in values.items():
            if name in self.gauges:
                self.gauges[name].set(float(value))
            elif name.endswith("_s"):
                self.phase.set(float(value), tags={"phase": name[:-2]})
            else:
                raise ValueError(f"learner metric {name!r} is not declared in sepsis_rl/learner/metrics.py")
