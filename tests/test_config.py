"""Tests for the typed parameter tree (stillshot.config)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re

import pytest

from stillshot.config import (
    Auto,
    ParameterError,
    Params,
    choice,
    common,
    floats,
    format_tree,
    ints,
    is_parameter_file,
    leaf,
    parse_args,
    parse_file,
    parse_text,
    root,
    scope,
)


@pytest.fixture(scope="module")
def small():
    """A small definition exercising every leaf type."""
    return root(
        scope(
            "spotfinder",
            help="Spot finding.",
            children=[
                scope(
                    "filter",
                    children=[
                        leaf("min_spot_size", int, 3, "Minimum number of pixels in a spot",
                             min=1),
                        leaf("d_min", float, None, "High resolution limit", min=0),
                        leaf("expert_knob", float, 0.5, "A knob for experts only",
                             expert_level=2),
                    ],
                ),
                scope(
                    "threshold",
                    children=[
                        leaf("algorithm",
                             choice(["dispersion_extended", "dispersion", "radial"]),
                             "dispersion_extended", "The threshold algorithm"),
                        leaf("kernel_size", ints(2), (3, 3), "Kernel half sizes", min=1),
                        leaf("global_threshold", float, 0, "Global threshold",
                             allow_auto=True),
                    ],
                ),
            ],
        ),
        scope(
            "other",
            children=[
                leaf("d_min", float, None, "Another d_min"),
                leaf("enabled", bool, False, "A switch"),
                leaf("label", str, "x", "Free text"),
                leaf("fix", choice("all cell orientation", multi=True), (), "Fixed parts"),
                leaf("weights", floats(), None, "Any number of weights"),
            ],
        ),
        scope(
            "hidden",
            expert_level=1,
            help="An expert scope.",
            children=[leaf("deep", int, 7, "Deep parameter")],
        ),
    )


@pytest.fixture(scope="module")
def full():
    return common.common_definition()


# -- defaults ----------------------------------------------------------------


def test_defaults(small):
    p = small.defaults()
    assert p.spotfinder.filter.min_spot_size == 3
    assert p.spotfinder.filter.d_min is None
    assert p.spotfinder.threshold.algorithm == "dispersion_extended"
    assert p.spotfinder.threshold.kernel_size == (3, 3)
    assert p.spotfinder.threshold.global_threshold == 0.0
    assert isinstance(p.spotfinder.threshold.global_threshold, float)
    assert p.other.enabled is False
    assert p.other.fix == ()
    assert p.hidden.deep == 7


def test_common_defaults_follow_dials(full):
    p = full.defaults()
    assert p.spotfinder.threshold.algorithm == "dispersion_extended"
    assert p.spotfinder.threshold.dispersion.kernel_size == (3, 3)
    assert p.spotfinder.threshold.dispersion.sigma_background == 6
    assert p.spotfinder.threshold.dispersion.sigma_strong == 3
    assert p.spotfinder.threshold.dispersion.min_local == 2
    assert p.spotfinder.threshold.dispersion.global_threshold == 0
    assert p.spotfinder.filter.min_spot_size is Auto
    assert p.spotfinder.filter.max_spot_size == 1000
    assert p.spotfinder.filter.max_separation == 2
    assert p.spotfinder.filter.ice_rings.filter is False
    assert p.spotfinder.lookup.mask is None
    assert p.mp.nproc == 1 and p.mp.method == "multiprocessing"
    assert p.output.dir == "."
    assert p.input.reference_geometry is None
    assert p.indexing.known_symmetry.unit_cell is None
    assert p.indexing.known_symmetry.space_group is None
    assert p.indexing.multiple_lattice_search.max_lattices == 1
    assert p.indexing.stills.refine_candidates_with_known_symmetry is False
    assert p.refinement.parameterisation.detector.hierarchy_level == 0


def test_every_common_leaf_has_help(full):
    missing = [path for path, lf in full.leaves() if not lf.help]
    assert missing == []


# -- command line --------------------------------------------------------------


def test_full_path_assignment(small):
    p, pos = parse_args(small, ["spotfinder.filter.min_spot_size=6", "other.label=hello"])
    assert p.spotfinder.filter.min_spot_size == 6
    assert p.other.label == "hello"
    assert pos == []


def test_positional_args_kept_in_order(small, tmp_path):
    image = tmp_path / "shot_001.cbf"
    image.write_bytes(b"\0\1binary")
    args = [str(image), "min_spot_size=5", "missing.h5", "-c", str(tmp_path)]
    p, pos = parse_args(small, args)
    assert pos == [str(image), "missing.h5", "-c", str(tmp_path)]
    assert p.spotfinder.filter.min_spot_size == 5


def test_suffix_matching(small):
    p, _ = parse_args(small, ["min_spot_size=6", "filter.d_min=2.5", "threshold.algorithm=radial"])
    assert p.spotfinder.filter.min_spot_size == 6
    assert p.spotfinder.filter.d_min == 2.5
    assert p.other.d_min is None
    assert p.spotfinder.threshold.algorithm == "radial"


def test_suffix_matching_is_on_dot_boundaries(small):
    # "spot_size" is the end of "min_spot_size" but not a trailing path part.
    with pytest.raises(ParameterError, match="unknown parameter 'spot_size'"):
        parse_args(small, ["spot_size=6"])


def test_ambiguous_suffix_lists_candidates(small):
    with pytest.raises(ParameterError) as err:
        parse_args(small, ["d_min=2"])
    msg = str(err.value)
    assert "ambiguous" in msg
    assert "spotfinder.filter.d_min" in msg and "other.d_min" in msg


def test_later_settings_override_earlier(small):
    p, _ = parse_args(small, ["min_spot_size=6", "spotfinder.filter.min_spot_size=8"])
    assert p.spotfinder.filter.min_spot_size == 8


def test_unknown_parameter_suggests_nearest(full):
    with pytest.raises(ParameterError) as err:
        parse_args(full, ["spotfinder.filter.min_spot_sise=3"])
    assert str(err.value) == (
        "unknown parameter 'spotfinder.filter.min_spot_sise'; "
        "did you mean 'spotfinder.filter.min_spot_size'?"
    )
    with pytest.raises(ParameterError, match=r"did you mean 'mp\.nproc'\?"):
        parse_args(full, ["nprocs=4"])
    with pytest.raises(ParameterError, match=r"did you mean 'spotfinder\.filter\.min_spot_size'"):
        parse_args(full, ["spotfindr.filter.min_spot_size=2"])


def test_unknown_without_any_close_match(small):
    with pytest.raises(ParameterError) as err:
        parse_args(small, ["zzzzqqqq=1"])
    assert str(err.value) == "unknown parameter 'zzzzqqqq'"


def test_scope_is_not_a_parameter(small):
    with pytest.raises(ParameterError, match="'spotfinder' is a scope"):
        parse_args(small, ["spotfinder=3"])


def test_ill_typed_values(full):
    with pytest.raises(ParameterError) as err:
        parse_args(full, ["spotfinder.filter.min_spot_size=abc"])
    assert str(err.value) == "spotfinder.filter.min_spot_size: expected an integer, got 'abc'"
    with pytest.raises(ParameterError, match=r"gain: expected a number, got 'lots'"):
        parse_args(full, ["gain=lots"])
    with pytest.raises(ParameterError, match=r"enable: expected True or False, got 'maybe'"):
        parse_args(full, ["hit_finder.enable=maybe"])
    with pytest.raises(ParameterError, match=r"space_group: expected a space group"):
        parse_args(full, ["indexing.known_symmetry.space_group=Pxx"])


def test_out_of_range(full):
    with pytest.raises(ParameterError) as err:
        parse_args(full, ["min_spot_size=0"])
    assert str(err.value) == "spotfinder.filter.min_spot_size: 0 is below the minimum 1"
    with pytest.raises(ParameterError, match="hkl_tolerance: 0.6 is above the maximum 0.5"):
        parse_args(full, ["hkl_tolerance=0.6"])
    with pytest.raises(ParameterError, match="kernel_size: 0,3 is below the minimum 1"):
        parse_args(full, ["kernel_size=0,3"])


def test_choice_values(small):
    p, _ = parse_args(small, ["algorithm=dispersion"])
    assert p.spotfinder.threshold.algorithm == "dispersion"
    p, _ = parse_args(small, ["algorithm=dispersion *radial dispersion_extended"])
    assert p.spotfinder.threshold.algorithm == "radial"
    with pytest.raises(ParameterError) as err:
        parse_args(small, ["algorithm=fancy"])
    msg = str(err.value)
    assert msg.startswith("spotfinder.threshold.algorithm: 'fancy' is not a valid choice")
    assert "dispersion_extended, dispersion, radial" in msg
    with pytest.raises(ParameterError, match="selects more than one"):
        parse_args(small, ["algorithm=*radial *dispersion"])


def test_multi_choice(small):
    p, _ = parse_args(small, ["fix=cell,orientation"])
    assert p.other.fix == ("cell", "orientation")
    p, _ = parse_args(small, ["fix=*orientation all cell"])
    assert p.other.fix == ("orientation",)
    p, _ = parse_args(small, ["fix=None"])
    assert p.other.fix == ()
    with pytest.raises(ParameterError, match="'everything' is not a valid choice"):
        parse_args(small, ["fix=everything"])


def test_unit_cell_parsing(full):
    expected = (92.9, 92.9, 130.4, 90.0, 90.0, 120.0)
    for text in ["92.9,92.9,130.4,90,90,120", "92.9 92.9 130.4 90 90 120",
                 "92.9, 92.9, 130.4, 90, 90, 120"]:
        p, _ = parse_args(full, [f"indexing.known_symmetry.unit_cell={text}"])
        assert p.indexing.known_symmetry.unit_cell == expected
        assert all(isinstance(v, float) for v in p.indexing.known_symmetry.unit_cell)
    with pytest.raises(ParameterError) as err:
        parse_args(full, ["indexing.known_symmetry.unit_cell=92.9,92.9,130.4,90,90"])
    assert str(err.value).startswith(
        "indexing.known_symmetry.unit_cell: expected 6 numbers (a,b,c,alpha,beta,gamma), got 5"
    )
    with pytest.raises(ParameterError, match="angles must be between 0 and 180"):
        parse_args(full, ["indexing.known_symmetry.unit_cell=10,10,10,90,90,200"])
    with pytest.raises(ParameterError, match="lengths must be positive"):
        parse_args(full, ["indexing.known_symmetry.unit_cell=10,-10,10,90,90,90"])


def test_space_group_and_design_example(full):
    p, _ = parse_args(full, [
        "indexing.known_symmetry.space_group=P41212",
        "indexing.known_symmetry.unit_cell=58.4,58.4,152.3,90,90,90",
    ])
    assert p.indexing.known_symmetry.space_group == "P41212"
    assert p.indexing.known_symmetry.unit_cell == (58.4, 58.4, 152.3, 90.0, 90.0, 90.0)


def test_none_and_auto(full):
    p, _ = parse_args(full, ["min_spot_size=4", "filter.d_min=2"])
    assert p.spotfinder.filter.min_spot_size == 4
    p, _ = parse_args(full, ["min_spot_size=auto", "filter.d_min=None", "mp.nproc=Auto",
                             "global_threshold=auto"])
    assert p.spotfinder.filter.min_spot_size is Auto
    assert p.spotfinder.filter.d_min is None
    assert p.mp.nproc is Auto
    assert p.spotfinder.threshold.dispersion.global_threshold is Auto
    with pytest.raises(ParameterError, match="max_spot_size: expected an integer, got 'auto'"):
        parse_args(full, ["max_spot_size=auto"])
    with pytest.raises(ParameterError, match="output.dir: a value is required"):
        parse_args(full, ["output.dir=None"])


def test_quoted_command_line_value_is_literal(small):
    p, _ = parse_args(small, ["other.label='None'"])
    assert p.other.label == "None"
    p, _ = parse_args(small, ['other.label="a b"'])
    assert p.other.label == "a b"
    with pytest.raises(ParameterError, match="other.label: a value is required"):
        parse_args(small, ["other.label=None"])


# -- parameter files ----------------------------------------------------------


def test_file_dotted_syntax(small, tmp_path):
    f = tmp_path / "params.phil"
    f.write_text(
        "# my settings\n"
        "spotfinder.filter.min_spot_size = 5   # trailing comment\n"
        "\n"
        "other.label = \"two words # not a comment\"\n"
        "spotfinder.threshold.kernel_size = 2 4\n"
    )
    p, pos = parse_args(small, [str(f)])
    assert pos == []
    assert p.spotfinder.filter.min_spot_size == 5
    assert p.other.label == "two words # not a comment"
    assert p.spotfinder.threshold.kernel_size == (2, 4)


def test_file_nested_syntax(small, tmp_path):
    f = tmp_path / "nested.params"
    f.write_text(
        "spotfinder {\n"
        "  filter {\n"
        "    min_spot_size = 4\n"
        "    d_min = 1.8; expert_knob = 0.25\n"
        "  }\n"
        "  threshold { algorithm = radial }\n"
        "}\n"
        "other\n"
        "{\n"
        "  fix = *cell *orientation all\n"
        "  weights = 1 2 \\\n"
        "            3\n"
        "}\n"
        "spotfinder { filter { min_spot_size = 7 } }\n"
    )
    p = parse_file(small, f)
    assert p.spotfinder.filter.min_spot_size == 7  # later settings win
    assert p.spotfinder.filter.d_min == 1.8
    assert p.spotfinder.filter.expert_knob == 0.25
    assert p.spotfinder.threshold.algorithm == "radial"
    assert p.other.fix == ("cell", "orientation")
    assert p.other.weights == (1.0, 2.0, 3.0)


def test_relative_names_inside_blocks(small):
    p = parse_text(small, "filter { min_spot_size = 9 }\nthreshold.kernel_size = 5,5\n")
    assert p.spotfinder.filter.min_spot_size == 9
    assert p.spotfinder.threshold.kernel_size == (5, 5)


def test_file_and_args_in_order(small, tmp_path):
    f = tmp_path / "a.phil"
    f.write_text("min_spot_size = 4\n")
    p, _ = parse_args(small, ["min_spot_size=2", str(f)])
    assert p.spotfinder.filter.min_spot_size == 4
    p, _ = parse_args(small, [str(f), "min_spot_size=2"])
    assert p.spotfinder.filter.min_spot_size == 2


def test_parameter_file_detection(tmp_path):
    phil = tmp_path / "x.phil"
    phil.write_text("")
    txt = tmp_path / "settings.txt"
    txt.write_text("# comment\n\nspotfinder.filter.min_spot_size = 3\n")
    block = tmp_path / "noext"
    block.write_text("spotfinder {\n}\n")
    filelist = tmp_path / "files.txt"
    filelist.write_text("/data/a.cbf\n/data/b.cbf\n")
    geom = tmp_path / "det.geom"
    geom.write_text("clen = 0.1\n")
    binary = tmp_path / "img.dat"
    binary.write_bytes(b"a = 1\0\0\0")
    assert is_parameter_file(phil)
    assert is_parameter_file(txt)
    assert is_parameter_file(block)
    assert not is_parameter_file(filelist)
    assert not is_parameter_file(geom)
    assert not is_parameter_file(binary)
    assert not is_parameter_file(tmp_path)
    assert not is_parameter_file(tmp_path / "missing.phil")


def test_file_errors_name_file_and_line(small, tmp_path):
    f = tmp_path / "bad.phil"
    f.write_text(
        "spotfinder.filter.min_spot_size = 3\n"
        "\n"
        "spotfinder {\n"
        "  filter {\n"
        "    min_spot_sise = 3\n"
        "  }\n"
        "}\n"
    )
    with pytest.raises(ParameterError) as err:
        parse_args(small, [str(f)])
    assert str(err.value) == (
        f"{f}, line 5: unknown parameter 'spotfinder.filter.min_spot_sise'; "
        "did you mean 'spotfinder.filter.min_spot_size'?"
    )

    f.write_text("# header\nother {\n  enabled = perhaps\n}\n")
    with pytest.raises(ParameterError, match=re.escape(
            f"{f}, line 3: other.enabled: expected True or False, got 'perhaps'")):
        parse_file(small, f)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("other.enabled = True\nspotfinder {\n  filter {\n    min_spot_size = 3\n", 3,
         "block 'filter' opened here is never closed"),
        ("spotfinder.filter.min_spot_size = 3\n}\n", 2, "unexpected '}'"),
        ("\n\nspotfinder.filter.min_spot_size 3\n", 3, "expected '=' or '{'"),
        ("other.label = \"unterminated\n\n", 1, "unterminated quoted string"),
        ("\n= 3\n", 2, "expected a parameter name"),
        ("\n\n\nother.weights = 1,x\n", 4, "other.weights: expected a list of numbers"),
    ],
)
def test_syntax_errors_have_line_numbers(small, text, line, fragment):
    with pytest.raises(ParameterError) as err:
        parse_text(small, text, source="t.phil")
    msg = str(err.value)
    assert msg.startswith(f"t.phil, line {line}: "), msg
    assert fragment in msg


# -- -c output ------------------------------------------------------------------


def test_format_tree_lists_every_leaf_with_help(full):
    text = format_tree(full, expert_level=10)
    flat = " ".join(text.split())
    for path, lf in full.leaves():
        assert re.search(rf"^\s*{lf.name} = ", text, re.M), path
        assert " ".join(lf.help.split()) in flat.replace("# ", ""), path
    # Scopes are nested blocks.
    assert re.search(r"^spotfinder \{$", text, re.M)
    assert re.search(r"^  filter \{$", text, re.M)
    assert re.search(r"^    min_spot_size = Auto$", text, re.M)


def test_format_tree_help_is_indented_comment(small):
    text = format_tree(small)
    lines = text.splitlines()
    i = lines.index("    min_spot_size = 3")
    assert lines[i + 1] == "      # Minimum number of pixels in a spot"


def test_expert_levels(small):
    basic = format_tree(small)
    assert "expert_knob" not in basic
    assert "hidden {" not in basic and "deep" not in basic
    level1 = format_tree(small, expert_level=1)
    assert "deep = 7" in level1 and "expert_knob" not in level1
    level2 = format_tree(small, expert_level=2)
    assert "expert_knob = 0.5" in level2
    # In the full tree, level N shows exactly the leaves whose own level and
    # whose scopes' levels are all at most N.
    full = common.common_definition()
    levels = _effective_levels(full)
    assert max(levels.values()) >= 2
    for n in range(4):
        shown = _shown_paths(format_tree(full, expert_level=n))
        assert shown == {path for path, lvl in levels.items() if lvl <= n}


def _effective_levels(node, prefix="", inherited=0):
    out = {}
    for child in node.children:
        level = max(inherited, child.expert_level)
        if hasattr(child, "children"):
            out.update(_effective_levels(child, prefix + child.name + ".", level))
        else:
            out[prefix + child.name] = level
    return out


def _shown_paths(text):
    """Full paths of the `key = value` lines of format_tree output."""
    stack, shown = [], set()
    for line in text.splitlines():
        body = line.strip()
        if body.startswith("#") or not body:
            continue
        if body.endswith("{"):
            stack.append(body[:-1].strip())
        elif body == "}":
            stack.pop()
        else:
            shown.add(".".join(stack + [body.split(" = ")[0]]))
    return shown


def test_attributes_level(small):
    bare = format_tree(small, attributes_level=0)
    assert "#" not in bare
    typed = format_tree(small, attributes_level=2)
    assert "# type: int, min=1" in typed


def test_choice_display(full):
    text = format_tree(full)
    assert "algorithm = *dispersion_extended dispersion radial" in text
    p, _ = parse_args(full, ["spotfinder.threshold.algorithm=radial",
                             "refinement.parameterisation.detector.fix=position,distance"])
    out = p.to_text()
    assert "algorithm = dispersion_extended dispersion *radial" in out
    assert "fix = all *position orientation *distance" in out


def test_format_tree_parses_back_to_defaults(full):
    for level in (0, 3):
        assert parse_text(full, format_tree(full, level, attributes_level=2)) == full.defaults()


# -- Params ----------------------------------------------------------------------


def test_params_immutable(small):
    p = small.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.spotfinder.filter.min_spot_size = 5
    with pytest.raises(AttributeError):
        p.spotfinder = None
    with pytest.raises(AttributeError):
        del p.other
    assert p.spotfinder.filter.min_spot_size == 3
    with pytest.raises(TypeError):
        Params()
    with pytest.raises(AttributeError, match="did you mean 'min_spot_size'"):
        p.spotfinder.filter.min_spotsize  # noqa: B018


def test_params_replace_returns_copy(small):
    p = small.defaults()
    q = p.replace({"min_spot_size": 9, "other.weights": [1, 2]})
    assert q.spotfinder.filter.min_spot_size == 9 and q.other.weights == (1.0, 2.0)
    assert p.spotfinder.filter.min_spot_size == 3
    sub = p.spotfinder.replace({"filter.d_min": "2.0"})
    assert sub.filter.d_min == 2.0
    with pytest.raises(ParameterError, match="below the minimum"):
        p.replace({"min_spot_size": 0})


def test_params_as_dict_get_and_json(full):
    p, _ = parse_args(full, ["min_spot_size=5"])
    d = p.as_dict()
    assert d["spotfinder"]["filter"]["min_spot_size"] == 5
    assert d["indexing"]["known_symmetry"]["unit_cell"] is None
    assert p.get("spotfinder.filter.min_spot_size") == 5
    assert p.get("spotfinder.filter").min_spot_size == 5
    with pytest.raises(ParameterError, match="did you mean 'spotfinder.filter.min_spot_size'"):
        p.get("spotfinder.filter.min_spotsize")
    dumped = json.loads(json.dumps(d))
    assert dumped["mp"]["nproc"] == 1


def test_to_text_round_trip(full):
    p, _ = parse_args(full, [
        "min_spot_size=5",
        "output.dir=some dir/with#hash",
        "indexing.known_symmetry.unit_cell=58.4,58.4,152.3,90,90,90",
        "indexing.known_symmetry.space_group=P 41 21 2",
        "crystal.fix=cell",
        "mp.nproc=Auto",
        "spotfinder.threshold.dispersion.gain=1.25",
    ])
    assert parse_text(full, p.to_text()) == p
    diff = p.to_text(diff_only=True)
    assert "min_spot_size = 5" in diff and "max_spot_size" not in diff
    assert parse_text(full, diff) == p
    assert full.defaults().to_text(diff_only=True) == ""


def test_pickle_and_copy(full):
    p, _ = parse_args(full, ["min_spot_size=5"])
    q = pickle.loads(pickle.dumps(p))
    assert q == p and hash(q) == hash(p)
    assert q.mp.nproc == 1
    r = pickle.loads(pickle.dumps(full.defaults()))
    assert r.spotfinder.filter.min_spot_size is Auto
    assert copy.deepcopy(p) == p


# -- definitions -------------------------------------------------------------------


def test_invalid_definitions():
    with pytest.raises(ParameterError):
        leaf("n", int, "abc", "bad default")
    with pytest.raises(ParameterError):
        leaf("n", int, 0, "out of range default", min=1)
    with pytest.raises(ParameterError):
        leaf("bad name", int, 1, "spaces")
    with pytest.raises(ParameterError):
        leaf("get", int, 1, "reserved")
    with pytest.raises(ParameterError):
        scope("s", children=[leaf("a", int, 1), leaf("a", int, 2)])
    with pytest.raises(ParameterError):
        leaf("c", choice(["a", "b"]), "c", "default not an option")
    with pytest.raises(ParameterError):
        leaf("x", "no_such_type", None)


def test_merge_scopes_and_program_defaults():
    defn = root(
        common.spotfinder_scope(),
        scope("spotfinder", children=[leaf("extra", bool, True, "Added by a stage")]),
        common.output_scope(),
    )
    p = defn.defaults()
    assert p.spotfinder.extra is True
    assert p.spotfinder.filter.max_spot_size == 1000
    with pytest.raises(ParameterError, match="duplicate"):
        root(common.output_scope(), scope("output", children=[leaf("dir", str, "x", "dup")]))
    changed = defn.with_defaults({"filter.max_spot_size": 50, "threshold.algorithm": "radial"})
    assert changed.defaults().spotfinder.filter.max_spot_size == 50
    assert changed.defaults().spotfinder.threshold.algorithm == "radial"
    assert "algorithm = dispersion_extended dispersion *radial" in format_tree(changed)
    assert defn.defaults().spotfinder.filter.max_spot_size == 1000


def test_registry_names_for_choices():
    sf = common.spotfinder_scope(algorithms=("dispersion", "my_new_one"))
    p, _ = parse_args(sf, ["spotfinder.threshold.algorithm=my_new_one"])
    assert p.spotfinder.threshold.algorithm == "my_new_one"
    idx = common.indexing_scope(methods=("fft3d", "fft1d"))
    assert root(idx).defaults().indexing.method == "fft3d"
    # A named scope given as the definition is wrapped in a root.
    p, _ = parse_args(idx, ["indexing.method=fft1d"])
    assert p.indexing.method == "fft1d"
