"""Run by tests/test_learner_state.py in a fresh process (torch.distributed is process-global):
train 3 steps, save, train 1 more; a fresh engine restored from the save must give the same weights
after the same extra step (optimizer moments and master weights restored, not just the forward)."""

import os
import sys

import torch

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                  DS_ACCELERATOR="cpu")
import deepspeed  # noqa: E402

from sepsis_rl.learner.state import dumps, engine_state, loads, restore_engine_state  # noqa: E402

stage = int(sys.argv[1])
deepspeed.init_distributed(dist_backend="gloo", verbose=False)


def make():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
           "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}, "steps_per_print": 10**9}
    return deepspeed.initialize(model=m, model_parameters=list(m.parameters()), config=cfg)[0]


def step(e, x):
    e.backward(e(x).sum())
    e.step()


x = torch.randn(1, 4)
a = make()
for _ in range(3):
    step(a, x)
blob = dumps(engine_state(a))
step(a, x)
want = a(x).detach()
b = make()
restore_engine_state(b, loads(blob))
step(b, x)
print("MATCH" if torch.allclose(b(x).detach(), want, atol=1e-6) else f"DIFFER {b(x)} {want}")
