"""Checkpoints that survive a crash at any instant (docs/robustness.md): numbered folders behind an atomically
replaced `checkpoint` link, resume finding the newest complete one, and a fault-injection run that "kills" the
process before every filesystem change of a save in turn."""

import json
import os
import shutil

import pytest
import torch

from densegrpo_core.models.pipeline import load_pipeline
from densegrpo_core.rewards import get_reward
from densegrpo_core.training import checkpoint
from densegrpo_core.training.checkpoint import complete_checkpoints, resolve_checkpoint
from densegrpo_core.training.trainer import TrainConfig, Trainer

SMALL = dict(
    steps=3,
    prompts_per_iteration=2,
    group_size=2,
    train_batch=2,
    lora_rank=2,
    lora_alpha=4,
    eval_every=2,
    save_every=1,
    eval_seeds=(0,),
    eval_steps=3,
    lr=1e-2,
    iterations=3,
)


def make_trainer(out, **kw):
    cfg = TrainConfig(out_dir=str(out), **{**SMALL, **kw})
    pipe, train_prompts, eval_prompts = load_pipeline("toy")
    return Trainer(cfg, pipe, get_reward("toy"), train_prompts, eval_prompts[:1])


def comparable(metrics):
    """Metrics without the timings and memory figures, which differ between runs."""
    return [{k: v for k, v in m.items() if not k.endswith("_s") and "_bytes" not in k} for m in metrics]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    t = make_trainer(tmp_path_factory.mktemp("full") / "run")
    t.run()
    return t


def test_every_save_is_a_numbered_folder_and_checkpoint_links_the_newest(tmp_path):
    t = make_trainer(tmp_path / "run")
    t.run()
    out = tmp_path / "run"
    assert os.path.islink(out / "checkpoint") and os.readlink(out / "checkpoint") == "checkpoint-000003"
    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == ["checkpoint", "checkpoint-000003"]
    assert (out / "checkpoint" / "state.pt").is_file()  # the documented path reads through the link


def test_saving_twice_at_one_iteration_keeps_both_names_distinct(tmp_path):
    t = make_trainer(tmp_path / "run", iterations=1)
    t.run()
    t.save_checkpoint()  # same iteration again (a stop right after a periodic save)
    out = tmp_path / "run"
    assert os.readlink(out / "checkpoint") == "checkpoint-000001.1"
    assert [os.path.basename(p) for p in complete_checkpoints(str(out))] == ["checkpoint-000001.1"]


def test_resume_accepts_the_out_dir_the_link_or_a_numbered_folder(tmp_path):
    make_trainer(tmp_path / "run", iterations=2).run()
    out = str(tmp_path / "run")
    numbered = os.path.join(out, "checkpoint-000002")
    assert resolve_checkpoint(out) == os.path.join(out, "checkpoint")
    assert resolve_checkpoint(os.path.join(out, "checkpoint") + "/") == os.path.join(out, "checkpoint")
    assert resolve_checkpoint(numbered) == numbered


def test_a_missing_link_falls_back_to_the_newest_complete_numbered_folder(tmp_path):
    make_trainer(tmp_path / "run", iterations=2).run()
    out = tmp_path / "run"
    shutil.copytree(out / "checkpoint-000002", out / "checkpoint-000001")  # an older one beside it
    os.remove(out / "checkpoint")
    assert resolve_checkpoint(str(out / "checkpoint")) == str(out / "checkpoint-000002")
    os.symlink("checkpoint-000009", out / "checkpoint")  # a broken link
    assert resolve_checkpoint(str(out / "checkpoint")) == str(out / "checkpoint-000002")


def test_an_incomplete_folder_is_never_chosen(tmp_path):
    make_trainer(tmp_path / "run", iterations=2).run()
    out = tmp_path / "run"
    shutil.copytree(out / "checkpoint-000002", out / "checkpoint-000005")
    os.remove(out / "checkpoint-000005" / "metrics.json")
    os.remove(out / "checkpoint")
    assert resolve_checkpoint(str(out)) == str(out / "checkpoint-000002")
    with pytest.raises(FileNotFoundError, match=r"incomplete: metrics.json missing"):
        resolve_checkpoint(str(out / "checkpoint-000005"))


