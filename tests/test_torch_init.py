"""The span head starts as the authors' PyTorch head does: every leaf's init statistics against the
PyTorch rule its module follows (nn.Linear / nn.Conv2d defaults, xavier_normal_ for U, W, pos_embed),
and the initialisers' fans read off the Flax layouts (kernels transposed against PyTorch)."""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # test-only dependency: PyTorch's own initialisers as the reference

from flax import traverse_util

from sener_jax.models.span_head import SpanHead, SpanHeadConfig
from sener_jax.models.torch_init import (
    torch_conv_kernel_init,
    torch_linear_bias_init,
    torch_linear_kernel_init,
    torch_xavier_fans,
    torch_xavier_normal_init,
)

HIDDEN, SEEDS = 1024, 16
CONFIG = SpanHeadConfig(num_types=12, max_span_words=5, row_chunk=8)  # SeNER's c = 32, p = 101, 2 blocks
C, P, R = CONFIG.channels, CONFIG.biaffine_dim + 1, CONFIG.num_types

# leaf path (regex) -> (distribution, parameter): "uniform" with its bound, "normal" with its std,
# "const" with its value. Written from PyTorch's documented rules, independently of torch_init.
EXPECTED = {
    r"(head|tail)_mlp/(kernel|bias)": ("uniform", 1 / math.sqrt(HIDDEN)),  # nn.Linear(1024, 100)
    r"U": ("normal", math.sqrt(2 / (P * P + C * P))),  # xavier_normal_ on (c, p, p)
    r"W": ("normal", math.sqrt(2 / (2 * P + C))),  # xavier_normal_ on (c, 2p)
    r"cross_layers_\d/pos_embed/embedding": ("normal", math.sqrt(2 / (C + 2))),  # xavier_normal_ on (2, c)
    r"cross_layers_\d/[hv]_qkv/(kernel|bias)": ("uniform", 1 / math.sqrt(C)),  # nn.Linear(c, 3c)
    r"cross_layers_\d/dense/(kernel|bias)": ("uniform", 1 / math.sqrt(2 * C)),  # nn.Linear(2c, c)
    r"cross_layers_\d/conv[12]/kernel": ("uniform", 1 / math.sqrt(9 * C)),  # nn.Conv2d(c, c, 3)
    r"cross_layers_\d/LayerNorm2?/scale": ("const", 1.0),
    r"cross_layers_\d/LayerNorm2?/bias": ("const", 0.0),
    r"down_fc/(kernel|bias)": ("uniform", 1 / math.sqrt(C)),  # nn.Linear(c, R)
}


@pytest.fixture(scope="module")
def head_leaves():
    """{path: (SEEDS, *shape)} over independent inits, so small leaves still give usable statistics."""
    words = jnp.zeros((1, 6, HIDDEN), jnp.float32)
    mask = jnp.ones((1, 6), bool)
    init = jax.jit(jax.vmap(lambda key: SpanHead(CONFIG).init(key, words, mask)["params"]))
    params = init(jax.random.split(jax.random.PRNGKey(0), SEEDS))
    return {"/".join(path): np.asarray(leaf, np.float64) for path, leaf in traverse_util.flatten_dict(params).items()}


def _rule(path: str):
    matches = [rule for pattern, rule in EXPECTED.items() if re.fullmatch(pattern, path)]
    assert len(matches) == 1, f"head leaf {path!r}: {len(matches)} rules match (add it to EXPECTED)"
    return matches[0]


def test_every_head_leaf_has_the_pytorch_init_statistics(head_leaves):
    assert len(head_leaves) == 6 + 2 * 13 + 2  # MLPs, U, W; 13 per BiSPA block; down_fc
    for path, values in head_leaves.items():
        kind, param = _rule(path)
        if kind == "const":
            np.testing.assert_array_equal(values, param, err_msg=path)
            continue
        n = values.size
        std = param / math.sqrt(3) if kind == "uniform" else param
        # 5 standard errors of the sample std (0.447/sqrt(n) relative for a uniform, 0.707 for a normal):
        # about 1% on U and the MLP kernels, 3% on the conv kernels; seeds are fixed, so no flakes.
        tolerance = 5 * (0.447 if kind == "uniform" else 0.707) / math.sqrt(n)
        assert abs(values.std() / std - 1) <= tolerance, f"{path}: std {values.std():.5g}, PyTorch's {std:.5g}"
        assert abs(values.mean()) <= 5 * std / math.sqrt(n), f"{path}: mean {values.mean():.3g} not ~0"
        if kind == "uniform":
            assert np.abs(values).max() <= param * (1 + 1e-6), f"{path}: beyond the bound {param:.5g}"
            assert np.abs(values).max() >= param * (1 - 20 / n), f"{path}: does not reach the bound {param:.5g}"
        elif n > 10_000:  # an untruncated normal (JAX's glorot_normal truncates at 2 std)
            assert np.abs(values).max() > 3 * std, f"{path}: tails look truncated"


def test_fans_come_from_the_flax_layouts():
    """Dense kernels are (in, out) and conv kernels HWIO: only the input axes set the bound."""
    key = jax.random.PRNGKey(1)
    kernel = np.asarray(torch_linear_kernel_init()(key, (7, 4000)))
    assert 0.99 / math.sqrt(7) < np.abs(kernel).max() <= 1 / math.sqrt(7)
    conv = np.asarray(torch_conv_kernel_init()(key, (3, 3, 4, 2000)))
    assert 0.99 / math.sqrt(36) < np.abs(conv).max() <= 1 / math.sqrt(36)
    bias = np.asarray(torch_linear_bias_init(25)(key, (5000,)))
    assert 0.99 / 5 < np.abs(bias).max() <= 1 / 5
    with pytest.raises(ValueError, match="HWIO"):
        torch_conv_kernel_init()(key, (3, 3, 4))
    with pytest.raises(ValueError, match="fan_in=0"):
        torch_linear_bias_init(0)


@pytest.mark.parametrize("shape", [(32, 101, 101), (32, 202), (2, 32), (6, 5, 3, 3)])
def test_xavier_matches_pytorch_fan_rule(shape):
    """Our fans equal PyTorch's for the same tensor, and our std equals torch's xavier_normal_ draw's."""
    assert torch_xavier_fans(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    ours = np.asarray(torch_xavier_normal_init()(jax.random.PRNGKey(2), shape))
    fan_in, fan_out = torch_xavier_fans(shape)
    std = math.sqrt(2 / (fan_in + fan_out))
    tolerance = 5 * 0.707 / math.sqrt(ours.size)
    assert abs(ours.std() / std - 1) < tolerance
    if ours.size > 10_000:  # torch's own draw has the same spread
        torch.manual_seed(0)
        assert abs(torch.nn.init.xavier_normal_(torch.empty(shape)).std().item() / std - 1) < tolerance
