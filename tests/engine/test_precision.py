"""Precision helpers: autocast dtype per name, scaler enabled for fp16 only, clear error for unknown names."""
import pytest
import torch

from vision_rwkv.engine import autocast, check_precision, make_grad_scaler


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_dtype(name, dtype):
    lin = torch.nn.Linear(4, 4)
    with autocast(name, "cpu"):
        y = lin(torch.randn(2, 4))
    assert y.dtype == dtype
    assert make_grad_scaler(name, "cpu").is_enabled() == (name == "fp16")


def test_aliases_and_errors():
    assert check_precision("bfloat16") == "bf16" and check_precision("amp") == "fp16"
    with pytest.raises(ValueError, match="fp8"):
        check_precision("fp8")
