"""The command line: runs the app can open, clear errors, and DDP under torchrun (CPU, gloo)."""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core import cli
from core.runs import RunStore
from core.train.strategies import strategy_config

ROOT = Path(__file__).resolve().parents[2]
# resnet18 from random weights has no dropout, so runs can be compared weight for weight. SGD:
# AdamW divides by each gradient's own size, so where a gradient is ~0 it turns float rounding
# noise into a step of about lr; SGD's step is proportional to the gradient.
EXACT = dict(epochs=2, image_size=32, batch_size=8, augment=False, optimizer="sgd", lr=0.05, early_stopping=0)


def write_config(tmp_path, **fields) -> str:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(json.dumps(fields))
    return str(path)


def command(*args, procs: int | None = None) -> list[str]:
    if procs is None:
        return [sys.executable, "-m", "core.cli", *args]
    # --standalone picks a free port for the rendezvous
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
            "-m", "core.cli", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(args: list[str], timeout: float = 600) -> tuple[int, dict | None, str]:
    """(exit status, the last line of stdout as JSON, stderr)."""
    done = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except ValueError:
        last = None
    return done.returncode, last, done.stderr


def train_args(data_dir, config, *extra) -> list[str]:
    return ["train", "--data", "demo:source", "--per-class", "8", "--backbone", "resnet18", "--scratch",
            "--config", config, "--data-dir", str(data_dir), *extra]


def max_difference(store: RunStore, a: str, b: str) -> float:
    sa, sb = store.load_model(a).state_dict(), store.load_model(b).state_dict()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


# --- in process --------------------------------------------------------------------------


def test_train_creates_a_run_the_app_can_open_and_prints_json_last(tmp_path, capsys):
    config = write_config(tmp_path, **{**EXACT, "epochs": 1})
    code = cli.main(train_args(tmp_path / "data", config, "--strategy", "feature_extraction"))
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert code == 0
    assert set(result) == {"run_id", "status", "val_acc", "kept_epoch", "epochs", "world_size"}
    assert result["status"] == "finished" and result["world_size"] == 1
    store = RunStore(tmp_path / "data")
    record = store.get(result["run_id"])
    assert record.owner == cli.OWNER and record.info["world_size"] == 1
    assert result["kept_epoch"] == record.info["kept_epoch"] == 1 and result["epochs"] == 1
    assert math.isclose(record.final(), result["val_acc"])
    assert [r.id for r in store.list(owner=cli.OWNER)] == [result["run_id"]]
    assert store.load_model(result["run_id"]).classes == record.classes


def test_a_command_line_run_is_a_run_folder_trained_by_the_apps_worker_code(tmp_path, capsys):
    from core.runs.jobs import snapshot_of

    config = write_config(tmp_path, **{**EXACT, "epochs": 2})
    assert cli.main(train_args(tmp_path / "data", config, "--strategy", "feature_extraction")) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    store = RunStore(tmp_path / "data")
    events, _ = store.read_events(run_id)  # what a page tails while a run trains
    assert [e["event"] for e in events if e["event"] in ("fit_start", "epoch", "end")] == ["fit_start", "epoch", "epoch",
                                                                                           "end"]
    snap = snapshot_of(store, run_id)
    assert snap.status == "finished" and [e.epoch for e in snap.epochs] == [1, 2]
    assert store.get(run_id).config["used_feature_cache"] is not None
    assert not (store.folder(run_id) / "inputs.safetensors").exists()  # the images went once trained


def test_the_default_run_store_is_the_apps_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_DATA_DIR", str(tmp_path / "app-data"))
    config = write_config(tmp_path, **{**EXACT, "epochs": 1})
    args = [a for a in train_args("x", config, "--strategy", "feature_extraction")]
    args = args[:args.index("--data-dir")] + args[args.index("--data-dir") + 2:]
    assert cli.main(args) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    assert RunStore(tmp_path / "app-data").get(run_id) is not None


@pytest.mark.parametrize("fields, data, message", [
    ({"epochs": 2, "batch_sise": 8}, "demo:source", "Unknown settings"),
    ({"epochs": 0}, "demo:source", "Epochs must be"),
    ({"freeze": ["no_such_group"]}, "demo:source", "Unknown layer groups"),
    ({"epochs": 1}, "missing.zip", "No file at missing.zip"),
    ({"epochs": 1}, "demo:elsewhere", "Unknown demo set"),
])
def test_bad_input_gets_the_apps_message_and_exit_status_2(tmp_path, capsys, fields, data, message):
    config = write_config(tmp_path, **fields)
    args = train_args(tmp_path / "data", config)
    args[args.index("demo:source")] = data
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert RunStore(tmp_path / "data").list() == []  # nothing half-made is left behind


