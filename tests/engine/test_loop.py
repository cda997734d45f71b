"""Trainer: kill + resume gives the same final weights as an uninterrupted run (dropout, random augmentation,
scheduler, EMA, AMP scaler all restored); logs, best tracking and skipped-sample counting."""
import os
import random
import shutil

import pytest
import torch
from torch import nn

from vision_rwkv.data.shapes import ShapesClassification
from vision_rwkv.engine import EpochLoader, Trainer, load_checkpoint, read_metrics_csv, seed_everything


class _Aug:
    """Random flip + random brightness from python/torch RNGs (seeded per sample by the loader)."""

    def __call__(self, img):
        import torchvision.transforms.functional as F
        t = F.to_tensor(img)
        if random.random() < 0.5:
            t = t.flip(-1)
        return t * (0.8 + 0.4 * torch.rand(()))


def _trainer(run_dir, precision="fp32", **kw):
    from timm.utils import ModelEmaV3
    seed_everything(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 8))
    ds = ShapesClassification("train", length=40, image_size=16, transform=_Aug())
    loader = EpochLoader(ds, 8, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.3 * s))
    ema = ModelEmaV3(model, decay=0.9)

    def loss_fn(m, batch):
        logits = m(batch[0])
        return nn.functional.cross_entropy(logits, batch[1]), {"acc": (logits.argmax(-1) == batch[1]).float().mean()}

    def eval_fn(m):
        return {"neg_w": -float(m[-1].weight.abs().sum())}

    return Trainer(model, opt, loader, loss_fn, run_dir=run_dir, epochs=3, scheduler=sched, ema=ema,
                   precision=precision, grad_accum_steps=2, clip_grad=1.0, eval_fn=eval_fn, best_metric="neg_w",
                   ckpt_every_steps=2, keep_last=2, log_every=1, show_progress=False, **{"plot": False, **kw})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kill_and_resume_is_exact(tmp_path, precision):
    full = _trainer(tmp_path / "full", precision)
    result = full.fit()
    assert result["step"] == 6 and result["epoch"] == 3  # 40 samples / 8 = 5 batches -> 2 steps of 2 per epoch
    crashed = _trainer(tmp_path / "crash", precision, stop_after_steps=5)
    assert crashed.fit()["stopped"]
    resumed = _trainer(tmp_path / "crash", precision)
    torch.manual_seed(1234)  # a resumed process starts from some other RNG state
    resumed.fit(resume="latest")
    assert resumed.step == 6
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in full.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k
    # the resumed run's CSV holds each step exactly once and matches the uninterrupted one
    a = read_metrics_csv(tmp_path / "full" / "train_metrics.csv")
    b = read_metrics_csv(tmp_path / "crash" / "train_metrics.csv")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_resume_without_checkpoint_and_best(tmp_path):
    t = _trainer(tmp_path)
    with pytest.raises(FileNotFoundError):
        t.fit(resume=tmp_path / "missing.pt")
    t = _trainer(tmp_path)
    res = t.fit(resume="latest")  # nothing there yet: starts fresh
    ck = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert res["best"]["value"] == ck["best"]["value"] and "ema_neg_w" in res
    assert ck["step"] == res["best"]["step"]
    # the later run continues best tracking from the checkpoint
    t2 = _trainer(tmp_path, max_steps=8)
    with pytest.warns(UserWarning, match="schedule follows the new length"):
        t2.fit(resume="latest")
    assert t2.ckpt.best_value >= res["best"]["value"]


def test_fresh_run_refuses_a_folder_holding_another_run(tmp_path):
    first = _trainer(tmp_path).fit()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(FileExistsError, match=r"already holds an earlier run's checkpoints.*--resume latest"):
        _trainer(tmp_path, max_steps=2).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # nothing pruned or overwritten
    assert load_checkpoint(tmp_path / "checkpoints" / "ckpt_00000006.pt")["step"] == first["step"]
    # an earlier run that stopped before its first checkpoint leaves only logs: a fresh run starts them afresh
    stale = tmp_path / "stale"
    assert _trainer(stale, stop_after_steps=1).fit()["stopped"]
    assert not (stale / "checkpoints").exists() and read_metrics_csv(stale / "train_metrics.csv")
    _trainer(stale, max_steps=2).fit()
    assert [r["step"] for r in read_metrics_csv(stale / "train_metrics.csv")] == [1, 2]


def test_resuming_a_finished_run_keeps_its_results(tmp_path):
    done = _trainer(tmp_path).fit()
    assert done["train_loss"] == done["train_loss"] and "neg_w" in done  # a number, and the last evaluation
    again = _trainer(tmp_path).fit(resume="latest")
    assert again["step"] == done["step"]
    for k in ("train_loss", "neg_w", "ema_neg_w", "best"):
        assert again[k] == done[k], k
    with pytest.raises(ValueError, match="nothing to train: the run has 0 optimizer steps"):
        _trainer(tmp_path / "zero", max_steps=0)


def test_resuming_from_a_weights_file_names_the_problem(tmp_path):
    t = _trainer(tmp_path / "run")
    weights = tmp_path / "weights.pt"
    torch.save(t.model.state_dict(), weights)
    with pytest.raises(ValueError, match=r"weights.pt is not a training checkpoint.*no 'model', 'optimizer'"):
        t.fit(resume=weights)


def test_none_samples_are_skipped_and_counted(tmp_path):
    class Flaky(torch.utils.data.Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, i):
            return None if i % 5 == 0 else (torch.full((2,), float(i)), i % 2)

    loader = EpochLoader(Flaky(), 4, shuffle=False, drop_last=True)
    batches = [b for _, b in loader.iter_epoch(0)]
    assert loader.num_skipped == 5  # indices 0, 5, 10, 15, 20
    assert sum(len(b[1]) for b in batches) == 19
    model = nn.Linear(2, 2)
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loader,
                lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=tmp_path, epochs=1,
                log_every=1, show_progress=False, plot=False)
    res = t.fit()
    assert res["skipped_samples"] == 10  # 5 more in the training epoch
    assert read_metrics_csv(tmp_path / "train_metrics.csv")[-1]["skipped_samples"] == 10


