import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from core import models
from core.data.encoded import encode_images, labels_of
from core.errors import CheckpointError
from core.models.heads import Classifier
from core.runs import RunStore, is_run_id, recording, worker
from core.runs.jobs import cancel_waiting, create_run, get_job, start_run
from core.runs.kinds import classify
from core.runs.processes import WorkerPool
from core.runs.tasks import QueueFullError, TaskQueue
from core.train.base import Callback, TrainConfig, evaluate
from tests.toys import Shapes

FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]
ALICE, BOB = "a" * 16, "b" * 16


@pytest.fixture(scope="module")
def pool():
    """Two warm workers shared by the whole module: starting one costs seconds (torch's import)."""
    workers = WorkerPool(2, threads=1)
    yield workers
    workers.close()



def quick_config(**changes):
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "freeze": FROZEN, "image_size": 32, **changes})


def run(store, queue, config=None, n=8, owner="", **options):
    options = {"backbone": "efficientnet_lite0", "pretrained": True, **options}
    return start_run(store, Shapes(n, 0), Shapes(4, 1), config=config or quick_config(epochs=1), owner=owner,
                     queue=queue, **options)


def wait(job, timeout=180):
    assert job.join(timeout), "the run did not finish in time"
    return job.snapshot()


def wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def slow_config():
    """Long enough to be caught mid-run: every layer trains, one image per step."""
    return quick_config(freeze=[], epochs=40, batch_size=2)


def test_a_run_trains_in_a_worker_process_and_is_saved_with_its_model(store, pool):
    train_ds, val_ds = Shapes(16, 0), Shapes(6, 1)
    job = start_run(store, train_ds, val_ds, backbone="efficientnet_lite0", pretrained=True,
                    config=quick_config(), owner=ALICE, queue=TaskQueue(1, pool=pool))
    assert is_run_id(job.run_id) and get_job(job.run_id) is job
    snap = wait(job)
    assert snap.status == "finished", snap.message
    assert [e.epoch for e in snap.epochs] == [1, 2]
    assert snap.first_point_after is not None and snap.progress == pytest.approx(1.0)
    assert snap.batch_losses and snap.info.n_train == 16
    record = store.get(job.run_id)
    assert record.status == "finished" and record.owner == ALICE and len(record.epochs) == 2
    assert record.classes == ["disc", "square"] and record.worker_pid is None
    assert record.worker_pid is None and job.worker_pid not in (None, os.getpid())
    assert not (store.folder(job.run_id) / "inputs.safetensors").exists()  # no copy of the data stays
    # the saved model is the one that was scored: it gets the recorded validation accuracy
    reloaded = store.load_model(job.run_id)
    _, acc = evaluate(reloaded, encode_images(val_ds, 32), labels_of(val_ds),
                      torch.tensor(reloaded.mean).view(1, 3, 1, 1), torch.tensor(reloaded.std).view(1, 3, 1, 1), "cpu")
    assert acc == pytest.approx(record.epochs[-1]["val_acc"])


def test_the_server_keeps_no_model_in_memory_once_a_run_is_on_disk(store, pool):
    def models():
        gc.collect()
        return {id(o) for o in gc.get_objects() if isinstance(o, Classifier)}

    before = models()
    job = run(store, TaskQueue(1, pool=pool))
    assert wait(job).status == "finished"
    assert models() <= before
    assert not any(isinstance(v, torch.nn.Module) for v in vars(job).values())


def test_two_runs_started_together_train_exactly_like_one_run_alone(store, pool):
    """Each run has its own process, so neither draws from the other's random generator."""
    config = quick_config(freeze=[], epochs=2, batch_size=4, augment=True)
    queue = TaskQueue(2, pool=pool)

    def history(job):
        snap = wait(job)
        assert snap.status == "finished", snap.message
        return [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in snap.epochs], snap.batch_losses

    alone = history(run(store, queue, config))
    together = [run(store, queue, config), run(store, queue, config)]
    assert history(together[0]) == alone
    assert history(together[1]) == alone


