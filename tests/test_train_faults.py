"""Faults: SIGKILL + resume reproduces the uninterrupted run, malicious pickles are refused,
NaN losses stop the run naming the step, SIGINT saves a checkpoint, a run directory has one
writer at a time."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import TinyMLP, run_in_subprocess_env, splits, tiny_config

from mmtx.io import DirectoryInUse
from mmtx.train import (
    NonFiniteLossError,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    train,
)

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "test_train_support.py"
LOSS_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")


def _start(run_dir, cfg, **data_kw):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run_dir), json.dumps(cfg), json.dumps(data_kw)],
        env=run_in_subprocess_env(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _wait_for(predicate, proc, timeout=90.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _rows(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], {k: r[k] for k in LOSS_KEYS if k in r}) for r in rows]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    # grad accumulation (2 micro-batches a step), dropout and random augmentation all on:
    # the resumed run must still land on exactly the same numbers. An epoch is 6 steps, so the
    # checkpoints (every 4) resume mid-epoch.
    cfg = tiny_config(max_steps=16, checkpoint_every=4, log_every=1, eval_every=8, keep_last=3)
    cfg["optim"]["grad_accum"] = 2
    cfg["data"]["batch_size"] = 8
    reference = train(cfg, run_dir=tmp_path / "reference", data=splits(augment=True))

    run = tmp_path / "killed"
    proc = _start(run, cfg, augment=True, delay=0.01)  # ~0.16 s a step
    try:
        saved = _wait_for(lambda: any(s >= 4 for s, _ in list_checkpoints(run)), proc)
        proc.kill()  # SIGKILL: no handler, no cleanup
    finally:
        proc.wait(timeout=30)
    assert saved, f"no checkpoint before the run ended: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()  # it really was killed mid-run
    killed_at = list_checkpoints(run)[-1][0]
    assert killed_at < 16

    resumed = train(cfg, run_dir=run, data=splits(augment=True), resume=True)
    assert resumed["resumed_from"] == killed_at and resumed["steps"] == 16
    for key in LOSS_KEYS:
        assert resumed[key] == reference[key], key  # exact on CPU, same seed
    # the step count stayed right: one train row per step, identical to the reference's
    assert _rows(run) == _rows(tmp_path / "reference")


class Payload:
    """Unpickling this runs code (writes a marker file): what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    control = tmp_path / "control_marker"
    torch.save(Payload(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # unsafe load: the payload is real
    assert control.exists()

    run = tmp_path / "run"
    train(tiny_config(max_steps=4, checkpoint_every=2, eval_every=0), run_dir=run,
          data=splits())
    marker = tmp_path / "marker"
    newest = latest_checkpoint(run)
    torch.save(Payload(marker), newest / "optimizer.bin")
    with pytest.raises(ValueError, match="refused"):
        train(tiny_config(max_steps=6, checkpoint_every=2, eval_every=0), run_dir=run,
              data=splits(), resume=True)
    torch.save(Payload(marker), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="refused"):
        load_weights(TinyMLP(), tmp_path / "weights.pt")
    assert not marker.exists()


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    cfg = tiny_config(max_steps=12, checkpoint_every=2, eval_every=0)
    cfg["model"]["args"] = {"nan_at_call": 5}  # the 5th training forward = step 5
    with pytest.raises(NonFiniteLossError, match="at step 5") as e:
        train(cfg, run_dir=tmp_path, data=splits())
    assert "step_00000004" in str(e.value)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    assert not (tmp_path / "summary.json").exists()
    weights = load_weights(TinyMLP(), latest_checkpoint(tmp_path) / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in weights.parameters())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_saves_a_checkpoint_then_exits(tmp_path, signum):
    cfg = tiny_config(max_steps=500, checkpoint_every=0, eval_every=0, log_every=1)
    proc = _start(tmp_path, cfg, delay=0.005)
    metrics = tmp_path / "metrics.jsonl"
    try:
        started = _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3,
                            proc)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started, proc.stderr.read()[-2000:]
    assert proc.returncode == 128 + signum, proc.stderr.read()[-2000:]
    assert f"{signum.name}: saving a checkpoint after this step" in proc.stdout.read()
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert len(steps) == 1 and 3 <= steps[0] < 500  # checkpoint_every 0: only the SIGINT one
    assert not (tmp_path / "summary.json").exists()


class _NanGrad(torch.autograd.Function):
    """Identity forward; NaN gradient backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class NanGradMLP(TinyMLP):
    def __init__(self, nan_grad_at_call):
        super().__init__(dropout=0.0)
        self.nan_grad_at_call = nan_grad_at_call

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_grad_at_call:
                out = _NanGrad.apply(out)
        return out


@pytest.mark.parametrize("clip_grad", [1.0, None])
def test_nan_gradients_with_a_finite_loss_are_never_applied_or_saved(tmp_path, clip_grad):
    cfg = tiny_config(max_steps=12, checkpoint_every=1, keep_last=10, eval_every=0)
    cfg["optim"]["clip_grad"] = clip_grad
    with pytest.raises(NonFiniteLossError, match=r"at step 4 \(loss [\d.]+, gradient norm nan"):
        train(cfg, run_dir=tmp_path, data=splits(), model=NanGradMLP(nan_grad_at_call=4))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3]
    for _, path in list_checkpoints(tmp_path):
        weights = load_weights(TinyMLP(), path / "model.safetensors")
        assert all(torch.isfinite(p).all() for p in weights.parameters())


def test_a_second_writer_is_refused_at_once_until_the_first_dies(tmp_path):
    cfg = tiny_config(max_steps=500, checkpoint_every=0, eval_every=0, log_every=1)
    proc = _start(tmp_path, cfg, delay=0.005)
    metrics = tmp_path / "metrics.jsonl"
    try:
        started = _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2,
                            proc)
        assert started, proc.stderr.read()[-2000:]
        with pytest.raises(DirectoryInUse, match=rf"run_dir '{tmp_path}' is in use by another "
                                                 rf"process \(pid {proc.pid}\)"):
            train(tiny_config(max_steps=4), run_dir=tmp_path, data=splits(), resume="auto")
        assert proc.poll() is None  # refused while the first trains, not queued behind it
        proc.kill()  # SIGKILL: the lock goes with the process, no cleanup needed
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = train(tiny_config(max_steps=4), run_dir=tmp_path, data=splits(), resume="auto")
    assert result["steps"] == 4


def test_resume_with_other_hyperparameters_is_refused_naming_the_keys(tmp_path):
    cfg = tiny_config(max_steps=4, checkpoint_every=2, eval_every=0)
    train(cfg, run_dir=tmp_path, data=splits())
    saved = (tmp_path / "config.yaml").read_text()
    changed = tiny_config(max_steps=4, checkpoint_every=2, eval_every=0)
    changed["optim"]["lr"] = 0.5
    changed["model"]["args"] = {"hidden": 64}
    with pytest.raises(ValueError, match=r"resume: model.args.hidden None -> 64, optim.lr "
                                         r"0.003 -> 0.5 differ from the run's .*config.yaml"):
        train(changed, run_dir=tmp_path, data=splits(), resume=True)
    assert (tmp_path / "config.yaml").read_text() == saved  # still describes the checkpoints

    # when, how often and where it logs, evaluates and saves may change; the run records it
    quiet = tiny_config(max_steps=4, checkpoint_every=2, eval_every=0, log_every=1)
    quiet["logging"]["project"] = "other"
    result = train(quiet, run_dir=tmp_path, data=splits(), resume=True)
    assert result["config_changes"] == [
        {"step": 4, "key": "logging.project", "from": "mmtx", "to": "other"},
        {"step": 4, "key": "train.log_every", "from": 2, "to": 1}]
    assert "log_every: 1" in (tmp_path / "config.yaml").read_text()


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    run = tmp_path_factory.mktemp("two_checkpoints")
    train(tiny_config(max_steps=4, checkpoint_every=2, eval_every=0), run_dir=run, data=splits())
    return run


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", _truncate),
    ("model.safetensors", lambda p: p.write_bytes(bytes(range(256)) * 8)),
    ("model.safetensors", lambda p: p.write_bytes(b"")),
    ("optimizer.bin", _truncate),
    ("scheduler.bin", _truncate),
    ("train_state.json", _truncate),
    # Accelerate only logs a random-state file that does not load: it must not resume silently
    ("random_states_0.pkl", _truncate),
    ("random_states_0.pkl", lambda p: p.write_bytes(bytes(range(256)) * 8)),
    ("random_states_0.pkl", lambda p: torch.save([1, 2], p)),  # loads, but holds no states
    ("train_state.json", lambda p: p.write_text(p.read_text().replace('"step": 4', '"step": '
                                                                      '"4x"'))),
    ("train_state.json", lambda p: p.write_text(p.read_text().replace('"step": 4', '"step": '
                                                                      '4.5'))),
    ("train_state.json", lambda p: p.write_text(p.read_text().replace('"step": 4', '"step": '
                                                                      '3'))),
])
def test_a_corrupt_checkpoint_names_its_file_and_the_older_one(two_checkpoints, tmp_path, name,
                                                               damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    newest, older = run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000002"
    damage(newest / name)
    cfg = tiny_config(max_steps=4, checkpoint_every=2, eval_every=0)
    with pytest.raises(ValueError, match=rf"checkpoint '{newest}': {name} is unreadable \(.+\); "
                                         rf"an older checkpoint exists: {older} \(move "
                                         rf"step_00000004 out of .* to resume from it\)"):
        train(cfg, run_dir=run, data=splits(), resume=True)
    if name == "optimizer.bin":  # the hint holds: without the damaged one, the run resumes
        shutil.move(newest, tmp_path / "damaged")
        assert train(cfg, run_dir=run, data=splits(), resume=True)["resumed_from"] == 2


def test_train_state_values_are_named_when_wrong(two_checkpoints, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    state = run / "checkpoints" / "step_00000004" / "train_state.json"
    cfg = tiny_config(max_steps=4, checkpoint_every=2, eval_every=0)
    for text, reason in ((state.read_text().replace('"step": 4', '"step": "4x"'),
                          r"'step' must be an integer >= 0, got '4x'"),
                         (state.read_text().replace('"step": 4', '"step": 3'),
                          r"'step' is 3 in the checkpoint of step 4"),
                         ("[4]", r"expected a JSON object, got list")):
        state.write_text(text)
        with pytest.raises(ValueError, match=rf"train_state.json is unreadable \({reason}\)"):
            train(cfg, run_dir=run, data=splits(), resume=True)


def test_a_missing_random_state_file_is_named(two_checkpoints, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    newest = run / "checkpoints" / "step_00000004"
    (newest / "random_states_0.pkl").unlink()
    with pytest.raises(ValueError, match=rf"checkpoint '{newest}': no random_states_0.pkl; it "
                                         rf"holds the random states of 0 process\(es\)"):
        train(tiny_config(max_steps=4, checkpoint_every=2, eval_every=0), run_dir=run,
              data=splits(), resume=True)