def test_non_finite_loss_is_an_error(tmp_path):
    model = nn.Linear(2, 2)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), EpochLoader(ds, 4),
                lambda m, b: m(b[0]).sum() * float("nan"), run_dir=tmp_path, epochs=1, show_progress=False)
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 1 "):  # (the logs' first step is 1)
        t.fit()


def _counting_trainer(run_dir, **kw):
    """A linear model on 40 samples, batch 8 -> 5 optimizer steps per epoch; records the steps of every eval and
    every checkpoint save."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ds = torch.utils.data.TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))
    evals, saves = [], []
    holder = {}

    def eval_fn(m):
        evals.append(holder["t"].step)
        return {"score": float(holder["t"].step)}

    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), EpochLoader(ds, 8, seed=0),
                lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=run_dir, eval_fn=eval_fn,
                show_progress=False, plot=False, **kw)
    holder["t"] = t
    real_save = t.ckpt.save

    def save(state, step, metric=None):
        saves.append(step)
        return real_save(state, step, metric)

    t.ckpt.save = save
    return t, evals, saves


@pytest.mark.parametrize("kw,want_evals,want_saves", [
    # eval_every_steps divides max_steps, the run ends mid-epoch: one evaluation (and one save) at the last step
    (dict(max_steps=4, eval_every_steps=2, ckpt_every_steps=2, ckpt_every_epochs=0), [2, 4], [2, 4]),
    # step-based eval / checkpoints that land on an epoch end are kept even when the epoch schedule skips it
    (dict(max_steps=12, eval_every_steps=5, eval_every_epochs=1000, ckpt_every_steps=5, ckpt_every_epochs=0),
     [5, 10, 12], [5, 10, 12]),
    # both schedules due at the same step: once
    (dict(epochs=2, eval_every_steps=5, eval_every_epochs=1, ckpt_every_steps=5, ckpt_every_epochs=1),
     [5, 10], [5, 10]),
    # epoch schedule only (the classification default), eval_every_epochs=0 / None: only at the end
    (dict(epochs=3, eval_every_epochs=2, ckpt_every_epochs=2), [10, 15], [10, 15]),
    (dict(epochs=2, eval_every_epochs=0, ckpt_every_epochs=0), [10], [10]),
    (dict(epochs=2, eval_every_epochs=None, ckpt_every_epochs=None), [10], [10]),
])
def test_each_step_evaluates_and_saves_at_most_once(tmp_path, kw, want_evals, want_saves):
    t, evals, saves = _counting_trainer(tmp_path, **kw)
    t.fit()
    assert evals == want_evals and saves == want_saves
    assert [int(r["step"]) for r in read_metrics_csv(tmp_path / "val_metrics.csv")] == want_evals


def test_failing_evaluation_keeps_the_step(tmp_path):
    """An evaluation that raises (a bad test setting, a corrupt validation image) checkpoints its step first, so
    the run resumes there instead of at the last scheduled checkpoint."""
    t, evals, saves = _counting_trainer(tmp_path, epochs=2, eval_every_steps=3, ckpt_every_steps=None)
    real_eval = t.eval_fn

    def failing(m):
        real_eval(m)
        raise RuntimeError("validation image is corrupt")

    t.eval_fn = failing
    with pytest.raises(RuntimeError, match="corrupt"):
        t.fit()
    assert evals == [3] and saves == [3]
    ck = load_checkpoint(tmp_path / "checkpoints" / "ckpt_00000003.pt")
    assert ck["step"] == 3 and ck["best"]["value"] is None
    t2, evals2, _ = _counting_trainer(tmp_path, epochs=2, eval_every_steps=3, ckpt_every_steps=None)
    t2.fit(resume="latest")
    assert evals2 == [5, 6, 9, 10] and t2.step == 10  # (5: the epoch end)


def test_summed_extra_counters_total_over_ranks(tmp_path, monkeypatch):
    """A per-rank counter (e.g. skipped images) is saved as its sum over ranks and continues on rank 0 only after
    a resume, so the final sum over ranks counts every rank's earlier work exactly once."""
    import vision_rwkv.engine.loop as loop
    from vision_rwkv.engine import DistInfo
    t, _, _ = _counting_trainer(tmp_path, epochs=1, summed_extra=("skipped",))
    t.extra_state.update(skipped=3, note="kept")
    monkeypatch.setattr(loop, "all_reduce_sum", lambda x: x * 2)  # as if a second rank had counted as much
    state = t.state_dict()
    assert state["extra"] == {"skipped": 6, "note": "kept"} and t.extra_state["skipped"] == 3
    main, other = (_counting_trainer(tmp_path, epochs=1, summed_extra=("skipped",))[0] for _ in range(2))
    other.info = DistInfo(rank=1, world_size=2)
    main.info = DistInfo(rank=0, world_size=2)
    state["world_size"] = 2
    main.load_state_dict(state)
    other.load_state_dict(state)
    assert main.extra_state == {"skipped": 6, "note": "kept"} and other.extra_state == {"skipped": 0, "note": "kept"}


def test_resume_records_this_runs_extra_state(tmp_path):
    """The constructor's extra_state describes the run being trained (e.g. the Bi-WKV mode of its model): after a
    resume, later checkpoints record those values, not the first run's (a change warns); other saved keys and
    the counters continue from the checkpoint."""
    t, _, _ = _counting_trainer(tmp_path, epochs=1, extra_state={"wkv_mode": "original", "wkv_chunks": 32})
    t.extra_state.update(note="kept", skipped=4)
    state = t.state_dict()
    same, _, _ = _counting_trainer(tmp_path, epochs=1, extra_state={"wkv_mode": "original", "wkv_chunks": 32})
    same.load_state_dict(state)
    assert same.extra_state == {"wkv_mode": "original", "wkv_chunks": 32, "note": "kept", "skipped": 4}
    changed, _, _ = _counting_trainer(tmp_path, epochs=1, summed_extra=("skipped",),
                                      extra_state={"wkv_mode": "exact", "wkv_chunks": 32, "skipped": 0})
    with pytest.warns(UserWarning, match="records wkv_mode='original', this run has 'exact'"):
        changed.load_state_dict(state)
    assert changed.extra_state == {"wkv_mode": "exact", "wkv_chunks": 32, "note": "kept", "skipped": 4}
    assert changed.state_dict()["extra"]["wkv_mode"] == "exact"


