"""Config (docs/architecture.md, "Configuration and the CLI"): YAML onto dataclasses, errors that name the key, the value and what is allowed."""

import pytest

from genrl import config
from genrl.config import ConfigError


def test_defaults_load_and_algorithm_defaults_apply():
    cfg = config.load()
    assert cfg.algorithm == "chunk_grpo" and cfg.algo.grouping == "dynamic_chunks" and cfg.algo.shared_noise
    dance = config.load(overrides=["algorithm=dance_grpo"])
    assert dance.algo.dynamics == "dance_sde" and dance.effective_shift == 3.0 and dance.algo.grouping_options == {"fraction": 0.6}
    flow = config.load(overrides=["algorithm=flow_grpo", "flow_grpo.sde_window=[2, 3]"])
    assert flow.algo.beta == 0.04 and flow.algo.sde_window == [2, 3]


def test_overrides_parse_yaml_values():
    cfg = config.load(overrides=["train.updates=5", "train.lr=1e-5", "chunk_grpo.grouping_options={sizes: [1, 2]}", "log.progress=false"])
    assert cfg.train.updates == 5 and cfg.train.lr == 1e-5 and cfg.algo.grouping_options == {"sizes": [1, 2]}
    assert cfg.log.progress is False


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.updatez=3", "unknown config key 'train.updatez'"),
        ("train.lr=fast", "train.lr='fast' has the wrong type: expected float"),
        ("train.group_size=1", "train.group_size=1 is not allowed"),
        ("algorithm=ppo", "algorithm='ppo' is not allowed: choose one of awm, branch_grpo, chunk_grpo, dance_grpo, diffusion_nft, flow_grpo"),
        ("chunk_grpo.unit_weighting=max", "chunk_grpo.unit_weighting='max' is not allowed: choose one of uniform, l1, softmax"),
        ("chunk_grpo.unit_fraction=0", "chunk_grpo.unit_fraction=0.0 is not allowed"),
        ("train.minibatches=3", "train.minibatches=3 is not allowed: expected a divisor"),
        ("flow_grpo.sde_window=[8, 3]", "sde_window"),
        ("sampling=3", "sampling must be a mapping"),
        ("nonsense", "must look like dotted.key=value"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    overrides = [override] + (["algorithm=flow_grpo"] if override.startswith("flow_grpo") else [])
    with pytest.raises(ConfigError) as err:
        config.load(overrides=overrides)
    assert needle in str(err.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)


def test_round_trip_through_yaml(tmp_path):
    import yaml

    cfg = config.load(overrides=["algorithm=dance_grpo", "train.updates=7"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = config.load(path)
    assert again.to_dict() == cfg.to_dict()


def test_shift_comes_from_the_config_then_the_model_then_the_algorithm():
    class WithShift:
        sigma_shift = 3.0

    flow = config.load(overrides=["algorithm=flow_grpo"])
    assert flow.shift_for(object()) == 1.0  # the tiny model has no shift of its own
    assert flow.shift_for(WithShift()) == 3.0  # SD3 / FLUX: the pipeline's shift
    assert config.load(overrides=["sampling.shift=2"]).shift_for(WithShift()) == 2.0  # explicit wins


def test_evaluation_shift_is_the_same_for_every_algorithm():
    class WithShift:
        sigma_shift = 3.0

    dance, chunk = (config.load(overrides=[f"algorithm={a}"]) for a in ("dance_grpo", "chunk_grpo"))
    assert dance.shift_for(object()) == 3.0 and chunk.shift_for(object()) == 1.0  # training samplers differ
    assert dance.eval_shift_for(object()) == chunk.eval_shift_for(object()) == 1.0  # evaluation does not
    assert dance.eval_shift_for(WithShift()) == 3.0
    assert config.load(overrides=["sampling.eval_shift=2", "sampling.shift=5"]).eval_shift_for(WithShift()) == 2.0
