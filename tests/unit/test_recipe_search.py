"""Recipe search without a stack: the space is checked against the recipe before anything is
queued, objectives and trials are checked, the study continues across runs (Optuna on SQLite),
and a trial's recipe is promoted to a recipe file that renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from automation.errors import FlowInputError
from automation.search import study as studies
from automation.search.objectives import objective_values, recoveries
from automation.search.promote import promote
from automation.search.report import SearchReport, TrialRecord, plot_svg, plotly_figures, render_markdown
from automation.search.space import SearchSpace
from automation.standards.recipes import load_template, render_recipe
from flows.recipe_search import prepare


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 128, "intermediate_size": 256}))
    (d / "tokenizer.json").write_text("{}")
    return d


def test_space_takes_types_from_the_recipe() -> None:
    space = SearchSpace.parse(["w4a16"], {"dampening_frac": "0.001:0.1:log", "actorder": "static,weight",
                                          "block_size": "64:128:64", "num_samples": "8:64:8"})
    by_name = {p.name: p for p in space.params}
    assert by_name["dampening_frac"].kind == "float" and by_name["dampening_frac"].log
    assert by_name["actorder"].choices == ["static", "weight"]
    assert by_name["block_size"].kind == "int" and by_name["block_size"].grid() == [64, 128]
    assert by_name["num_samples"].grid() == [8, 16, 24, 32, 40, 48, 56, 64]
    assert space.recipe_args({"dampening_frac": 0.01, "num_samples": 8}) == ("w4a16", {"dampening_frac": 0.01},
                                                                           {"num_samples": 8})
    several = SearchSpace.parse(["w4a16", "w8a16"], {"dampening_frac": "0.005,0.01"})
    assert several.params[0].name == "scheme" and several.params[0].choices == ["w4a16", "w8a16"]
    assert several.recipe_args({"scheme": "w8a16", "dampening_frac": 0.01})[0] == "w8a16"


@pytest.mark.parametrize(("recipes", "space", "match"), [
    (["w4a16"], {"dampening": "0.01:0.1"}, r"space: 'dampening' is not an argument of recipe 'w4a16' \(searchable:"),
    (["nvfp4"], {"group_size": "8,16"}, r"space: 'group_size' is fixed by recipe 'nvfp4'"),
    (["w4a16"], {"dampening_frac": "-1:0.1"}, r"LOW -1 is below the argument's minimum 0"),
    (["w8a8"], {"smoothing_strength": "0.5:1.5"}, r"HIGH 1.5 is above the argument's maximum 1"),
    (["w4a16"], {"group_size": "64.5:128"}, r"group_size is an int argument"),
    (["w4a16"], {"actorder": "static,sideways"}, r"'sideways': .*must be one of"),
    (["w4a16"], {"actorder": "0:1"}, r"actorder is a str argument; give choices"),
    (["w4a16"], {"dampening_frac": "0.1:0.01"}, r"a range needs LOW < HIGH"),
    (["w4a16", "fp8_dynamic"], {"dampening_frac": "0.01,0.1"}, r"not an argument of recipe 'fp8_dynamic'"),
    (["no-such-recipe"], {}, r"recipe: unknown recipe 'no-such-recipe'"),
])
def test_bad_space_is_an_error_naming_it(recipes: list[str], space: dict[str, str], match: str) -> None:
    with pytest.raises(FlowInputError, match=match):
        SearchSpace.parse(recipes, space)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"trials": 0}, r"trials: at least 1"),
    ({"objectives": ["recovery", "speed"]}, r"objectives: unknown 'speed'; known: recovery, recovery_mean"),
    ({"objectives": []}, r"objectives: give at least one"),
    ({"sampler": "grid", "space": {"dampening_frac": "0.01:0.1"}}, r"a grid search needs a step"),
    ({"sampler": "grid", "space": {"actorder": "static,weight"}, "trials": 3}, r"the grid has 2 points"),
    ({"concurrency": 0}, r"concurrency: at least 1"),
    ({"storage": "postgresql://optuna:hunter2@db/studies"}, r"storage: the URL carries a password"),
    ({"storage": "not a url"}, r"storage: not a database URL \(sqlite:///PATH"),
    ({"space": {"group_size": "96,128"}}, r"space: group_size=96: recipe 'w4a16': argument 'group_size'=96 does not "
                                          r"divide hidden_size=128"),
    ({"space": {"group_size": "32:128"}}, r"space: group_size must divide the model's widths; give choices"),
])
def test_prepare_refuses_bad_input(model_dir: Path, tmp_path: Path, overrides: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"model": str(model_dir), "suite": "tiny", "profile": "smoke", "queue": "cpu",
                            "storage": f"sqlite:///{tmp_path / 's.db'}", "code": "worktree", **overrides}
    with pytest.raises(FlowInputError, match=match):
        prepare(**args)
    assert not (tmp_path / "s.db").exists()  # nothing was created


def test_study_name_follows_the_inputs(model_dir: Path, tmp_path: Path) -> None:
    args: dict[str, Any] = {"model": str(model_dir), "suite": "tiny", "profile": "smoke", "queue": "cpu",
                            "space": {"dampening_frac": "0.001:0.1:log"}, "storage": "sqlite:///x.db",
                            "code": "worktree"}
    one, again = prepare(**args), prepare(**args)
    assert one.study_name == again.study_name and one.study_name.startswith("search-")
    assert prepare(**{**args, "objectives": ["recovery"]}).study_name != one.study_name
    assert prepare(**{**args, "study_name": "mine"}).study_name == "mine"


def test_objectives_from_step_results() -> None:
    from automation.results import MetricValue

    base = {"tiny_mc/acc": MetricValue(value=1.0), "tiny_ppl/word_perplexity": MetricValue(value=2.0)}
    cand = {"tiny_mc/acc": MetricValue(value=0.9), "tiny_ppl/word_perplexity": MetricValue(value=2.5)}
    by_metric = recoveries(base, cand, [])
    assert by_metric == pytest.approx({"tiny_mc/acc": 0.9, "tiny_ppl/word_perplexity": 0.8})  # lower is better
    bench = {"synchronous/output_tokens_per_s": MetricValue(value=40.0),
             "synchronous/ttft_ms/median": MetricValue(value=12.0)}
    values = objective_values(["recovery", "recovery_mean", "size", "throughput", "ttft"], by_metric, 1.5, bench)
    assert values == pytest.approx({"recovery": 0.8, "recovery_mean": 0.85, "size": 1.5, "throughput": 40.0,
                                    "ttft": 12.0})
    with pytest.raises(ValueError, match="objective throughput: the step results hold no value"):
        objective_values(["throughput"], by_metric, 1.5, None)


def _complete(study: Any, params: dict[str, Any], values: list[float]) -> None:
    trial = study.ask(studies.distributions(SearchSpace.parse(["w4a16"], {"dampening_frac": "0.001:0.1"})))
    record = {"recipe": "w4a16", "recipe_args": {"dampening_frac": trial.params["dampening_frac"]},
              "values": dict(zip(["recovery", "size"], values, strict=True))}
    studies.save_record(study, trial.number, record)
    study.tell(trial.number, values)


def test_study_continues_and_finds_what_was_in_flight(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    space = SearchSpace.parse(["w4a16"], {"dampening_frac": "0.001:0.1"})
    sampler = studies.make_sampler("auto", space, ["recovery", "size"], seed=0)
    study = studies.open_study(storage, "s", ["recovery", "size"], sampler)
    _complete(study, {}, [0.9, 2.0])
    _complete(study, {}, [0.95, 3.0])
    in_flight = study.ask(studies.distributions(space))  # the run dies here
    again = studies.open_study(storage, "s", ["recovery", "size"], sampler)
    assert studies.finished_count(again) == 2
    (left,) = studies.interrupted(again)
    assert left.number == in_flight.number == 2 and left.params == in_flight.params
    assert [r.state for r in studies.records(again)] == ["complete", "complete", "running"]
    again.tell(left.number, [0.5, 4.0])  # run again and told under its own number
    records = studies.records(again)
    assert [r.state for r in records] == ["complete", "complete", "complete"] and not studies.interrupted(again)
    assert {r.number for r in records if r.pareto} == {0, 1}  # neither dominates the other; 2 is dominated
    assert studies.best_per_objective(records, ["recovery", "size"]) == {"recovery": 1, "size": 0}
    with pytest.raises(FlowInputError, match="exists with other objectives"):
        studies.open_study(storage, "s", ["recovery"], sampler)
    assert studies.masked("postgresql://user:hunter2@db/optuna") == "postgresql://user:***@db/optuna"


def _report(trials: list[TrialRecord]) -> SearchReport:
    return SearchReport(title="tiny: w4a16 x 2 trials", study_name="s", storage="sqlite:///x", model="./tiny",
                        recipes=["w4a16"], space=["dampening_frac in [0.001, 0.1]"],
                        objectives={"recovery": "maximize", "size": "minimize"}, sampler="auto", trials_requested=2,
                        trials=trials, pareto=[t.number for t in trials if t.pareto], best={"recovery": 0})


def test_report_renders_and_promotes(tmp_path: Path) -> None:
    trial = TrialRecord(number=0, state="complete", params={"dampening_frac": 0.05, "actorder": "weight"},
                        recipe="w4a16", recipe_args={"dampening_frac": 0.05, "actorder": "weight"},
                        values={"recovery": 0.97, "size": 1.2}, pareto=True,
                        tasks={"compress": "http://web/t1", "evaluate": "http://web/t2"})
    failed = TrialRecord(number=1, state="failed", params={"dampening_frac": 0.002}, error="compress: boom")
    report = _report([trial, failed])
    text = render_markdown(report)
    assert "| 0 | complete | w4a16 | dampening_frac=0.05, actorder=weight | 0.97 | 1.2 | yes |" in text
    assert "compress: boom" in text and "Pareto front: trial 0" in text and "best recovery: trial 0" in text
    svg = plot_svg(report)
    assert svg.startswith("<svg") and "recovery (maximize)" in svg and "size (minimize)" in svg
    assert list(plotly_figures(report)) == ["recovery vs size"]
    path = promote(trial, "s", "w4a16_tuned", tmp_path)
    template = load_template(str(path))
    assert template.arguments["dampening_frac"].default == 0.05 and template.arguments["actorder"].default == "weight"
    assert "Promoted from recipe search s, trial 0" in template.description
    modifier = yaml.safe_load(render_recipe(str(path), {}))["default_stage"]["default_modifiers"]["GPTQModifier"]
    assert modifier["dampening_frac"] == 0.05 and modifier["actorder"] == "weight"
    with pytest.raises(FlowInputError, match="exists; choose another name"):
        promote(trial, "s", "w4a16_tuned", tmp_path)
    with pytest.raises(FlowInputError, match="did not complete"):
        promote(failed, "s", "other", tmp_path)
    with pytest.raises(FlowInputError, match="must be lowercase"):
        promote(trial, "s", "Bad Name", tmp_path)


def test_grid_search_is_exhausted_without_stopping_the_process(tmp_path: Path) -> None:
    """Optuna's grid sampler calls study.stop() when the grid is used up, which raises outside
    optimize(); the search's grid does not."""
    space = SearchSpace.parse(["w4a16"], {"num_samples": "8:12:2"})
    study = studies.open_study(f"sqlite:///{tmp_path / 'g.db'}", "g", ["recovery"],
                               studies.make_sampler("grid", space, ["recovery"], seed=0))
    seen = []
    for _ in range(3):
        trial = study.ask(studies.distributions(space))
        seen.append(trial.params["num_samples"])
        study.tell(trial.number, [0.9])
    assert sorted(seen) == [8, 10, 12]
