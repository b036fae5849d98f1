"""EEG encoders: registry, shapes, gradients, determinism, config round trip, bad input."""

import json

import pytest
import torch

from trainer import encoders
from trainer.encoders import EEGEncoder, create_encoder, encoder_config, list_encoders, register_encoder
from trainer.errors import UsageError, UsageTypeError

EMBED = 16

# One entry per registered encoder (a new encoder without one fails test_every_encoder_has_a_case):
# ``kwargs``: non-default architecture arguments, to check that the config records them;
# ``min_times``: the shortest n_times it accepts with default arguments.
CASES = {
    "linear": dict(kwargs={}, min_times=1),
    "eegproject": dict(kwargs={"dropout": 0.1}, min_times=1),
    "tsconv": dict(kwargs={"n_filters": 8, "dropout": 0.2, "proj_dropout": 0.1}, min_times=75),
    "eegnet": dict(kwargs={"F1": 4, "D": 2, "kernel_length": 32, "dropout": 0.1}, min_times=32),
}
SIZES = [(17, 250), (63, 250), (17, 100)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: one intra-op thread is faster and immune to a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _case(name):
    if name not in CASES:
        pytest.fail(f"encoder {name!r} is registered but has no entry in CASES (tests/trainer/test_encoders.py)")
    return CASES[name]


def _build(name, n_chans=17, n_times=100, seed=0, **overrides):
    torch.manual_seed(seed)
    return create_encoder(name, n_chans=n_chans, n_times=n_times, embed_dim=EMBED, **{**_case(name)["kwargs"], **overrides})


def _x(batch, n_chans, n_times, seed=1):
    return torch.randn(batch, n_chans, n_times, generator=torch.Generator().manual_seed(seed))


def test_every_encoder_has_a_case():
    assert set(CASES) == set(list_encoders())
    assert list_encoders() == sorted(list_encoders())


@pytest.mark.parametrize("name", list_encoders())
@pytest.mark.parametrize("n_chans, n_times", SIZES)
def test_output_shape(name, n_chans, n_times):
    enc = _build(name, n_chans, n_times)
    assert isinstance(enc, EEGEncoder)
    for batch in (1, 3):
        out = enc(_x(batch, n_chans, n_times))
        assert out.shape == (batch, EMBED)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_encoders())
def test_default_arguments_build(name):
    _case(name)
    enc = create_encoder(name, n_chans=17, n_times=250, embed_dim=EMBED)
    assert enc.eval()(_x(2, 17, 250)).shape == (2, EMBED)


@pytest.mark.parametrize("name", list_encoders())
def test_gradients_reach_every_parameter(name):
    enc = _build(name).train()
    loss = enc(_x(4, 17, 100)).pow(2).sum()
    loss.backward()
    params = list(enc.named_parameters())
    assert params
    for pname, p in params:
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize("name", list_encoders())
def test_eval_is_deterministic(name):
    enc = _build(name).eval()
    x = _x(3, 17, 100)
    with torch.no_grad():
        a, b = enc(x), enc(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # one sample's embedding does not depend on the rest of the batch in eval mode
    with torch.no_grad():
        torch.testing.assert_close(enc(x[:1])[0], a[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list_encoders())
def test_config_round_trip(name):
    enc = _build(name, 17, 100, seed=0)
    enc.train()
    enc(_x(4, 17, 100))  # move any BatchNorm running statistics away from their initial values
    enc.eval()
    config = json.loads(json.dumps(encoder_config(enc)))
    assert config["name"] == name
    assert (config["n_chans"], config["n_times"], config["embed_dim"]) == (17, 100, EMBED)
    for key, value in _case(name)["kwargs"].items():
        assert config[key] == value
    rebuilt = create_encoder(**config)
    assert type(rebuilt) is type(enc)
    assert encoder_config(rebuilt) == config
    torch.manual_seed(123)  # different fresh weights: the outputs agree only after loading
    rebuilt.load_state_dict(enc.state_dict())
    rebuilt.eval()
    x = _x(3, 17, 100)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), enc(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list_encoders())
def test_wrong_input_shape(name):
    enc = _build(name, 17, 100)
    for shape in [(2, 16, 100), (2, 17, 99), (17, 100), (2, 1, 17, 100)]:
        with pytest.raises(ValueError, match=r"\(B, 17, 100\)"):
            enc(torch.zeros(shape))
    with pytest.raises(TypeError, match="floating"):
        enc(torch.zeros(2, 17, 100, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor"):
        enc([[0.0] * 100] * 17)


@pytest.mark.parametrize("name", list_encoders())
def test_shortest_input(name):
    min_times = _case(name)["min_times"]
    enc = create_encoder(name, n_chans=3, n_times=min_times, embed_dim=EMBED)
    assert enc.eval()(_x(2, 3, min_times)).shape == (2, EMBED)
    if min_times > 1:
        # epochs too short for the encoder are the user's data or --encoder: a one-line error
        with pytest.raises(UsageError, match=f"n_times.*{min_times}"):
            create_encoder(name, n_chans=3, n_times=min_times - 1, embed_dim=EMBED)


def test_argument_errors_are_usage_errors():
    """What a user's option or bundle can get wrong is a BCIError (one line on the command line)."""
    with pytest.raises(UsageError, match="eegproject"):
        create_encoder("eegprojekt", n_chans=17, n_times=100, embed_dim=EMBED)
    with pytest.raises(UsageTypeError, match="dropuot"):
        create_encoder("eegproject", n_chans=17, n_times=100, embed_dim=EMBED, dropuot=0.1)
    with pytest.raises(UsageError, match="n_chans"):
        create_encoder("linear", n_chans=0, n_times=100, embed_dim=EMBED)


def test_tsconv_matches_nice_geometry_and_dry_run_leaves_batchnorm_alone():
    enc = create_encoder("tsconv", n_chans=63, n_times=250, embed_dim=EMBED)
    assert enc.n_features == 1440  # 40 filters x 36 pooled time steps, as in NICE
    for module in enc.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert int(module.num_batches_tracked) == 0
            assert torch.all(module.running_mean == 0)
    assert enc.training


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="nope") as info:
        create_encoder("nope", n_chans=17, n_times=100, embed_dim=EMBED)
    for name in list_encoders():
        assert name in str(info.value)
    assert type(create_encoder("EEGProject", n_chans=2, n_times=3, embed_dim=4)).__name__ == "EEGProject"
    with pytest.raises(TypeError, match="name"):
        create_encoder(3, n_chans=17, n_times=100, embed_dim=EMBED)


@pytest.mark.parametrize("arg", ["n_chans", "n_times", "embed_dim"])
@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("17", TypeError), (None, TypeError)])
def test_bad_common_arguments(arg, bad, error):
    kwargs = dict(n_chans=17, n_times=100, embed_dim=EMBED)
    kwargs[arg] = bad
    with pytest.raises(error, match=arg):
        create_encoder("eegproject", **kwargs)


