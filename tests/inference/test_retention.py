"""Knowledge retention: base and tuned answer the same general questions; scores against each other and references."""

import json

import pytest
from conftest import ROOT, tiny_recipe

from glmtune.errors import UsageError
from glmtune.inference.retention import read_questions, retention_scores, retention_summary

GENERAL = ROOT / "data" / "retention" / "general.jsonl"


def test_identical_answers_are_unchanged_and_only_referenced_questions_meet_references():
    scores = retention_scores(["Paris.", "九"], ["Paris.", "九"], ["Paris.", None])
    assert scores["tuned vs base"]["exact_match"] == 100.0 and scores["tuned vs base"]["rouge-l"] == 100.0
    assert (
        scores["tuned vs reference"]["questions"] == 1.0
        and scores["tuned vs reference"]["exact_match"] == 100.0
    )
    moved = retention_scores(["London.", "十"], ["Paris.", "九"], [None, None])
    assert moved["tuned vs base"]["exact_match"] == 0.0 and "tuned vs reference" not in moved


def test_the_summary_puts_the_task_beside_the_general_answers():
    task = {"base": {"exact_match": 0.0}, "tuned": {"exact_match": 96.0}}
    line = retention_summary(task, retention_scores(["a b", "c"], ["a b", "d"], ["a b", "c"]))
    assert line.startswith("trained task: exact match 0 -> 96; general questions: 50% of the tuned answers")
    assert "against the references: base" in line


def test_the_shipped_general_set_is_bilingual_with_references():
    questions = read_questions([str(GENERAL)], "eval.retention")
    assert len(questions) >= 40 and all(q.reference for q in questions)
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in q.messages[-1].content) for q in questions)
    assert 10 <= chinese <= len(questions) - 10
    identity = json.loads((ROOT / "data" / "self_cognition.json").read_text(encoding="utf-8"))
    assert not {q.messages[-1].content for q in questions} & {r["instruction"] for r in identity}


def test_questions_read_alpaca_keys_and_name_a_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"instruction": "Add", "input": "2+2", "output": "4", "system": "Be brief."}\n{"answer": 1}\n'
    )
    with pytest.raises(UsageError, match=r"q.jsonl:2: missing 'question'"):
        read_questions([str(path)], "eval.retention")
    path.write_text('{"instruction": "Add", "input": "2+2", "output": "4", "system": "Be brief."}\n')
    (question,) = read_questions([str(path)], "eval.retention")
    assert [m.content for m in question.messages] == ["Be brief.", "Add\n2+2"] and question.reference == "4"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_eval_measures_retention_against_the_real_base(tmp_path, tiny_dir, tokenizer, glm4, method, capsys):
    from glmtune.checkpoints.load import load_model
    from glmtune.inference.evaluate import evaluate_source
    from glmtune.inference.generation import generate_answers
    from glmtune.training.train import train

    questions = tmp_path / "general.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "reference": "Paris."}) + "\n"
                                 for q in ("What is the capital of France?", "你是谁？", "Name a color.")))  # fmt: skip
    recipe = tiny_recipe(tmp_path, "builtin:tiny-glm4", f"method.kind='{method}'", "train.learning_rate=1e-3")
    run_dir = train(recipe)
    evaluate_source(run_dir, retention=[str(questions)])
    retention = json.loads((run_dir / "eval.json").read_text())["retention"]
    assert set(retention) == {"tuned vs base", "base vs reference", "tuned vs reference"}
    assert retention["tuned vs base"]["questions"] == 3.0
    assert "knowledge retention" in capsys.readouterr().err
    # "base" is the untuned model: its answers agree with the shipped tiny model's own
    base = load_model(tiny_dir)
    prompts = [q.messages for q in read_questions([str(questions)], "q")]
    own = generate_answers(base, tokenizer, glm4, prompts, {"max_new_tokens": 6, "do_sample": False})
    expected = retention_scores(["x"] * 3, own, ["Paris."] * 3)["base vs reference"]
    assert retention["base vs reference"] == pytest.approx(expected)