def test_runs_wait_their_turn_in_the_server_queue(store, pool):
    queue = TaskQueue(1, pool=pool)
    assert queue.acquire("someone-else", threading.Event())  # a run of another session holds the slot
    waiting = run(store, queue)
    wait_for(lambda: waiting.snapshot().queue_position == 1)
    assert waiting.snapshot().status == "queued" and store.get(waiting.run_id).status == "queued"
    queue.release("someone-else")
    assert wait(waiting).status == "finished"


def test_a_queued_run_can_be_cancelled_and_the_queue_goes_on(store, pool):
    queue = TaskQueue(1, pool=pool)
    assert queue.acquire("blocker", threading.Event())
    waiting = run(store, queue)
    waiting.cancel()
    assert wait(waiting).status == "cancelled"
    assert store.get(waiting.run_id).status == "cancelled"
    queue.release("blocker")
    assert wait(run(store, queue)).status == "finished"
    assert queue.running == 0 and queue.waiting == 0


def test_stop_ends_a_training_run_within_a_second(store, pool):
    job = run(store, TaskQueue(1, pool=pool), slow_config())
    wait_for(lambda: len(job.snapshot().batch_losses) >= 2)
    asked, asked_wall = time.monotonic(), time.time()
    job.cancel()
    assert job.join(10)
    took = time.monotonic() - asked
    events, _ = store.read_events(job.run_id)
    # the run ends after the batch it was in: at most one more step, whatever the machine's load
    steps_after = [e for e in events if e["event"] == "batch" and e["t"] > asked_wall]
    assert len(steps_after) <= 1, steps_after
    stopped = next(e["t"] for e in events if e["event"] == "end") - asked_wall
    print(f"\nstop to the run's end: {stopped:.2f} s; to the page seeing it: {took:.2f} s")
    assert took < 10, took  # a bound that only a stop ignored until the end of the run would break
    assert job.snapshot().status == "cancelled" and store.get(job.run_id).status == "cancelled"


def test_a_killed_worker_fails_its_run_clearly_and_the_server_goes_on(store, pool):
    queue = TaskQueue(1, pool=pool)
    earlier = run(store, queue)
    assert wait(earlier).status == "finished"
    job = run(store, queue, slow_config())
    wait_for(lambda: len(job.snapshot().epochs) >= 1)  # an epoch ended: its weights are on disk
    os.kill(job.worker_pid, signal.SIGKILL)
    snap = wait(job, 30)
    assert snap.status == "failed" and "SIGKILL" in snap.message and "start the run again" in snap.message
    record = store.get(job.run_id)
    assert record.status == "failed" and record.done and len(record.epochs) >= 1
    store.load_model(job.run_id)  # it keeps the best weights it had
    store.load_model(earlier.run_id)  # other runs are untouched
    assert {r.id for r in store.list()} == {earlier.run_id, job.run_id}
    assert wait(run(store, queue)).status == "finished"  # the pool replaced its worker
    assert len(pool.pids()) == 2


