"""Tests of stillshot.table: the ReflectionTable and DIALS .refl msgpack I/O."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest

from stillshot.table import (
    Flags,
    OpaqueColumn,
    OpaqueColumnsDropped,
    ReflectionFileError,
    ReflectionTable,
)

# file -> (rows, experiments file whose identifiers/geometry it refers to, decoded columns)
STRONG_COLUMNS = {
    "bbox", "flags", "id", "intensity.sum.value", "intensity.sum.variance", "n_signal",
    "panel", "xyzobs.px.value", "xyzobs.px.variance",
}
REFL_FILES = {
    "reference/thermolysin_cspad.strong.refl": (
        474, "reference/thermolysin_cspad.imported.expt", STRONG_COLUMNS,
    ),
    "reference/thermolysin_cspad.integrated.refl": (
        1345, "reference/thermolysin_cspad.indexed.expt", STRONG_COLUMNS - {"n_signal"} | {
            "background.dispersion", "background.mean", "background.mse",
            "background.sum.value", "background.sum.variance", "d", "delpsical.rad",
            "entering", "miller_index", "num_pixels.background",
            "num_pixels.background_used", "num_pixels.foreground", "num_pixels.valid",
            "partial_id", "partiality", "s1", "xyzcal.mm", "xyzcal.px",
            "xyzobs.mm.value", "xyzobs.mm.variance",
        },
    ),
    "reference/thaumatin_grid.strong.refl": (
        12247, "reference/thaumatin_grid.imported.expt", STRONG_COLUMNS,
    ),
    "xfel_metrology/benchmark_level2d.refl": (
        8790, "xfel_metrology/benchmark_level2d.json", STRONG_COLUMNS - {"n_signal"} | {
            "delpsical.rad", "delpsical2", "entering", "imageset_id", "miller_index",
            "rlp", "s1", "x_resid", "x_resid2", "xyzcal.mm", "xyzcal.px",
            "xyzobs.mm.value", "xyzobs.mm.variance", "y_resid", "y_resid2",
        },
    ),
    "multi_stills/multi_stills_combined.refl": (
        1167, "multi_stills/multi_stills_combined.json", STRONG_COLUMNS - {"n_signal"} | {
            "iobs", "miller_index", "s1", "xyzcal.mm", "xyzobs.mm.value",
            "xyzobs.mm.variance",
        },
    ),
}
EXPECTED_DTYPES = {
    "bbox": ("int32", (6,)),
    "flags": ("uint64", ()),
    "id": ("int32", ()),
    "panel": ("uint64", ()),
    "miller_index": ("int32", (3,)),
    "entering": ("bool", ()),
    "xyzobs.px.value": ("float64", (3,)),
    "s1": ("float64", (3,)),
    "intensity.sum.value": ("float64", ()),
}


@pytest.fixture(scope="module", params=sorted(REFL_FILES))
def refl(request, shared_data):
    """(path, loaded table, rows, experiments JSON, decoded column names) per shipped file."""
    path = shared_data / request.param
    rows, expt, columns = REFL_FILES[request.param]
    experiments = json.loads((shared_data / expt).read_text())
    return path, ReflectionTable.from_file(path), rows, experiments, columns


# ----------------------------------------------------------------------------- real files
def test_shipped_file_loads_all_columns(refl):
    path, table, rows, _, columns = refl
    assert len(table) == table.nrows == rows
    assert set(table.keys()) == columns
    raw = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
    assert set(table.keys()) | set(table.opaque_columns) == set(raw[2]["data"])
    assert set(table.opaque_columns) == {"shoebox"} & set(raw[2]["data"])
    for name in table.keys():
        assert len(table[name]) == rows, name
        if name in EXPECTED_DTYPES:
            dtype, shape = EXPECTED_DTYPES[name]
            assert table[name].dtype == np.dtype(dtype), name
            assert table[name].shape[1:] == shape, name


def test_shipped_identifiers_match_experiments(refl):
    _, table, _, experiments, _ = refl
    ids = table.experiment_ids()
    n_expt = len(experiments["experiment"])
    assert ids.min() >= 0 and ids.max() < n_expt
    if table.identifiers:  # the two older files carry none
        expected = {i: e["identifier"] for i, e in enumerate(experiments["experiment"])}
        assert table.identifiers == expected


def test_shipped_positions_are_inside_bbox_and_panel(refl):
    _, table, _, experiments, _ = refl
    panels = experiments["detector"][0]["panels"]
    xyz, bbox, panel = table["xyzobs.px.value"], table["bbox"], table["panel"]
    assert panel.max() < len(panels)
    size = np.array([panels[p]["image_size"] for p in panel])  # (fast, slow)
    assert np.all(xyz[:, :2] >= 0) and np.all(xyz[:, :2] <= size)
    # x is fast (bbox columns 0:2), y is slow (bbox columns 2:4), z frames (4:6)
    for axis in range(3):
        lo, hi = bbox[:, 2 * axis], bbox[:, 2 * axis + 1]
        assert np.all(hi > lo)
        assert np.all((xyz[:, axis] >= lo) & (xyz[:, axis] <= hi)), axis
    if "xyzcal.px" not in table:  # predicted (integration) boxes may overhang the panel
        assert np.all(bbox[:, 0] >= 0) and np.all(bbox[:, 1] <= size[:, 0])
        assert np.all(bbox[:, 2] >= 0) and np.all(bbox[:, 3] <= size[:, 1])
    assert np.all(table["xyzobs.px.variance"] >= 0)


def test_shipped_flags(refl):
    path, table, rows, _, _ = refl
    flags = table["flags"]
    assert np.all(flags < (1 << 27))  # no bits beyond DIALS's last flag
    if path.name.endswith("strong.refl"):
        assert table.get_flags(Flags.strong).all()
        assert not table.get_flags(Flags.indexed, all=False).any()
    elif path.name == "benchmark_level2d.refl":
        good = Flags.predicted | Flags.indexed | Flags.used_in_refinement | Flags.strong
        assert table.get_flags(good).all()
        assert table.get_flags(Flags.centroid_outlier).sum() == 763
    elif path.name == "thermolysin_cspad.integrated.refl":
        assert table.get_flags(Flags.integrated_sum).all()
        assert table.get_flags(Flags.predicted).all()
        assert 0 < table.get_flags(Flags.indexed).sum() < rows


def test_shipped_miller_indices_and_s1(refl):
    _, table, _, experiments, _ = refl
    if "miller_index" not in table:
        pytest.skip("no miller indices in this file")
    hkl = table["miller_index"]
    assert np.issubdtype(hkl.dtype, np.integer)
    assert not np.any(np.all(hkl == 0, axis=1))
    assert np.abs(hkl).max() < 200
    beams = experiments["beam"]
    beam_of = [e["beam"] for e in experiments["experiment"]]
    wavelength = np.array([beams[beam_of[i]]["wavelength"] for i in table["id"]])
    np.testing.assert_allclose(np.linalg.norm(table["s1"], axis=1), 1 / wavelength, rtol=2e-3)


def test_shipped_file_round_trips_byte_identical(refl, tmp_path):
    path, table, _, _, _ = refl
    original = path.read_bytes()
    assert table.as_msgpack() == original
    out = tmp_path / "copy.refl"
    table.as_file(out)
    assert out.read_bytes() == original


def test_shipped_file_round_trips_column_by_column(refl):
    _, table, _, _, _ = refl
    again = ReflectionTable.from_msgpack(table.as_msgpack())
    assert again.identifiers == table.identifiers
    assert list(again.keys()) == list(table.keys())
    for name in table.keys():
        assert again[name].dtype == table[name].dtype
        np.testing.assert_array_equal(again[name], table[name], err_msg=name)
    assert again.opaque_columns == table.opaque_columns


def test_shoebox_is_opaque(shared_data):
    table = ReflectionTable.from_file(shared_data / "reference/thermolysin_cspad.strong.refl")
    assert "shoebox" not in table
    with pytest.raises(KeyError, match="shoebox pixel data is not decoded by stillshot"):
        table["shoebox"]
    shoebox = table.opaque_columns["shoebox"]
    assert shoebox.type_name == "Shoebox<>"
    assert shoebox.payload[0] == 474 and shoebox.nbytes == 37446
    with pytest.warns(OpaqueColumnsDropped, match="shoebox"):
        subset = table.select(table["panel"] == 0)
    assert not subset.opaque_columns and subset.nrows == np.sum(table["panel"] == 0)
    assert subset.identifiers == table.identifiers
    copy = table.copy()
    del copy["shoebox"]
    assert "shoebox" in table.opaque_columns and not copy.opaque_columns
    assert ReflectionTable.from_msgpack(copy.as_msgpack()).opaque_columns == {}


def test_select_then_write_matches_source_rows(shared_data, tmp_path):
    table = ReflectionTable.from_file(shared_data / "xfel_metrology/benchmark_level2d.refl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpaqueColumnsDropped)
        outliers = table.select(table.get_flags(Flags.centroid_outlier))
    outliers.as_file(tmp_path / "outliers.refl")
    back = ReflectionTable.from_file(tmp_path / "outliers.refl")
    assert back.nrows == 763
    rows = np.flatnonzero(table.get_flags(Flags.centroid_outlier))
    np.testing.assert_array_equal(back["miller_index"], table["miller_index"][rows])
    np.testing.assert_array_equal(back["xyzobs.mm.value"], table["xyzobs.mm.value"][rows])


# ----------------------------------------------------------------------------- synthetic
@pytest.fixture
def small():
    """A five-row table with typical DIALS columns."""
    return ReflectionTable(
        {
            "id": np.array([0, 1, 0, 1, 0]),
            "panel": np.array([2, 0, 1, 0, 2]),
            "miller_index": np.array([[1, 2, 3], [0, 0, 1], [1, 2, 2], [-1, 0, 0], [1, 1, 9]]),
            "intensity.sum.value": np.array([5.0, 1.0, 3.0, 1.0, 4.0]),
            "xyzobs.px.value": np.arange(15, dtype=float).reshape(5, 3),
            "entering": np.array([True, False, True, False, False]),
        },
        identifiers={0: "uuid-a", 1: "uuid-b"},
    )


def test_dict_like_basics(small):
    assert len(small) == small.nrows == 5
    assert "panel" in small and "flags" not in small
    assert list(small) == list(small.keys())
    small["extra"] = np.ones(5)
    assert "extra" in small
    del small["extra"]
    assert "extra" not in small
    with pytest.raises(KeyError, match="no column 'extra'"):
        small["extra"]
    with pytest.raises(KeyError, match="extra"):
        del small["extra"]
    assert "nrows=5" in repr(small)


def test_known_columns_take_dials_dtypes(small):
    assert small["panel"].dtype == np.uint64
    assert small["id"].dtype == np.int32
    assert small["miller_index"].dtype == np.int32
    with pytest.raises(ValueError, match="'panel'.*do not fit"):
        small["panel"] = np.array([0, -1, 0, 0, 0])
    with pytest.raises(TypeError, match="'miller_index'.*integer"):
        small["miller_index"] = np.zeros((5, 3))
    with pytest.raises(ValueError, match="'bbox'.*row shape"):
        small["bbox"] = np.zeros((5, 4), dtype=int)


def test_wrong_length_column_is_refused(small):
    with pytest.raises(ValueError, match="column 'd' has 4 rows, the table has 5"):
        small["d"] = np.ones(4)
    with pytest.raises(ValueError, match="'d'.*scalar"):
        small["d"] = 1.0
    with pytest.raises(ValueError, match="'x' has 2 rows"):
        ReflectionTable({"a": np.ones(3), "x": np.ones(2)})


def test_empty_tables():
    table = ReflectionTable()
    assert len(table) == 0 and list(table.keys()) == []
    table["a"] = np.arange(4)  # the first column sets the length
    assert table.nrows == 4
    sized = ReflectionTable.empty(3)
    assert sized.nrows == 3
    with pytest.raises(ValueError, match="'a' has 4 rows, the table has 3"):
        sized["a"] = np.arange(4)
    sized["a"] = np.arange(3)
    back = ReflectionTable.from_msgpack(ReflectionTable.empty().as_msgpack())
    assert back.nrows == 0 and list(back.keys()) == []


def test_select_by_mask_and_indices(small):
    by_mask = small.select(small["id"] == 0)
    np.testing.assert_array_equal(by_mask["intensity.sum.value"], [5.0, 3.0, 4.0])
    by_index = small.select([4, 0])
    np.testing.assert_array_equal(by_index["miller_index"], [[1, 1, 9], [1, 2, 3]])
    assert by_index.identifiers == small.identifiers
    by_index["panel"][:] = 7  # a new table: the source is untouched
    assert small["panel"][0] == 2
    assert small.select(np.zeros(5, bool)).nrows == 0
    with pytest.raises(ValueError, match="shape"):
        small.select(np.ones(4, bool))
    with pytest.raises(IndexError):
        small.select([5])


def test_sort(small):
    up = small.sort("intensity.sum.value")
    np.testing.assert_array_equal(up["intensity.sum.value"], [1, 1, 3, 4, 5])
    np.testing.assert_array_equal(up["panel"], [0, 0, 1, 2, 2])  # stable: row 1 before row 3
    np.testing.assert_array_equal(up["xyzobs.px.value"][:2, 0], [3, 9])
    down = small.sort("intensity.sum.value", reverse=True)
    np.testing.assert_array_equal(down["intensity.sum.value"], [5, 4, 3, 1, 1])
    np.testing.assert_array_equal(down["xyzobs.px.value"][3:, 0], [3, 9])  # still stable
    by_hkl = small.sort("miller_index")  # lexicographic on h, k, l
    np.testing.assert_array_equal(
        by_hkl["miller_index"], [[-1, 0, 0], [0, 0, 1], [1, 1, 9], [1, 2, 2], [1, 2, 3]]
    )
    with pytest.raises(KeyError):
        small.sort("nope")


def test_concat(small):
    other = small.select([1, 2])
    other.identifiers[2] = "uuid-c"
    both = ReflectionTable.concat([small, other, ReflectionTable.empty()])
    assert both.nrows == 7
    assert both.identifiers == {0: "uuid-a", 1: "uuid-b", 2: "uuid-c"}
    np.testing.assert_array_equal(both["panel"], [2, 0, 1, 0, 2, 0, 1])
    assert both["panel"].dtype == np.uint64
    assert ReflectionTable.concat([]).nrows == 0


def test_concat_refuses_mismatches(small):
    clash = small.copy()
    clash.identifiers[0] = "other"
    with pytest.raises(ValueError, match="id 0"):
        ReflectionTable.concat([small, clash])
    fewer = small.copy()
    del fewer["entering"]
    with pytest.raises(ValueError, match="entering"):
        ReflectionTable.concat([small, fewer])


def test_opaque_columns_dropped_by_concat_and_sort(small):
    small.opaque_columns["shoebox"] = OpaqueColumn("Shoebox<>", [5, b"\x00" * 10])
    with pytest.warns(OpaqueColumnsDropped):
        assert not ReflectionTable.concat([small, small]).opaque_columns
    with pytest.warns(OpaqueColumnsDropped):
        assert not small.sort("panel").opaque_columns
    assert small.copy().opaque_columns == small.opaque_columns


def test_flags(small):
    assert not small.get_flags(Flags.indexed).any()  # no flags column yet
    small.set_flags(small["id"] == 0, Flags.indexed)
    assert small["flags"].dtype == np.uint64
    small.set_flags([1, 2], Flags.strong | Flags.used_in_refinement)
    np.testing.assert_array_equal(small.get_flags(Flags.indexed), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(small.get_flags(Flags.strong), [0, 1, 1, 0, 0])
    both = Flags.indexed | Flags.strong
    np.testing.assert_array_equal(small.get_flags(both), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(small.get_flags(both, all=False), [1, 1, 1, 0, 1])
    small.unset_flags(np.ones(5, bool), Flags.indexed)
    assert not small.get_flags(Flags.indexed).any()
    np.testing.assert_array_equal(small["flags"], [0, 40, 40, 0, 0])


def test_flag_values_are_dials():
    assert Flags.predicted == 1 and Flags.observed == 2 and Flags.indexed == 4
    assert Flags.used_in_refinement == 8 and Flags.strong == 32
    assert Flags.reference_spot == 64 and Flags.dont_integrate == 128
    assert Flags.integrated == 256 | 512
    assert Flags.overloaded == 1 << 10 and Flags.overlapped_bg == 1 << 11
    assert Flags.includes_bad_pixels == (1 << 14) | (1 << 15)
    assert Flags.bad_spot == Flags.bad_shoebox == 0b1111110000000000
    assert Flags.centroid_outlier == 1 << 17 and Flags.bad_reference == 1 << 21
    assert Flags.bad_for_refinement == (1 << 25) | (1 << 17) and Flags.scaled == 1 << 26


def test_synthetic_round_trip_converts_to_dials_types(small):
    small["f32"] = np.array([0.5, 1, 2, 3, 4], dtype=np.float32)
    small["count"] = np.arange(5, dtype=np.int64)
    small["ucount"] = np.arange(5, dtype=np.uint16)
    small["uv"] = np.ones((5, 2))
    small["ub"] = np.tile(np.arange(9.0).reshape(3, 3), (5, 1, 1))
    small.set_flags([0], Flags.predicted)
    raw = msgpack.unpackb(small.as_msgpack(), strict_map_key=False)
    assert raw[0] == "dials::af::reflection_table" and raw[1] == 1
    types = {name: value[0] for name, value in raw[2]["data"].items()}
    assert list(types) == sorted(types)
    assert types == {
        "count": "int", "entering": "bool", "f32": "double", "flags": "std::size_t",
        "id": "int", "intensity.sum.value": "double", "miller_index": "cctbx::miller::index<>",
        "panel": "std::size_t", "ub": "mat3<double>", "ucount": "std::size_t",
        "uv": "vec2<double>", "xyzobs.px.value": "vec3<double>",
    }
    assert len(raw[2]["data"]["ub"][1][1]) == 5 * 9 * 8
    back = ReflectionTable.from_msgpack(small.as_msgpack())
    assert back.identifiers == small.identifiers
    for name in small.keys():
        np.testing.assert_array_equal(back[name], small[name], err_msg=name)
    assert back["f32"].dtype == np.float64 and back["count"].dtype == np.int32
    assert back["ub"].shape == (5, 3, 3)


def test_unwritable_columns_are_clear_errors(small):
    small["too_big"] = np.array([0, 0, 0, 0, 2**40])
    with pytest.raises(ValueError, match="'too_big'.*do not fit"):
        small.as_msgpack()
    del small["too_big"]
    small["odd"] = np.zeros((5, 4))
    with pytest.raises(TypeError, match="'odd'.*no DIALS column type"):
        small.as_msgpack()
    with pytest.raises(TypeError, match="'name'"):
        small["name"] = np.array(["a"] * 5)


# ----------------------------------------------------------------------------- bad files
def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.refl"
    with pytest.raises(FileNotFoundError, match="nowhere.refl"):
        ReflectionTable.from_file(path)


def test_truncated_file_names_the_file(shared_data, tmp_path):
    data = (shared_data / "reference/thermolysin_cspad.strong.refl").read_bytes()
    path = tmp_path / "truncated.refl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReflectionFileError, match=r"truncated\.refl.*truncated or corrupt"):
        ReflectionTable.from_file(path)


def test_not_a_reflection_table(tmp_path):
    path = tmp_path / "other.refl"
    path.write_bytes(msgpack.packb({"hello": 1}))
    with pytest.raises(ReflectionFileError, match=r"other\.refl.*not a DIALS reflection table"):
        ReflectionTable.from_file(path)
    path.write_text('{"json": true}')
    with pytest.raises(ReflectionFileError, match=r"other\.refl"):
        ReflectionTable.from_file(path)


def test_inconsistent_column_sizes_are_errors(small):
    obj = msgpack.unpackb(small.as_msgpack(), strict_map_key=False)
    obj[2]["data"]["panel"][1][1] = obj[2]["data"]["panel"][1][1][:-8]
    with pytest.raises(ReflectionFileError, match="'panel'.*32 bytes, expected 40"):
        ReflectionTable.from_msgpack(msgpack.packb(obj), source="bad.refl")
    obj = msgpack.unpackb(small.as_msgpack(), strict_map_key=False)
    obj[2]["data"]["id"][1][0] = 4
    with pytest.raises(ReflectionFileError, match="bad.refl.*'id' has 4 rows"):
        ReflectionTable.from_msgpack(msgpack.packb(obj), source="bad.refl")


def test_unknown_column_types_round_trip_opaque(small):
    obj = msgpack.unpackb(small.as_msgpack(), strict_map_key=False)
    obj[2]["data"]["zz_new"] = ["FrameSlicedShoebox<>", [5, b"\x03" + b"\x00" * 20]]
    data = msgpack.packb(obj)
    table = ReflectionTable.from_msgpack(data)
    assert table.opaque_columns["zz_new"].type_name == "FrameSlicedShoebox<>"
    with pytest.raises(KeyError, match="not decoded by stillshot"):
        table["zz_new"]
    assert table.as_msgpack() == data
