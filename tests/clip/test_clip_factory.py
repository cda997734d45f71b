"""Factory, model configs, open_clip registration, transforms and the CustomTextCLIP interface."""
import copy
import math

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from clip_helpers import TINY_MODEL_KW, tiny_model
from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

import rwkv_clip


def test_configs_registered_with_open_clip():
    names = rwkv_clip.list_models()
    assert {"RWKV-CLIP-B-32", "RWKV-CLIP-B-16", "RWKV-CLIP-Tiny-demo"} <= set(names)
    assert set(names) <= set(open_clip.list_models())
    tok = open_clip.get_tokenizer("RWKV-CLIP-B-16")
    assert isinstance(tok, open_clip.SimpleTokenizer) and tok.context_length == 77
    ids = rwkv_clip.get_tokenizer("RWKV-CLIP-B-32")(["a cat"])
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and 49407 in ids[0] and ids[0, -1] == 0
    with pytest.raises(KeyError, match="unknown RWKV-CLIP model config"):
        rwkv_clip.create_model("RWKV-CLIP-L-14")
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json in"):
        rwkv_clip.create_model("local-dir:/no/such/folder")


def test_unreadable_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", pretrained=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"<html>")  # e.g. an error page saved in place of the weights
    with pytest.raises(RuntimeError, match="junk.pt: not a PyTorch checkpoint.*<html>"):
        rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", pretrained=str(tmp_path / "junk.pt"))


def test_b32_and_b16_configs_are_the_published_architecture():
    for name, patch in (("RWKV-CLIP-B-32", 32), ("RWKV-CLIP-B-16", 16)):
        cfg = rwkv_clip.get_model_config(name)
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        assert cfg["embed_dim"] == 640
        assert v["timm_model_name"] == f"vrwkv6_clip_patch{patch}_224" and v["image_size"] == 224
        assert v["drop_path_rate"] == 0.3
        with torch.device("meta"):  # the registered tower at full size, no memory
            tower = timm.create_model(v["timm_model_name"], drop_path_rate=v["drop_path_rate"])
        assert (tower.embed_dim, len(tower.blocks), tower.head_size, tower.patch_size) == (640, 12, 80, (patch,) * 2)
        assert tower.blocks[0].channel_mix.key.weight.shape == (3200, 640) and not tower.blocks[0].post_norm
        assert tower.num_classes == 0 and tower.pos_embed.shape == (1, (224 // patch) ** 2, 640)
        assert tower.pretrained_cfg["mean"] == open_clip.OPENAI_DATASET_MEAN
        assert (t["width"], t["layers"], t["head_size"], t["hidden_dim"], t["vocab_size"], t["context_length"]) == (
            640, 6, 64, 2240, 49408, 77)
        assert 1e-5 * t["head_size_divisor"] ** 2 == pytest.approx(6.4e-4)
    # build B/32 with 1 block per tower (full widths) to check what timm makes of the overrides
    m = rwkv_clip.create_model("RWKV-CLIP-B-32", vision_cfg={"depth": 1}, text_cfg={"layers": 1})
    trunk = m.visual.trunk
    assert trunk.num_features == 640 and trunk.head_size == 80 and trunk.pos_embed.shape == (1, 49, 640)
    blk = trunk.blocks[0]
    assert blk.channel_mix.key.weight.shape == (3200, 640)
    assert not any("ls1" in n or "gamma" in n for n, _ in trunk.named_parameters())  # no layer scale
    assert m.text.blocks[0].ffn.key.weight.shape == (2240, 640)
    assert m.text.emb.weight.shape == (49408, 640)
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_transforms_are_openai_bicubic_center_crop():
    model, train_tf, val_tf = rwkv_clip.create_model_and_transforms("RWKV-CLIP-Tiny-demo")
    size = model.visual.image_size[0]
    ops = {type(t): t for t in val_tf.transforms}
    assert ops[Resize].interpolation == InterpolationMode.BICUBIC and ops[Resize].size == size
    assert ops[CenterCrop].size == (size, size)
    assert tuple(ops[Normalize].mean) == open_clip.OPENAI_DATASET_MEAN
    assert tuple(ops[Normalize].std) == open_clip.OPENAI_DATASET_STD
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8))
    assert val_tf(img).shape == (3, size, size) and train_tf(img).shape == (3, size, size)


