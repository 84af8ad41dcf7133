"""Does GRPO learn? A task with a known best answer, through the real learner (DeepSpeed ranks as Ray actors).

After one prompt, the tiny model may answer with one of two tokens: ``wrong``, its initial greedy choice,
and ``right``, its runner-up. The simulated outcome of ``right`` is better (survival 0.9 against 0.6).
First a few supervised steps on ``wrong`` make the policy prefer it clearly (as behaviour cloning leaves
the agent: P(right) < 0.2 among the two), then each iteration samples a group of answers from the policy (restricted to the two, in proportion to the
learner's own probabilities), scores them, drops a group whose outcomes are all equal and samples again
(dynamic sampling), and runs one GRPO update. With learning on, the greedy answer turns to ``right``;
with the learning rate at 0, the same procedure must leave it at ``wrong``: the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from sepsis_rl.learner.batch import Sample
from sepsis_rl.learner.config import LearnerConfig
from sepsis_rl.learner.group import LearnerGroup
from sepsis_rl.learner.losses import group_advantages, zero_variance_groups

OUTCOME = {"wrong": 0.6, "right": 0.9}  # the two candidates' simulated survival: the task's known answer
GROUP, ITERATIONS, WARMUP = 8, 6, 6


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _greedy(model_dir: str, prompt: list[int]) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return int(model(torch.tensor([prompt])).logits[0, -1].argmax())


def _answers(model_dir: str, prompt: list[int]) -> dict[str, int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        top = model(torch.tensor([prompt])).logits[0, -1].topk(2).indices.tolist()
    return {"wrong": top[0], "right": top[1]}


def _logprobs(group: LearnerGroup, prompt: list[int], answers: dict[str, int]) -> dict[str, float]:
    probe = [Sample(prompt + [tok], [0] * len(prompt) + [1]) for tok in answers.values()]
    return {name: lps[0] for name, (lps, _) in zip(answers, group.evaluate(probe))}


def _p_right(logp: dict[str, float]) -> float:
    return float(np.exp(logp["right"]) / (np.exp(logp["right"]) + np.exp(logp["wrong"])))


def _sample_group(group: LearnerGroup, prompt: list[int], answers: dict[str, int], rng: np.random.Generator) -> list[Sample]:
    """GROUP answers sampled from the policy's probabilities of the two answers, with their log-probs."""
    logp = _logprobs(group, prompt, answers)
    p_right = _p_right(logp)
    picks = np.where(rng.random(GROUP) < p_right, "right", "wrong")
    return [Sample(prompt + [answers[k]], [0] * len(prompt) + [1], [0.0] * len(prompt) + [logp[k]],
                   advantage=OUTCOME[k]) for k in picks]


def grpo_greedy_answers(model_dir: str, prompt: list[int], lr: float, out_dir: str) -> tuple[dict[str, int], int, list[float]]:
    """(the two answers, the greedy answer after ITERATIONS GRPO updates at ``lr``, P(right) before each)."""
    answers = _answers(model_dir, prompt)
    group = LearnerGroup(LearnerConfig(model_path=model_dir, algorithm="grpo", zero_stage=1, lr=lr, micro_batch=4,
                                       cpus_per_worker=1.0, threads=1, kl_coef=0.0), timeout_s=300)
    rng = np.random.default_rng(0)
    p_right: list[float] = []
    try:
        wrong = Sample(prompt + [answers["wrong"]], [0] * len(prompt) + [1])
        for _ in range(WARMUP):  # behaviour cloning on the wrong answer: the policy starts committed to it
            group.train([wrong] * 4, "sft")
        for _ in range(ITERATIONS):
            p_right.append(_p_right(_logprobs(group, prompt, answers)))
            for _ in range(5):  # dynamic sampling: a group whose outcomes are all equal is sampled again
                samples = _sample_group(group, prompt, answers, rng)
                returns = np.array([s.advantage for s in samples])
                if not len(zero_variance_groups(returns, np.zeros(GROUP, dtype=int))):
                    break
            else:
                continue  # the policy answers one way only: nothing left to compare
            for s, a in zip(samples, group_advantages(returns, np.zeros(GROUP, dtype=int))):
                s.advantage = float(a)
            group.train(samples, "grpo")
        p_right.append(_p_right(_logprobs(group, prompt, answers)))
        group.export(out_dir)
    finally:
        group.shutdown()
    return answers, _greedy(out_dir, prompt), p_right


@pytest.mark.parametrize("lr", [2e-3, 0.0], ids=["learning", "lr0"])
def test_grpo_turns_the_greedy_answer_to_the_better_outcome(ray_cluster, tiny_model_dir, tmp_path, lr):
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(tiny_model_dir)("MAP 58, lactate 4.1. Prescribe:")["input_ids"]
    answers, greedy, p_right = grpo_greedy_answers(tiny_model_dir, prompt, lr, str(tmp_path / "model"))
    print(f"lr {lr}: P(right) per iteration {[round(p, 3) for p in p_right]}")
    assert _greedy(tiny_model_dir, prompt) == answers["wrong"]  # where the policy starts
    if lr > 0:
        assert p_right[0] < 0.2, p_right  # behaviour cloning left the policy committed to the wrong answer
        assert greedy == answers["right"], f"GRPO did not move the greedy answer to the better outcome: {p_right}"
    else:
        assert greedy == answers["wrong"]  # learning off: the same procedure must not pass the check above