def test_bad_and_unknown_encoder_arguments():
    with pytest.raises(TypeError, match="dropuot") as info:
        create_encoder("eegproject", n_chans=17, n_times=100, embed_dim=EMBED, dropuot=0.2)
    assert "dropout" in str(info.value)  # lists the accepted ones
    with pytest.raises(TypeError, match="anything"):
        create_encoder("linear", n_chans=17, n_times=100, embed_dim=EMBED, anything=1)
    with pytest.raises(ValueError, match="dropout"):
        create_encoder("eegproject", n_chans=17, n_times=100, embed_dim=EMBED, dropout=1.0)
    with pytest.raises(ValueError, match="proj_dropout"):
        create_encoder("tsconv", n_chans=17, n_times=100, embed_dim=EMBED, proj_dropout=-0.1)
    with pytest.raises(TypeError, match="n_filters"):
        create_encoder("tsconv", n_chans=17, n_times=100, embed_dim=EMBED, n_filters=4.0)


def test_encoder_config_rejects_other_modules():
    with pytest.raises(TypeError, match="module"):
        encoder_config(torch.nn.Linear(2, 3))


def test_register_encoder():
    @register_encoder("Tiny-Test")
    class Tiny(EEGEncoder):
        def __init__(self, n_chans, n_times, embed_dim, width=2):
            super().__init__(n_chans, n_times, embed_dim, width=width)
            self.lin = torch.nn.Linear(n_chans * n_times, embed_dim)

        def encode(self, x):
            return self.lin(x.flatten(1))

    try:
        assert "tiny-test" in list_encoders()
        enc = create_encoder("tiny-test", n_chans=2, n_times=3, embed_dim=4, width=5)
        assert encoder_config(enc) == {"name": "tiny-test", "n_chans": 2, "n_times": 3, "embed_dim": 4, "width": 5}
        with pytest.raises(ValueError, match="already registered"):
            register_encoder("tiny-test")(type("Other", (Tiny,), {}))
        with pytest.raises(TypeError, match="EEGEncoder"):
            register_encoder("plain")(torch.nn.Linear)
    finally:
        encoders._REGISTRY.pop("tiny-test", None)
    assert "tiny-test" not in list_encoders()


@pytest.mark.parametrize("name", list_encoders())
def test_after_input_linear_completes_the_input_linear_layer(name):
    """The live decoder keeps running averages after the input linear layer: the split
    forward must be the encoder's own forward, and encoders without one say so."""
    enc = _build(name).eval()
    x = _x(3, 17, 100)
    first = enc.input_linear()
    if first is None:
        with pytest.raises(NotImplementedError):
            enc.after_input_linear(torch.zeros(3, EMBED))
        return
    with torch.no_grad():
        torch.testing.assert_close(enc.after_input_linear(first(x.flatten(1))), enc(x), rtol=0, atol=0)