@pytest.mark.parametrize("chosen", [None, "ACTIVE"])
def test_idle_openmp_threads_sleep_unless_the_user_chose_otherwise(chosen):
    """Spinning idle threads took the cores a run beside other work needed (8.7x slower beside six
    busy processes: bench/bench_contention.py). ``core`` sets the policy before torch loads OpenMP."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if chosen:
        env["OMP_WAIT_POLICY"] = chosen
    code = "import core, torch, os; torch.ones(8).sum(); print(os.environ['OMP_WAIT_POLICY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == (chosen or "PASSIVE")


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="reads a process's environment from /proc")
def test_worker_processes_start_with_the_engines_wait_policy(pool):
    import core  # noqa: F401  (it set the policy in this process)

    assert pool.wait_ready(120)  # a process still starting shows an empty environment
    for pid in pool.pids():
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}".encode() in environ


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads sessions and process states from /proc")
def test_workers_train_in_a_session_of_their_own_and_still_end_with_the_server():
    """Linux shares the CPU between sessions before threads: a worker in the server's session got a
    sliver of it beside a classroom's open pages. Its own session must not outlive the server."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from core.runs.processes import WorkerPool; "
            "pool = WorkerPool(1, threads=1); assert pool.wait_ready(120); print(pool.pids()[0], flush=True); "
            "time.sleep(600)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    server = subprocess.Popen([sys.executable, "-c", code, root], stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        worker_pid = int(server.stdout.readline())
        assert os.getsid(worker_pid) == worker_pid != os.getsid(server.pid)
    finally:
        server.kill()  # as abruptly as a server can end: no clean-up of its own runs
        server.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(worker_pid):
        time.sleep(0.2)
    assert not _alive(worker_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_runs_record_keeps_the_torch_threads_it_trained_with(store):
    """Fine-tuning with one thread and with two gives different curves (summation order), so the
    thread count is part of what reproduces a run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                            config=quick_config(epochs=1))
        assert worker.train_run_folder(store.folder(record.id)) == "finished"
        assert store.get(record.id).info["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_crash_inside_a_run_is_reported_and_the_queue_goes_on(store, pool, tmp_path):
    queue = TaskQueue(1, pool=pool)
    broken = tmp_path / "weights.safetensors"
    broken.write_bytes(b"not weights")
    snap = wait(run(store, queue, weights_path=str(broken)))
    assert snap.status == "failed" and snap.message
    assert store.get(snap.run_id).status == "failed"
    assert wait(run(store, queue)).status == "finished"


def test_one_person_cannot_fill_the_queue_and_can_clear_their_waiting_runs(store, pool):
    queue = TaskQueue(1, per_person=2, pool=pool)
    assert queue.acquire("another-class", threading.Event())
    mine = [run(store, queue, owner=ALICE), run(store, queue, owner=ALICE)]
    assert queue.room_for(ALICE) == 0
    with pytest.raises(QueueFullError, match="cancel your waiting runs"):
        run(store, queue, owner=ALICE)
    assert len(store.list(owner=ALICE)) == 2  # the refused click left nothing behind
    theirs = run(store, queue, owner=BOB)  # someone else still gets in line
    assert cancel_waiting(ALICE, queue) == 2
    assert [wait(j).status for j in mine] == ["cancelled", "cancelled"]
    assert queue.room_for(ALICE) == 2
    queue.release("another-class")
    assert wait(theirs).status == "finished"


def test_a_run_keeps_its_exact_starting_model(store, pool):
    """The Feature maps page compares a run's "before" with its "after"."""
    built = models.starting_model("resnet18", ["disc", "square"], pretrained=False, seed=7, image_size=32)
    job = run(store, TaskQueue(1, pool=pool), quick_config(freeze=[], seed=7, epochs=1), backbone="resnet18",
              pretrained=False)
    assert wait(job).status == "finished"
    again = store.load_starting_model(job.run_id)
    assert set(again.state_dict()) == set(built.state_dict())
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, built.state_dict()[name]), name
    trained = store.load_model(job.run_id)
    assert not torch.equal(trained.conv1.weight, again.conv1.weight)  # training moved it


def test_run_ids_from_a_link_cannot_reach_outside_the_store(store):
    assert store.get("../../etc") is None
    assert store.get("0123456789abcdef") is None
    assert not is_run_id("0123456789ABCDEF/..")


def test_damaged_weights_files_of_a_run_are_a_clear_error(store, pool):
    job = run(store, TaskQueue(1, pool=pool))
    wait(job)
    store.load_starting_model(job.run_id), store.load_model(job.run_id)  # readable as saved
    for name in ("start.safetensors", "model.safetensors"):
        (store.root / job.run_id / name).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="starting weights could not be read"):
        store.load_starting_model(job.run_id)
    with pytest.raises(CheckpointError, match="saved model could not be read"):
        store.load_model(job.run_id)


