"""Data sources: column mapping (AdvertiseGen), dataset_info.json entries, weighted mixing, the eval split."""

import json
from pathlib import Path

import pytest
from conftest import ROOT, read_lists, write_recipe

from glmtune.data.prepare import prepare_data
from glmtune.errors import UsageError
from glmtune.recipe import DataSection
from glmtune.recipe_files import load_recipe

ADGEN = [
    {"content": "类型#裙*颜色#红色*风格#复古", "summary": "红色复古长裙，优雅大方。"},
    {"content": "类型#上衣*材质#棉*风格#简约", "summary": "简约棉质上衣，舒适透气。"},
    {"content": "类型#裤*版型#直筒*材质#牛仔布", "summary": "直筒牛仔裤，修饰腿型。"},
    {"content": "类型#鞋*风格#运动", "summary": "轻便运动鞋，久走不累。"},
    {"content": "类型#包*材质#帆布", "summary": "帆布包，容量大又耐用。"},
]
CHAT = [  # LLaMA-Factory "openai"-style sharegpt: role/content tags, a separate system column
    {
        "msgs": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"回答{i}"}],
        "sys": "你是助手。",
    }
    for i in range(4)
]
REGISTRY = {
    "adgen": {"file_name": "adgen.jsonl", "columns": {"prompt": "content", "response": "summary"}},
    "chat": {
        "file_name": "chat.json",
        "formatting": "sharegpt",
        "columns": {"messages": "msgs", "system": "sys"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
    "hub": {"hf_hub_url": "someone/alpaca_zh"},
    "pairs": {"file_name": "adgen.jsonl", "ranking": True},
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "adgen.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ADGEN), "utf-8"
    )
    (tmp_path / "chat.json").write_text(json.dumps(CHAT, ensure_ascii=False), "utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps(REGISTRY), "utf-8")
    return tmp_path


def recipe_in(folder: Path, data: str):
    body = f'[run]\noutput_dir = "{folder / "runs"}"\n[model]\npath = "builtin:tiny-glm4"\n[data]\n{data}\n'
    return load_recipe(write_recipe(folder, body))


def test_advertisegen_columns_map_to_user_and_assistant(data_dir):
    recipe = recipe_in(
        data_dir, 'train = ["adgen.jsonl"]\ncolumns = { prompt = "content", response = "summary" }'
    )
    train = read_lists(recipe.data).train
    assert [(m.role, m.content) for m in train[0].messages] == [("user", ADGEN[0]["content"]),
                                                                  ("assistant", ADGEN[0]["summary"])]  # fmt: skip
    assert {e.source for e in train} == {"adgen"}


def test_a_wrong_column_names_the_record_and_the_mapping_key(data_dir):
    recipe = recipe_in(
        data_dir, 'train = ["adgen.jsonl"]\ncolumns = { prompt = "text", response = "summary" }'
    )
    with pytest.raises(
        UsageError, match=r"adgen.jsonl:1: no column 'text' for the prompt \(columns.prompt\)"
    ):
        read_lists(recipe.data)


def test_registry_entries_read_alpaca_and_sharegpt_with_their_column_maps(data_dir):
    recipe = recipe_in(data_dir, 'registry = "dataset_info.json"\ntrain = ["adgen", "chat"]')
    assert recipe.data.train == ["adgen", "chat"]  # names stay names; the registry path is resolved
    assert Path(recipe.data.registry).is_absolute()
    train = read_lists(recipe.data).train
    assert len(train) == len(ADGEN) + len(CHAT)
    chat = [e for e in train if e.source == "chat"][0]
    assert [(m.role, m.content) for m in chat.messages] == [("system", "你是助手。"), ("user", "问题0"),
                                                            ("assistant", "回答0")]  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("hub", "hf_hub_url is remote; glmtune reads local files only"),
        ("pairs", "ranking \\(preference\\) data needs preference training"),
        ("nope", "has no entry 'nope'; it has adgen, chat, hub, pairs"),
    ],
)
def test_registry_entries_glmtune_cannot_read_are_refused_by_name(data_dir, entry, message):
    recipe = recipe_in(data_dir, f'registry = "dataset_info.json"\ntrain = ["{entry}"]')
    with pytest.raises(UsageError, match=message):
        read_lists(recipe.data)


def test_files_of_the_same_name_in_two_folders_are_told_apart_by_folder(data_dir):
    for folder in ("zh", "en"):
        (data_dir / folder).mkdir()
        (data_dir / folder / "adgen.jsonl").write_text((data_dir / "adgen.jsonl").read_text("utf-8"), "utf-8")
    columns = 'columns = { prompt = "content", response = "summary" }'
    recipe = recipe_in(data_dir, f'train = ["zh/adgen.jsonl", "en/adgen.jsonl", "adgen.jsonl"]\n{columns}')
    names = [s["name"] for s in read_lists(recipe.data).sources]
    assert names == ["zh/adgen", "en/adgen", f"{data_dir.name}/adgen"]
    with pytest.raises(UsageError, match=r"adgen.jsonl is listed twice; .*\[data.mix\] \(adgen = \{ weight"):
        read_lists(recipe_in(data_dir, f'train = ["adgen.jsonl", "adgen.jsonl"]\n{columns}').data)


def test_an_entry_name_without_a_registry_says_to_set_one(data_dir):
    with pytest.raises(UsageError, match="set data.registry"):
        read_lists(recipe_in(data_dir, 'train = ["adgen"]').data)


def test_mixing_draws_counts_with_and_without_replacement_seeded(data_dir):
    mix = 'train = ["adgen.jsonl"]\ncolumns = { prompt = "content", response = "summary" }\n'
    twice = read_lists(recipe_in(data_dir, mix + "mix = { adgen = { weight = 2.0 } }").data)
    assert len(twice.train) == 10 and all(
        sum(e.origin == o for e in twice.train) == 2 for o in {e.origin for e in twice.train}
    )
    three = read_lists(recipe_in(data_dir, mix + "mix = { adgen = { samples = 3 } }").data)
    assert len({e.origin for e in three.train}) == 3 == len(three.train)
    drawn = [
        [e.origin for e in read_lists(recipe_in(data_dir, mix + f"seed = {seed}\n"
              "mix = { adgen = { samples = 12, replace = true } }").data).train]
        for seed in (1, 1, 2)
    ]  # fmt: skip
    assert len(drawn[0]) == 12 and drawn[0] == drawn[1] and drawn[0] != drawn[2]
    assert three.sources[0] | {"files": None} == {"name": "adgen", "files": None, "records": 5, "held_out": 0,
                                                  "drawn": 3, "mix": {"samples": 3, "replace": False}}  # fmt: skip


def test_a_mix_entry_must_name_a_source_and_one_amount(data_dir):
    with pytest.raises(UsageError, match="data.mix.adgen: give exactly one of weight or samples"):
        recipe_in(data_dir, 'train = ["adgen.jsonl"]\nmix = { adgen = { weight = 1.0, samples = 2 } }')
    recipe = recipe_in(data_dir, 'train = ["adgen.jsonl"]\nmix = { other = { weight = 2.0 } }')
    with pytest.raises(UsageError, match="data.mix.other: no train source of that name; sources: adgen"):
        read_lists(recipe.data)


def test_eval_split_is_held_out_deterministically_and_never_trained(data_dir):
    body = 'registry = "dataset_info.json"\ntrain = ["adgen", "chat"]\neval_fraction = 0.34'
    first, second = (read_lists(recipe_in(data_dir, body).data) for _ in range(2))
    assert len(first.eval) == 3 and len(first.train) == 6
    assert [e.origin for e in first.eval] == [e.origin for e in second.eval]
    assert not {e.origin for e in first.eval} & {e.origin for e in first.train}
    counted = read_lists(recipe_in(data_dir, body.replace("eval_fraction = 0.34", "eval_count = 2")).data)
    assert len(counted.eval) == 2
    with pytest.raises(UsageError, match="data.eval_count: holds out 9 of 9 records"):
        read_lists(recipe_in(data_dir, body.replace("eval_fraction = 0.34", "eval_count = 9")).data)


def test_eval_split_keys_are_refused_beside_an_eval_file():
    with pytest.raises(ValueError, match="with data.eval set"):
        DataSection(train=["a.jsonl"], eval=["b.jsonl"], eval_fraction=0.1)


def test_prepare_records_the_sources_and_the_registry_shapes_the_fingerprint(data_dir, tokenizer, glm4):
    body = 'registry = "dataset_info.json"\ntrain = ["adgen", "chat"]\neval_count = 2\nmix = { chat = { weight = 2.0 } }'
    recipe = recipe_in(data_dir, body)
    prepared = prepare_data(recipe.data, glm4, tokenizer, data_dir / "prepared")
    recorded = json.loads((data_dir / "prepared" / "sources.json").read_text())
    assert recorded == prepared.sources and recorded["seed"] == 42
    by_name = {s["name"]: s for s in recorded["sources"]}
    assert by_name["chat"]["drawn"] == 2 * (len(CHAT) - by_name["chat"]["held_out"])
    assert sum(s["samples"] for s in recorded["sources"]) == prepared.stats["train"]["samples"]
    assert sum(s["tokens"] for s in recorded["sources"]) == prepared.stats["train"]["tokens"]
    assert prepared.stats["eval"]["samples"] == 2
    assert prepare_data(recipe.data, glm4, tokenizer, data_dir / "prepared").reused
    registry = json.loads((data_dir / "dataset_info.json").read_text())
    registry["adgen"]["columns"]["query"] = "content"
    (data_dir / "dataset_info.json").write_text(json.dumps(registry))
    assert not prepare_data(recipe.data, glm4, tokenizer, data_dir / "prepared").reused


def test_advertisegen_recipe_dry_runs_with_the_shipped_sample(tmp_path, capsys):
    from glmtune.training.train import train

    recipe = load_recipe(ROOT / "recipes" / "advertisegen.toml",
                         [f"run.output_dir={tmp_path}", "model.path='builtin:tiny-glm4'"])  # fmt: skip
    train(recipe, dry_run=True)
    err = capsys.readouterr().err
    assert "trainable parameters" in err and "data" in err
    assert read_lists(recipe.data).train[0].messages[0].content.startswith("类型#")


def test_mix_recipe_prepares_every_registry_entry(tmp_path, tokenizer, glm4):
    recipe = load_recipe(ROOT / "recipes" / "mix.toml", [f"run.output_dir={tmp_path}"])
    prepared = prepare_data(recipe.data, glm4, tokenizer, tmp_path / "data")
    by_name = {s["name"]: s for s in prepared.sources["sources"]}
    assert set(by_name) == {"identity", "adgen", "multiturn"}
    assert by_name["multiturn"]["drawn"] == 20 and "eval" in prepared.splits