def test_resume_with_another_world_size_keeps_the_place_in_the_data(tmp_path):
    """timm-style classification keeps the per-process batch, so a checkpoint of 2 processes x 8 samples resumed by
    1 process x 8 has twice the steps per epoch: the run continues after the same samples of the same epoch (step
    and batch scaled), not at the same step count (which overran the epochs: "epoch 3/2"). Checkpoints that do not
    record their batch, or of the same samples per batch, keep their position."""
    t, _, _ = _counting_trainer(tmp_path, epochs=3)  # 40 samples, batch 8: 5 steps per epoch
    state = t.state_dict()
    assert state["micro_batch_samples"] == 8
    two_procs = dict(state, step=3, epoch=1, batch_in_epoch=1, world_size=2, micro_batch_samples=16, total_steps=6)
    one, _, _ = _counting_trainer(tmp_path, epochs=3)
    with pytest.warns(UserWarning, match=r"16 samples per batch over 2 process\(es\), this run has 8 over 1.*"
                                         r"epoch 1 after 16 of its samples \(step 3 -> 7, batch 1 -> 2\)"):
        one.load_state_dict(two_procs)
    assert (one.step, one.epoch, one.batch_in_epoch) == (7, 1, 2)
    for kept in (dict(two_procs, micro_batch_samples=8), {k: v for k, v in two_procs.items()
                                                          if k != "micro_batch_samples"}):
        same, _, _ = _counting_trainer(tmp_path, epochs=3)
        with pytest.warns(UserWarning, match="the data continues where it stopped"):
            same.load_state_dict(kept)
        assert (same.step, same.epoch, same.batch_in_epoch) == (3, 1, 1)


def test_resume_on_another_training_set_warns(tmp_path):
    """A shard added (or images removed) between a run and its resume: the epoch's shuffle is another one, so
    samples seen before the stop may come again (22 of 40 in the RWKV-CLIP audit), which went unsaid."""
    import warnings
    t, _, _ = _counting_trainer(tmp_path, epochs=3)
    state = dict(t.state_dict(), step=2, batch_in_epoch=2)
    assert state["train_samples"] == 40
    same, _, _ = _counting_trainer(tmp_path, epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(state)
    other, _, _ = _counting_trainer(tmp_path, epochs=3)
    with pytest.warns(UserWarning, match="training set of 48 samples, this one has 40: the data changed"):
        other.load_state_dict(dict(state, train_samples=48))


@pytest.mark.parametrize("kind", ["timm_cosine", "torch_lambda"])
def test_a_resume_on_a_resized_training_set_ends_the_schedule_with_the_last_epoch(tmp_path, kind):
    """Images added between a run and its resume: the run ended with its last epoch, but the schedule - built for
    epochs x the new epoch length - was followed by step count, so it was cut short (or overran) there; a second
    resume also lost the adjusted end. The schedule now follows the epoch-based position: the resumed rates are
    those of the new schedule from the point in the epochs where the run stopped, ending at its end."""
    import warnings

    from timm.scheduler import CosineLRScheduler

    def run(samples, resume=None, stop=None, folder="a"):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        spe = samples // 8
        sched = (CosineLRScheduler(opt, t_initial=3 * spe, lr_min=0.01, t_in_epochs=False) if kind == "timm_cosine"
                 else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)))
        ds = torch.utils.data.TensorDataset(torch.randn(samples, 3), torch.randint(0, 2, (samples,)))
        lrs = []
        t = Trainer(model, opt, EpochLoader(ds, 8, seed=0), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                    run_dir=tmp_path / folder, epochs=3, scheduler=sched, ckpt_every_steps=1, show_progress=False,
                    plot=False,
                    stop_after_steps=stop, after_step=lambda tr: lrs.append(tr.optimizer.param_groups[0]["lr"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # (the data-changed and schedule-length warnings)
            result = t.fit(resume=resume)
        return t, lrs, result

    run(40, stop=8)  # 5 steps an epoch; killed after step 8, checkpointed at step 7: epoch 2, 2 steps in
    grown, lrs, _ = run(56, resume="latest", stop=13)  # 7 steps an epoch: position 9 of 21 at the resume
    assert grown.total_steps == 7 + 5 + 7
    again, more, result = run(56, resume="latest")  # from step 12: a second resume keeps the end and the positions
    assert result["step"] == again.total_steps == 19 and result["epoch"] == 3
    _, fresh, _ = run(56, folder="b")  # the new data's uninterrupted schedule: positions 1..21
    assert lrs[:-1] + more == pytest.approx(fresh[9:], rel=1e-12)  # (step 13 was lost: run again)


def _tiny_run(run_dir, samples, epochs=3, batch=4, sched=None, resume=None, stop=None, **kw):
    """A seconds-long by-epoch run of a linear model (lrs logged per step; ``sched(opt, epochs, steps_per_epoch)``)."""
    import warnings
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    gen = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randn(samples, 3, generator=gen),
                                        torch.randint(0, 2, (samples,), generator=gen))
    loader = EpochLoader(ds, batch, seed=0)
    t = Trainer(model, opt, loader, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=run_dir,
                epochs=epochs, scheduler=sched(opt, epochs, len(loader)) if sched else None, log_every=1,
                show_progress=False, plot=False, stop_after_steps=stop, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t.fit(resume=resume)
    return t


def test_a_resized_training_set_with_equal_totals_by_chance_takes_the_new_schedule(tmp_path):
    """40 -> 20 samples and 4 -> 7 epochs: the new run's total (40 steps) equals the checkpoint's, and the saved
    schedule (another epoch length and count) came back: the rates ran 5 steps ahead, the last 5 at 0."""
    def sched(opt, epochs, spe):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / (epochs * spe)))
    _tiny_run(tmp_path / "a", 40, epochs=4, sched=sched, stop=16, ckpt_every_steps=1)  # checkpoint: step 15
    resumed = _tiny_run(tmp_path / "a", 20, epochs=7, sched=sched, resume="latest")
    fresh = _tiny_run(tmp_path / "b", 20, epochs=7, sched=sched)
    lrs = [r["lr"] for r in read_metrics_csv(tmp_path / "a" / "train_metrics.csv")][15:]
    want = [r["lr"] for r in read_metrics_csv(tmp_path / "b" / "train_metrics.csv")][10:]  # position 10 of 35
    assert resumed.total_steps == 40 and lrs == pytest.approx(want, rel=1e-9) and min(lrs) > 0
    assert fresh.step == 35


def test_a_resume_with_coarser_steps_logs_one_row_per_step_and_none_at_step_0(tmp_path):
    """Batch 4 -> 8: the kept rows' steps are rescaled by 0.4; rounding put two rows on a step and one at step 0."""
    _tiny_run(tmp_path, 40, stop=7, ckpt_every_steps=5, eval_fn=lambda m: {"w": float(m.weight.sum())},
              eval_every_steps=1, best_metric="w")
    _tiny_run(tmp_path, 40, batch=8, resume="latest", eval_fn=lambda m: {"w": float(m.weight.sum())},
              eval_every_steps=1, best_metric="w")
    for split in ("train", "val"):
        steps = [int(r["step"]) for r in read_metrics_csv(tmp_path / f"{split}_metrics.csv")]
        assert steps == list(range(1, 16)), (split, steps)


def test_a_step_is_not_evaluated_twice_when_a_smaller_training_set_puts_it_at_an_epoch_end(tmp_path):
    """Step 7 evaluated and checkpointed mid-epoch; resumed on half the data, batch 7 is past the new epoch's end:
    the epoch ended at once and evaluated step 7 again (two rows for one step)."""
    kw = dict(ckpt_every_steps=7, eval_every_steps=7, eval_fn=lambda m: {"w": float(m.weight.sum())},
              best_metric="w")
    _tiny_run(tmp_path, 40, stop=8, **kw)
    _tiny_run(tmp_path, 20, resume="latest", **kw)
    steps = [int(r["step"]) for r in read_metrics_csv(tmp_path / "val_metrics.csv")]
    assert steps == sorted(set(steps)) and steps[0] == 7


def test_an_error_in_fit_closes_the_tensorboard_writer(tmp_path):
    """A failing run left TensorBoard's writer thread running (one more per failed run in a sweep or notebook)."""
    import threading
    pytest.importorskip("tensorboard")
    before = threading.active_count()
    for attempt in range(2):
        model = nn.Linear(3, 2)
        ds = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), EpochLoader(ds, 4, seed=0),
                          lambda m, b: m(b[0]).sum() * float("nan"), run_dir=tmp_path / str(attempt), epochs=1,
                          tensorboard=True, show_progress=False, plot=False)
        with pytest.raises(FloatingPointError):
            trainer.fit()
        assert trainer.logger._tb is None
    assert threading.active_count() == before


