"""Two Ray nodes on one machine (``ray.cluster_utils.Cluster``): the run folder must be one folder for both.

A node-local run directory is made honestly on one machine by giving the second node's raylet (and so
every worker it starts) ``SEPSIS_RL_NODE_LOCAL_ROOT``: on that node the storage layer resolves every local
path inside a private tree, as a worker node resolves ``/runs/x`` on its own disk. The pipeline's
visibility probe must stop the run naming that node; with a shared folder the first stages run with the
learner's two ranks on different nodes (cohort, world model as a Ray task, SFT with 2 DeepSpeed ranks
over gloo). Later stages add nothing node-specific to this check and would double the test's time.
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
    shared_node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    run = tmp / "run_shared"
    summary = run_pipeline(_cfg(), PipelineOptions(str(run), stages=("cohort", "world_model", "sft")))
    assert set(summary["stages"]) == {"cohort", "world_model", "sft"}
    assert (run / "sft" / "model" / "model.safetensors").exists()
    state = json.loads((run / "state.json").read_text())
    assert state["stages"]["sft"]["output"] == "sft/model"  # relative to the run folder

    from ray._private.state import actors  # the GCS actor table (dead actors included); no dashboard needed

    ranks = [a for a in actors().values() if a["ActorClassName"] == "LearnerWorkerImpl"]
    assert len(ranks) == 2 and {a["Address"]["NodeID"] for a in ranks} == {cluster.head_node.node_id, shared_node.node_id}