def test_a_demo_set_too_big_to_hold_is_refused_before_it_is_drawn(tmp_path, capsys):
    config = write_config(tmp_path, epochs=1)
    args = train_args(tmp_path / "data", config)
    args[args.index("8")] = "100000000"
    began = time.perf_counter()
    assert cli.main(args) == 2
    assert time.perf_counter() - began < 5  # it grew for minutes (3.4 GB at 65 s) before
    assert "--per-class must be between 1 and 5,000" in capsys.readouterr().err


def test_the_command_line_keeps_the_apps_budget_for_one_runs_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_MAX_RUN_INPUTS_MB", "1")
    config = write_config(tmp_path, epochs=1, image_size=224)
    args = train_args(tmp_path / "data", config)
    args[args.index("8")] = "500"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "2,000 images at 224 px" in err and "Train on fewer images" in err and "Traceback" not in err
    assert RunStore(tmp_path / "data").list() == []


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),  # was a RecursionError traceback
    ('{"epochs": true}', ["epochs", "must be a whole number", "true"]),  # trained one epoch
    ('{"lr": "0.1"}', ["lr", "must be a number"]),
    ('{"augment": 1}', ["augment", "true or false"]),
])
def test_settings_that_are_not_what_they_name_are_refused_without_a_traceback(tmp_path, capsys, text, words):
    path = tmp_path / "config.json"
    path.write_text(text)
    assert cli.main(train_args(tmp_path / "data", str(path))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(word in err for word in words)


@pytest.mark.parametrize("command", ["train", "list"])
def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys, command):
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0")
    config = write_config(tmp_path, epochs=1)
    args = train_args(afile, config) if command == "train" else ["list", "--data-dir", str(afile)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err


def test_a_presets_warm_up_is_clamped_to_the_epochs_as_the_page_does(tmp_path, capsys):
    groups = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    preset = strategy_config("last_stage", groups)
    assert preset.warmup_epochs >= 1  # otherwise there is nothing to clamp
    config = cli.read_config(write_config(tmp_path, epochs=2), groups, "last_stage")  # was refused
    assert config.epochs == 2 and config.warmup_epochs == 1
    assert "lowered to 1" in capsys.readouterr().err


def test_a_config_that_is_not_json_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{epochs: 2")
    assert cli.main(train_args(tmp_path / "data", str(bad))) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_config_fields_override_the_strategys_preset():
    config = cli.read_config(None, ["stem", "layer1", "head"], "full")
    assert config.warmup_epochs == strategy_config("full", ["stem", "layer1", "head"]).warmup_epochs > 0
    assert cli.read_config(None, ["stem", "layer1", "head"], None).freeze == []


def test_a_runs_command_line_reproduces_its_settings(tmp_path, capsys):
    config = write_config(tmp_path, **{**EXACT, "epochs": 1, "lr": 0.02})
    assert cli.main(train_args(tmp_path / "data", config, "--strategy", "feature_extraction",
                               "--val-fraction", "0.5")) == 0
    record = RunStore(tmp_path / "data").get(json.loads(capsys.readouterr().out.splitlines()[-1])["run_id"])
    again = cli.config_for(record)
    assert again["lr"] == 0.02 and again["freeze"] == record.config["freeze"] and "plan" not in again
    words = shlex.split(cli.command_for(record, "again.json"))
    assert words[:4] == ["python", "-m", "core.cli", "train"]
    args = cli.parser().parse_args(words[3:])
    assert (args.data, args.backbone, args.config, args.scratch) == ("demo:source", "resnet18", "again.json", True)
    assert (args.per_class, args.val_fraction) == (8, 0.5)
    from core import models

    rebuilt = cli.read_config(write_config(tmp_path, **again), models.group_names("resnet18"), args.strategy)
    assert rebuilt.to_dict() == again


def test_an_app_run_gets_a_command_for_its_demo_set():
    from core.runs import RunRecord

    record = RunRecord(id="0" * 16, status="finished", created=0.0, backbone="efficientnet_lite0",
                       pretrained=True, classes=["a", "b", "c", "d"], dataset="Demo shapes (target look)",
                       config={"epochs": 3, "lr": 0.01, "head": "linear", "n_train": 120, "n_val": 40})
    words = shlex.split(cli.command_for(record))
    assert words[words.index("--data") + 1] == "demo:target"
    assert words[words.index("--per-class") + 1] == "40"
    assert "--scratch" not in words and "--val-fraction" not in words
    assert cli.config_for(record) == {"epochs": 3, "lr": 0.01}


def test_a_viewers_command_names_a_weights_file_of_their_own_not_the_servers_path():
    from core.runs import RunRecord

    server_path = "/srv/transfer-lab-data/uploads/" + "e" * 64 + ".pt"
    record = RunRecord(id="0" * 16, status="finished", created=0.0, backbone="resnet18", pretrained=True,
                       classes=["a", "b"], dataset="Demo shapes (source look)",
                       config={"epochs": 3, "n_train": 30, "n_val": 10, "weights_file": server_path})
    assert server_path in cli.command_for(record)  # the owner's own, as before
    words = shlex.split(cli.command_for(record, weights="YOUR_WEIGHTS.pt"))
    assert words[words.index("--weights") + 1] == "YOUR_WEIGHTS.pt" and server_path not in words


def test_export_and_list_work_on_a_finished_run(tmp_path, capsys):
    config = write_config(tmp_path, **{**EXACT, "epochs": 1})
    data_dir = str(tmp_path / "data")
    assert cli.main(train_args(data_dir, config, "--strategy", "feature_extraction")) == 0
    run_id = json.loads(capsys.readouterr().out.splitlines()[-1])["run_id"]
    out = tmp_path / "out" / "model.safetensors"
    assert cli.main(["export", run_id, "--format", "safetensors", "--out", str(out), "--data-dir", data_dir]) == 0
    from core.export import load_safetensors

    reloaded = load_safetensors(out)
    original = RunStore(data_dir).load_model(run_id)
    assert torch.equal(reloaded.state_dict()["fc.weight"], original.state_dict()["fc.weight"])
    capsys.readouterr()
    assert cli.main(["list", "--json", "--data-dir", data_dir]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["owner"]) for r in listed] == [(run_id, cli.OWNER)]
    latest = tmp_path / "out" / "latest.safetensors"  # "latest": the newest run, so the README's example runs as written
    assert cli.main(["export", "latest", "--format", "safetensors", "--out", str(latest), "--data-dir", data_dir]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == run_id
    assert cli.main(["export", "latest", "--format", "onnx", "--out", str(out), "--data-dir", str(tmp_path / "e")]) == 2
    assert "train one first" in capsys.readouterr().err
    assert cli.main(["export", "f" * 16, "--format", "onnx", "--out", str(out), "--data-dir", data_dir]) == 2
    assert "No run" in capsys.readouterr().err


def test_list_reports_the_accuracy_of_the_weights_a_run_keeps(tmp_path, capsys):
    from core.runs.store import RunRecord

    store = RunStore(tmp_path / "data")
    epochs = [{"epoch": n, "val_acc": acc, "val_loss": 1 - acc, "train_acc": 1.0, "train_loss": 0.1}
              for n, acc in enumerate([0.6, 0.9, 0.775], start=1)]
    store.create(RunRecord(id="a" * 16, status="finished", created=1.0, backbone="resnet18", pretrained=True,
                           classes=["a", "b"], config={}, epochs=epochs, info={"best_epoch": 2, "kept_epoch": 2}))
    assert cli.main(["list", "--data-dir", str(tmp_path / "data")]) == 0
    line = capsys.readouterr().out
    assert "90.0%" in line and "77.5%" not in line and "kept: epoch 2 of 3" in line
    assert cli.main(["list", "--json", "--data-dir", str(tmp_path / "data")]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed[0]["val_acc"], listed[0]["kept_epoch"], listed[0]["epochs"]) == (0.9, 2, 3)


# --- under torchrun: two processes on the CPU with gloo -------------------------------------


@pytest.mark.slow
def test_two_processes_finish_a_run_that_equals_one_process_with_the_same_global_batch(tmp_path):
    """DDP is exact data parallelism: head-only training on cached features, one plain process
    against two ranks that each cache and train on their share."""
    config = write_config(tmp_path, **EXACT)
    data_dir = tmp_path / "data"
    extra = ("--strategy", "feature_extraction")
    code1, one, err1 = run(command(*train_args(data_dir, config, *extra)))
    code2, two, err2 = run(command(*train_args(data_dir, config, *extra), procs=2))
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert two["status"] == "finished" and two["world_size"] == 2
    store = RunStore(data_dir)
    record = store.get(two["run_id"])
    assert record.info["world_size"] == 2 and record.owner == cli.OWNER and len(record.epochs) == 2
    assert record.info["uses_feature_cache"]
    start = store.load_starting_model(two["run_id"]).state_dict()["fc.weight"]
    assert (store.load_model(two["run_id"]).state_dict()["fc.weight"] - start).abs().max() > 1e-3  # it trained
    assert max_difference(store, one["run_id"], two["run_id"]) < 1e-4
    assert math.isclose(one["val_acc"], two["val_acc"])


@pytest.mark.slow
def test_fine_tuning_on_two_ranks_equals_one_rank_with_the_same_global_batch(tmp_path):
    """Every layer trains after a warm-up epoch of the head alone (DDP is rebuilt when the trainable
    set grows); BatchNorm uses its running statistics on every rank."""
    config = write_config(tmp_path, **EXACT, warmup_epochs=1, cache_features=False, lr_multipliers={})
    data_dir = tmp_path / "data"
    results = []
    for procs in (1, 2):
        code, last, err = run(command(*train_args(data_dir, config, "--strategy", "full"), procs=procs))
        assert code == 0, err
        assert last["world_size"] == procs
        results.append(last["run_id"])
    store = RunStore(data_dir)
    start, end = store.load_starting_model(results[0]).state_dict(), store.load_model(results[0]).state_dict()
    assert max((end[k] - start[k]).abs().max().item() for k in end if k.startswith("layer")) > 1e-3
    assert max_difference(store, *results) < 1e-4


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_fails_the_run_with_a_clear_message_and_the_store_stays_readable(tmp_path):
    config = write_config(tmp_path, **{**EXACT, "epochs": 200, "lr": 0.005, "cache_features": False,
                                       "warmup_epochs": 0})
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(command(*train_args(data_dir, config, "--strategy", "full"), procs=2), cwd=ROOT,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        store = RunStore(data_dir)
        deadline = time.time() + 400
        while time.time() < deadline:  # wait until an epoch is on disk: every rank is training
            runs = store.list()
            if runs and runs[0].epochs:
                break
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.5)
        victims = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert victims, "rank 1 was not found"
        os.kill(victims[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    record = RunStore(data_dir).list()[0]
    assert record.status == "failed" and record.done
    assert "process of this distributed run stopped" in record.message
    assert json.loads(out.strip().splitlines()[-1])["status"] == "failed"
    store = RunStore(data_dir)
    assert store.has_model(record.id)  # the best epoch before the failure is kept, as an app run keeps it
    assert store.load_model(record.id).classes == record.classes
    assert not (store.folder(record.id) / "inputs.safetensors").exists()


def test_a_command_line_run_opens_on_the_train_page_with_its_command(tmp_path, capsys):
    from streamlit.testing.v1 import AppTest

    config = write_config(tmp_path, **{**EXACT, "epochs": 1})
    data_dir = os.environ["TRANSFER_LAB_DATA_DIR"]  # the app's own store
    assert cli.main(train_args(data_dir, config, "--strategy", "feature_extraction")) == 0
    run_id = json.loads(capsys.readouterr().out.splitlines()[-1])["run_id"]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("pages/train.py")
    at.run()
    assert not at.exception, at.exception
    assert any(run_id in s.value and "finished" in s.value for s in at.subheader)
    assert "Run it from the command line" in [e.label for e in at.expander]
    shown = [c.value for c in at.code if "core.cli train" in c.value]
    assert shown and "--data demo:source" in shown[0] and "--per-class 8" in shown[0]
    # like any other run, it opens on the pages that look inside a model
    at.switch_page("pages/features.py")
    at.run()
    assert not at.exception, at.exception
    picker = next(s for s in at.selectbox if s.label == "Run")
    assert any(option.startswith("command line") for option in picker.options), picker.options


@pytest.mark.slow
def test_the_app_trains_a_run_under_torchrun_when_a_run_may_use_several_processes(tmp_path, monkeypatch):
    """TRANSFER_LAB_PROCESSES_PER_RUN=2 (a two-GPU server; gloo on this CPU): the app's run folder is
    trained by two data-parallel processes, and the run opens like any other."""
    from core.data import demo_dataset, split
    from core.runs.jobs import start_run
    from core.runs.tasks import TaskQueue
    from core.train.base import TrainConfig

    monkeypatch.setenv("TRANSFER_LAB_PROCESSES_PER_RUN", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = RunStore(tmp_path / "data")
    train_ds, val_ds = split(demo_dataset(per_class=6), 0.25)
    from core.models.backbones import group_names

    config = TrainConfig(**{**EXACT, "freeze": group_names("efficientnet_lite0")[:-1]})
    job = start_run(store, train_ds, val_ds, backbone="efficientnet_lite0", pretrained=True, config=config,
                    owner="someone", queue=TaskQueue(1))
    assert job.join(600)
    record = store.get(job.run_id)
    assert record.status == "finished", record.message
    assert record.info["world_size"] == 2 and len(record.epochs) == 2
    store.load_model(job.run_id)
    assert not (store.folder(job.run_id) / "inputs.safetensors").exists()  # rank 0 tidied up