def test_out_of_gpu_memory_retries_once_with_half_the_batch_then_stops_with_a_message(store, monkeypatch):
    """The loop retries at half the batch; the worker's record and events say so."""
    real_fit = classify.fit
    batch_sizes = []

    def fit_that_runs_out(times: int):
        def fit(model, train_ds, val_ds, config, callbacks, stop, **kwargs):
            class OutOfMemory(Callback):
                def on_fit_start(self, info):
                    batch_sizes.append(self.trainer.config.batch_size)

                def on_batch_end(self, progress):
                    if len(batch_sizes) <= times and progress.phase == "train":
                        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

            return real_fit(model, train_ds, val_ds, config, [*callbacks, OutOfMemory()], stop, **kwargs)
        return fit

    def new_run():
        return create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                          config=quick_config(epochs=1))

    monkeypatch.setattr(classify, "fit", fit_that_runs_out(1))
    record = new_run()
    assert worker.train_run_folder(store.folder(record.id)) == "finished" and batch_sizes == [8, 4]
    record = store.get(record.id)
    assert "retried with batch size 4" in record.message and record.config["batch_size"] == 4
    events, _ = store.read_events(record.id)
    assert [e["batch_size"] for e in events if e["event"] == "retry"] == [4]

    batch_sizes.clear()
    monkeypatch.setattr(classify, "fit", fit_that_runs_out(2))
    record = new_run()
    assert worker.train_run_folder(store.folder(record.id)) == "failed" and batch_sizes == [8, 4]
    assert "ran out of memory" in store.get(record.id).message


def test_a_run_left_running_by_a_killed_server_is_marked_interrupted_and_keeps_its_best_weights(store, monkeypatch):
    """kill -9 of the server: its record says "running" and no process trains it any more."""
    epochs_seen = []
    real_fit = classify.fit

    def fit_killed_after_the_first_epoch(model, train_ds, val_ds, config, callbacks, stop, **kwargs):
        class Die(Callback):
            def on_epoch_end(self, metrics):
                epochs_seen.append(metrics.epoch)
                raise KeyboardInterrupt  # the process dies here, record and all

        return real_fit(model, train_ds, val_ds, config, [*callbacks, Die()], stop, **kwargs)

    monkeypatch.setattr(classify, "fit", fit_killed_after_the_first_epoch)
    record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=quick_config(epochs=3), owner=ALICE)
    with pytest.raises(KeyboardInterrupt):
        worker.train_run_folder(store.folder(record.id))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs: the dead worker's
    left = store.get(record.id)
    assert left.status == "running" and epochs_seen == [1]
    store.save(type(left)(**{**left.__dict__, "worker_pid": gone.pid}))

    assert store.mark_interrupted() == [record.id]
    after = store.get(record.id)
    assert after.status == "interrupted" and after.done and "best weights so far" in after.message
    assert len(after.epochs) == 1
    store.load_model(record.id)  # what it learned in epoch 1 is still there
    assert store.mark_interrupted() == []


def test_a_run_whose_worker_still_trains_is_not_marked_interrupted(store):
    record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=quick_config(epochs=1))
    store.save(type(record)(**{**record.__dict__, "status": "running", "worker_pid": os.getpid()}))
    assert store.mark_interrupted() == []
    assert store.get(record.id).status == "running"


def fake_run(store, owner, *, hours_ago, mb=0.9, status="finished"):
    """A finished run of ``mb`` megabytes that ended ``hours_ago`` (no training needed)."""
    from core.runs import RunRecord, new_run_id

    ended = time.time() - hours_ago * 3600
    record = store.create(RunRecord(id=new_run_id(), status=status, created=ended - 60, backbone="efficientnet_lite0",
                                    pretrained=True, classes=["a", "b"], config={}, owner=owner,
                                    label=f"run {hours_ago} h", finished=ended))
    (store.folder(record.id) / "model.safetensors").write_bytes(b"\0" * int(mb * 2**20))
    return record.id


