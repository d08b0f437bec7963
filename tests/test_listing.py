"""`time-ray list`: every name a config accepts, from the registries the config is checked against."""

import pytest
import yaml

from time_ray.cli import main
from time_ray.core.merging import TECHNIQUES, make_technique, technique_params
from time_ray.core.policy_space import PRESETS
from time_ray.core.strategies import DEPLOY_STRATEGIES, INIT_STRATEGIES, STRATEGIES, register
from time_ray.listing import strategy_rows, technique_rows


def test_every_technique_is_listed_with_its_parameters_and_a_description():
    rows = {name: (params, text) for name, params, text in technique_rows()}
    assert set(rows) == set(TECHNIQUES)
    for name, (params, text) in rows.items():
        assert text and len(text) < 100, name
        if name == "towers":
            continue  # its parameters are techniques
        shown = dict(p.split("=", 1) for p in params.split(", ")) if params != "-" else {}
        # each parameter as listed, typed into a config, gives the default technique
        assert make_technique(name, **{k: yaml.safe_load(v) for k, v in shown.items()}) == make_technique(name)
        assert set(technique_params(make_technique(name))) <= set(shown), name


def test_list_prints_strategies_and_presets(capsys):
    assert main(["list", "strategies"]) == 0
    out = capsys.readouterr().out
    assert all(f"init {s} " in out for s in INIT_STRATEGIES) and all(f"deploy {s} " in out for s in DEPLOY_STRATEGIES)
    assert "ema_weight=0.5" in out and "exp-reversed" in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.index("techniques:") < out.index("strategies:") < out.index("presets:")
    assert all(f"  {p} " in out for p in PRESETS) and "lambda=1.0, prune=0.2" in out


def test_a_registered_strategy_is_listed_with_its_description(capsys, monkeypatch):
    monkeypatch.setitem(STRATEGIES, "init", dict(STRATEGIES["init"]))  # the registration ends with the test
    register(STRATEGIES["init"], "half-base", "1/2 theta_0: a test strategy")(lambda policy, pool, n: pool.base)
    assert main(["list", "strategies"]) == 0
    assert "  init half-base  " in capsys.readouterr().out
    assert ("init half-base", "", "1/2 theta_0: a test strategy") in strategy_rows()


def test_a_strategy_name_is_registered_and_listed_once_per_role():
    names = [name for name, _, _ in strategy_rows()]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="'ft' is already registered"):
        register(STRATEGIES["deploy"], "ft", "the latest expert, again")(lambda policy, pool, n: pool.expert(n))
    assert [name for name, _, _ in strategy_rows()] == names
