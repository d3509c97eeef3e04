"""Links that carry a setup: encode and decode the app's settings as query parameters."""

from core.links import DEFAULTS, decode, encode


def test_an_untouched_setup_is_an_empty_link():
    assert encode(DEFAULTS) == {}


def test_a_setup_survives_the_round_trip_through_a_link():
    setup = {**DEFAULTS, "data": "target", "per_class": 10, "backbone": "resnet18", "pretrained": False,
             "strategy": "custom", "freeze": ["stem", "layer1"], "lr_mult": {"layer4": 0.5, "head": 2.0},
             "epochs": 3, "lr": 1e-4, "seed": 7, "size": 96, "sal_methods": ["smoothgrad"],
             "kernel": "multi", "picture": "tsne", "lock": ["backbone", "epochs"], "hide": ["uploads"]}
    params = encode(setup)
    assert params["freeze"] == "stem,layer1" and params["pretrained"] == "0" and params["lr"] == "0.0001"
    assert all(isinstance(v, str) for v in params.values())
    settings, notes = decode(params)
    assert notes == []
    assert settings == {k: v for k, v in setup.items() if v != DEFAULTS[k]}


def test_unknown_and_bad_parameters_are_ignored_with_a_note_each():
    settings, notes = decode({"epochs": "lots", "lr": "0.005", "size": "100", "backbone": "alexnet",
                              "colour": "blue", "seed": "3", "data": ["source", "target"]})
    assert settings == {"seed": 3, "data": "target"}  # the last of repeated values counts
    assert len(notes) == 5
    joined = " ".join(notes)
    for word in ("'colour'", "epochs=lots", "lr=0.005", "size=100", "backbone=alexnet"):
        assert word in joined


def test_groups_are_checked_against_the_backbone_of_the_same_link():
    settings, notes = decode({"backbone": "resnet18", "freeze": "stem,layer1", "lr_mult": "layer2:0.1"})
    assert settings["freeze"] == ["stem", "layer1"] and settings["lr_mult"] == {"layer2": 0.1}
    settings, notes = decode({"freeze": "layer1", "lr_mult": "head:zero"})  # the default backbone has no layer1
    assert "freeze" not in settings and "lr_mult" not in settings and len(notes) == 2


def test_the_owner_run_and_token_parameters_are_left_to_their_own_code():
    settings, notes = decode({"u": "0123456789abcdef", "run": "x", "t": "1", "token": "secret"})
    assert settings == {} and notes == []


def test_a_hostile_value_is_a_note_not_an_error():
    settings, notes = decode({"lock": "backbone,<script>", "hide": "x" * 10_000, "lr_mult": ":::,"})
    assert settings == {}
    assert len(notes) == 3 and all(len(n) < 400 for n in notes)


def test_a_link_with_huge_or_countless_unknown_parameters_gets_a_few_short_notes():
    params = {"q" * 10_000: "1", **{f"made_up_{i}": "1" for i in range(50)}}
    _, notes = decode(params)
    assert len(notes) == 6 and all(len(note) < 120 for note in notes)
    assert "q" * 40 + "…" in notes[0]
    assert notes[-1] == "Ignored 46 more unknown link parameters."
