"""scratchdet.engine.overrides: strict command-line overrides on a small LazyConfig-like
config (the training entry points are covered in test_reliability_engine.py)."""
import pytest
from omegaconf import OmegaConf

from scratchdet.engine.lazy_train import ConfigOverrideError
from scratchdet.engine.lazy_train import apply_overrides as reexported
from scratchdet.engine.overrides import apply_overrides


def _cfg():
    return OmegaConf.create({
        "train": {"max_iter": 10, "amp": {"enabled": False}, "output_dir": "out"},
        "optimizer": {"lr": 0.1, "betas": [0.9, 0.99]},
        "datasets": {"known": {"json_file": "a.json", "image_root": "a"}},
    }, flags={"allow_objects": True})


def test_reexported_from_lazy_train():
    assert reexported is apply_overrides


def test_overrides_change_the_config_in_place_and_leave_no_struct_flag():
    cfg = _cfg()
    out = apply_overrides(cfg, ["train.max_iter=3", "optimizer.lr=1", "+train.note=x",
                                "++train.max_iter=4", "++train.seed=7",
                                "datasets.new.image_root=b", "datasets.new.json_file=b.json",
                                "optimizer.betas=[0.5,0.6]", "train.output_dir=null"])
    assert out is cfg
    assert cfg.train.max_iter == 4 and cfg.train.note == "x" and cfg.train.seed == 7
    assert type(cfg.optimizer.lr) is float and cfg.optimizer.lr == 1.0  # int for a float
    assert list(cfg.optimizer.betas) == [0.5, 0.6] and cfg.train.output_dir is None
    assert dict(cfg.datasets.new) == {"json_file": "b.json", "image_root": "b"}
    # training code assigns new keys into a loaded config: struct mode must not leak
    assert not OmegaConf.is_struct(cfg) and not OmegaConf.is_struct(cfg.train)
    cfg.train.sampler = "s"
    cfg.dataloader = {"train": 1}
    assert cfg.train.sampler == "s" and cfg.dataloader.train == 1


def test_int_for_a_float_given_twice_keeps_the_last_value():
    cfg = apply_overrides(_cfg(), ["optimizer.lr=1", "optimizer.lr=0.5"])
    assert cfg.optimizer.lr == 0.5


@pytest.mark.parametrize("bad, needles", [
    ("train.max_itr=1", ["unknown config key 'train.max_itr'", "did you mean 'train.max_iter'",
                         "+train.max_itr="]),
    ("train.enabled=true", ["did you mean 'train.amp.enabled'"]),
    ("nope.x=1", ["the config has no key 'nope'"]),
    ("datasets.known.json_fil=c", ["did you mean 'datasets.known.json_file'"]),
    ("datasets.new.root=c", ["unknown config key 'datasets.new.root'",
                             "datasets.NAME.json_file="]),
    ("+train.max_iter=2", ["train.max_iter already exists", "drop the '+'"]),
    ("train.max_iter=1.5", ["train.max_iter expects an int", "got 1.5 of type float"]),
    ("train.max_iter=true", ["train.max_iter expects an int", "of type bool"]),
    ("optimizer.lr=abc", ["optimizer.lr expects a float", "'abc'"]),
    ("train.amp.enabled=1", ["train.amp.enabled expects a bool", "of type int"]),
    ("train.output_dir=3", ["train.output_dir expects a str", "train.output_dir='3'"]),
    ("train.max_iter.x=1", ["train.max_iter"]),
])
def test_a_bad_override_names_itself_the_key_and_file_and_changes_nothing(bad, needles):
    cfg = _cfg()
    before = OmegaConf.to_yaml(cfg)
    with pytest.raises(ConfigOverrideError) as e:
        # the good overrides before the bad one are not applied either
        apply_overrides(cfg, ["train.max_iter=5", "+train.extra=1", "datasets.d.json_file=j",
                              bad], config_file="cfg.py")
    msg = str(e.value)
    for needle in needles + [repr(bad), "(config cfg.py)"]:
        assert needle in msg, (needle, msg)
    assert OmegaConf.to_yaml(cfg) == before
    assert not OmegaConf.is_struct(cfg)
