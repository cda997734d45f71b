"""vision_rwkv.exported_program: load_program / CheckedProgram check an exported program's input against what the
program takes (read from the program), in words; they accept what the program's own guards accept. load_onnx does
the same for an ONNX file, from the range export_onnx records in it."""
import importlib.util

import pytest
import timm
import torch
from torch.export import Dim

import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.export import CheckedProgram, export_program, load_program, size_checks

LAYOUT = "float32 (batch, channels, height, width)"
HAS_ONNX = all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("vrwkv_tiny_patch16_224", depth=1, embed_dim=32, img_size=48, num_classes=3).eval()


def _rejected_by_both(checked: CheckedProgram, x: torch.Tensor, message: str) -> None:
    """The check raises a ValueError with ``message``; the program's own guards (or its first op) refuse ``x`` too."""
    with pytest.raises(ValueError, match=message):
        checked(x)
    with pytest.raises((AssertionError, RuntimeError)):
        checked.program_module(x)


def _runs_as_the_program(checked: CheckedProgram, inputs) -> None:
    """The check takes every input, and the output is the program's own."""
    for x in inputs:
        torch.testing.assert_close(checked(x), checked.program_module(x), rtol=0, atol=0)


@pytest.mark.parametrize("kw, batch", [({}, "[1, 4096]"), ({"max_batch": 1}, "1"), ({"dynamic_batch": False}, "2")])
def test_fixed_size_programs(model, kw, batch):
    checked = CheckedProgram(export_program(model, torch.randn(2, 3, 48, 48), **kw))
    assert checked.spec.summary() == f"{LAYOUT}: batch {batch}, channels 3, height 48, width 48"
    x = torch.randn(2 if kw.get("dynamic_batch") is False else 1, 3, 48, 48)
    torch.testing.assert_close(checked(x), model(x), rtol=1e-5, atol=1e-5)
    _rejected_by_both(checked, torch.randn(3, 48, 48), r"input of shape \(3, 48, 48\): 3-D, where it takes "
                      r"4-D \(batch, channels, height, width\)")
    _rejected_by_both(checked, torch.randn(x.shape[0], 4, 48, 48), "channels 4, where it must be 3; it takes")
    _rejected_by_both(checked, x.double(), rf"input of shape \({x.shape[0]}, 3, 48, 48\): dtype float64")
    _rejected_by_both(checked, torch.randn(x.shape[0], 3, 48, 64), "width 64, where it must be 48")
    if batch != "[1, 4096]":
        _rejected_by_both(checked, torch.randn(3, 3, 48, 48), f"batch 3, where it must be {batch}")
    with pytest.raises(TypeError, match="expected a tensor, got list"):
        checked([x])


def test_dynamic_size_program_takes_its_range_and_its_corners(model):
    checked = CheckedProgram(export_program(model, torch.randn(2, 3, 48, 48), dynamic_size=True, max_size=128))
    assert checked.spec.summary() == f"{LAYOUT}: batch [1, 4096], channels 3, height [33, 128], width [33, 128]"
    _runs_as_the_program(checked, [torch.randn(3, 3, 75, 40), *size_checks(model, torch.randn(1, 3, 48, 48), 128)])
    _rejected_by_both(checked, torch.randn(1, 3, 32, 64), r"height 32, where it must be \[33, 128\]")
    _rejected_by_both(checked, torch.randn(1, 3, 64, 129), r"width 129, where it must be \[33, 128\]")


