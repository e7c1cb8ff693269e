"""`open_base`: one call resolves a recipe's [model] into its folder, family and tokenizer, for every command."""

import pytest
import torch

from glmtune.checkpoints.load import open_base
from glmtune.checkpoints.tiny import builtin_path
from glmtune.data.render import special_token_id
from glmtune.errors import UsageError
from glmtune.recipe import ModelSection


def test_a_builtin_base_opens_with_its_family_and_tokenizer():
    base = open_base(ModelSection(path="builtin:tiny-glm4"))
    assert base.path == builtin_path("tiny-glm4") and base.family.name == "glm4"
    assert all(special_token_id(base.tokenizer, name) >= 0 for name in base.family.special_tokens)
    meta = base.meta_model()
    assert meta.config.model_type == "glm4" and all(p.device.type == "meta" for p in meta.parameters())


def test_an_original_layout_base_loads_through_its_family(tmp_path):
    base = open_base(ModelSection(path="builtin:tiny-chatglm3", family="chatglm3", allow_pickle=True))
    assert base.family.name == "chatglm3"
    assert (base.allow_pickle, base.trust_remote_code) == (
        True,
        False,
    )  # the recipe's switches, carried along
    model = base.load_model(dtype="float32")
    ids = torch.tensor(
        [[special_token_id(base.tokenizer, "[gMASK]"), special_token_id(base.tokenizer, "sop")]]
    )
    assert model(input_ids=ids).logits.shape[:2] == (1, 2)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in base.meta_model().parameters()
    )


def test_a_run_directory_is_not_a_base(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(UsageError, match="export it first"):
        open_base(ModelSection(path=str(tmp_path)))