def test_history_keeps_the_last_rows_only(tmp_path):
    trainer = _tiny_run(tmp_path, 40, epochs=1)
    assert [h["step"] for h in trainer.history] == list(range(1, 11))
    assert trainer.history.maxlen == 10_000  # (a long run with log_every=1 grew it by ~0.5 KB a row for ever)


def test_resume_warnings_are_said_by_rank_0_only(tmp_path, monkeypatch):
    """What every rank would say alike about a resumed checkpoint prints once under torchrun, not once per rank."""
    import warnings

    from vision_rwkv.engine import distributed
    t, _, _ = _counting_trainer(tmp_path, epochs=3)
    moved = dict(t.state_dict(), step=3, epoch=1, batch_in_epoch=1, world_size=2, micro_batch_samples=16)
    for rank, said in ((0, True), (1, False)):
        monkeypatch.setattr(distributed, "get_rank", lambda: rank)
        other, _, _ = _counting_trainer(tmp_path, epochs=3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            other.load_state_dict(moved)
        assert any("samples per batch" in str(w.message) for w in caught) == said
        assert (other.step, other.batch_in_epoch) == (7, 2)  # every rank moves alike


@pytest.mark.parametrize("kind", ["torch_onecycle", "timm_cosine"])
def test_resume_into_a_longer_run_follows_the_new_schedule(tmp_path, kind):
    """--resume with more steps than the checkpoint's run (timm's `--resume --epochs N`): the learning rates
    from the resumed step on are those of a fresh run of the new length, not the old schedule's tail."""
    from timm.scheduler import CosineLRScheduler

    def run(run_dir, steps, resume=None):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        if kind == "torch_onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=steps, pct_start=0.5)
        else:
            sched = CosineLRScheduler(opt, t_initial=steps, lr_min=0.01, warmup_t=2, warmup_lr_init=0.1,
                                      t_in_epochs=False)
        ds = torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,)))
        lrs = []
        t = Trainer(model, opt, EpochLoader(ds, 4, seed=0), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                    run_dir=run_dir, max_steps=steps, scheduler=sched, ckpt_every_steps=4, show_progress=False,
                    plot=False, after_step=lambda tr: lrs.append(tr.optimizer.param_groups[0]["lr"]))
        if resume:
            with pytest.warns(UserWarning, match="schedule follows the new length"):
                t.fit(resume=resume)
        else:
            t.fit()
        return lrs

    run(tmp_path / "a", 4)
    resumed = run(tmp_path / "a", 8, resume="latest")
    fresh = run(tmp_path / "b", 8)
    assert resumed == pytest.approx(fresh[4:], rel=1e-12)


