"""Clinical World Model: windows, training, prediction API, checkpoints, evaluation and CLI (tiny scale)."""

import json

import numpy as np
import pytest

from sepsis_rl.cli import main
from sepsis_rl.cohort.store import read_cohort
from sepsis_rl.cohort.synth import synthesize_cohort
from world_model.checkpoint import CheckpointError, load_world_model, save_world_model
from world_model.data import TERM_CONTINUE, TERM_DEATH, TERM_DISCHARGE, DataConfig, fit_normalizer, make_windows
from world_model.evaluate import EvalConfig, evaluate_world_model
from world_model.normalize import FeatureLayout
from world_model.presets import get_preset
from world_model.train import train_world_model


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    return synthesize_cohort(tmp_path_factory.mktemp("wm") / "cohort", 300, seed=5, progress=False)


@pytest.fixture(scope="module")
def trained(cohort_dir):
    return train_world_model(cohort_dir, get_preset("tiny", arch="mlp", seed=1, progress=False))


@pytest.fixture(scope="module")
def test_windows(cohort_dir, trained):
    cohort = read_cohort(cohort_dir, splits=("test",))
    return make_windows(cohort.table("test"), cohort.spec, trained.model.window)


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("window", [1, 4, 6])
def test_windows_shapes_masks_and_targets(cohort_dir, window):
    cohort = read_cohort(cohort_dir, splits=("train",))
    table = cohort.table("train")
    w = make_windows(table, cohort.spec, window)
    n, f = table.num_rows, len(cohort.spec.feature_names)
    assert w.history().shape == (n, window, f) and w.mask.shape == (n, window)
    pos = w.step  # steps start at 0 in every stay
    for k in range(window):  # slot k is real iff the stay is at least window-1-k steps old
        np.testing.assert_array_equal(w.mask[:, k], pos >= window - 1 - k)
    first = np.nonzero(pos == 0)[0]
    assert (w.hist_idx[first] == first[:, None]).all()  # padding repeats the first state
    np.testing.assert_array_equal(w.history()[:, -1], w.x)  # last slot is the row itself
    done = table.column("done").to_numpy()
    np.testing.assert_array_equal(w.has_next, ~done)
    nxt = np.nonzero(w.has_next)[0]
    assert (w.episode_id[w.next_idx[nxt]] == w.episode_id[nxt]).all()
    assert (w.step[w.next_idx[nxt]] == w.step[nxt] + 1).all()
    last = w.last_rows()
    assert (w.terminal[w.has_next] == TERM_CONTINUE).all()
    np.testing.assert_array_equal(w.terminal[last], np.where(w.outcome[last] == 1, TERM_DEATH, TERM_DISCHARGE))
    fluid, vaso = table.column("action_fluid").to_numpy(), table.column("action_vaso").to_numpy()
    np.testing.assert_array_equal(w.action, 5 * fluid + vaso)


def test_normalizer_roles_and_round_trip(cohort_dir):
    cohort = read_cohort(cohort_dir, splits=("train",))
    spec = cohort.spec
    layout = FeatureLayout.from_spec(spec)
    names = spec.feature_names
    assert names.index("mechvent") in layout.binary and names.index("age") in layout.static
    assert names.index("MeanBP") in layout.dynamic and not set(layout.static) & set(layout.dynamic)
    w = make_windows(cohort.table("train"), spec, 4)
    norm = fit_normalizer(w, layout, DataConfig())
    assert norm.log[names.index("SGOT")] and not norm.log[names.index("MeanBP")]
    assert norm.mean[names.index("mechvent")] == 0 and norm.std[names.index("mechvent")] == 1
    np.testing.assert_allclose(norm.decode(norm.encode(w.x)), w.x, rtol=1e-9, atol=1e-9)
    z = norm.encode(w.x)[:, list(layout.dynamic)]
    assert np.abs(z.mean(axis=0)).max() < 1e-6
    plain = fit_normalizer(w, layout, DataConfig(log_transform=False))
    assert not any(plain.log)
    assert type(norm).from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


# ---------------------------------------------------------------------------------- training / eval
def test_tiny_model_beats_persistence(cohort_dir, trained):
    metrics = evaluate_world_model(trained.model, cohort_dir, EvalConfig(cf_patients=60))
    assert metrics["state_mae"] < metrics["persistence_mae"]
    assert metrics["open_loop_mae"]["1"] == pytest.approx(metrics["state_mae"])
    assert set(metrics["open_loop_mae"]) == {"1", "2", "3", "4"}
    for key in ("vent_auroc", "outcome_auroc", "outcome_auprc", "outcome_ece", "counterfactual_state_mae",
                "fresh_factual_state_mae", "counterfactual_effect_mae"):
        assert metrics[key] is not None and np.isfinite(metrics[key]), key
    assert 0.5 < metrics["vent_auroc"] <= 1.0
    json.dumps(metrics)  # serialisable as is
    assert trained.history and trained.history[-1]["val_total"] < trained.history[0]["val_total"] + 1.0


