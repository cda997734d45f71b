"""Original checkpoint conversion: the key mapping both ways, wrapped / prefixed files, loading through
``timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...))``, the Bi-WKV mode switch, errors,
safetensors output and the CLI."""
import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from model_helpers import tiny_model
from vision_rwkv.models import VRWKV6, build_from_original, checkpoint_filter_fn, ours_to_original, original_to_ours
from vision_rwkv.models.convert import (
    CheckpointMismatchError, convert_file, detect_family, key_mismatches, load_checkpoint_file,
    model_kwargs_from_original, unwrap_state_dict)

ROOT = Path(__file__).resolve().parents[2]


def original_checkpoint(model: torch.nn.Module) -> dict:
    """An mmcls-style original checkpoint made from our model by the inverse mapping."""
    sd = ours_to_original(model.state_dict())
    return {'meta': {'epoch': 300, 'mmcls_version': '0.25.0'},
            'state_dict': {(k if k.startswith('head.') else 'backbone.' + k): v for k, v in sd.items()}}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _convert_cli():
    spec = importlib.util.spec_from_file_location('convert_checkpoint', ROOT / 'tools' / 'convert_checkpoint.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.mark.parametrize('fixture', ['vrwkv4_prenorm.pt', 'vrwkv6.pt'])
def test_mapping_matches_real_original_keys(load_fixture, fixture):
    """Our model built from a fixture's config maps to exactly the original key set and shapes, both ways."""
    fx = load_fixture(fixture)
    model = build_from_original(fx['config'], fx['state_dict'])
    back = ours_to_original(model.state_dict())
    assert back.keys() == fx['state_dict'].keys()
    for k, v in fx['state_dict'].items():
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k
    ours = original_to_ours(fx['state_dict'])
    assert ours.keys() == model.state_dict().keys()
    assert original_to_ours(back).keys() == ours.keys()


def test_explicit_key_mapping():
    model = tiny_model('vrwkv_large_patch16_384', depth=2)
    orig = ours_to_original(model.state_dict())
    for ours_key, orig_key in [
        ('patch_embed.proj.weight', 'patch_embed.projection.weight'), ('norm.bias', 'ln1.bias'),
        ('blocks.0.norm0.weight', 'layers.0.ln0.weight'), ('blocks.1.norm2.bias', 'layers.1.ln2.bias'),
        ('blocks.1.ls1.gamma', 'layers.1.gamma1'), ('blocks.0.spatial_mix.spatial_decay', 'layers.0.att.spatial_decay'),
        ('blocks.1.channel_mix.key_norm.weight', 'layers.1.ffn.key_norm.weight'),
        ('pre_logits.fc.weight', 'head.0.weight'), ('head.weight', 'head.2.weight'), ('pos_embed', 'pos_embed'),
    ]:
        assert torch.equal(orig[orig_key].reshape(-1), model.state_dict()[ours_key].reshape(-1)), ours_key
    assert orig['layers.0.att.spatial_mix_k'].shape == (1, 1, 32)
    assert model.blocks[0].spatial_mix.spatial_mix_k.shape == (32,)
    plain = ours_to_original(tiny_model('vrwkv_tiny_patch16_224').state_dict())
    assert 'head.fc.weight' in plain and 'head.2.weight' not in plain


def test_unwrap_and_family():
    model = tiny_model('vrwkv6_small_patch16_224')
    sd = ours_to_original(model.state_dict())
    for wrapped in ({'state_dict': {'module.backbone.' + k: v for k, v in sd.items()}},
                    {'model': {'backbone.' + k: v for k, v in sd.items()}, 'epoch': 3}, sd):
        assert unwrap_state_dict(wrapped).keys() == sd.keys()
        assert detect_family(unwrap_state_dict(wrapped)) == 'vrwkv6'
    assert detect_family(model.state_dict()) == 'vrwkv6'
    assert detect_family(tiny_model('vrwkv_tiny_patch16_224').state_dict()) == 'vrwkv'
    with pytest.raises(CheckpointMismatchError, match='cannot tell the model family'):
        detect_family({'layers.0.ln1.weight': torch.ones(2)})
    with pytest.raises(CheckpointMismatchError, match='no tensors'):
        unwrap_state_dict({'meta': {'a': 1}})


def test_filter_errors_list_keys():
    model = tiny_model('vrwkv_small_patch16_224')
    sd = ours_to_original(model.state_dict())
    missing = {k: v for k, v in sd.items() if k != 'layers.1.gamma2'}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys \(blocks.1.ls2.gamma\)"):
        checkpoint_filter_fn(missing, model)
    extra = dict(sd, **{'layers.0.att.mystery': torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys \(blocks.0.spatial_mix.mystery\)"):
        checkpoint_filter_fn(extra, model)
    unmapped = dict(sd, **{'neck.proj.weight': torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"no mapping\) \(neck.proj.weight\)"):
        checkpoint_filter_fn(unmapped, model)
    with pytest.raises(CheckpointMismatchError, match='VRWKV6 state dict but the model is VRWKV \\(v4\\)'):
        checkpoint_filter_fn(ours_to_original(tiny_model('vrwkv6_tiny_patch16_224').state_dict()), model)
    with pytest.raises(CheckpointMismatchError, match='VRWKV \\(v4\\) state dict but the model is VRWKV6'):
        checkpoint_filter_fn(sd, tiny_model('vrwkv6_tiny_patch16_224'))
    wide = ours_to_original(tiny_model('vrwkv_small_patch16_224', embed_dim=48).state_dict())
    with pytest.raises(CheckpointMismatchError, match='shape mismatches'):
        checkpoint_filter_fn({k: v for k, v in wide.items() if k != 'pos_embed'}, model)
    # long lists: counted, the first 20 named
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn({k: v for k, v in sd.items() if not k.startswith('layers.') or k.startswith('layers.0.')},
                             model)
    n_missing = sum(1 for k in model.state_dict() if k.startswith('blocks.') and not k.startswith('blocks.0.'))
    assert n_missing > 20
    assert f"{n_missing} missing keys (" in str(err.value) and f"and {n_missing - 20} more" in str(err.value)
    assert len(str(err.value)) < 2500
    no_head = {k: v for k, v in sd.items() if not k.startswith('head.')}
    # a backbone checkpoint into a classifier: everything but the classifier, for timm to load non-strictly
    filtered = checkpoint_filter_fn(no_head, model)
    assert set(model.state_dict()) - set(filtered) == {'head.weight', 'head.bias'}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys \(blocks.1.ls2.gamma\)"):
        checkpoint_filter_fn({k: v for k, v in missing.items() if not k.startswith('head.')}, model)
    headless = tiny_model('vrwkv_small_patch16_224', num_classes=0)
    headless.load_state_dict(checkpoint_filter_fn(no_head, headless))
    headless.load_state_dict(checkpoint_filter_fn(sd, headless))  # a classifier checkpoint into a backbone


def test_filter_resamples_pos_embed():
    src = tiny_model('vrwkv_tiny_patch16_224', img_size=64)  # 4x4 grid
    dst = tiny_model('vrwkv_tiny_patch16_224', img_size=96)  # 6x6 grid
    sd = checkpoint_filter_fn(ours_to_original(src.state_dict()), dst)
    assert sd['pos_embed'].shape == (1, 36, 32)
    dst.load_state_dict(sd)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():  # the stored resize equals the on-the-fly resize
        assert torch.allclose(src._embed(x)[0], dst._embed(x)[0], atol=1e-6)


def test_timm_pretrained_from_original_pth(tmp_path, perturb):
    src = perturb(tiny_model('vrwkv_small_patch16_224'))
    path = tmp_path / 'vrwkv_s_in1k_224.pth'
    torch.save(original_checkpoint(src), path)
    kw = dict(embed_dim=32, depth=3)
    loaded = timm.create_model('vrwkv_small_patch16_224', pretrained=True, **kw,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    assert_same_weights(src, loaded)
    assert (loaded.wkv_mode, loaded.wkv_chunks) == ('original', 32)
    explicit = timm.create_model('vrwkv_small_patch16_224', pretrained=True, wkv_mode='exact', **kw,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    assert explicit.wkv_mode == 'exact'
    seg = timm.create_model('vrwkv_small_patch16_224', pretrained=True, **kw,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=7, wkv_chunks=16))
    assert (seg.wkv_mode, seg.wkv_chunks) == ('original', 16)
    fresh = timm.create_model('vrwkv_small_patch16_224', **kw)
    assert fresh.wkv_mode == 'exact'
    # new class count: timm re-initialises the classifier, everything else loads
    tuned = timm.create_model('vrwkv_small_patch16_224', pretrained=True, num_classes=3, **kw,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert tuned.head.out_features == 3
    assert torch.equal(tuned.blocks[2].spatial_mix.key.weight, src.blocks[2].spatial_mix.key.weight)
    # timm adapts the first conv (cfg first_conv) to another channel count
    gray = timm.create_model('vrwkv_small_patch16_224', pretrained=True, in_chans=1, **kw,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    assert torch.allclose(gray.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    # features_only on pretrained weights
    feats = timm.create_model('vrwkv_small_patch16_224', pretrained=True, features_only=True, **kw,
                              pretrained_cfg_overlay=dict(file=str(path)))
    src.eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        src.set_wkv_mode('original', 32)
        ref = src.forward_intermediates(x, intermediates_only=True)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(feats.eval()(x), ref))
    # a backbone-only checkpoint: a new classifier or features_only; an mmseg segmentor file: its backbone
    headless_path, seg_path = tmp_path / 'backbone.pth', tmp_path / 'upernet.pth'
    orig = ours_to_original(src.state_dict())
    torch.save({k: v for k, v in orig.items() if not k.startswith('head.')}, headless_path)
    seg_sd = {'backbone.' + k: v for k, v in orig.items() if not k.startswith('head.')}
    seg_sd.update({'decode_head.conv_seg.weight': torch.randn(5, 8, 1, 1), 'neck.lateral.0.weight': torch.ones(2),
                   'auxiliary_head.conv_seg.weight': torch.randn(5, 4, 1, 1)})
    torch.save({'meta': {'iter': 160000}, 'state_dict': seg_sd}, seg_path)
    for file in (headless_path, seg_path):
        new_head = timm.create_model('vrwkv_small_patch16_224', pretrained=True, num_classes=3, **kw,
                                     pretrained_cfg_overlay=dict(file=str(file), wkv_chunks=16))
        assert new_head.head.out_features == 3
        assert torch.equal(new_head.blocks[2].spatial_mix.key.weight, src.blocks[2].spatial_mix.key.weight)
        feats = timm.create_model('vrwkv_small_patch16_224', pretrained=True, features_only=True, **kw,
                                  pretrained_cfg_overlay=dict(file=str(file)))
        with torch.no_grad():
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(feats.eval()(x), ref))
    # the same class count: timm loads strictly (torch's "missing head.weight" did not say what to pass)
    with pytest.raises(CheckpointMismatchError, match=r'has no classifier .*pass num_classes=N .*features_only=True'):
        timm.create_model('vrwkv_small_patch16_224', pretrained=True, **kw,
                          pretrained_cfg_overlay=dict(file=str(headless_path)))
    # a VRWKV checkpoint into a VRWKV6 model
    with pytest.raises(CheckpointMismatchError, match='VRWKV \\(v4\\) state dict'):
        timm.create_model('vrwkv6_tiny_patch16_224', pretrained=True, embed_dim=32, depth=3, head_size=16,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=7))


def test_timm_pretrained_large_uses_16_chunks(tmp_path):
    src = tiny_model('vrwkv_large_patch16_384', depth=2)
    path = tmp_path / 'vrwkv_l_22kto1k_384.pth'
    torch.save({'model': ours_to_original(src.state_dict())}, path)  # InternImage-style wrapper, no prefix
    loaded = timm.create_model('vrwkv_large_patch16_384', pretrained=True, embed_dim=32, depth=2,
                               head_hidden_size=48, pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    assert (loaded.wkv_mode, loaded.wkv_chunks) == ('original', 16)
    assert loaded.pos_grid == (12, 12)
    assert_same_weights(src, loaded)


def test_convert_file_and_cli(tmp_path, perturb):
    src = perturb(tiny_model('vrwkv6_small_patch16_224', num_classes=1000))
    pth = tmp_path / 'vrwkv6_s_in1k_224.pth'
    torch.save(original_checkpoint(src), pth)

    out = tmp_path / 'lib.safetensors'
    summary = convert_file(pth, out, model_name='vrwkv6_small_patch16_224', embed_dim=32, depth=3, head_size=16)
    assert summary['family'] == 'vrwkv6' and summary['num_classes'] == 1000
    tensors = load_file(out)
    assert tensors.keys() == src.state_dict().keys()

    cli = _convert_cli()
    cli_out = tmp_path / 'cli.safetensors'
    assert cli.main([str(pth), str(cli_out)]) == 0
    assert all(torch.equal(load_file(cli_out)[k], v) for k, v in tensors.items())
    # the CLI's --model check catches a checkpoint of the wrong family / size and writes nothing
    bad_out = tmp_path / 'bad.safetensors'
    assert cli.main([str(pth), str(bad_out), '--model', 'vrwkv_tiny_patch16_224']) == 1
    assert cli.main([str(pth), str(bad_out), '--model', 'vrwkv6_tiny_patch16_224']) == 1  # width 192 != 32
    assert cli.main([str(tmp_path / 'nope.pth'), str(bad_out)]) == 1
    assert not bad_out.exists()

    loaded = timm.create_model('vrwkv6_small_patch16_224', pretrained=True, embed_dim=32, depth=3, head_size=16,
                               pretrained_cfg_overlay=dict(file=str(cli_out)))
    assert_same_weights(src, loaded)


def test_load_checkpoint_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        load_checkpoint_file(tmp_path / 'missing.pth')
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='cannot read checkpoint'):
        load_checkpoint_file(corrupt)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint.*b'not a ch'"):
        load_checkpoint_file(corrupt)
    with pytest.raises(ValueError, match='.safetensors'):
        convert_file(corrupt, tmp_path / 'out.pt')
    bad_st = tmp_path / 'bad.safetensors'
    bad_st.write_bytes(b'\x01')
    with pytest.raises(ValueError, match='bad.safetensors: not a valid safetensors file'):
        load_checkpoint_file(bad_st)
    bad_st.write_bytes((4).to_bytes(8, 'little') + b'{,}!')
    with pytest.raises(ValueError, match='bad.safetensors: not a valid safetensors file .its header is not JSON'):
        load_checkpoint_file(bad_st)
    with open(bad_st, 'wb') as f:  # a header larger than safetensors accepts, in a (sparse) file that holds it
        f.write((200_000_000).to_bytes(8, 'little'))
        f.truncate(200_000_016)
    with pytest.raises(ValueError, match='announces a header of 200000000 bytes'):
        load_checkpoint_file(bad_st)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(legacy)['w'], torch.ones(3))


@pytest.mark.parametrize('name', ['vrwkv_tiny_patch16_224', 'vrwkv6_tiny_patch16_224'])
def test_pretrained_file_errors_name_the_file(tmp_path, name):
    """timm's own loader raises an empty FileNotFoundError for a missing file and, for a corrupt one, torch.load's
    advice to retry with weights_only=False: ours name the file and the problem."""
    kw = dict(embed_dim=64, depth=2)
    with pytest.raises(FileNotFoundError, match="not found: '.*missing.pth'"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'missing.pth')), **kw)
    with pytest.raises(FileNotFoundError, match='not found'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path)), **kw)  # a folder
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='corrupt.pth: not a PyTorch checkpoint'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(corrupt)), **kw)
    truncated = tmp_path / 'truncated.pth'
    torch.save(timm.create_model(name, **kw).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:4096])
    with pytest.raises(ValueError, match='truncated.pth: a truncated or damaged zip archive'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(truncated)), **kw)
    st = tmp_path / 'cut.safetensors'
    save_file(timm.create_model(name, **kw).state_dict(), str(st))
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(ValueError, match='cut.safetensors: not a valid safetensors file'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(st)), **kw)
    # a readable file whose weights do not fit keeps its own error (not reported as unreadable)
    good = tmp_path / 'other.pth'
    torch.save(timm.create_model(name, embed_dim=128, depth=2).state_dict(), good)
    with pytest.raises(CheckpointMismatchError, match='width 128 != model width 64'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(good)), **kw)


