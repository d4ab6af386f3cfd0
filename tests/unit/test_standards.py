"""Standards: lookup by name, file path and inline YAML; unknown names list the known ones;
suite averages with the leaderboard's normalisation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from automation.errors import RecipeError, StandardError, StandardNotFoundError
from automation.standards import (
    SuiteTask,
    inline_if_file,
    list_standards,
    load_profile,
    load_profile_model,
    load_suite,
    profile_content,
    resolve,
    suite_averages,
    suite_content,
    suite_dir,
    suite_is_local,
    tasks_are_local,
    tasks_defined_in,
    tasks_dir_is_local,
)
from automation.standards.recipes import load_template, render_recipe
from tests.unit.test_compress_breadth import NAMED_RECIPES


def test_every_shipped_standard_loads_and_is_listed() -> None:
    listed = list_standards()
    assert [n for n, _ in listed["recipes"]] == sorted(NAMED_RECIPES)
    assert {"tiny", "openllm", "leaderboard"} <= {n for n, _ in listed["suites"]}
    assert {"chat", "rag", "summarization", "code_completion", "long_context", "smoke"} <= {
        n for n, _ in listed["profiles"]}
    for kind in listed.values():
        for name, description in kind:
            assert description and "\n" not in description, name
    for name, _ in listed["recipes"]:
        assert isinstance(yaml.safe_load(render_recipe(name)), dict)
    for name, _ in listed["suites"]:
        load_suite(name)
    for name, _ in listed["profiles"]:
        assert load_profile(name)["name"] == name


@pytest.mark.parametrize(("kind", "bad"), [("recipe", "w4a17"), ("suite", "opnellm"), ("profile", "chatt")])
def test_unknown_names_list_the_known_ones(kind: str, bad: str) -> None:
    with pytest.raises(StandardNotFoundError, match=rf"unknown {kind} '{bad}'; known: "):
        resolve(kind, bad)  # type: ignore[arg-type]
    with pytest.raises(StandardError, match="does not exist"):
        resolve(kind, f"/nonexistent/{bad}.yaml")  # type: ignore[arg-type]


def test_lookup_by_file_path_and_inline(tmp_path: Path) -> None:
    profile = "description: mine\nprompt_tokens: 4\noutput_tokens: 2\nmax_requests: 3\n"
    path = tmp_path / "mine.yaml"
    path.write_text(profile)
    assert load_profile_model(str(path)).name == "mine"
    inline = load_profile_model(profile)
    assert inline.name == "<inline>" and inline.max_requests == 3
    with pytest.raises(StandardError, match="never ends"):
        load_profile_model("prompt_tokens: 4\noutput_tokens: 2\n")
    with pytest.raises(StandardError, match="needs 'rates'"):
        load_profile_model("rate_type: concurrent\nprompt_tokens: 4\noutput_tokens: 2\nmax_requests: 3\n")
    with pytest.raises(StandardError, match="not valid YAML"):
        load_profile_model("a: [\nb")
    suite = load_suite("tasks: [arc_easy, {task: hellaswag, num_fewshot: 10}]\n")
    assert suite.task_names() == ["arc_easy", "hellaswag"] and suite.tasks[1].num_fewshot == 10
    with pytest.raises(StandardError, match="include_path"):
        load_suite("include_path: nowhere\ntasks: [x]\n")


def test_recipe_template_by_path_inline_and_plain_recipe(tmp_path: Path) -> None:
    plain = "stage:\n  mods:\n    QuantizationModifier:\n      targets: [Linear]\n      scheme: FP8_DYNAMIC\n"
    assert yaml.safe_load(render_recipe(plain)) == yaml.safe_load(plain)
    with pytest.raises(RecipeError, match="unknown argument"):
        render_recipe(plain, {"x": 1})
    path = tmp_path / "custom.yaml"
    path.write_text((Path(__file__).parents[2] / "automation/standards/recipes/w4a16.yaml").read_text())
    assert render_recipe(str(path), {"group_size": 64}) == render_recipe("w4a16", {"group_size": 64})
    assert not load_template("fp8_dynamic").needs_calibration and load_template("w8a8").needs_calibration
    with pytest.raises(RecipeError, match="must be int"):
        render_recipe("w4a16", {"group_size": "64"})


def test_tiny_suite_points_at_its_local_tasks() -> None:
    assert (suite_dir("tiny") / "tiny_mc.yaml").is_file()
    with pytest.raises(StandardError, match="no local task directory"):
        suite_dir("openllm")


def test_which_suites_need_the_hub(tmp_path: Path) -> None:
    assert suite_is_local(load_suite("tiny"))
    assert not suite_is_local(load_suite("openllm")) and not suite_is_local(load_suite("leaderboard"))
    tasks = tmp_path / "tasks"
    shutil.copytree(suite_dir("tiny"), tasks)
    assert tasks_dir_is_local(tasks)
    (tasks / "hub.yaml").write_text("task: hubby\ndataset_path: org/some-dataset\n"
                                    "process_docs: !function utils.process\n")
    assert not tasks_dir_is_local(tasks)


def test_a_local_suite_must_define_every_task_it_names(tmp_path: Path) -> None:
    tiny = load_suite("tiny")
    with_hub_task = tiny.model_copy(update={"tasks": [*tiny.tasks, SuiteTask(task="arc_easy")]})
    assert not suite_is_local(with_hub_task)  # arc_easy is lm-eval's own: it downloads its dataset
    assert tasks_are_local(suite_dir("tiny"), ["tiny", "tiny_mc", "tiny_gen"])
    assert not tasks_are_local(suite_dir("tiny"), ["tiny_mc", "arc_easy"])
    assert not tasks_defined_in(suite_dir("tiny"), ["arc_easy"])
    # a local group that lists one of lm-eval's tasks as a member needs the hub too
    tasks = tmp_path / "tasks"
    shutil.copytree(suite_dir("tiny"), tasks)
    group = tasks / "tiny.yaml"
    group.write_text(group.read_text().replace("  - tiny_ppl\n", "  - tiny_ppl\n  - arc_easy\n"))
    assert tasks_dir_is_local(tasks)  # every YAML there reads local files...
    assert not tasks_are_local(tasks, ["tiny"]) and not tasks_defined_in(tasks, ["tiny_mc"])  # ...not enough
    group.write_text("group: tiny\ntask:\n  - tiny_mc\n  - {task: tiny_gen, num_fewshot: 1}\n"
                     "  - {task: inline_mc, dataset_path: json, output_type: multiple_choice}\n")
    (tasks / "tagged.yaml").write_text("task: tagged_mc\ntag: [my_tag]\ndataset_path: csv\n")
    assert tasks_are_local(tasks, ["tiny", "inline_mc", "my_tag", "tagged_mc"])
    group.write_text(group.read_text().replace("dataset_path: json", "dataset_path: org/hub-set"))
    assert not tasks_are_local(tasks, ["tiny"]) and tasks_defined_in(tasks, ["tiny"])


def test_a_suite_file_is_inlined_with_its_include_path_anchored(tmp_path: Path) -> None:
    shutil.copytree(suite_dir("tiny"), tmp_path / "tasks")
    path = tmp_path / "mine.yaml"
    path.write_text("description: mine\ninclude_path: tasks\ntasks: [tiny_mc]\n")
    text = inline_if_file("suite", str(path))
    assert yaml.safe_load(text)["include_path"] == str((tmp_path / "tasks").resolve())
    assert load_suite(text).include_dir() == (tmp_path / "tasks").resolve()
    assert inline_if_file("suite", "tiny") == "tiny"  # a shipped name stays a name
    absolute = "include_path: /somewhere/else\ntasks: [x]\n"
    path.write_text(absolute)
    assert inline_if_file("suite", str(path)) == absolute  # nothing to anchor: the text as given


def test_standard_content_leaves_out_descriptions_and_install_paths() -> None:
    content = suite_content(load_suite("tiny"))
    assert "description" not in content and "base_dir" not in content and "include_path" not in content
    assert len(content["include_digest"]) == 64 and content["tasks"][0]["task"] == "tiny"
    assert "description" not in profile_content(load_profile_model("smoke"))
    openllm = load_suite("openllm")
    assert {t.task: t.num_fewshot for t in openllm.tasks} == {
        "arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5}


def _summary(values: dict[str, dict[str, float]]) -> dict[str, object]:
    return {"tasks": {t: {"metrics": {m: {"value": v} for m, v in ms.items()}} for t, ms in values.items()},
            "groups": {}}


def test_leaderboard_average_normalises_like_the_open_llm_leaderboard() -> None:
    suite = load_suite("leaderboard")
    (avg,) = suite.averages
    values: dict[str, dict[str, float]] = {
        "leaderboard_ifeval": {"prompt_level_strict_acc": 0.5, "inst_level_strict_acc": 0.7},
        "leaderboard_math_hard": {"exact_match": 0.2},
        "leaderboard_gpqa": {"acc_norm": 0.25},      # chance level -> 0
        "leaderboard_mmlu_pro": {"acc": 0.55},       # (0.55 - 0.1) / 0.9 = 0.5
    }
    bbh = next(m for m in avg.members if m.task == "leaderboard_bbh")
    musr = next(m for m in avg.members if m.task == "leaderboard_musr")
    assert len(bbh.subtasks) == 24 and bbh.subtasks["leaderboard_bbh_boolean_expressions"] == 0.5
    for sub in bbh.subtasks:
        values[sub] = {"acc_norm": 1.0}              # perfect -> 1
    for sub, chance in musr.subtasks.items():
        values[sub] = {"acc_norm": chance / 2}       # below chance -> clipped at 0
    got = suite_averages(suite, _summary(values))["leaderboard_average"]
    assert got == pytest.approx((0.6 + 1.0 + 0.2 + 0.0 + 0.0 + 0.5) / 6)
    del values["leaderboard_gpqa"]
    assert "leaderboard_average" not in suite_averages(suite, _summary(values)), "partial averages mislead"


def test_openllm_average_is_the_plain_mean() -> None:
    values = {"arc_challenge": {"acc_norm": 0.6}, "hellaswag": {"acc_norm": 0.8}, "mmlu": {"acc": 0.5},
              "truthfulqa_mc2": {"acc": 0.4}, "winogrande": {"acc": 0.7},
              "gsm8k": {"exact_match,strict-match": 0.3}}
    assert suite_averages(load_suite("openllm"), _summary(values))["openllm_average"] == pytest.approx(3.3 / 6)
