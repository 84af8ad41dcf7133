"""One-line errors: every user-caused failure of a CLI command is one line naming the file, exit 2, nothing written.

Each test makes its own broken input (a truncated file, a NaN weight, an edited config) from small,
valid artefacts built once per module.
"""

import json
import shutil
from pathlib import Path

import pytest
import ray

from sepsis_rl.cli import USER_ERRORS, main


@pytest.fixture(scope="module")
def artefacts(tiny_world, tiny_model_dir, tmp_path_factory):
    """A valid cohort, world model and LLM folder to break copies of."""
    from world_model.checkpoint import save_world_model

    root = tmp_path_factory.mktemp("valid")
    return {"cohort": Path(tiny_world[0]), "wm": save_world_model(tiny_world[1], root / "wm"), "llm": Path(tiny_model_dir),
            "root": root}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expect_one_line(capsys, argv: list[str], *pieces: str, leaves: list[Path] = ()) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("sepsis-rl: error: ") and "\n" not in err and "Traceback" not in err, err
    for p in pieces:
        assert str(p) in err, (p, err)
    for path in leaves:
        assert not Path(path).exists(), f"{path} was written"
    return err


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------- output folders
def test_unwritable_output_folder(capsys, tmp_path, artefacts):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    expect_one_line(capsys, ["cohort", "synth", "--patients", "5", "--out", str(blocker / "cohort")],
                    blocker, "not a folder")
    expect_one_line(capsys, ["world-model", "train", "--cohort", str(artefacts["cohort"]), "--preset", "tiny",
                             "--out", "/proc/sepsis-rl-test/wm"], "/proc/sepsis-rl-test/wm", "not writable")


# -------------------------------------------------------------------------------------- cohorts
@pytest.mark.parametrize("command", ["describe", "world-model"])
def test_corrupt_parquet_in_cohort(capsys, tmp_path, artefacts, command):
    cohort = copy(artefacts["cohort"], tmp_path / "cohort")
    truncate(cohort / "train.parquet", 0.3)
    argv = (["cohort", "describe", str(cohort)] if command == "describe" else
            ["world-model", "train", "--cohort", str(cohort), "--preset", "tiny", "--out", str(tmp_path / "wm")])
    expect_one_line(capsys, argv, cohort / "train.parquet", "corrupt or unreadable Parquet", leaves=[tmp_path / "wm"])


# --------------------------------------------------------------------------------- world models
def test_nan_in_world_model_weights(capsys, tmp_path, artefacts):
    from safetensors.torch import load_file, save_file

    wm = copy(artefacts["wm"], tmp_path / "wm")
    weights = load_file(str(wm / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name][...] = float("nan")
    save_file(weights, str(wm / "model.safetensors"), metadata={"format": "sepsis-rl-world-model"})
    expect_one_line(capsys, ["world-model", "evaluate", "--model", str(wm), "--cohort", str(artefacts["cohort"]),
                             "--no-counterfactual"], wm / "model.safetensors", repr(name), "NaN",
                    leaves=[wm / "metrics.json"])


def test_corrupted_normaliser_in_world_model_config(capsys, tmp_path, artefacts):
    wm = copy(artefacts["wm"], tmp_path / "wm")
    config = json.loads((wm / "config.json").read_text())
    config["normalizer"]["std"] = config["normalizer"]["std"][:3]
    (wm / "config.json").write_text(json.dumps(config))
    expect_one_line(capsys, ["world-model", "evaluate", "--model", str(wm), "--cohort", str(artefacts["cohort"]),
                             "--no-counterfactual"], wm / "config.json", "normalizer.std has 3 entries",
                    leaves=[wm / "metrics.json"])


# ----------------------------------------------------------------------------------- run folders
def test_truncated_state_json(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text('{"stages": {"cohort": {"output": "/x", "fini')
    expect_one_line(capsys, ["pipeline", "--preset", "tiny", "--out", str(run), "--resume"],
                    run / "state.json", "truncated or corrupt JSON", leaves=[run / "cohort"])


def test_config_value_out_of_range(capsys, tmp_path):
    expect_one_line(capsys, ["pipeline", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", "rl.iterations=-1"],
                    "rl.iterations must be >= 1, got -1", leaves=[tmp_path / "run"])
    expect_one_line(capsys, ["pipeline", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", "rl.gamma=1.5"],
                    "rl.gamma must be in [0, 1]", leaves=[tmp_path / "run"])


# -------------------------------------------------------------------------------------- rollout
def test_rollout_show_on_a_bad_file(capsys, tmp_path):
    bad = tmp_path / "episodes.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    expect_one_line(capsys, ["rollout", "show", str(bad)], bad, "not a readable episodes Parquet file")


def _rollout(tmp_path, artefacts, **over) -> list[str]:
    args = {"model": artefacts["llm"], "world-model": artefacts["wm"], "cohort": artefacts["cohort"],
            "out": tmp_path / "episodes.parquet", **over}
    return ["rollout", "--episodes", "2", *[x for k, v in args.items() for x in (f"--{k}", str(v))]]


def test_rollout_with_a_missing_cohort(capsys, tmp_path, artefacts):
    missing = tmp_path / "no-cohort"
    expect_one_line(capsys, _rollout(tmp_path, artefacts, cohort=missing), missing, "not a cohort folder",
                    leaves=[tmp_path / "episodes.parquet"])


def test_rollout_with_truncated_llm_weights(capsys, tmp_path, artefacts):
    llm = copy(artefacts["llm"], tmp_path / "llm")
    truncate(llm / "model.safetensors")
    expect_one_line(capsys, _rollout(tmp_path, artefacts, model=llm), llm / "model.safetensors", "truncated",
                    leaves=[tmp_path / "episodes.parquet"])


def test_rollout_with_a_corrupt_world_model(capsys, tmp_path, artefacts):
    wm = copy(artefacts["wm"], tmp_path / "wm")
    truncate(wm / "model.safetensors")
    expect_one_line(capsys, _rollout(tmp_path, artefacts, **{"world-model": wm}), wm / "model.safetensors",
                    "unreadable weights", leaves=[tmp_path / "episodes.parquet"])


def test_user_error_raised_inside_an_actor_is_the_same_line(capsys, tmp_path, monkeypatch):
    """A user error raised in a Ray actor reaches the user as the actor's own line, not a traceback."""
    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.rollout import cli as rollout_cli

    @ray.remote
    class Reader:
        def spec(self, path: str):
            return read_spec(path)

    def in_an_actor(args):
        return ray.get(Reader.remote().spec.remote(args.file), timeout=60)

    monkeypatch.setattr(rollout_cli, "_show", in_an_actor)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        err = expect_one_line(capsys, ["rollout", "show", str(tmp_path / "nowhere")], tmp_path / "nowhere",
                              "not a cohort folder")
    finally:
        ray.shutdown()
    assert "ray" not in err.lower() and "actor" not in err.lower()


def test_user_errors_cover_the_new_kinds():
    from sepsis_rl.errors import UserError
    from world_model.checkpoint import CheckpointError

    assert all(issubclass(k, USER_ERRORS) for k in (UserError, CheckpointError, PermissionError, NotADirectoryError))