def test_original_config_translation():
    kw = model_kwargs_from_original(
        dict(img_size=192, patch_size=16, embed_dims=1024, depth=24, post_norm=True, init_values=1e-5, k_norm=True,
             hidden_rate=4, hidden_dims=3072, drop_path_rate=0.1, with_cp=True, shift_pixel=1,
             interpolate_mode='bicubic', out_indices=-1), 'vrwkv')
    assert kw['key_norm'] is True and kw['head_hidden_size'] == 3072 and kw['embed_dim'] == 1024
    assert kw['mlp_ratio'] == 4 and 'with_cp' not in kw
    assert build_from_original(dict(embed_dims=32, depth=1, with_cp=True),
                               tiny_model('vrwkv_tiny_patch16_224', depth=1).state_dict()).grad_checkpointing
    assert model_kwargs_from_original(dict(embed_dims=320, num_heads=4), 'vrwkv6')['head_size'] == 80
    with pytest.raises(ValueError, match=r"unknown original config keys: \['frobnicate'\]"):
        model_kwargs_from_original(dict(embed_dims=64, frobnicate=1), 'vrwkv')
    with pytest.raises(ValueError, match='shift_pixel'):
        model_kwargs_from_original(dict(shift_pixel=2), 'vrwkv')
    with pytest.raises(ValueError, match='num_heads'):
        model_kwargs_from_original(dict(num_heads=2), 'vrwkv')


