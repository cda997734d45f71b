"""Checkpoints: atomic save leaves nothing partial on failure, weights_only loads, RNG round trip, keep-last, best."""
import random

import numpy as np
import pytest
import torch

from vision_rwkv.engine import checkpoint as ck


def test_atomic_save_failure_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    ck.atomic_save({"a": torch.ones(3)}, target)
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_save({"a": torch.zeros(3)}, target)
    with pytest.raises(OSError):
        ck.atomic_save({"a": torch.zeros(3)}, tmp_path / "new.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp files, no new.pt
    assert torch.equal(ck.load_checkpoint(target)["a"], torch.ones(3))  # old content intact


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pt: not a PyTorch checkpoint.*b'not a ch'"):
        ck.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": torch.ones(2)}, tmp_path / "truncated.pt")
    data = (tmp_path / "truncated.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated.pt: a truncated or damaged zip archive"):
        ck.load_checkpoint(tmp_path / "truncated.pt")
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(ck.load_checkpoint(tmp_path / "legacy.pt")["a"], torch.ones(2))  # torch.save's old format
    (tmp_path / "w.safetensors").write_bytes(b"\xff" * 8)
    with pytest.raises(RuntimeError, match="w.safetensors: not a valid safetensors file"):
        ck.read_model_state(tmp_path / "w.safetensors")


def test_rng_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ck.capture_rng_state()
    ck.atomic_save({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.restore_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2), np.random.randn())
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert got[3] == expected[3]


def test_manager_keep_last_best_and_latest(tmp_path):
    m = ck.CheckpointManager(tmp_path, keep_last=2, mode="max")
    assert m.resolve("latest") is None and m.resolve(None) is None
    for step, metric in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.65)]:
        m.save({"w": torch.tensor(float(step))}, step, metric)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "ckpt_00000003.pt", "ckpt_00000004.pt"]
    assert m.latest().name == "ckpt_00000004.pt"
    best = ck.load_checkpoint(m.best_path)
    assert float(best["w"]) == 2.0 and best["best"] == {"value": 0.7, "step": 2, "mode": "max", "id": best["save_id"]}
    m2 = ck.CheckpointManager(tmp_path, mode="max")
    m2.load_best_tracking(ck.load_checkpoint(m.latest()))
    assert m2.best_value == 0.7 and not m2.is_better(0.69) and m2.is_better(0.71)
    with pytest.raises(FileNotFoundError):
        m.resolve(tmp_path / "nope.pt")