def test_logged_lr_is_the_base_rate_of_layer_decayed_groups(tmp_path):
    """With layer-wise lr decay the groups run at scaled-down rates; the log shows the unscaled (largest) one."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.25}, {"params": model[1].parameters()}], lr=1.0)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    Trainer(model, opt, EpochLoader(ds, 4), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
            run_dir=tmp_path, epochs=1, log_every=1, show_progress=False, plot=False).fit()
    assert [r["lr"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")] == [1.0, 1.0]


def test_logs_show_the_rate_each_step_ran_at_and_one_epoch_count(tmp_path):
    """The lr column is the rate the step used (read before the scheduler moves on, as timm logs it); train and val
    rows number epochs alike, from 1."""
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    Trainer(model, opt, EpochLoader(ds, 4), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
            run_dir=tmp_path, epochs=2, scheduler=sched, eval_fn=lambda m: {"x": 1.0}, eval_every_steps=1,
            log_every=1, show_progress=False, plot=False).fit()
    train = read_metrics_csv(tmp_path / "train_metrics.csv")
    val = read_metrics_csv(tmp_path / "val_metrics.csv")
    assert [r["lr"] for r in train] == [1.0, 0.5, 0.25, 0.125]
    assert [r["epoch"] for r in train] == [r["epoch"] for r in val] == [1, 1, 2, 2]


def test_a_mapped_position_takes_the_schedule_to_the_new_step(tmp_path):
    """A checkpoint of another batch (or world size) under max_steps: the step is mapped (8 samples x 4 steps ->
    16 x 2) and the learning-rate schedule must follow the mapped step. It kept the saved state, so going to a
    larger batch ran the last steps of the audit's run at lr 0, and to a smaller one never finished the decay."""
    def run(batch, run_dir, **kw):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / 6))
        ds = torch.utils.data.TensorDataset(torch.randn(48, 3), torch.randint(0, 2, (48,)))
        return Trainer(model, opt, EpochLoader(ds, batch, seed=0),
                       lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=run_dir, max_steps=6,
                       scheduler=sched, ckpt_every_steps=2, show_progress=False, plot=False, **kw)

    assert run(8, tmp_path, stop_after_steps=5).fit()["stopped"]
    for batch, step in ((16, 2), (4, 8)):
        t = run(batch, tmp_path)
        with pytest.warns(UserWarning, match=rf"step 4 -> {step}"):
            t.load_state_dict(load_checkpoint(tmp_path / "checkpoints" / "ckpt_00000004.pt"))
        assert t.step == step and t.scheduler.last_epoch == step
        assert t.optimizer.param_groups[0]["lr"] == pytest.approx(max(0.0, 1 - step / 6))


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(tmp_path):
    """Checkpoints between log rows (every 3 steps, a row every 4): the first row after a resume averaged only the
    steps since the resume (loss 2.24 against 2.61 in the audit); the window of step logs is now checkpointed."""
    full, _, _ = _counting_trainer(tmp_path / "full", max_steps=8, log_every=4, ckpt_every_steps=3)
    full.fit()
    cut, _, _ = _counting_trainer(tmp_path / "cut", max_steps=8, log_every=4, ckpt_every_steps=3,
                                  stop_after_steps=5)
    cut.fit()
    resumed, _, _ = _counting_trainer(tmp_path / "cut", max_steps=8, log_every=4, ckpt_every_steps=3)
    resumed.fit(resume="latest")  # from step 3: the window holds steps 1-3
    rows = [read_metrics_csv(tmp_path / run / "train_metrics.csv") for run in ("full", "cut")]
    assert [r["step"] for r in rows[1]] == [4, 8]
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]], rel=1e-6)


def test_resume_latest_without_a_checkpoint_starts_over_and_says_so(tmp_path, capsys):
    """A run killed before its first checkpoint, resumed with --resume latest: it starts at step 0, says so, and
    its logs start over (they held the killed run's rows 1 2 before the new run's 1 2 3 ...)."""
    first, _, _ = _counting_trainer(tmp_path, max_steps=4, log_every=1, ckpt_every_steps=10, stop_after_steps=2)
    first.fit()
    assert not list((tmp_path / "checkpoints").glob("ckpt_*.pt"))
    again, _, _ = _counting_trainer(tmp_path, max_steps=4, log_every=1, ckpt_every_steps=10)
    again.fit(resume="latest")
    assert "no checkpoint in" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")] == [1, 2, 3, 4]


def test_an_unreadable_latest_checkpoint_falls_back_and_partial_writes_go(tmp_path, capsys):
    """--resume latest with a damaged newest file resumes from the newest readable one (with a warning naming both)
    instead of stopping with a traceback; an explicit path still fails, in one line from the tools. The temporary
    file of a write killed halfway (half a checkpoint, never read) is removed at the next start."""
    from vision_rwkv.models.convert import CheckpointReadError
    kw = dict(max_steps=8, ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=3)
    t, _, _ = _counting_trainer(tmp_path, stop_after_steps=7, **kw)
    t.fit()
    ckpts = sorted((tmp_path / "checkpoints").glob("ckpt_*.pt"))
    assert [p.name for p in ckpts] == ["ckpt_00000002.pt", "ckpt_00000004.pt", "ckpt_00000006.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:300])
    partial = tmp_path / "checkpoints" / ".ckpt_00000008.pt.tmp.4242"
    partial.write_bytes(b"half a checkpoint")
    again, _, _ = _counting_trainer(tmp_path, **kw)
    with pytest.warns(UserWarning, match=r"newest checkpoint is unreadable .*ckpt_00000006.pt.*resuming from "
                                         r".*ckpt_00000004.pt"):
        again.resume("latest")
    assert again.step == 4 and not partial.exists()
    out = capsys.readouterr().out
    assert "removed 1 unfinished checkpoint write" in out
    # the damaged file is out of the way: the next `latest` and the pruning go by step number
    damaged = tmp_path / "checkpoints" / "abandoned_after_00000004" / "ckpt_00000006.pt"
    assert damaged.is_file() and not ckpts[-1].exists() and "moved 1 checkpoint file(s) not of the resumed run" in out
    with pytest.raises(CheckpointReadError, match="ckpt_00000006.pt"):
        _counting_trainer(tmp_path, **kw)[0].resume(damaged)


def test_summed_counters_are_summed_over_ranks_in_the_logs(tmp_path, monkeypatch):
    """The per-step log of a summed_extra counter (RWKV-CLIP's skipped_images) is the sum over ranks, not the mean
    (0.5 for one skipped image under 2 processes); the other logs stay means."""
    import vision_rwkv.engine.loop as loop

    def fake_reduce(values, device="cpu", average=True):  # as if a second rank had logged the same values
        return {k: float(v) * (1 if average else 2) for k, v in values.items()}

    monkeypatch.setattr(loop, "reduce_dict", fake_reduce)
    model = nn.Linear(3, 2)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), EpochLoader(ds, 4),
                lambda m, b: (nn.functional.cross_entropy(m(b[0]), b[1]), {"skipped": 1.0, "other": 1.0}),
                run_dir=tmp_path, max_steps=2, log_every=2, summed_extra=("skipped",), show_progress=False,
                plot=False)
    t.fit()
    row = read_metrics_csv(tmp_path / "train_metrics.csv")[-1]
    assert row["skipped"] == 2.0 and row["other"] == 1.0