def test_rwkv_clip_image_tower_from_original(load_fixture):
    """The RWKV-CLIP fixture's image tower (4 heads of 80, hidden_rate 1) via build_from_original(prefix=...)."""
    fx = load_fixture('rwkvclip.pt')
    model = build_from_original(fx['config']['image'], fx['state_dict'], prefix='image_model.')
    assert isinstance(model, VRWKV6) and model.head_size == 80
    with torch.no_grad():
        out = model.forward_features_map(fx['inputs']['image'])
    ref = fx['intermediates']['image_tokens_final']
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_truncated_safetensors_data_is_named(tmp_path):
    """A .safetensors file cut in its tensor data (the header intact, as a partial copy leaves it) or with bytes
    appended: the format check compares the header's data offsets with the file size, and every loader names it."""
    from vision_rwkv.models.convert import checkpoint_format_problem
    kw = dict(embed_dim=32, depth=2)
    full = tmp_path / 'full.safetensors'
    save_file(timm.create_model('vrwkv_tiny_patch16_224', **kw).state_dict(), str(full))
    data = full.read_bytes()
    assert checkpoint_format_problem(full) is None
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(data[: len(data) // 2])
    assert checkpoint_format_problem(cut) == (
        f'not a valid safetensors file (truncated: its header places tensor data up to byte {len(data)}, '
        f'the file has {len(data) // 2} bytes)')
    with pytest.raises(ValueError, match=r'cut.safetensors: not a valid safetensors file \(truncated'):
        load_checkpoint_file(cut)
    with pytest.raises(ValueError, match=r'vrwkv_tiny_patch16_224: cannot read checkpoint .*cut.safetensors: .*'
                                         r'truncated'):
        timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(cut)),
                          **kw)
    longer = tmp_path / 'longer.safetensors'
    longer.write_bytes(data + b'\0' * 8)
    assert '8 bytes after the last tensor' in checkpoint_format_problem(longer)
    not_a_table = tmp_path / 'list.safetensors'
    not_a_table.write_bytes((2).to_bytes(8, 'little') + b'[]')
    assert 'not a table of tensors' in checkpoint_format_problem(not_a_table)