def test_load_model_weights_prefers_ema_and_names_bad_keys(tmp_path):
    model = torch.nn.Linear(2, 2)
    ema_sd = {f"module.{k}": torch.full_like(v, 7.0) for k, v in model.state_dict().items()}
    ck.atomic_save({"model": model.state_dict(), "ema": ema_sd}, tmp_path / "c.pt")
    ck.load_model_weights(model, tmp_path / "c.pt")
    assert torch.all(model.weight == 7.0)
    ck.atomic_save({"model": {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match=r"1 missing keys \(bias\); 1 unexpected keys \(extra\)"):
        ck.load_model_weights(model, tmp_path / "bad.pt")
    ck.atomic_save({f"w{i}": torch.zeros(1) for i in range(50)}, tmp_path / "many.pt")
    with pytest.raises(RuntimeError, match=r"50 unexpected keys \(w0, w1, w10, [^.]*, \.\.\. and 30 more\)"):
        ck.load_model_weights(model, tmp_path / "many.pt")


def test_read_model_state_takes_mmcv_state_dict_entries(tmp_path):
    """mmcv / Lightning files keep the weights under ``state_dict`` beside ``meta`` / ``optimizer``."""
    weights = {"module.weight": torch.ones(2, 2), "module.bias": torch.zeros(2)}
    torch.save({"meta": {"iter": 3}, "state_dict": weights, "optimizer": {"state": {}}}, tmp_path / "mm.pth")
    assert set(ck.read_model_state(tmp_path / "mm.pth")) == {"weight", "bias"}
    model = torch.nn.Linear(2, 2)
    ck.load_model_weights(model, tmp_path / "mm.pth")
    assert torch.all(model.weight == 1.0)
    # timm / DeiT training checkpoints: their EMA weights are preferred, as ours are
    torch.save({"state_dict": weights, "state_dict_ema": {"weight": torch.full((2, 2), 5.0), "bias": torch.ones(2)},
                "optimizer": {}}, tmp_path / "timm.pth")
    assert torch.all(ck.read_model_state(tmp_path / "timm.pth")["weight"] == 5.0)
    torch.save({"model": weights, "model_ema": {"weight": torch.full((2, 2), 6.0)}}, tmp_path / "deit.pth")
    assert torch.all(ck.read_model_state(tmp_path / "deit.pth")["weight"] == 6.0)
    # a state already read is loaded as given
    ck.load_model_weights(model, tmp_path / "mm.pth", state={"weight": torch.full((2, 2), 3.0), "bias": torch.ones(2)})
    assert torch.all(model.weight == 3.0)


def test_ema_weights_asked_of_a_file_without_them_name_the_file(tmp_path):
    """key="ema" on a training checkpoint written without EMA (``ema`` None) or on a plain state dict: an error naming
    the file and saying it holds no EMA weights (it was an AttributeError / a bare KeyError 'ema')."""
    from vision_rwkv.models.convert import MissingWeightsError
    model = torch.nn.Linear(2, 2)
    ck.atomic_save({"model": model.state_dict(), "ema": None, "step": 1}, tmp_path / "noema.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    for name, reason in [("noema.pt", "its 'ema' entry is empty"), ("plain.pth", "it is a plain state dict")]:
        with pytest.raises(MissingWeightsError, match=f"checkpoint .*{name} holds no EMA weights: {reason}"):
            ck.read_model_state(tmp_path / name, "ema")
        with pytest.raises(MissingWeightsError, match=f"{name} holds no EMA weights"):
            ck.load_model_weights(model, tmp_path / name, key="ema")
        assert set(ck.read_model_state(tmp_path / name, "model")) == {"weight", "bias"}
    with pytest.raises(MissingWeightsError, match=r"noema.pt has no entry 'foo'"):
        ck.read_model_state(tmp_path / "noema.pt", "foo")


def test_truncated_safetensors_is_named_by_the_engine(tmp_path):
    """A .safetensors file cut in its tensor data (header intact) fails with the file named, not a bare
    SafetensorError."""
    from safetensors.torch import save_file
    save_file({"weight": torch.ones(64, 64), "bias": torch.ones(64)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*w.safetensors: not a valid safetensors file "
                                           r"\(truncated"):
        ck.read_model_state(tmp_path / "w.safetensors")
    with pytest.raises(RuntimeError, match="w.safetensors: .*truncated"):
        ck.load_model_weights(torch.nn.Linear(64, 64), tmp_path / "w.safetensors")


def test_manager_checkpoints_give_timm_their_ema_weights(tmp_path):
    """CheckpointManager also stores the EMA weights under timm's ``state_dict_ema`` (written once), so timm's
    ``load_checkpoint`` (``create_model(checkpoint_path=...)``) takes the EMA weights, as our loaders do."""
    from timm.models import load_checkpoint as timm_load_checkpoint
    model = torch.nn.Linear(64, 64)
    ema = {f"module.{k}": torch.full_like(v, 7.0) for k, v in model.state_dict().items()}
    m = ck.CheckpointManager(tmp_path, keep_last=2)
    m.save({"model": model.state_dict(), "ema": ema, "step": 1}, 1, 1.0)
    m.save({"model": model.state_dict(), "ema": None, "step": 2}, 2, 0.5)
    with_ema, without = tmp_path / "checkpoints" / "ckpt_00000001.pt", tmp_path / "checkpoints" / "ckpt_00000002.pt"
    assert "state_dict_ema" not in ck.load_checkpoint(without)
    assert with_ema.stat().st_size < 1.2 * without.stat().st_size + 64 * 65 * 4  # the EMA tensors once, not twice
    target = torch.nn.Linear(64, 64)
    timm_load_checkpoint(target, str(with_ema))
    assert torch.all(target.weight == 7.0)
    timm_load_checkpoint(target, str(with_ema), use_ema=False)
    assert torch.equal(target.weight, model.weight)
    assert torch.all(ck.read_model_state(with_ema)["weight"] == 7.0)


def test_checkpoint_loader_takes_original_layout_and_the_recorded_mode(tmp_path):
    """The loader of --checkpoint (load_model_weights) takes what model.checkpoint takes: an original-layout .pth
    (converted; a v4 model then runs "original", the released weights' function), and a training checkpoint's
    recorded mode; set_wkv_mode=False (the config names wkv_mode) keeps the model's."""
    import timm

    from vision_rwkv.models import ours_to_original  # (importing vision_rwkv registers the models)
    kw = dict(embed_dim=32, depth=2, num_classes=4, img_size=32, patch_size=8)
    src = timm.create_model("vrwkv_tiny_patch16_224", **kw)
    torch.save({"meta": {}, "state_dict": {("" if k.startswith("head.") else "backbone.") + k: v
                                           for k, v in ours_to_original(src.state_dict()).items()}},
               tmp_path / "released.pth")
    model = timm.create_model("vrwkv_tiny_patch16_224", **kw)
    ck.load_model_weights(model, tmp_path / "released.pth")
    assert model.wkv_mode == "original" and torch.equal(model.head.weight, src.head.weight)
    ck.atomic_save({"model": src.state_dict(), "ema": None, "extra": {"wkv_mode": "exact", "wkv_chunks": 32}},
                   tmp_path / "exact.pt")
    ck.load_model_weights(model, tmp_path / "exact.pt")
    assert model.wkv_mode == "exact"
    ck.load_model_weights(model, tmp_path / "released.pth", set_wkv_mode=False)
    assert model.wkv_mode == "exact"
    ck.atomic_save({"model": src.state_dict(), "extra": {"wkv_mode": "original", "wkv_chunks": 16}},
                   tmp_path / "tuned.pt")
    ck.load_model_weights(model, tmp_path / "tuned.pt")
    assert (model.wkv_mode, model.wkv_chunks) == ("original", 16)
    assert ck.model_record(model) == {"wkv_mode": "original", "wkv_chunks": 16}
    assert ck.model_record(torch.nn.Linear(2, 2)) == {}
    ck.atomic_save({"model": src.state_dict(), "extra": {"wkv_mode": "fast"}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd.pt records an invalid Bi-WKV function: wkv_mode='fast'"):
        ck.load_model_weights(model, tmp_path / "odd.pt")
    other = timm.create_model("vrwkv_tiny_patch16_224", **dict(kw, depth=3))
    with pytest.raises(RuntimeError, match=r"released.pth does not fit VRWKV:\n  \d+ missing keys \(blocks.2"):
        ck.load_model_weights(other, tmp_path / "released.pth")


def test_manager_checkpoints_resume_with_timms_resume_checkpoint(tmp_path):
    """timm's ``resume_checkpoint`` reads the weights under ``state_dict`` (it failed with torch's long "Missing
    key(s)" error on our ``model``); the alias costs no bytes (the tensors are written once)."""
    from timm.models import resume_checkpoint
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    m = ck.CheckpointManager(tmp_path)
    path = m.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "step": 5}, 5)
    plain = tmp_path / "plain.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "step": 5}, plain)
    assert path.stat().st_size < plain.stat().st_size + 1024
    target = torch.nn.Linear(64, 64)
    target_opt = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    assert resume_checkpoint(target, str(path), optimizer=target_opt, log_info=False) == 3
    assert torch.equal(target.weight, model.weight)
    assert torch.equal(target_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])


def test_a_full_disk_is_named_when_a_checkpoint_cannot_be_written(tmp_path, monkeypatch):
    """torch.save on a full disk ends with "RuntimeError: [enforce fail at inline_container.cc] unexpected pos",
    the OSError only its cause; the tools print CheckpointWriteError as one line (exit 1)."""
    import errno

    from vision_rwkv.engine.cli import _ONE_LINE_ERRORS
    ck.atomic_save({"a": torch.ones(2)}, tmp_path / "ckpt_00000001.pt")

    def full(obj, f):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 59776 vs 59696") from err
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ck.CheckpointWriteError, match="no space left on the device to write the checkpoint .*"
                                                      "ckpt_00000002.pt") as err:
        ck.atomic_save({"a": torch.ones(2)}, tmp_path / "ckpt_00000002.pt")
    assert isinstance(err.value, _ONE_LINE_ERRORS) and err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt"]

    def other(obj, f):
        raise RuntimeError("some other failure")
    monkeypatch.setattr(torch, "save", other)
    with pytest.raises(RuntimeError, match="some other failure"):
        ck.atomic_save({}, tmp_path / "ckpt_00000003.pt")