def test_no_checkpoint_is_a_clear_error_naming_the_path(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in '.*run'.*before its first save"):
        resolve_checkpoint(str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in '.*run/checkpoint'"):
        resolve_checkpoint(str(tmp_path / "run" / "checkpoint"))


def test_a_checkpoint_folder_of_the_older_layout_loads_and_becomes_a_link(tmp_path, uninterrupted):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(os.path.realpath(os.path.join(uninterrupted.config.out_dir, "checkpoint")), out / "checkpoint")
    t = make_trainer(out, iterations=4)
    t.load_checkpoint(str(out / "checkpoint"))
    assert t.iteration_done == 3
    t.run()
    assert os.path.islink(out / "checkpoint") and os.readlink(out / "checkpoint") == "checkpoint-000004"
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_without_symbolic_links_the_newest_numbered_folder_is_resumed(tmp_path, monkeypatch, uninterrupted):
    """Windows without developer mode cannot make links: the numbered folders alone are kept, and an older
    version's checkpoint/ folder is moved away so that it cannot shadow them."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(os.path.realpath(os.path.join(uninterrupted.config.out_dir, "checkpoint")), out / "checkpoint")

    def no_links(*a, **k):
        raise OSError(1, "symbolic link privilege not held")

    monkeypatch.setattr(os, "symlink", no_links)
    t = make_trainer(out, iterations=4)
    t.load_checkpoint(str(out))
    assert t.run().metrics[-1]["iteration"] == 4
    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == ["checkpoint-000004"]
    assert resolve_checkpoint(str(out / "checkpoint")) == str(out / "checkpoint-000004")


def test_a_save_that_fails_leaves_the_previous_checkpoint_and_names_the_folder(tmp_path, monkeypatch):
    t = make_trainer(tmp_path / "run", iterations=1)
    t.run()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.lora, "save_lora", full_disk)
    t.iteration_done += 1
    with pytest.raises(checkpoint.WriteFailed, match=r"could not write the checkpoint in '.*run'.*No space left"):
        t.save_checkpoint()
    out = tmp_path / "run"
    assert os.readlink(out / "checkpoint") == "checkpoint-000001"
    kept = ["checkpoint", "checkpoint-000001", "evals.jsonl", "lora.safetensors", "metrics.jsonl"]
    assert sorted(os.listdir(out)) == kept  # no temporary folder left


# ------------------------------------------------------------------------------------------- fault injection
class Killed(BaseException):
    """The process died here (raised past every `except Exception`, as nothing runs after a kill -9)."""


class FaultInjector:
    """Counts the filesystem changes (rename, replace, symlink, unlink, rmdir, rmtree's deletions) made while
    armed; at change number `kill_at` the process "dies": that change and every later one raise Killed, so
    no cleanup handler touches the disk either. Kills nothing when kill_at is None (counting)."""

    NAMES = ("rename", "replace", "symlink", "remove", "unlink", "rmdir")

    def __init__(self, monkeypatch, kill_at=None):
        self.armed, self.dead, self.kill_at, self.ops = False, False, kill_at, []
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self.wrap(name, getattr(os, name)))

    def wrap(self, name, real):
        def op(*args, **kwargs):
            if self.dead:
                raise Killed(name)
            if self.armed:
                if len(self.ops) == self.kill_at:
                    self.dead = True
                    raise Killed(name)
                self.ops.append(" ".join([name, *(os.path.basename(str(a)) for a in args)]))
            return real(*args, **kwargs)

        return op


def run_killed_in_second_save(out, monkeypatch, kill_at):
    """A 3-iteration run saving every iteration, armed from the first checkpoint event on: the ops of the
    second save (and what follows it). → the injector."""
    injector = FaultInjector(monkeypatch, kill_at)
    t = make_trainer(out)

    def on_event(event):
        if event["type"] == "checkpoint" and event["iteration"] == 1:
            injector.armed = True

    t.on_event = on_event
    try:
        t.run()
    except Killed:
        pass
    monkeypatch.undo()
    return injector


def test_the_second_save_renames_links_and_prunes(tmp_path, monkeypatch):
    ops = run_killed_in_second_save(tmp_path / "run", monkeypatch, kill_at=None).ops
    pid = os.getpid()
    link = f"replace .checkpoint.link{pid} checkpoint"
    steps = [
        f"rename .checkpoint-000002.tmp{pid} checkpoint-000002",  # complete under its numbered name
        f"symlink checkpoint-000002 .checkpoint.link{pid}",
        link,  # the one atomic switch
    ]
    assert [ops.index(op) for op in steps] == sorted(ops.index(op) for op in steps)
    before = ops[: ops.index(steps[0])]  # the files written inside the temporary folder (atomic LoRA writes)
    assert all(".checkpoint" not in op.split()[-1] or "tmp" in op for op in before), before
    prune = f"rename checkpoint-000001 .checkpoint.trash{pid}-checkpoint-000001"
    assert ops.index(prune) > ops.index(link)  # the old one goes only once the new one is reachable


@pytest.mark.slow
def test_a_kill_before_any_filesystem_change_of_a_save_leaves_a_resumable_run_with_the_same_metrics(
    tmp_path, monkeypatch, uninterrupted
):
    """Kill before change k of the second save (and of everything after it: pruning, the third save, the
    LoRA export, the lock's removal), for every k; resume from out_dir/checkpoint each time."""
    ops = run_killed_in_second_save(tmp_path / "count", monkeypatch, kill_at=None).ops
    assert len(ops) >= 10
    reached = set()
    for k in range(len(ops)):
        out = tmp_path / f"kill{k}"
        injector = run_killed_in_second_save(out, monkeypatch, kill_at=k)
        assert injector.dead, k
        found = resolve_checkpoint(str(out / "checkpoint"))
        assert checkpoint.is_complete(found), (k, ops[k])
        resumed = make_trainer(out)
        resumed.load_checkpoint(str(out / "checkpoint"))
        reached.add(resumed.iteration_done)
        resumed.run()
        assert comparable(resumed.metrics) == comparable(uninterrupted.metrics), (k, ops[k])
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert comparable(lines) == comparable(uninterrupted.metrics), (k, ops[k])
        for a, b in zip(resumed.params, uninterrupted.params):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        kept = sorted(n for n in os.listdir(out) if "checkpoint" in n)  # one save, linked; no leftovers
        assert len(kept) == 2 and os.readlink(out / "checkpoint") == kept[1].split("/")[-1], (k, kept)
        assert kept[1].startswith("checkpoint-000003"), (k, kept)
    assert reached == {1, 2, 3}  # kills before, during and after the second save's link change


def test_a_kill_while_writing_the_files_leaves_the_previous_checkpoint(tmp_path, monkeypatch, uninterrupted):
    t = make_trainer(tmp_path / "run")
    real = checkpoint._write_files

    def dies_midway(trainer, folder, states):
        if trainer.iteration_done == 2:
            torch.save({"partial": True}, os.path.join(folder, "state.pt"))
            raise Killed("write")
        real(trainer, folder, states)

    monkeypatch.setattr(checkpoint, "_write_files", dies_midway)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: None)  # a dead process cleans nothing up
    with pytest.raises(Killed):
        t.run()
    monkeypatch.undo()
    out = tmp_path / "run"
    assert any(n.startswith(".checkpoint-000002.tmp") for n in os.listdir(out))
    resumed = make_trainer(out)
    assert resumed.load_checkpoint(str(out)) == str(out / "checkpoint")
    assert resumed.iteration_done == 1
    resumed.run()
    assert comparable(resumed.metrics) == comparable(uninterrupted.metrics)
    assert not [n for n in os.listdir(out) if n.startswith(".")]