def test_select_weights_prefers_ema_and_names_what_is_missing():
    """One rule for every loader (timm's use_ema=True): EMA weights when present, else the model weights, else the
    file itself; asking for EMA weights a file lacks is an error naming the file and the reason."""
    from vision_rwkv.models.convert import MissingWeightsError, select_weights
    raw, ema = {'w': torch.zeros(1)}, {'module.w': torch.ones(1)}
    ours = {'model': raw, 'ema': ema, 'step': 3}
    assert select_weights(ours, 'auto')['w'] == 1 and select_weights(ours, 'ema')['w'] == 1
    assert select_weights(ours, 'model') is raw and select_weights(ours, None) is ours
    assert select_weights({'state_dict': raw, 'state_dict_ema': {'w': torch.ones(1)}})['w'] == 1  # timm's names
    assert select_weights({'model': raw, 'model_ema': {'w': torch.ones(1)}})['w'] == 1  # DeiT's
    assert select_weights({'model': raw, 'ema': None}) is raw and select_weights(raw) is raw
    assert select_weights(raw, 'model') is raw
    with pytest.raises(MissingWeightsError, match=r"checkpoint run/best.pt holds no EMA weights: its 'ema' entry is "
                                                  r"empty.*eval.weights=model"):
        select_weights({'model': raw, 'ema': None}, 'ema', 'run/best.pt')
    with pytest.raises(MissingWeightsError, match='checkpoint w.pth holds no EMA weights: it is a plain state dict'):
        select_weights(raw, 'ema', 'w.pth')
    with pytest.raises(MissingWeightsError, match=r"holds no EMA weights: it has no 'ema' / 'state_dict_ema' / "
                                                  r"'model_ema' entry \(entries: \['meta', 'state_dict'\]\)"):
        select_weights({'state_dict': raw, 'meta': {}}, 'ema', 'mm.pth')
    with pytest.raises(MissingWeightsError, match=r"x.pt has no entry 'foo' holding weights \(entries: \['ema', "
                                                  r"'model', 'step'\]\)"):
        select_weights(ours, 'foo', 'x.pt')