def test_a_resume_with_steps_of_another_size_renumbers_checkpoints_and_logs(tmp_path):
    """After a resume that maps the step (batch 8 -> 16: step 4 -> 2), the old numbering's checkpoints (2, 4) sat
    above the new run's (its ckpt 2 was pruned on writing, and `latest` went back to the old ckpt 4, losing the
    resumed work); the logs kept rows of discarded work and changed units silently (DDP audit)."""
    def run(batch, **kw):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ds = torch.utils.data.TensorDataset(torch.randn(48, 3), torch.randint(0, 2, (48,)))
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), EpochLoader(ds, batch, seed=0),
                       lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=tmp_path, max_steps=6,
                       ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=2, log_every=1, show_progress=False,
                       plot=False, **kw)

    assert run(8, stop_after_steps=5).fit()["stopped"]  # checkpoints 2 and 4 (step 5's work is lost)
    ckpts = tmp_path / "checkpoints"
    resumed = run(16)
    with pytest.warns(UserWarning, match=r"step 4 -> 2"):
        assert resumed.resume("latest")
    assert sorted(p.name for p in (ckpts / "steps_of_8_samples").iterdir()) == ["ckpt_00000002.pt",
                                                                                "ckpt_00000004.pt"]
    assert [p.name for p in ckpts.glob("ckpt_*.pt")] == ["ckpt_00000002.pt"]
    assert load_checkpoint(ckpts / "ckpt_00000002.pt")["micro_batch_samples"] == 16
    # (x 1/2: the rows of old steps 2 and 4 stand for new steps 1 and 2; one row per step, none at step 0)
    assert [r["step"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")] == [1, 2]
    run(16).fit(resume="latest")  # (from the renumbered checkpoint: no second mapping)
    assert sorted(p.name for p in ckpts.glob("ckpt_*.pt")) == ["ckpt_00000004.pt", "ckpt_00000006.pt"]
    assert [r["step"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")] == [1, 2, 3, 4, 5, 6]


def _recorded(path) -> int:
    return int(torch.load(path, weights_only=True, mmap=True)["step"])


@pytest.mark.parametrize("damage", ["older", "missing"])
def test_best_pt_follows_the_tracked_best_after_a_kill_before_it_was_linked(tmp_path, damage):
    """A kill after ckpt_N.pt (which records "best = step N") but before best.pt: the resumed run trusted the record
    and never rewrote best.pt (it kept an older step, or none when the first evaluation was the best)."""
    kw = dict(max_steps=8, eval_every_steps=2, ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=3,
              best_metric="score")
    _counting_trainer(tmp_path, stop_after_steps=7, **kw)[0].fit()
    ckpt_dir = tmp_path / "checkpoints"
    assert _recorded(ckpt_dir / "best.pt") == 6 and os.path.samefile(ckpt_dir / "best.pt", ckpt_dir / "ckpt_00000006.pt")
    (ckpt_dir / "best.pt").unlink()
    if damage == "older":
        shutil.copy(ckpt_dir / "ckpt_00000004.pt", ckpt_dir / "best.pt")
    again = _counting_trainer(tmp_path, **kw)[0]
    again.resume("latest")
    assert again.step == 6 and _recorded(ckpt_dir / "best.pt") == 6


def test_resuming_an_older_checkpoint_sets_the_later_ones_aside(tmp_path, capsys):
    """--resume PATH of an older checkpoint left the abandoned continuation's later checkpoints in place: the new
    run's checkpoints were pruned as they were written, and after a kill `--resume latest` took the old ones."""
    kw = dict(max_steps=8, eval_every_steps=2, ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=3,
              best_metric="score")
    _counting_trainer(tmp_path, stop_after_steps=7, **kw)[0].fit()
    ckpt_dir = tmp_path / "checkpoints"
    again, evals, saves = _counting_trainer(tmp_path, **kw)
    result = again.fit(resume=ckpt_dir / "ckpt_00000002.pt")
    assert result["step"] == 8 and saves == [4, 6, 8]
    assert sorted(p.name for p in ckpt_dir.glob("ckpt_*.pt")) == [f"ckpt_0000000{s}.pt" for s in (4, 6, 8)]
    aside = ckpt_dir / "abandoned_after_00000002"
    assert sorted(p.name for p in aside.iterdir()) == ["best.pt", "ckpt_00000004.pt", "ckpt_00000006.pt"]
    assert _recorded(aside / "best.pt") == 6 and _recorded(ckpt_dir / "best.pt") == 8
    assert ("moved 3 checkpoint file(s) not of the resumed run (ckpt_00000004.pt, ckpt_00000006.pt, best.pt)"
            in capsys.readouterr().out)


def test_an_evaluation_between_checkpoints_can_be_the_best(tmp_path):
    """best.pt was only considered at checkpoint steps: a better evaluation between two checkpoints was lost."""
    kw = dict(max_steps=8, eval_every_steps=2, eval_every_epochs=0, ckpt_every_steps=4, ckpt_every_epochs=0,
              keep_last=3, best_metric="score")
    t, evals, saves = _counting_trainer(tmp_path, stop_after_steps=7, **kw)
    t.fit()
    ckpt_dir = tmp_path / "checkpoints"
    assert evals == [2, 4, 6] and saves == [4] and _recorded(ckpt_dir / "best.pt") == 6
    assert (t.ckpt.best_step, t.ckpt.best_value) == (6, 6.0)
    again = _counting_trainer(tmp_path, **kw)[0]  # (resumes at 4: step 6's best.pt is of abandoned work)
    result = again.fit(resume="latest")
    assert result["best"] == {"metric": "score", "value": 8.0, "step": 8} and _recorded(ckpt_dir / "best.pt") == 8
    assert _recorded(ckpt_dir / "abandoned_after_00000004" / "best.pt") == 6


def test_training_time_adds_up_over_resumes(tmp_path):
    kw = dict(max_steps=8, ckpt_every_steps=2, ckpt_every_epochs=0)
    _counting_trainer(tmp_path, stop_after_steps=5, **kw)[0].fit()
    saved = torch.load(tmp_path / "checkpoints" / "ckpt_00000004.pt", weights_only=True)["train_time_s"]
    assert saved > 0
    result = _counting_trainer(tmp_path, **kw)[0].fit(resume="latest")
    assert result["train_time_s"] > saved


def test_resuming_the_same_older_step_twice_keeps_both_abandoned_continuations(tmp_path):
    """abandoned_after_<step>/ was reused: the second continuation's files replaced the first's of the same names."""
    kw = dict(max_steps=8, eval_every_steps=2, ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=3,
              best_metric="score")
    _counting_trainer(tmp_path, stop_after_steps=7, **kw)[0].fit()
    ckpt_dir = tmp_path / "checkpoints"
    first = {p.name: torch.load(p, weights_only=True)["save_id"] for p in ckpt_dir.glob("ckpt_*.pt")}
    _counting_trainer(tmp_path, stop_after_steps=7, **kw)[0].fit(resume=ckpt_dir / "ckpt_00000002.pt")
    _counting_trainer(tmp_path, **kw)[0].resume(ckpt_dir / "ckpt_00000002.pt")
    kept = {p.name: torch.load(p, weights_only=True)["save_id"]
            for p in (ckpt_dir / "abandoned_after_00000002").glob("ckpt_*.pt")}
    assert kept == {k: v for k, v in first.items() if k != "ckpt_00000002.pt"}
    assert sorted(p.name for p in (ckpt_dir / "abandoned_after_00000002_2").glob("ckpt_*.pt")) == [
        "ckpt_00000004.pt", "ckpt_00000006.pt"]


def test_best_pt_is_known_by_its_save_id_across_renumbering_and_lineages(tmp_path):
    """best.pt was identified by its step number: after a resume with another batch size (the steps renumbered) a
    later resume set it aside or linked another model as best; a checkpoint resumed from another folder kept the
    folder's other lineage (same step numbers) in place, where `latest` would take it after a kill."""
    kw = dict(max_steps=8, eval_every_steps=2, ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=3,
              best_metric="score")
    _counting_trainer(tmp_path / "a", stop_after_steps=7, **kw)[0].fit()
    _counting_trainer(tmp_path / "b", stop_after_steps=7, **kw)[0].fit()
    a_best = torch.load(tmp_path / "a" / "checkpoints" / "best.pt", weights_only=True)["save_id"]
    b_dir = tmp_path / "b" / "checkpoints"
    b_files = sorted(p.name for p in b_dir.iterdir() if p.is_file())
    again = _counting_trainer(tmp_path / "b", **kw)[0]
    again.resume(tmp_path / "a" / "checkpoints" / "ckpt_00000006.pt")  # run a's state, continued in b's folder
    assert sorted(p.name for p in (b_dir / "abandoned_after_00000006").iterdir()) == b_files
    assert torch.load(b_dir / "ckpt_00000006.pt", weights_only=True)["save_id"] == \
        torch.load(tmp_path / "a" / "checkpoints" / "ckpt_00000006.pt", weights_only=True)["save_id"]
    assert torch.load(b_dir / "best.pt", weights_only=True)["save_id"] == a_best
    assert again.ckpt.resume_files(6, b_dir / "ckpt_00000006.pt") == []  # (agreeing now: nothing to do)


def test_best_pt_survives_a_renumbering_resume_and_later_resumes(tmp_path):
    """After a resume with another batch size the tracked best step stayed in the old numbering: the next resume
    set best.pt aside (its step looked like abandoned work), and a later one linked another model as the best."""
    holder = {}

    def run(batch, **kw):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ds = torch.utils.data.TensorDataset(torch.randn(48, 3), torch.randint(0, 2, (48,)))
        t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), EpochLoader(ds, batch, seed=0),
                    lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=tmp_path, max_steps=6,
                    eval_fn=lambda m: {"score": -float(holder["t"].step)}, eval_every_steps=2, eval_every_epochs=0,
                    best_metric="score", ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=2, log_every=1,
                    show_progress=False, plot=False, **kw)
        holder["t"] = t
        return t

    run(8, stop_after_steps=5).fit()  # best = the first evaluation, step 2 (of 8 samples)
    best = tmp_path / "checkpoints" / "best.pt"
    best_id = torch.load(best, weights_only=True)["save_id"]
    with pytest.warns(UserWarning, match=r"step 4 -> 2"):
        run(16, stop_after_steps=3).fit(resume="latest")  # renumbered; step 3 is lost again
    result = run(16).fit(resume="latest")
    assert result["best"] == {"metric": "score", "value": -2.0, "step": 1}  # (step 2 of 8 samples = 1 of 16)
    assert torch.load(best, weights_only=True)["save_id"] == best_id


def test_a_symlinked_checkpoint_resumes_in_place(tmp_path):
    """A run folder of symlinks (cp -rs): the resumed file's real folder is elsewhere, so every checkpoint was set
    aside, the resumed one too, and the link-in then failed; the next `latest` started from step 0."""
    kw = dict(max_steps=8, ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=3)
    _counting_trainer(tmp_path / "a", stop_after_steps=5, **kw)[0].fit()
    linked = tmp_path / "b" / "checkpoints"
    linked.mkdir(parents=True)
    for p in (tmp_path / "a" / "checkpoints").glob("ckpt_*.pt"):
        (linked / p.name).symlink_to(p)
    again = _counting_trainer(tmp_path / "b", **kw)[0]
    assert again.resume("latest") and again.step == 4
    assert sorted(p.name for p in linked.glob("ckpt_*.pt")) == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    assert not list(linked.glob("abandoned_after_*"))


def test_a_renumbering_resume_from_another_run_sets_its_best_pt_aside(tmp_path):
    """A resume with another step size from another run's checkpoint renumbered the folder but kept the folder's own
    best.pt, which the evaluation tools then took for the resumed run's best."""
    holder = {}

    def run(folder, batch, score, **kw):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ds = torch.utils.data.TensorDataset(torch.randn(48, 3), torch.randint(0, 2, (48,)))
        t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), EpochLoader(ds, batch, seed=0),
                    lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=folder, max_steps=6,
                    eval_fn=lambda m: {"score": score}, eval_every_steps=2, eval_every_epochs=0,
                    best_metric="score", ckpt_every_steps=2, ckpt_every_epochs=0, keep_last=2, log_every=1,
                    show_progress=False, plot=False, **kw)
        holder["t"] = t
        return t

    run(tmp_path / "a", 4, 0.0, stop_after_steps=5).fit()
    run(tmp_path / "b", 8, 25.0, stop_after_steps=5).fit()
    b_best = torch.load(tmp_path / "b" / "checkpoints" / "best.pt", weights_only=True)["save_id"]
    again = run(tmp_path / "b", 8, 0.0)
    with pytest.warns(UserWarning, match="samples per batch"):
        again.resume(tmp_path / "a" / "checkpoints" / "ckpt_00000004.pt")
    best = tmp_path / "b" / "checkpoints" / "best.pt"
    assert not best.exists() or torch.load(best, weights_only=True)["save_id"] != b_best
    aside = list((tmp_path / "b" / "checkpoints").glob("abandoned_after_*/best.pt"))
    assert [torch.load(p, weights_only=True)["save_id"] for p in aside] == [b_best]