def test_clip_interface(tmp_path):
    torch.manual_seed(0)
    m = tiny_model().eval()
    images = torch.randn(3, 3, 16, 16)
    texts = torch.randint(0, 49408, (3, 16))
    fi, ft, scale = m(images, texts)
    assert fi.shape == ft.shape == (3, 32)
    assert torch.allclose(fi.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(fi, F.normalize(m.encode_image(images), dim=-1), atol=1e-6)
    assert torch.allclose(ft, m.encode_text(texts, normalize=True), atol=1e-6)
    assert torch.allclose(scale, torch.tensor(1 / 0.07), rtol=1e-5)
    img_logits, txt_logits = m.get_logits(images, texts)
    assert torch.allclose(img_logits, scale * fi @ ft.T, atol=1e-4) and torch.equal(txt_logits, img_logits.T)
    m.output_dict = True
    out = m(images, texts)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    only_text = m(text=texts)
    assert only_text["image_features"] is None and only_text["text_features"].shape == (3, 32)
    assert m.context_length == 16 and m.vocab_size == 49408

    with torch.no_grad():
        m.logit_scale.fill_(7.0)
    m.clamp_logit_scale()
    assert m.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        m.logit_scale.fill_(-1.0)
    m.clamp_logit_scale()
    assert m.logit_scale.item() == 0.0

    nwd = m.no_weight_decay()
    assert "logit_scale" in nwd and "visual.trunk.pos_embed" in nwd
    assert "text.blocks.0.att.time_decay" in nwd and "text.blocks.0.att.key.weight" not in nwd

    with pytest.raises(ValueError, match="batch, 3, H, W"):
        m.encode_image(torch.randn(2, 1, 16, 16))
    with pytest.raises(RuntimeError, match=r"TimeMixV6: vision-rwkv models do not support TorchScript"):
        torch.jit.script(m)


def test_lock_towers_and_grad_checkpointing():
    torch.manual_seed(0)
    m = tiny_model(vision_cfg={"depth": 2})
    m.lock_image_tower()
    assert not any(p.requires_grad for p in m.visual.parameters())
    m2 = tiny_model(vision_cfg={"depth": 2})
    m2.lock_image_tower(unlocked_groups=1)
    trainable = [n for n, p in m2.visual.named_parameters() if p.requires_grad]
    assert trainable and all("blocks.0." not in n and "patch_embed" not in n for n in trainable)
    m.lock_text_tower()
    assert not any(p.requires_grad for p in m.text.parameters()) and m.logit_scale.requires_grad
    depth = len(m2.text.blocks)
    m2.lock_text_tower(unlocked_layers=depth)  # every block (and ln_out), not the embedding
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in m2.text.named_parameters() if not p.requires_grad}
    assert frozen == {"emb.weight"}, frozen
    m2.lock_text_tower(unlocked_layers=depth + 2)  # more groups than blocks: the embedding too (open_clip)
    assert all(p.requires_grad for p in m2.text.parameters())
    m2.lock_text_tower(unlocked_layers=1)
    assert all(p.requires_grad == n.startswith((f"blocks.{depth - 1}.", "ln_out."))
               for n, p in m2.text.named_parameters())

    m3 = tiny_model(vision_cfg={"depth": 2}).train()
    images, texts = torch.randn(2, 3, 16, 16), torch.randint(0, 49408, (2, 16))

    def grads():
        m3.zero_grad()
        fi, ft, s = m3(images, texts)
        (s * (fi @ ft.T)).logsumexp(0).sum().backward()
        return {n: p.grad.clone() for n, p in m3.named_parameters() if p.grad is not None}

    ref = grads()
    m3.set_grad_checkpointing(True)
    assert m3.text.grad_checkpointing and m3.visual.trunk.grad_checkpointing
    got = grads()
    assert ref.keys() == got.keys()
    for n in ref:
        assert torch.allclose(ref[n], got[n], atol=1e-6, rtol=1e-5), n


def test_checkpoint_round_trip_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    src = tiny_model()
    with torch.no_grad():
        src.logit_scale.fill_(3.0)
    torch.save({"model": src.state_dict(), "step": 5}, tmp_path / "train_ckpt.pt")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    from clip_helpers import TINY_MODEL_KW
    for f in ("train_ckpt.pt", "w.safetensors"):
        dst = rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", pretrained=str(tmp_path / f), **TINY_MODEL_KW)
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), (f, k)
    bad = tiny_model(text_cfg={"hidden_dim": 32})
    with pytest.raises(RuntimeError, match="shape"):
        rwkv_clip.load_checkpoint(bad, tmp_path / "w.safetensors")