def _training_checkpoint(model: torch.nn.Module, ema_shift: float = 1.0, **extra) -> dict:
    """A checkpoint as the training engine writes it: raw weights, timm ModelEmaV3 weights (``module.`` keys)."""
    ema = {'module.' + k: v + ema_shift if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return {'model': model.state_dict(), 'ema': ema, 'optimizer': {}, 'step': 4, 'extra': dict(extra)}


def test_timm_file_and_conversion_take_a_training_checkpoints_ema_weights(tmp_path, capsys):
    """pretrained_cfg_overlay=dict(file=...) and convert_file read a training checkpoint as the tools do: its EMA
    weights when it has them; convert_file(weights='model') takes the raw ones."""
    kw = dict(embed_dim=32, depth=2, num_classes=5)
    src = timm.create_model('vrwkv_tiny_patch16_224', **kw)
    path = tmp_path / 'best.pt'
    torch.save(_training_checkpoint(src, wkv_mode='exact', wkv_chunks=32), path)
    ema = {k: v + 1.0 for k, v in src.state_dict().items()}
    loaded = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, wkv_mode='exact', **kw,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=5))
    assert all(torch.equal(v, ema[k]) for k, v in loaded.state_dict().items())
    out = tmp_path / 'out.safetensors'
    convert_file(path, out)
    assert all(torch.equal(v, ema[k]) for k, v in load_file(out).items())
    convert_file(path, out, weights='model')
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in load_file(out).items())
    torch.save({'model': src.state_dict(), 'ema': None}, path)
    from vision_rwkv.models.convert import MissingWeightsError
    with pytest.raises(MissingWeightsError, match='best.pt holds no EMA weights'):
        convert_file(path, out, weights='ema')
    cli = _convert_cli()
    assert cli.main([str(path), str(tmp_path / 'cli.safetensors'), '--weights', 'ema']) == 1
    assert 'best.pt holds no EMA weights' in capsys.readouterr().err
    assert cli.main([str(path), str(tmp_path / 'cli.safetensors'), '--weights', 'model']) == 0