def test_the_disk_cap_spares_recent_and_viewed_runs_and_prunes_the_heaviest_person_first(tmp_path):
    store = RunStore(tmp_path / "data", cap_mb=4)
    alice = [fake_run(store, ALICE, hours_ago=h) for h in (5, 4, 3)]
    bob_old = fake_run(store, BOB, hours_ago=6)  # the oldest run of all, but Bob uses little space
    just_finished = fake_run(store, ALICE, hours_ago=0.1)
    store.touch(alice[0])  # a page shows Alice's oldest run right now
    assert store.enforce_cap() == [alice[1]]  # 4.5 MB -> 3.6 MB: Alice's oldest run not on screen
    assert {r.id for r in store.list()} == {alice[0], alice[2], bob_old, just_finished}
    notes = store.notes(ALICE)
    assert len(notes) == 1 and "run 4 h" in notes[0] and "removed" in notes[0]
    assert store.notes(BOB) == []
    store.clear_notes(ALICE)
    assert store.notes(ALICE) == []


def test_uploaded_weights_count_against_the_disk_cap(tmp_path):
    store = RunStore(tmp_path / "data", cap_mb=2)
    old = fake_run(store, ALICE, hours_ago=3)
    assert store.enforce_cap() == []  # 0.9 MB of runs: under the cap
    uploads = tmp_path / "data" / "uploads" / ALICE
    uploads.mkdir(parents=True)
    (uploads / "weights.safetensors").write_bytes(b"\0" * 2**21)
    assert store.usage_bytes() > 2 * 2**20  # over the cap only with the upload
    assert store.enforce_cap() == [old]


def test_the_disk_cap_never_removes_a_run_that_just_finished(tmp_path, pool):
    store = RunStore(tmp_path / "data", cap_mb=10)
    queue = TaskQueue(1, pool=pool)
    jobs = [run(store, queue) for _ in range(2)]
    for job in jobs:
        assert wait(job).status == "finished"
    # each Lite0 model is ~14 MB, far over the cap, but both finished a moment ago
    assert {r.id for r in store.list()} == {j.run_id for j in jobs}


def test_offline_torchvision_weights_fail_the_run_with_instructions(store, monkeypatch):
    import urllib.error

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="resnet18", pretrained=True,
                        config=quick_config(freeze=[]))
    assert worker.train_run_folder(store.folder(record.id)) == "failed"
    assert "TORCH_HOME" in store.get(record.id).message


def test_a_worker_whose_server_is_gone_stops_and_marks_its_run_interrupted(store):
    """After kill -9 of the server its workers are orphans: they must not train on unseen."""
    record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=quick_config(epochs=5))
    not_my_parent = os.getppid() + 1
    assert worker.train_run_folder(store.folder(record.id), parent_pid=not_my_parent) == "interrupted"
    after = store.get(record.id)
    assert after.status == "interrupted" and "server stopped" in after.message and len(after.epochs) < 5


def test_a_run_folder_of_an_unknown_kind_fails_with_a_message_naming_the_known_kinds(store):
    from dataclasses import replace

    record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=TrainConfig(epochs=1, batch_size=4, image_size=32, freeze=["stem"]))
    store.save(replace(record, config={**record.config, "kind": "telepathy"}))
    assert worker.train_run_folder(store.folder(record.id)) == "failed"
    after = store.get(record.id)
    assert "telepathy" in after.message and "train" in after.message and after.done


def test_an_early_stop_and_the_epoch_kept_are_in_the_run_record(store):
    record = create_run(store, Shapes(8, 0), Shapes(4, 1), backbone="efficientnet_lite0", pretrained=True,
                        config=TrainConfig(epochs=40, batch_size=4, image_size=32, lr=0.05, early_stopping=1,
                                           freeze=[g for g in models.group_names("efficientnet_lite0")
                                                   if g != "head"]))
    assert worker.train_run_folder(store.folder(record.id)) == "finished"
    after = store.get(record.id)
    assert after.info["stopped"] == "early" and len(after.epochs) < 40
    assert 1 <= after.info["best_epoch"] < len(after.epochs) and "Stopped early" in after.message