class _Blocks32(torch.nn.Module):
    """Takes sides in multiples of 32 (a reshape into 32 x 32 blocks), as the ViT-Adapter segmentor does."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        b, c, h, w = x.shape
        blocks = x.reshape(b, c, h // 32, 32, w // 32, 32)
        return blocks.mean((3, 5)) * self.scale[:, None, None]


def test_a_size_step_and_an_open_range_are_read_from_the_program():
    """Sides ``32 * s`` with s in [2, 6] (a step of 32) and a batch without a maximum (``>= 0``, Dim's default)."""
    program = torch.export.export(_Blocks32(), (torch.randn(2, 3, 64, 96),),
                                  dynamic_shapes=({0: Dim("b"), 2: 32 * Dim("h", min=2, max=6),
                                                   3: 32 * Dim("w", min=2, max=6)},))
    checked = CheckedProgram(program)
    height = checked.spec.dims[2]
    assert (height.name, height.low, height.high, height.step) == ("height", 64, 192, 32)
    assert checked.spec.summary() == (f"{LAYOUT}: batch >= 0, channels 3, height a multiple of 32 in [64, 192], "
                                      "width a multiple of 32 in [64, 192]")
    _runs_as_the_program(checked, [torch.randn(1, 3, 64, 192), torch.randn(5000, 3, 192, 96)])
    _rejected_by_both(checked, torch.randn(2, 3, 64, 80), r"width 80, where it must be a multiple of 32 in \[64, 192\]")
    _rejected_by_both(checked, torch.randn(2, 3, 224, 64), r"height 224, where it must be a multiple of 32 in \[64, ")


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class _Tied(torch.nn.Module):
    """Adds its input to its transpose: a square input, one size for both dimensions."""

    def forward(self, x):
        return x + x.t()


class _Sum(torch.nn.Module):
    def forward(self, x):
        return x.sum(1)


def test_programs_exported_by_hand():
    """Dim.AUTO's lower bound of 2 (torch's 0/1 specialisation) still takes 1; a derived size ``2 k + 1`` takes the
    odd sizes only; two dimensions of one Dim must be equal; a keyword input is passed as a keyword; eval() is a
    no-op."""
    linear = _Linear().eval()
    auto = CheckedProgram(torch.export.export(linear, (torch.randn(5, 4),), dynamic_shapes=({0: Dim.AUTO},)))
    assert auto.spec.summary() == "float32 (dimension 0, dimension 1): dimension 0 >= 1, dimension 1 4"
    x = torch.randn(1, 4)
    torch.testing.assert_close(auto(x), linear(x))
    assert auto.eval() is auto and auto.train(False) is auto
    with pytest.raises(RuntimeError, match="no training mode"):
        auto.train()

    k = Dim("k", min=2, max=10)
    odd = CheckedProgram(torch.export.export(_Linear(), (torch.randn(7, 4),), dynamic_shapes=({0: 2 * k + 1},)))
    assert odd.spec.dims[0].describe() == "[5, 21] in steps of 2"
    odd(torch.randn(9, 4))
    with pytest.raises(ValueError, match=r"dimension 0 6, where it must be \[5, 21\] in steps of 2"):
        odd(torch.randn(6, 4))  # (torch's guards let it through, with k = 2)

    s = Dim("s", min=2, max=16)
    tied = CheckedProgram(torch.export.export(_Tied(), (torch.randn(5, 5),), dynamic_shapes=({0: s, 1: s},)))
    assert tied.spec.summary().endswith("(dimension 0, dimension 1: one size)")
    tied(torch.randn(7, 7))
    with pytest.raises(ValueError, match=r"dimension 0 5 and dimension 1 6 differ, where they are one size"):
        tied(torch.randn(5, 6))
    with pytest.raises(AssertionError):  # (what the program itself says)
        tied.program_module(torch.randn(5, 6))
    # s and 2 s, s from 2: the plain one's range starts at 1 (0/1 specialisation), the tie still holds at s = 3
    doubled = CheckedProgram(torch.export.export(_Sum(), (torch.randn(3, 6),), dynamic_shapes=({0: s, 1: 2 * s},)))
    assert doubled.spec.summary().endswith("dimension 0 [1, 16], dimension 1 a multiple of 2 in [4, 32] "
                                           "(dimension 0, dimension 1: one size)")
    _runs_as_the_program(doubled, [torch.randn(3, 6), torch.randn(16, 32)])
    with pytest.raises(ValueError, match="dimension 0 3 and dimension 1 8 differ"):
        doubled(torch.randn(3, 8))

    by_name = CheckedProgram(torch.export.export(linear, (), {"x": x}))
    torch.testing.assert_close(by_name(x=x), linear(x))
    torch.testing.assert_close(by_name(x), linear(x))
    with pytest.raises(TypeError, match="one input \\(as x=\\)"):
        by_name(y=x)
    with pytest.raises(TypeError, match="one input \\(positionally\\), got 2 positional"):
        auto(x, x)


def test_text_tower_program_takes_int64_tokens():
    import rwkv_clip
    from vision_rwkv.export import TextEncoder
    clip = rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", vision_cfg=dict(depth=1), text_cfg=dict(layers=1)).eval()
    tokens = rwkv_clip.get_tokenizer("RWKV-CLIP-Tiny-demo")(["a red circle", "two blue squares"])
    checked = CheckedProgram(export_program(TextEncoder(clip), tokens))
    assert checked.spec.summary() == f"int64 (batch, tokens): batch [1, 4096], tokens {tokens.shape[1]}"
    torch.testing.assert_close(checked(tokens[:1]), TextEncoder(clip)(tokens[:1]), rtol=1e-5, atol=1e-6)
    _rejected_by_both(checked, tokens.float(), "dtype float32; it takes int64")
    torch.testing.assert_close(checked(tokens.int()), checked(tokens), rtol=0, atol=0)  # (int32 ids, widened)
    _rejected_by_both(checked, tokens[:, :5], f"tokens 5, where it must be {tokens.shape[1]}")


def test_load_program(model, tmp_path):
    path = tmp_path / "m.pt2"
    torch.export.save(export_program(model, torch.randn(2, 3, 48, 48)), str(path))
    loaded = load_program(path)
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels 1, where it must be 3"):
        loaded(x[:, :1])
    with pytest.raises(FileNotFoundError, match="exported program not found"):
        load_program(tmp_path / "nope.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a torch.export program"):
        load_program(tmp_path / "junk.pt2")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_onnx_files_record_their_range_and_load_onnx_checks_it(model, tmp_path):
    """export_onnx writes the program's input spec into the file's metadata (ONNX's free dimensions carry no range,
    and onnxruntime bounds none); load_onnx checks inputs against it, or against the graph for a file without it."""
    import onnx

    from vision_rwkv.export import INPUT_SPEC_KEY, export_onnx, load_onnx
    path = export_onnx(model, torch.randn(2, 3, 48, 48), tmp_path / "m.onnx", dynamic_size=True, max_size=96)
    loaded = load_onnx(path)
    program = CheckedProgram(export_program(model, torch.randn(2, 3, 48, 48), dynamic_size=True, max_size=96))
    assert loaded.spec.summary() == program.spec.summary() == (f"{LAYOUT}: batch [1, 4096], channels 3, height "
                                                               "[33, 96], width [33, 96]")
    x = torch.randn(2, 3, 40, 96)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"ONNX model input of shape \(1, 3, 20, 48\): height 20, where it must be "
                                         r"\[33, 96\]"):
        loaded(torch.randn(1, 3, 20, 48))
    with pytest.raises(ValueError, match="dtype float64"):
        loaded(x.double())
    # a file without the metadata (another exporter's): rank, dtype and fixed sizes from its graph
    proto = onnx.load(str(path))
    assert [p.key for p in proto.metadata_props] == [INPUT_SPEC_KEY]
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = load_onnx(tmp_path / "bare.onnx")
    assert bare.spec.summary() == f"{LAYOUT}: batch >= 0, channels 3, height >= 0, width >= 0"
    torch.testing.assert_close(bare(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"3-D, where it takes 4-D"):
        bare(torch.randn(3, 40, 40))
    with pytest.raises(ValueError, match="channels 1, where it must be 3"):
        bare(torch.randn(1, 1, 40, 40))
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        load_onnx(tmp_path / "nope.onnx")
