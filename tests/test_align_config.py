"""Config validation: clear messages naming the key and the value."""

from pathlib import Path

import pytest

from steps.align.config import AlignConfig, load_align_config, parse_align_config
from steps.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["align_nails_paper.yaml", "align_nails_editorial.yaml", "align_nails_uniform.yaml", "align_quick.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_align_config(CONFIGS / name)
    assert cfg.lambdas and cfg.top_n == 10
    # a parsed config survives the round trip through Metaflow's Config (a plain dict)
    assert AlignConfig.from_dict(parse_align_config((CONFIGS / name).read_text())) == cfg


def test_paper_settings():
    cfg = load_align_config(CONFIGS / "align_nails_paper.yaml")
    assert cfg.lambdas == (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
    assert (cfg.alpha, cfg.steck_smoothing_select, cfg.exclude_categories) == (1e-4, 0.5, ("auto",))
    assert cfg.best_lambda["Editorial"] == {"nails_stoch": 0.7, "nails_det": 0.7, "steck": 0.5, "nails_steck": "auto"}
    assert cfg.best_lambda["Uniform"]["nails_det"] == 0.3
    assert cfg.cells("nails") == [(s, lam) for s in ("det", "stoch") for lam in cfg.lambdas]
    assert cfg.cells("steck") == [("det", lam) for lam in cfg.lambdas]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"lambdas": [0, 1.5]}, r"lambdas\[1\]: 1.5 is out of range"),
        ({"lambdas": [0, -0.1]}, r"lambdas\[1\]: -0.1 is out of range"),
        ({"lambdas": [0.1, 0.1]}, "repeated values"),
        ({"top_n": 0}, r"top_n: expected an integer >= 1, got 0"),
        ({"alpha": 0}, r"alpha: 0 is out of range"),
        ({"methods": ["nails", "ease"]}, r"methods: unknown value 'ease'"),
        ({"selections": ["random"]}, r"selections: unknown value 'random'"),
        ({"targets": ["Editoral"]}, r"targets\[0\]: unknown target 'Editoral'"),
        ({"targets": [{"name": "x", "distribution": {"NWS": -1}}]}, r"distribution.NWS: -1 is out of range"),
        ({"targets": [{"name": "x"}]}, r"targets\[0\]: expected Editorial, Uniform or \{name, distribution\}"),
        ({"lamdas": [0]}, r"unknown key\(s\) \['lamdas'\]"),
        ({"best_lambda": {"Editorial": {"nails_det": 0.35}}}, r"best_lambda.Editorial.nails_det: 0.35 is not in the lambda grid"),
        ({"best_lambda": {"Other": {"nails_det": 0.3}}}, r"best_lambda: 'Other' is not one of the targets"),
        ({"missing_category": "drop"}, r"missing_category: expected 'error' or 'exclude', got 'drop'"),
        ({"synthetic": {"n_candidates": 5}}, r"synthetic.n_candidates: invalid value 5"),
        ({"synthetic": {"rows": 5}}, r"synthetic: unknown key\(s\) \['rows'\]"),
        ({"repeats": 1.5}, r"repeats: expected an integer >= 1, got 1.5"),
        ({"submissions": "yes"}, r"submissions: expected true or false"),
        ({"ties": "first"}, r"ties: unknown value 'first'; choose from \['inview', 'ebrec', 'mean'\]"),
        ({"resources": {"evaluate": {"blas_threads": -1}}}, r"resources.evaluate.blas_threads: expected an integer >= 0, got -1"),
        ({"resources": {"evaluate": {"threads": 1}}}, r"resources.evaluate: unknown key 'threads'; use cpu, memory, gpu, blas_threads"),
    ],
)
def test_invalid_values_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        AlignConfig.from_dict(raw)


def test_blas_threads_default_to_one_in_the_evaluate_cells_only():
    res = AlignConfig.from_dict({"resources": {"report": {"blas_threads": 2}}}).resources
    assert res["evaluate"]["blas_threads"] == 1 and res["report"]["blas_threads"] == 2 and "blas_threads" not in res["start"]


def test_yaml_errors():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_align_config("targets: [Editorial\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_align_config("- 1\n- 2\n")


def test_ties_default_to_the_ebnerd_benchmark_rule():
    assert AlignConfig().ties == "ebrec"
    assert AlignConfig.from_dict({"ties": "mean"}).ties == "mean"