def test_predict_outputs(trained, test_windows):
    model, w = trained.model, test_windows
    rows = np.arange(40)
    out = model.predict(w.history(rows), w.action[rows], mask=w.mask[rows])
    b, f = len(rows), model.n_features
    for k in ("mean", "std", "epistemic_std"):
        assert out[k].shape == (b, f) and np.isfinite(out[k]).all() and (k == "mean" or (out[k] >= 0).all())
    total = out["p_death"] + out["p_discharge"] + out["p_continue"]
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    assert ((out["p_vent"] >= 0) & (out["p_vent"] <= 1)).all()
    np.testing.assert_array_equal(out["mean"][:, model.static_index], w.x[rows][:, model.static_index])
    assert (out["epistemic_std"][:, model.static_index] == 0).all()
    # self-padded windows are recognised (no mask needed); short and long windows are cut / padded
    inferred = model.predict(w.history(rows), w.action[rows])
    np.testing.assert_allclose(inferred["mean"], out["mean"], rtol=1e-6)
    row0 = np.nonzero(w.step == 0)[0][:5]
    short = model.predict(w.x[row0][:, None, :], w.action[row0])
    full = model.predict(w.history(row0), w.action[row0], mask=w.mask[row0])
    np.testing.assert_allclose(short["mean"], full["mean"], rtol=1e-6)
    late = np.nonzero(w.step >= 4)[0][:5]
    long_hist = np.concatenate([w.x[late - 4][:, None], w.history(late)], axis=1)
    np.testing.assert_allclose(model.predict(long_hist, w.action[late])["mean"],
                               model.predict(w.history(late), w.action[late])["mean"], rtol=1e-6)


def test_bad_inputs_raise_clear_errors(trained, test_windows):
    model, w = trained.model, test_windows
    h, a = w.history(np.arange(3)), w.action[:3]
    cases = [
        (h[:, :, :-1], a, "features"),
        (h[0], a, r"\[batch, time, features\]"),
        (np.where(np.arange(h.shape[2]) == 7, np.nan, h), a, "NaN or infinite"),
        (np.where(np.arange(h.shape[2]) == 7, np.inf, h), a, "NaN or infinite"),
        (h, np.array([0, 1, 25]), "outside 0..24"),
        (h, np.array([0, -1, 2]), "outside 0..24"),
        (h, np.array([0.0, 1.5, 2.0]), "integer"),
        (h, a[:2], "shape"),
        (h, np.array(["a", "b", "c"]), "integer"),
    ]
    for hist, act, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model.predict(hist, act)
    with pytest.raises(ValueError, match="mask"):
        model.predict(h, a, mask=np.ones((3, 2), dtype=bool))
    model.predict(h, a.astype(np.float64))  # integral floats are accepted


def test_gru_architecture_trains_and_predicts(cohort_dir, test_windows):
    res = train_world_model(cohort_dir, get_preset("tiny", arch="gru", epochs=3, progress=False))
    assert res.model.config.arch == "gru"
    out = res.model.predict(test_windows.history(np.arange(5)), test_windows.action[:5])
    assert out["mean"].shape == (5, res.model.n_features) and np.isfinite(out["mean"]).all()


# ----------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact(tmp_path, trained, test_windows):
    w = test_windows
    out = save_world_model(trained.model, tmp_path / "m", info={"note": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["spec"]["features"][0]["name"] == trained.model.feature_names[0]
    assert config["normalizer"]["raw_std"] and config["info"] == {"note": "test"}
    back = load_world_model(out)
    rows = np.arange(len(w))
    p1 = trained.model.predict(w.history(rows), w.action[rows], mask=w.mask[rows])
    p2 = back.predict(w.history(rows), w.action[rows], mask=w.mask[rows])
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)
    with pytest.raises(FileExistsError):
        save_world_model(trained.model, out)
    save_world_model(trained.model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_checkpoint_failures(tmp_path, trained, monkeypatch):
    import world_model.checkpoint as ckpt

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError):
        save_world_model(trained.model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # atomic: nothing half-written
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError):
        load_world_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_world_model(tmp_path / "bad")
    good = save_world_model(trained.model, tmp_path / "good")
    (good / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        load_world_model(good)


# -------------------------------------------------------------------------------------------- CLI
def test_cli_train_and_evaluate(tmp_path, cohort_dir, capsys):
    model_dir = tmp_path / "model"
    assert main(["world-model", "train", "--cohort", str(cohort_dir), "--out", str(model_dir),
                 "--preset", "tiny", "--arch", "mlp", "--seed", "3", "--no-progress"]) == 0
    assert "saved to" in capsys.readouterr().out
    out = tmp_path / "metrics.json"
    assert main(["world-model", "evaluate", "--model", str(model_dir), "--cohort", str(cohort_dir),
                 "--out", str(out), "--cf-patients", "40", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    on_disk = json.loads(out.read_text())
    assert printed == on_disk
    assert on_disk["state_mae"] < on_disk["persistence_mae"]
    assert main(["world-model", "evaluate", "--model", str(model_dir), "--cohort", str(cohort_dir),
                 "--no-counterfactual"]) == 0
    assert (model_dir / "metrics.json").is_file()
    # user errors: exit code 2 and one line on stderr
    capsys.readouterr()
    assert main(["world-model", "train", "--cohort", str(tmp_path / "nope"), "--out", str(tmp_path / "m2"),
                 "--preset", "tiny"]) == 2
    assert main(["world-model", "train", "--cohort", str(cohort_dir), "--out", str(model_dir), "--preset", "tiny"]) == 2
    assert main(["world-model", "evaluate", "--model", str(tmp_path / "nope"), "--cohort", str(cohort_dir)]) == 2
    assert main(["world-model", "evaluate", "--model", str(cohort_dir), "--cohort", str(cohort_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("sepsis-rl: error:") == 4 and "Traceback" not in err