def test_a_resume_that_cannot_continue_is_one_error_before_anything_loads(tmp_path):
    """Other classes (a renamed class folder shifted what each classifier row means: it resumed with a warning) or
    a model of another width (a 50-line torch size-mismatch dump) name the change; on_start (the tools write
    config.yaml there) does not run, so the folder's config still describes its checkpoints."""
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.models.convert import CheckpointFileMismatchError
    t, _, _ = _counting_trainer(tmp_path, epochs=1, extra_state={"classes": ["cat", "dog"]}, must_match=("classes",))
    t.fit()
    started = []
    renamed, _, _ = _counting_trainer(tmp_path, epochs=2, extra_state={"classes": ["dog", "zebra"]},
                                      must_match=("classes",))
    with pytest.raises(ConfigError, match=r"trained with other classes \(gone: \['cat'\]; new: \['zebra'\]\)"):
        renamed.fit(resume="latest", on_start=lambda: started.append(1))
    reordered, _, _ = _counting_trainer(tmp_path, epochs=2, extra_state={"classes": ["dog", "cat"]},
                                        must_match=("classes",))
    with pytest.raises(ConfigError, match="the same names in another order"):
        reordered.fit(resume="latest")
    wider, _, _ = _counting_trainer(tmp_path, epochs=2, extra_state={"classes": ["cat", "dog"]},
                                    must_match=("classes",))
    wider.model = nn.Linear(5, 2)
    with pytest.raises(CheckpointFileMismatchError, match=r"1 shape mismatches \(weight: checkpoint \(2, 3\) vs "
                                                          r"model \(2, 5\)\)"):
        wider.fit(resume="latest", on_start=lambda: started.append(1))
    assert not started
    same, _, _ = _counting_trainer(tmp_path, epochs=2, extra_state={"classes": ["cat", "dog"]},
                                   must_match=("classes",))
    assert same.fit(resume="latest", on_start=lambda: started.append(1))["step"] == 10 and started == [1]