def test_conversion_records_the_mode_the_weights_were_trained_with(tmp_path, recwarn):
    """convert_file writes wkv_mode='original' for the original layout (the released weights) only; our training
    checkpoints keep the mode they recorded (none recorded: none written); a converted file keeps its record."""
    from safetensors import safe_open
    kw = dict(embed_dim=32, depth=2, num_classes=5)
    src = timm.create_model('vrwkv_tiny_patch16_224', **kw)

    def converted_metadata(ckpt, name):
        path = tmp_path / name
        torch.save(ckpt, path) if isinstance(ckpt, dict) else None
        out = tmp_path / (name + '.safetensors')
        summary = convert_file(path if isinstance(ckpt, dict) else ckpt, out)
        with safe_open(str(out), 'pt') as f:
            meta = f.metadata()
        assert summary['wkv_mode'] == meta.get('wkv_mode')
        return out, {k: meta[k] for k in ('wkv_mode', 'wkv_chunks') if k in meta}

    assert converted_metadata(original_checkpoint(src), 'released.pth')[1] == {'wkv_mode': 'original'}
    exact, meta = converted_metadata(_training_checkpoint(src, wkv_mode='exact', wkv_chunks=32), 'ours_exact.pt')
    assert meta == {'wkv_mode': 'exact', 'wkv_chunks': '32'}
    tuned = _training_checkpoint(src, wkv_mode='original', wkv_chunks=16)
    assert converted_metadata(tuned, 'ours_original.pt')[1] == {'wkv_mode': 'original', 'wkv_chunks': '16'}
    assert converted_metadata({'model': src.state_dict(), 'ema': None}, 'older.pt')[1] == {}
    assert converted_metadata(exact, 'again')[1] == {'wkv_mode': 'exact', 'wkv_chunks': '32'}  # kept
    v6 = timm.create_model('vrwkv6_tiny_patch16_224', embed_dim=32, depth=2, head_size=16)
    assert converted_metadata(original_checkpoint(v6), 'v6.pth')[1] == {}  # no Bi-WKV modes in v6
    # timm's route runs a file with the mode it records, unless wkv_mode is chosen (then a warning if not as trained)
    recwarn.clear()
    for overlay in (dict(file=str(exact)), dict(file=str(tmp_path / 'ours_exact.pt'))):
        model = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, **kw, pretrained_cfg_overlay=overlay)
        assert (model.wkv_mode, model.wkv_chunks) == ('exact', 32)
    tuned = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, **kw,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'ours_original.pt')))
    assert (tuned.wkv_mode, tuned.wkv_chunks) == ('original', 16)
    assert not any('records Bi-WKV mode' in str(w.message) for w in recwarn.list)
    for chosen in (dict(wkv_mode='original'), dict(pretrained_cfg_overlay=dict(file=str(exact), wkv_mode='original'))):
        with pytest.warns(UserWarning, match="records Bi-WKV mode 'exact'"):
            model = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, **kw,
                                      **{'pretrained_cfg_overlay': dict(file=str(exact)), **chosen})
        assert model.wkv_mode == 'original'
    released = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, **kw,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / 'released.pth')))
    assert (released.wkv_mode, released.wkv_chunks) == ('original', 32)


def test_key_mismatches_counts_and_names_each_kind():
    """The fit check every loader shares: kinds in a fixed order, empty kinds left out, shapes compared for the
    keys both hold (also when not strict, and for a non-tensor entry), exempt keys skipped."""
    own = {'a': torch.zeros(2), 'b': torch.zeros(3, 4), 'c': torch.zeros(1)}
    assert key_mismatches(own, dict(own)) == []
    state = {'a': torch.zeros(5), 'b': 'not a tensor', 'z': torch.zeros(1)}
    assert key_mismatches(own, state) == [
        '1 missing keys (c)', '1 unexpected keys (z)',
        '2 shape mismatches (a: checkpoint (5,) vs model (2,), b: checkpoint () vs model (3, 4))']
    assert key_mismatches(own, state, strict=False, shapes_exempt=lambda k: k == 'a') == [
        '1 shape mismatches (b: checkpoint () vs model (3, 4))']


def test_timm_route_names_the_way_out_of_a_class_count_mismatch(tmp_path):
    """A file fine-tuned to 5 classes given to a model of the cfg's 1000: timm would load the classifier as it is,
    so the error says to put num_classes in the overlay (torch's size-mismatch error did not); num_classes=N to
    create_model is a new classifier, as timm does."""
    src = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=2, num_classes=5)
    path = tmp_path / 'five.safetensors'
    save_file(src.state_dict(), str(path))
    kw = dict(pretrained=True, embed_dim=32, depth=2)
    with pytest.raises(CheckpointMismatchError, match=r'has 5 classes, the model 1000: put num_classes=5 in '
                                                      r'pretrained_cfg_overlay.*head\.bias, head\.weight'):
        timm.create_model('vrwkv_tiny_patch16_224', **kw, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = timm.create_model('vrwkv_tiny_patch16_224', **kw,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=5))
    assert torch.equal(loaded.head.weight, src.head.weight)
    assert timm.create_model('vrwkv_tiny_patch16_224', **kw, num_classes=3,
                             pretrained_cfg_overlay=dict(file=str(path))).head.out_features == 3