def test_best_weights_reach_disk_at_once_then_at_most_every_few_seconds(monkeypatch):
    """An interrupted run keeps its best weights so far; writing the model at every new best took a
    quarter of a short run, so a newer best within ``every`` seconds waits in memory, unchanged by
    the epochs that train on after it, until it is due."""
    from types import SimpleNamespace

    clock = {"now": 100.0}
    monkeypatch.setattr(recording.time, "monotonic", lambda: clock["now"])
    written = []

    class Store:
        def save_model(self, run_id, model, state=None):
            written.append({k: v.clone() for k, v in (model.state_dict() if state is None else state).items()})

    model = torch.nn.Linear(2, 1)
    keeper = recording.BestKeeper(Store(), "r")

    def epoch(acc, seconds_later, weight):
        clock["now"] += seconds_later
        with torch.no_grad():
            model.weight.fill_(weight)
        keeper.epoch_end(model, SimpleNamespace(val_acc=acc, train_loss=1.0))

    epoch(0.5, 1, weight=1.0)  # the first best: written at once
    assert len(written) == 1 and written[0]["weight"].eq(1.0).all()
    epoch(0.7, 1, weight=2.0)  # a better one a second later: kept in memory
    epoch(0.6, 1, weight=3.0)  # worse, not yet due
    assert len(written) == 1
    epoch(0.6, keeper.every, weight=4.0)  # worse, but the waiting best is due: the epoch-2 weights
    assert len(written) == 2 and written[1]["weight"].eq(2.0).all()
    epoch(0.9, keeper.every, weight=5.0)  # a new best when due: written at once
    assert len(written) == 3 and written[2]["weight"].eq(5.0).all()
    epoch(0.2, keeper.every, weight=6.0)  # nothing waiting: nothing written
    assert len(written) == 3


def test_a_waiting_best_copies_what_the_fit_trains_and_keeps_the_frozen_body_by_reference(monkeypatch):
    """Copying all of EfficientNet-Lite0 at nearly every epoch of a head that trains in 30 ms cost a
    third of a default run: what no epoch of the fit trains cannot change before the copy is
    written, so only the optimizer's parameters and the buffers are copied."""
    from types import SimpleNamespace

    from tests.toys import tiny

    clock = {"now": 100.0}
    monkeypatch.setattr(recording.time, "monotonic", lambda: clock["now"])
    written = []

    class Store:
        def save_model(self, run_id, model, state=None):
            written.append({k: v.clone() for k, v in state.items()} if state is not None else None)

    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc.weight.requires_grad_(True)
    model.fc.bias.requires_grad_(True)
    # the block's weights thaw in a later epoch: in the optimizer, frozen for now
    trainer = SimpleNamespace(model=model, optimizer=SimpleNamespace(param_groups=[
        {"params": [model.fc.weight, model.fc.bias]}, {"params": list(model.block.parameters())}]))
    keeper = recording.BestKeeper(Store(), "r")
    keeper.reset(trainer)
    keeper.epoch_end(model, SimpleNamespace(val_acc=0.5, train_loss=1.0))  # written at once
    clock["now"] += 1
    keeper.epoch_end(model, SimpleNamespace(val_acc=0.7, train_loss=1.0))  # waits in memory
    pending = keeper.pending
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the epochs after it train the head, thaw the block, update statistics
        model.fc.weight.add_(1.0)
        model.block[0].weight.add_(1.0)
        model.block[1][0].running_mean.add_(1.0)
    stem = model.stem[0].weight
    assert pending["stem.0.weight"].data_ptr() == stem.data_ptr()  # never trains: not copied
    for key in ("fc.weight", "block.0.weight", "block.1.0.running_mean"):
        assert pending[key].data_ptr() != model.state_dict()[key].data_ptr(), key
    clock["now"] += keeper.every
    keeper.epoch_end(model, SimpleNamespace(val_acc=0.6, train_loss=1.0))  # due: the best of epoch 2
    assert len(written) == 2 and written[1].keys() == best.keys()
    assert all(torch.equal(written[1][k], best[k]) for k in best)