def test_a_learning_rate_changed_for_the_resume_is_used(tmp_path):
    """optim.lr changed on resume: the optimizer state brought the old rate back silently (timm's train.py builds
    its schedule from the new arguments); now the configured rate is set again, with a warning."""
    t, _, _ = _counting_trainer(tmp_path, epochs=1)
    t.fit()
    again, _, _ = _counting_trainer(tmp_path, epochs=2)
    again.fit(resume="latest")
    assert again.optimizer.param_groups[0]["lr"] == 0.01  # (the same rate: no warning, nothing changed)
    t, _, _ = _counting_trainer(tmp_path / "b", epochs=1)
    t.fit()
    changed, _, _ = _counting_trainer(tmp_path / "b", epochs=2)
    for g in changed.optimizer.param_groups:
        g["lr"] = 0.5
    with pytest.warns(UserWarning, match="base learning rate was 0.01, this run's config says 0.5"):
        changed.fit(resume="latest")
    rows = read_metrics_csv(tmp_path / "b" / "train_metrics.csv")
    later = [r["lr"] for r in rows if r["step"] > 5]
    assert later and set(later) == {0.5}


def test_a_failed_plot_warns_and_the_run_reports(tmp_path, monkeypatch):
    """A full disk while drawing curves.png ended a finished run with an OSError (and no final metrics)."""
    from vision_rwkv.engine.logger import MetricLogger

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(MetricLogger, "plot", full)
    t, _, _ = _counting_trainer(tmp_path, epochs=1)
    t.plot = True
    with pytest.warns(UserWarning, match="could not draw the metric curves.*No space left"):
        assert t.fit()["step"] == 5


@pytest.mark.parametrize("samples,final_step", [(48, 11), (32, 9)])
def test_a_resume_on_changed_data_still_ends_with_its_last_epoch(tmp_path, samples, final_step):
    """Images added (removed) between a 2-epoch run's first epoch and its resume: the run kept its step count
    (epochs x the new steps per epoch), so it trained one step into a third epoch (stopped one batch short of
    the second one's end). It now ends with its last epoch: 5 steps + one epoch of 6 (4) steps."""
    import warnings

    def trainer(n):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ds = torch.utils.data.TensorDataset(torch.randn(n, 3), torch.randint(0, 2, (n,)))
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), EpochLoader(ds, 8, seed=0),
                       lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), run_dir=tmp_path, epochs=2,
                       show_progress=False, plot=False, log_every=1)
    assert trainer(40).fit()["step"] == 10
    (tmp_path / "checkpoints" / "ckpt_00000010.pt").unlink()  # (back to the end of epoch 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = trainer(samples).fit(resume="latest")
    assert result["step"] == final_step and result["epoch"] == 2
    assert max(r["epoch"] for r in read_metrics_csv(tmp_path / "train_metrics.csv")) <= 2