def test_segmentation_backbones_without_final_norm_load_through_timm(tmp_path):
    """Our segmentors prune the backbone's final norm (their features do not use it): such a file loads as a
    timm backbone (features_only, or a new classifier), the final norm kept at its init, with a warning."""
    src = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=2)
    weights = {'backbone.' + k: v for k, v in src.state_dict().items() if not k.startswith(('head.', 'norm.'))}
    path = tmp_path / 'seg.pt'
    torch.save({'model': {**weights, 'decode_head.conv_seg.weight': torch.zeros(4, 8, 1, 1)}}, path)
    kw = dict(pretrained=True, embed_dim=32, depth=2, wkv_mode='exact', pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.warns(UserWarning, match=r'no final norm \(norm.bias, norm.weight\)'):
        feats = timm.create_model('vrwkv_tiny_patch16_224', features_only=True, out_indices=(0, 1), **kw)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = src.eval().forward_intermediates(x, indices=(0, 1), intermediates_only=True)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(feats.eval()(x), want))
    with pytest.warns(UserWarning, match='no final norm'):
        tuned = timm.create_model('vrwkv_tiny_patch16_224', num_classes=3, **kw)
    assert torch.equal(tuned.norm.weight, torch.ones(32)) and tuned.head.out_features == 3


def test_convert_with_model_checks_without_resizing_and_errors_are_one_line(tmp_path, capsys):
    """--model is a check: a 512-px checkpoint keeps its 32x32 position embedding (the loaders resample it for the
    model they fill); an unknown model, a file holding one tensor, a missing output folder and a model of another
    width are one error line each, the last naming the width."""
    src = timm.create_model('vrwkv_tiny_patch16_224', img_size=128, embed_dim=32, depth=1, num_classes=0)
    path = tmp_path / 'seg128.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in ours_to_original(src.state_dict()).items()}}, path)
    out = tmp_path / 'checked.safetensors'
    convert_file(path, out, model_name='vrwkv_tiny_patch16_224', embed_dim=32, depth=1)
    assert load_file(str(out))['pos_embed'].shape == (1, 64, 32)  # 8x8, not the model's 14x14
    torch.save(torch.randn(3), tmp_path / 'tensor.pth')
    cli = _convert_cli()
    for argv, message in (([str(path), str(tmp_path / 'x.safetensors'), '--model', 'no_such_model'],
                           "unknown timm model 'no_such_model'"),
                          ([str(tmp_path / 'tensor.pth'), str(tmp_path / 'x.safetensors')], 'holds no weights'),
                          ([str(path), str(tmp_path / 'none' / 'x.safetensors')], 'output folder not found'),
                          ([str(path), str(tmp_path / 'x.safetensors'), '--model', 'vrwkv_small_patch16_224'],
                           f'checkpoint {path} embedding width 32 != model width 384')):
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith('error: ') and message in err and err.count('\n') == 1, err


def test_build_from_original_takes_the_configs_rectangular_grid():
    """An original model built with a rectangular img_size stores H/p x W/p position tokens: the config's size
    gives the grid (it was refused as 'not a square grid'); a square count without a matching size stays square."""
    src = timm.create_model('vrwkv_tiny_patch16_224', img_size=(64, 128), embed_dim=32, depth=1, num_classes=5)
    model = build_from_original(dict(embed_dims=32, depth=1, img_size=(64, 128), num_classes=5),
                                {'state_dict': ours_to_original(src.state_dict())}, wkv_mode='exact')
    assert model.pos_grid == (4, 8)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))


def test_a_plain_state_dict_of_ours_warns_which_mode_it_runs(tmp_path, recwarn):
    """A state dict saved from a model of ours records no Bi-WKV mode: timm's pretrained route runs it in 'exact',
    the default of new models, as timm's checkpoint_path= does (the two disagreed: the pretrained route ran the
    cfg's 'original'), and says so; wkv_mode given, or a file that records its mode, no warning."""
    src = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=1, num_classes=5).eval()
    path = tmp_path / 'plain.pth'
    torch.save(src.state_dict(), path)
    kw = dict(pretrained=True, embed_dim=32, depth=1, pretrained_cfg_overlay=dict(file=str(path), num_classes=5))
    with pytest.warns(UserWarning, match=r"does not record the Bi-WKV function.*running them in 'exact'.*"
                                         r"wkv_mode='original'"):
        overlay = timm.create_model('vrwkv_tiny_patch16_224', **kw).eval()
    by_path = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=1, num_classes=5,
                                checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        want = src(x)
        for model in (overlay, by_path):
            assert model.wkv_mode == 'exact'
            torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    recwarn.clear()
    assert timm.create_model('vrwkv_tiny_patch16_224', wkv_mode='original', **kw).wkv_mode == 'original'
    assert not [w for w in recwarn.list if 'Bi-WKV' in str(w.message)]