def test_works_as_open_clip_model_in_open_clip_tools():
    """open_clip's own zero-shot helper and ClipLoss accept the model."""
    torch.manual_seed(0)
    m = tiny_model().eval()
    tok = rwkv_clip.get_tokenizer("RWKV-CLIP-Tiny-demo", context_length=16)
    W = open_clip.build_zero_shot_classifier(m, tok, ["cat", "dog"], ["a photo of a {}."], device="cpu")
    assert W.shape == (32, 2)
    fi, ft, s = m(torch.randn(4, 3, 16, 16), tok(["a", "b", "c", "d"]))
    loss = open_clip.ClipLoss()(fi, ft, s)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_model_encodes_on_cpu(precision):
    """precision='bf16' / 'fp16' casts the weights; the text tower's fp32 WKV output is normalised in fp32 with
    them (it failed with a dtype mismatch) and both towers return the model's dtype, close to fp32."""
    torch.manual_seed(0)
    ref = tiny_model()
    m = tiny_model(precision=precision)
    m.load_state_dict(ref.state_dict())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    texts = torch.randint(1, 49407, (2, 16))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ft, fi = m.encode_text(texts, normalize=True), m.encode_image(images.to(dtype), normalize=True)
        rt, ri = ref.encode_text(texts, normalize=True), ref.encode_image(images, normalize=True)
    assert ft.dtype == fi.dtype == dtype
    assert torch.allclose(ft.float(), rt, atol=0.05) and torch.allclose(fi.float(), ri, atol=0.05)


def test_open_clip_factory_arguments(tmp_path):
    """open_clip's create_model / create_model_and_transforms arguments: precision names, force_image_size (the
    pretrained position embedding resampled, as open_clip does), force_context_length, image_mean / image_std."""
    from vision_rwkv.models._layers import resample_pos_embed
    torch.manual_seed(0)
    src = tiny_model()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    for precision, dtype in (("amp", torch.float32), ("amp_bf16", torch.float32), ("pure_bf16", torch.bfloat16),
                             ("pure_fp16", torch.float16)):
        assert tiny_model(precision=precision).logit_scale.dtype == dtype, precision
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_model(precision="fp8")
    with pytest.raises(ValueError, match="no GELU"):
        tiny_model(force_quick_gelu=True)
    big = tiny_model(pretrained=str(tmp_path / "w.pt"), force_image_size=24, force_context_length=20)
    assert big.visual.image_size == (24, 24) and big.text.context_length == 20
    grid = src.visual.trunk.pos_grid
    new_grid = big.visual.trunk.pos_grid
    assert new_grid != grid
    torch.testing.assert_close(big.visual.trunk.pos_embed, resample_pos_embed(src.visual.trunk.pos_embed, grid,
                                                                              new_grid))
    assert big.encode_image(torch.randn(1, 3, 24, 24)).shape == (1, 32)
    assert big.encode_text(torch.randint(1, 49407, (1, 20))).shape == (1, 32)
    _, train, val = rwkv_clip.create_model_and_transforms("RWKV-CLIP-Tiny-demo", image_mean=(0.5, 0.5, 0.5),
                                                          image_std=(0.25, 0.25, 0.25), force_image_size=24,
                                                          **copy.deepcopy(TINY_MODEL_KW))
    x = val(Image.fromarray(np.full((40, 30, 3), 255, np.uint8)))
    assert x.shape == (3, 24, 24) and torch.allclose(x, torch.full_like(x, 2.0))


def test_get_tokenizer_leaves_the_root_logger_unconfigured():
    """open_clip's get_tokenizer logs through the root logger, which configures it implicitly (a handler: the
    caller's later logging.basicConfig would do nothing); ours leaves it as it was. A fresh interpreter: pytest's
    own capture handlers sit on the root logger here."""
    import subprocess
    import sys
    script = ("import logging, rwkv_clip; rwkv_clip.get_tokenizer('RWKV-CLIP-Tiny-demo'); "
              "logging.basicConfig(level=logging.INFO); print(len(logging.root.handlers), logging.root.level)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", str(20)]  # the caller's basicConfig took effect (INFO = 20)
