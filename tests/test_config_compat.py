"""Old spellings (head `window`, implementation "dense") still load, with a DeprecationWarning."""
import json

import pytest

from sener_jax.models.deberta import EncoderConfig
from sener_jax.models.sener import SenerConfig
from sener_jax.models.span_head import SpanHeadConfig


def test_head_window_becomes_max_span_words():
    with pytest.warns(DeprecationWarning, match="max_span_words=129"):
        head = SpanHeadConfig.from_dict({"num_types": 3, "window": 128})
    assert head.max_span_words == 129 and head.band_half_width == 128 and head.band_width == 257
    assert head == SpanHeadConfig(num_types=3)


def test_both_spellings_is_an_error():
    with pytest.raises(ValueError, match="both the old `window` and `max_span_words`"):
        SpanHeadConfig.from_dict({"num_types": 3, "window": 8, "max_span_words": 9})


def test_old_export_model_config_loads():
    # model.json as written before the rename: head "window", "dense" implementations.
    new = SenerConfig(
        EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        SpanHeadConfig(num_types=2, max_span_words=5, impl="reference"),
        pool_impl="reference",
    )
    old = json.loads(json.dumps(new.to_dict()))
    old["head"]["window"] = old["head"].pop("max_span_words") - 1
    old["head"]["impl"] = "dense"
    old["pool_impl"] = "dense"
    old["encoder"]["attention_impl"] = "dense"
    with pytest.warns(DeprecationWarning):
        loaded = SenerConfig.from_dict(old)
    assert loaded.head == new.head and loaded.pool_impl == "reference"
    assert loaded.encoder.attention_impl == "reference"


def test_unknown_impl_still_refused():
    with pytest.raises(ValueError, match="impl"):
        SpanHeadConfig(num_types=2, impl="sparse")
