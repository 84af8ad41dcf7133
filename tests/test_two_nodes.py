"""Two Ray nodes on one machine (``ray.cluster_utils.Cluster``): the run folder must be one folder for both.

A node-local run directory is made honestly on one machine by giving the second node's raylet (and so
every worker it starts) ``SEPSIS_RL_NODE_LOCAL_ROOT``: on that node the storage layer resolves every local
path inside a private tree, as a worker node resolves ``/runs/x`` on its own disk. The pipeline's
visibility probe must stop the run naming that node. With a shared folder the whole tiny pipeline runs
(cohort, world model as a Ray task, SFT, BC and GRPO with 2 DeepSpeed ranks over gloo, the evaluation)
with the learner's two ranks on different nodes (``cluster.learner_placement: STRICT_SPREAD``) and the
simulator shard pinned to the second node by a custom resource (``cluster.simulator_resources``), as a
GPU cluster puts it on a CPU node.
"""

import json

import pytest
import ray
from ray.cluster_utils import Cluster

from sepsis_rl.curriculum.config import load_config
from sepsis_rl.curriculum.pipeline import PipelineOptions, run_pipeline
from sepsis_rl.curriculum.visibility import RunDirNotSharedError


@pytest.fixture
def two_nodes(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    yield cluster, tmp_path
    ray.shutdown()
    cluster.shutdown()


def _cfg(**over):
    return load_config("tiny", {"cluster.learner_workers": 2, "cluster.learner_cpus": 2.0, **over})


def test_node_local_run_dir_is_caught_and_a_shared_one_runs_across_nodes(two_nodes, default_model_dir):
    cluster, tmp = two_nodes
    private = cluster.add_node(num_cpus=2, env_vars={"SEPSIS_RL_NODE_LOCAL_ROOT": str(tmp / "nodeB_disk")})
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    node_b = next(n for n in ray.nodes() if n["NodeID"] == private.node_id)

    run = tmp / "run_private"
    with pytest.raises(RunDirNotSharedError) as e:
        run_pipeline(_cfg(), PipelineOptions(str(run), stages=("cohort",)))
    assert str(e.value) == (f"run directory {run} is not shared with node {node_b['NodeID']} ({node_b['NodeManagerAddress']}): "
                            "use a shared filesystem or an s3:// / gs:// URI")
    assert not (run / "state.json").exists() and not (run / "config.yaml").exists()  # stopped before writing anything

    cluster.remove_node(private)
    shared_node = cluster.add_node(num_cpus=2, resources={"simulator": 1})
    cluster.wait_for_nodes()
    run = tmp / "run_shared"
    cfg = _cfg(**{"cluster.learner_cpus": 1.0, "cluster.learner_placement": "STRICT_SPREAD",
                  "cluster.simulator_resources": {"simulator": 0.01}})
    summary = run_pipeline(cfg, PipelineOptions(str(run)))
    assert set(summary["stages"]) == {"cohort", "world_model", "sft", "bc", "rl", "final", "evaluate"}
    assert (run / "agent" / "model" / "model.safetensors").exists()
    state = json.loads((run / "state.json").read_text())
    assert state["stages"]["sft"]["output"] == "sft/model"  # relative to the run folder

    from ray._private.state import actors  # the GCS actor table (dead actors included); no dashboard needed

    table = actors().values()
    nodes = {cluster.head_node.node_id, shared_node.node_id}
    for stage_ranks in _by_stage(a for a in table if a["ActorClassName"] == "LearnerWorkerImpl"):
        assert {a["Address"]["NodeID"] for a in stage_ranks} == nodes  # each stage's two ranks: one per node
    shards = [a for a in table if a["ActorClassName"] == "SimulatorShardImpl"]
    assert shards and {a["Address"]["NodeID"] for a in shards} == {shared_node.node_id}


def _by_stage(ranks):
    """Learner ranks grouped by the stage that started them (SFT, BC, RL: one group of 2 each, in start order)."""
    ordered = sorted(ranks, key=lambda a: a.get("StartTime", 0))
    assert len(ordered) % 2 == 0 and ordered, [a["Address"]["NodeID"] for a in ordered]
    return [ordered[i:i + 2] for i in range(0, len(ordered), 2)]