def test_the_converter_says_how_timms_checkpoint_path_runs_released_v4_weights(tmp_path, capsys):
    """timm's checkpoint_path= (validate.py --checkpoint) does not read the file's recorded mode: the converter's
    output says to pass wkv_mode='original' there (a v6 file has no mode to pass)."""
    cli = _convert_cli()
    for name in ('vrwkv_tiny_patch16_224', 'vrwkv6_tiny_patch16_224'):
        src = tiny_model(name)
        torch.save(original_checkpoint(src), tmp_path / f'{name}.pth')
        assert cli.main([str(tmp_path / f'{name}.pth'), str(tmp_path / f'{name}.safetensors')]) == 0
        out = capsys.readouterr().out
        hint = "checkpoint_path= (validate.py --checkpoint) pass wkv_mode='original'"
        assert (hint in out) == name.startswith('vrwkv_')


@pytest.mark.parametrize('layout', ['original', 'ours'])
def test_an_rwkv_clip_checkpoint_is_named_as_such(tmp_path, layout):
    """RWKV-CLIP weights given to a backbone: the text tower's RWKV-6 blocks made it 'a VRWKV6 state dict' for a v4
    model, and 'no layers.* or blocks.* keys' for a v6 one; neither said it was a CLIP model."""
    tower = timm.create_model('vrwkv6_tiny_patch16_224', embed_dim=32, depth=1, head_size=16,
                              num_classes=0).state_dict()
    if layout == 'original':
        state = {'image_model.' + k: v for k, v in ours_to_original(tower).items()}
        state['text_model.blocks.0.att.time_maa_x'] = torch.zeros(1, 1, 32)
    else:
        state = {'visual.trunk.' + k: v for k, v in tower.items()}
        state['text.blocks.0.att.time_maa_x'] = torch.zeros(1, 1, 32)
    state['logit_scale'] = torch.tensor(2.0)
    path = tmp_path / 'clip.pt'
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}}, path)
    for name in ('vrwkv_tiny_patch16_224', 'vrwkv6_tiny_patch16_224'):
        extra = {'head_size': 16} if name.startswith('vrwkv6') else {'wkv_mode': 'exact'}
        model = timm.create_model(name, embed_dim=32, depth=1, **extra)
        with pytest.raises(CheckpointMismatchError, match='is an RWKV-CLIP model .*rwkv_clip.create_model'):
            checkpoint_filter_fn({'state_dict': {'module.' + k: v for k, v in state.items()}}, model)
        with pytest.raises(CheckpointMismatchError, match=f'{name}: checkpoint {path} is an RWKV-CLIP model'):
            timm.create_model(name, pretrained=True, embed_dim=32, depth=1, **extra,
                              pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(CheckpointMismatchError, match=f'^checkpoint {path} is an RWKV-CLIP model'):
        convert_file(path, tmp_path / 'out.safetensors')  # (the tool converts one file: its errors name it)


def test_a_segmentation_checkpoint_converts_to_its_backbone_and_says_so(tmp_path, capsys):
    """An mmseg-style file (backbone.* + neck.* / decode_head.* / auxiliary_head.*) becomes its backbone; the tool
    wrote it as '0 classes' without a word about the neck and heads it left out. A classifier's head is kept."""
    src = timm.create_model('vrwkv_tiny_patch16_224', img_size=32, embed_dim=32, depth=1, num_classes=4)
    backbone = {k: v for k, v in src.state_dict().items() if not k.startswith('head.')}
    heads = {'neck.lateral.0.weight': torch.randn(8, 32, 1, 1), 'decode_head.conv_seg.weight': torch.randn(3, 8, 1, 1),
             'auxiliary_head.conv_seg.bias': torch.randn(3)}
    seg = tmp_path / 'seg.pth'
    torch.save({'state_dict': {**{'backbone.' + k: v for k, v in backbone.items()}, **heads}}, seg)
    summary = convert_file(seg, tmp_path / 'seg.safetensors')
    assert sorted(summary['dropped']) == sorted(heads) and summary['num_classes'] == 0
    assert sorted(load_file(str(tmp_path / 'seg.safetensors'))) == sorted(backbone)
    cls = tmp_path / 'cls.pth'
    torch.save({'state_dict': {'backbone.' + k if not k.startswith('head.') else k: v
                               for k, v in src.state_dict().items()}}, cls)
    summary = convert_file(cls, tmp_path / 'cls.safetensors')
    assert summary['dropped'] == [] and summary['num_classes'] == 4
    capsys.readouterr()
    assert _convert_cli().main([str(seg), str(tmp_path / 'cli.safetensors')]) == 0
    out = capsys.readouterr().out
    assert 'the backbone of a segmentation model: its 3 auxiliary_head / decode_head / neck tensors are left out' in out
    assert _convert_cli().main([str(cls), str(tmp_path / 'cli2.safetensors')]) == 0
    assert 'left out' not in capsys.readouterr().out
