"""Field flags and reprocessing campaigns: flag bits, rules files, routing, diff, update, exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table
from mocpy import MOC

from catalog import frame_row, insert_frames, new_run, square_corners
from density_db import sky
from density_db.database import Database
from density_db.flag_rules import FlagRules, default_flag_rules
from density_db.flags import FLAGS, flag_names
from density_db.planning.flag_runs import recompute_flags
from density_db.planning.rules import RulesError, default_rules, parse_rules
from density_db.regions import ConeRegion
from density_db.tables import DensityResult

HALF_SIDE_DEG = 0.095  # a CSST detector is 11.4' across


def probabilities_for(
    density_class: int,
    confidence: float = 0.9,
    runner_up: int | None = None,
    runner_up_probability: float | None = None,
) -> list[float]:
    """Six probabilities peaked on ``density_class``, with an optional second choice."""
    probabilities = np.zeros(6)
    probabilities[density_class] = confidence
    if runner_up is not None:
        probabilities[runner_up] = runner_up_probability
    rest = [index for index in range(6) if probabilities[index] == 0]
    probabilities[rest] = (1 - probabilities.sum()) / len(rest)
    return probabilities.tolist()


def add_results(database: Database, run: tuple[int, int, int], results: dict[int, dict]) -> dict[int, int]:
    """Insert results (frame id -> class, probabilities, bright_count); returns frame id -> result id."""
    classifier_id, regressor_id, run_id = run
    rows = []
    for frame_id, result in results.items():
        klass = result["class"]
        probabilities = result.get("probabilities") or probabilities_for(klass)
        bright = result.get("bright_count", None if klass == 5 else 500.0)
        rows.append(
            {
                "frame_id": frame_id,
                "classifier_id": classifier_id,
                "regressor_id": regressor_id,
                "run_id": run_id,
                "density_class": klass,
                "probabilities": probabilities,
                "class_confidence": max(probabilities),
                "bright_count": bright,
                "log_bright": None if bright is None else float(np.log10(1 + bright)),
                "regression_status": {0: "empty", 5: "bypassed"}.get(klass, "predicted"),
            }
        )
    with database.engine.begin() as connection:
        ids = connection.execute(
            sa.insert(DensityResult).returning(DensityResult.frame_id, DensityResult.id), rows
        ).all()
    return dict(ids)


def frame_at(ra: float, dec: float, band: str = "g", valid_fraction: float | None = 1.0, path: str | None = None):
    row = frame_row(*square_corners(ra, dec, HALF_SIDE_DEG), band=band, valid_fraction=valid_fraction)
    row["path"] = path or f"/archive/{band}_{ra:.3f}_{dec:.3f}.fits"
    return row


def stored_flags(database: Database) -> dict[int, tuple[int, list[str], int | None]]:
    """frame id -> (flags, flag_names() from SQL, flags_run_id) of every result."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT frame_id, flags, flag_names(flags), flags_run_id FROM density_result")
        ).all()
    return {frame_id: (flags, names, run_id) for frame_id, flags, names, run_id in rows}


# -- flags ---------------------------------------------------------------------------------


@pytest.fixture
def flagged_catalog(database: Database) -> dict[str, int]:
    """Frames named by what their result should be flagged with; returns name -> frame id."""
    layout = {  # name: (ra, dec, band, valid fraction)
        "extreme": (10.0, 0.0, "g", 1.0),
        "neighbour_r": (10.2, 0.0, "r", 1.0),  # 0.2 deg from "extreme", other band, class 1
        "neighbour_same_band": (9.8, 0.0, "g", 1.0),  # 0.2 deg from "extreme", same band: no disagreement
        "out_of_range": (12.0, 0.0, "i", 1.0),
        "few_references": (14.0, 0.0, "z", 1.0),
        "near_boundary": (16.0, 0.0, "u", 1.0),
        "low_confidence_only": (18.0, 0.0, "y", 1.0),
        "poor_input": (20.0, 0.0, "NUV", 0.5),
        "clean": (22.0, 0.0, "g", 0.95),
    }
    names = list(layout)
    ids = insert_frames(database, [frame_at(ra, dec, band, fraction) for ra, dec, band, fraction in layout.values()])
    # the same sky as "extreme" in another exposure and band: not compared
    other_exposure = insert_frames(database, [frame_at(10.0, 0.0, "r", 1.0, path="/archive/other.fits")])
    frames = dict(zip(names, ids, strict=True)) | {"other_exposure": other_exposure[0]}
    add_results(
        database,
        new_run(database, "flags"),
        {
            frames["extreme"]: {"class": 5},
            frames["neighbour_r"]: {"class": 1, "bright_count": 100.0},
            frames["neighbour_same_band"]: {"class": 1, "bright_count": 100.0},
            frames["out_of_range"]: {"class": 4, "bright_count": 2500.0},
            frames["few_references"]: {"class": 1, "bright_count": 5.0},
            frames["near_boundary"]: {"class": 2, "probabilities": probabilities_for(2, 0.45, 3, 0.35)},
            frames["low_confidence_only"]: {"class": 2, "probabilities": probabilities_for(2, 0.5, 0, 0.4)},
            frames["poor_input"]: {"class": 2},
            frames["clean"]: {"class": 2},
            frames["other_exposure"]: {"class": 1, "bright_count": 100.0},
        },
    )
    return frames


EXPECTED_FLAGS = {
    "extreme": ["crowded", "extreme", "band_disagreement"],
    "neighbour_r": ["band_disagreement"],
    "neighbour_same_band": [],
    "out_of_range": ["crowded", "out_of_regression_range"],
    "few_references": ["few_references"],
    "near_boundary": ["low_confidence", "near_class_boundary"],
    "low_confidence_only": ["low_confidence"],
    "poor_input": ["poor_input"],
    "clean": [],
    "other_exposure": [],
}


def test_flag_bits_on_hand_made_results(database: Database, flagged_catalog: dict[str, int]) -> None:
    outcome = recompute_flags(database, FlagRules.from_rules(default_rules()))
    stored = stored_flags(database)
    for name, expected in EXPECTED_FLAGS.items():
        flags, sql_names, flags_run = stored[flagged_catalog[name]]
        assert flag_names(flags) == expected, name
        assert sql_names == expected, name
        assert flags_run == outcome.run_id
    assert outcome.results == len(EXPECTED_FLAGS)
    assert outcome.counts["crowded"] == 2 and outcome.counts["band_disagreement"] == 2
    with database.engine.connect() as connection:
        config = connection.execute(sa.text("SELECT config FROM run WHERE id = :id"), {"id": outcome.run_id}).scalar()
    assert config["flag_rules"]["flags"]["few_references_below"] == 30


def test_flags_recompute_with_a_rules_file_changes_flags_without_the_models(
    run_cli, database: Database, flagged_catalog: dict[str, int], tmp_path: Path
) -> None:
    rules = tmp_path / "strict.toml"
    rules.write_text(default_rules_text().replace("few_references_below = 30", "few_references_below = 200"))
    result = run_cli("flags", "recompute", "--rules", str(rules))
    assert result.exit_code == 0, result.output
    assert "strict.toml" in result.output
    stored = stored_flags(database)
    assert flag_names(stored[flagged_catalog["neighbour_r"]][0]) == ["few_references", "band_disagreement"]
    assert flag_names(stored[flagged_catalog["clean"]][0]) == []  # 500 bright stars
    # the recomputed rules are now in force: listed, and used by later runs
    listing = run_cli("flags", "list", "--format", "table")
    assert "few_references_below = 200" in listing.output
    assert [line.split(",")[2] for line in run_cli("flags", "list", "--format", "csv").output.splitlines()[1:]] == [
        flag.name for flag in FLAGS
    ]


def default_rules_text() -> str:
    from importlib import resources

    return resources.files("density_db").joinpath("default_rules.toml").read_text()


# -- rules files ---------------------------------------------------------------------------


BRANCH = '[[branch]]\nname = "standard"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "red"\n' + BRANCH, "unknown key 'colour'"),
        ('[[branch]]\nname = "a"\nwhen = { klass = 5 }\n' + BRANCH, "when: unknown key 'klass'"),
        ('[[branch]]\nname = "a"\nwhen = { density_class = "four" }\n' + BRANCH, "density_class must be a class 0-5"),
        ('[[branch]]\nname = "a"\nwhen = { density_class = 7 }\n' + BRANCH, "density_class must be a class 0-5"),
        (
            '[[branch]]\nname = "a"\nwhen = { bright_count = { below = "ten" } }\n' + BRANCH,
            "bright_count.below must be",
        ),
        ('[[branch]]\nname = "a"\nwhen = { bright_count = { under = 10 } }\n' + BRANCH, "unknown key 'under'"),
        ('[[branch]]\nname = "a"\nwhen = { flags_any = ["wobbly"] }\n' + BRANCH, "unknown flag 'wobbly'"),
        ('[[branch]]\nname = "a"\ncost_per_frame = -1\n' + BRANCH, "cost_per_frame must be a number >= 0"),
        ('[[branch]]\nname = "a b"\n' + BRANCH, "name must be a word"),
        ('[[branch]]\nname = "a"\nwhen = { band = "g" }\n[[branch]]\nname = "a"\n', "two branches are named 'a'"),
        ('[[branch]]\nname = "standard"\nwhen = { band = "g" }\n', "the last branch must take every frame"),
        ("[flags]\ncrowded_min_class = 4\n" + BRANCH, "[flags]: missing few_references_below"),
        (
            '[[branch]]\nname = "a"\nwhen = { region = { cone = [10, 0] } }\n' + BRANCH,
            "region cone is [ra, dec, radius]",
        ),
        ("[[branch]\nname = 'a'\n", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_is_an_error_that_says_where(text: str, message: str) -> None:
    with pytest.raises(RulesError) as error:
        parse_rules(text.encode(), source="team.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("team.toml")


@pytest.mark.parametrize(
    ("branches", "unreachable", "because"),
    [
        (
            'name = "crowded"\nwhen = { density_class = { min = 4 } }\n[[branch]]\nname = "extreme"\n'
            "when = { density_class = 5 }",
            "extreme",
            "earlier branch 'crowded'",
        ),
        (
            'name = "any_flag"\nwhen = { flags_any = ["low_confidence", "near_class_boundary"] }\n[[branch]]\n'
            'name = "doubtful_g"\nwhen = { flags_all = ["low_confidence"], band = "g" }',
            "doubtful_g",
            "'any_flag'",
        ),
        ('name = "empty"\nwhen = { bright_count = { min = 10, below = 5 } }', "empty", "empty range"),
        ('name = "everything"\n[[branch]]\nname = "later"\nwhen = { band = "g" }', "later", "'everything'"),
    ],
)
def test_unreachable_branches_are_warned_about(branches: str, unreachable: str, because: str) -> None:
    rules = parse_rules(f"[[branch]]\n{branches}\n".encode(), source="team.toml")
    assert any(
        f"branch {unreachable!r} can never be chosen" in warning and because in warning for warning in rules.warnings
    ), rules.warnings


def test_rules_without_a_catch_all_get_a_standard_branch_and_the_default_rules_are_clean() -> None:
    rules = parse_rules(b'[[branch]]\nname = "crowded"\nwhen = { density_class = { min = 4 } }\n', source="x.toml")
    assert [branch.name for branch in rules.branches] == ["crowded", "standard"]
    assert rules.warnings == ()
    shipped = default_rules()
    assert shipped.warnings == () and shipped.branches[-1].name == "standard" and shipped.flags is not None


def test_the_core_reads_the_same_default_thresholds_as_the_rules_file() -> None:
    """Ingest takes the shipped thresholds without the planning layer; they and their provenance must not differ."""
    assert default_flag_rules() == FlagRules.from_rules(default_rules())


def test_plan_rules_shows_branches_and_warnings(run_cli, tmp_path: Path) -> None:
    dumped = run_cli("plan", "rules", "--dump")
    assert dumped.output == default_rules_text()
    rules = tmp_path / "shadowed.toml"
    rules.write_text('[[branch]]\nname = "all"\n[[branch]]\nname = "never"\nwhen = { band = "g" }\n')
    checked = run_cli("plan", "rules", "--rules", str(rules))
    assert (
        "1. all" in checked.output and "warning: " in checked.output and "'never' can never be chosen" in checked.output
    )


# -- campaigns -----------------------------------------------------------------------------


ROUTING_RULES = """
name = "test-routing"
[[branch]]
name = "extreme"
cost_per_frame = 10
when = { density_class = 5 }
[[branch]]
name = "crowded"
cost_per_frame = 3
when = { density_class = { min = 4 } }
[[branch]]
name = "few_stars"
when = { bright_count = { below = 30 } }
[[branch]]
name = "red_sky"
when = { band = "r", confidence = { min = 0.8 } }
[[branch]]
name = "target"
when = { region = { cone = [40.0, 0.0, 0.5] } }
[[branch]]
name = "standard"
cost_per_frame = 1
"""


@pytest.fixture
def survey(database: Database) -> dict[str, int]:
    """Frames named by the branch the routing rules must send them to (one has no result)."""
    layout = {
        "extreme": (30.0, 0.0, "g", {"class": 5}),
        "crowded": (31.0, 0.0, "r", {"class": 4, "bright_count": 5.0}),  # class wins over few stars and band
        "few_stars": (32.0, 0.0, "r", {"class": 1, "bright_count": 3.0}),
        "red_sky": (33.0, 0.0, "r", {"class": 2}),
        "unsure_red": (34.0, 0.0, "r", {"class": 2, "probabilities": probabilities_for(2, 0.5)}),
        "target": (40.3, 0.0, "g", {"class": 2}),  # edge within 0.5 deg of the cone centre
        "standard": (45.0, 0.0, "g", {"class": 2}),
        "no_result": (46.0, 0.0, "g", None),
    }
    ids = insert_frames(database, [frame_at(ra, dec, band) for ra, dec, band, _ in layout.values()])
    frames = dict(zip(layout, ids, strict=True))
    run = new_run(database, "survey")
    add_results(database, run, {frames[name]: result for name, (*_, result) in layout.items() if result})
    frames["run_id"] = run[2]
    return frames


EXPECTED_BRANCHES = {
    "extreme": "extreme",
    "crowded": "crowded",
    "few_stars": "few_stars",
    "red_sky": "red_sky",
    "unsure_red": "standard",
    "target": "target",
    "standard": "standard",
}


def exported(run_cli, name: str, *extra: str) -> list[dict]:
    result = run_cli("plan", "export", name, "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_first_matching_branch_wins(run_cli, survey: dict[str, int], tmp_path: Path) -> None:
    rules = tmp_path / "routing.toml"
    rules.write_text(ROUTING_RULES)
    created = run_cli("plan", "create", "spring", "--rules", str(rules))
    assert created.exit_code == 0, created.output
    assert "7 frames with rules 'test-routing'" in created.output
    assert "1 selected frames have no density result" in created.output
    branches = {row["frame_id"]: row["branch"] for row in exported(run_cli, "spring")}
    assert branches == {survey[name]: branch for name, branch in EXPECTED_BRANCHES.items()}
    items = exported(run_cli, "spring")
    assert {row["status"] for row in items} == {"pending"}
    shown = run_cli("plan", "show", "spring", "--format", "table")
    assert "rules 'test-routing'" in shown.output
    assert "extreme" in shown.output and "cost 15" in shown.output  # 10 + 3 + 2 standard frames x 1
    listing = run_cli("plan", "list", "--format", "csv").output.splitlines()
    assert listing[1].startswith("spring,") and ",7,6,7,0,0," in listing[1]


def test_selection_by_band_region_and_run(run_cli, survey: dict[str, int], tmp_path: Path) -> None:
    assert run_cli("plan", "create", "reds", "--band", "R").exit_code == 0  # the profile's spelling is r
    assert {row["band"] for row in exported(run_cli, "reds")} == {"r"}
    assert len(exported(run_cli, "reds")) == 4
    assert run_cli("plan", "create", "patch", "--region", "polygon:29.5,-1,32.5,-1,32.5,1,29.5,1").exit_code == 0
    assert {row["frame_id"] for row in exported(run_cli, "patch")} == {
        survey["extreme"],
        survey["crowded"],
        survey["few_stars"],
    }
    assert run_cli("plan", "create", "one-run", "--run", str(survey["run_id"])).exit_code == 0
    assert len(exported(run_cli, "one-run")) == 7
    missing_run = run_cli("plan", "create", "nothing", "--run", "999")
    assert missing_run.exit_code == 1 and "run 999 has no density results" in missing_run.output
    again = run_cli("plan", "create", "reds")
    assert again.exit_code == 1 and "a campaign named 'reds' exists" in again.output
    bad_region = run_cli("plan", "create", "x", "--region", "10,100,1")
    assert bad_region.exit_code == 2 and "Dec in [-90, 90]" in bad_region.output


def test_diff_after_new_results_and_update_round_trip(
    run_cli, database: Database, survey: dict[str, int], tmp_path: Path
) -> None:
    assert run_cli("plan", "create", "before").exit_code == 0
    # new models: one crowded frame is now extreme, one standard frame now crowded
    add_results(
        database,
        new_run(database, "new-models"),
        {
            survey["crowded"]: {"class": 5},
            survey["standard"]: {"class": 4, "bright_count": 3000.0},
            survey["red_sky"]: {"class": 2},
        },
    )
    assert run_cli("plan", "create", "after").exit_code == 0
    diff = run_cli("plan", "diff", "before", "after", "--format", "csv")
    assert diff.output.splitlines() == [
        "from_branch,to_branch,frames",
        "deblending,crowded_photometry,1",
        "standard,deblending,1",
    ]
    frames = run_cli("plan", "diff", "before", "after", "--frames", "--format", "json")
    changed = {row["frame_id"]: (row["from_class"], row["to_class"]) for row in json.loads(frames.output)}
    assert changed == {survey["crowded"]: (4, 5), survey["standard"]: (2, 4)}

    items = {row["frame_id"]: row for row in exported(run_cli, "after")}
    report = tmp_path / "pipeline.csv"
    extreme, crowded, standard = (items[survey[name]] for name in ("extreme", "crowded", "standard"))
    report.write_text(
        "frame_id,path,hdu_index,exposure_id,detector,status\n"
        f"{extreme['frame_id']},,,,,done\n"
        f",{crowded['path']},{crowded['hdu_index']},,,failed\n"
        f",,,{standard['exposure_id']},{standard['detector']},DONE\n"
        "999999,,,,,done\n"
        ",/archive/unknown.fits,,,,done\n"
        f"{survey['no_result']},,,,,done\n"
    )
    updated = run_cli("plan", "update", "after", "--from", str(report))
    assert updated.exit_code == 3
    assert "3 items updated, 0 already had that status, 3 report lines matched no item" in updated.output
    assert "line 5: frame 999999 is not a registered frame" in updated.output
    assert "line 6: path /archive/unknown.fits is not a registered frame" in updated.output
    assert f"line 7: frame {survey['no_result']} is not in the campaign" in updated.output
    statuses = {row["frame_id"]: row["status"] for row in exported(run_cli, "after")}
    assert statuses[extreme["frame_id"]] == "done" and statuses[crowded["frame_id"]] == "failed"
    assert statuses[standard["frame_id"]] == "done"
    assert sum(status == "pending" for status in statuses.values()) == 4
    again = run_cli("plan", "update", "after", "--from", str(report))
    assert "0 items updated, 3 already had that status" in again.output
    status = run_cli("plan", "status", "--format", "csv").output.splitlines()
    assert status[2].startswith("after,7,4,2,1,28.6,")

    bad = tmp_path / "bad.csv"
    bad.write_text(f"frame_id,status\n{extreme['frame_id']},pending\n{crowded['frame_id']},finished\n")
    refused = run_cli("plan", "update", "after", "--from", str(bad))
    assert refused.exit_code == 1 and "line 3: status 'finished' is not one of pending, done, failed" in refused.output
    assert {row["frame_id"]: row["status"] for row in exported(run_cli, "after")}[extreme["frame_id"]] == "done"


def test_exports_read_back_equal_the_stored_campaign(
    run_cli, database: Database, survey: dict[str, int], tmp_path: Path
) -> None:
    assert run_cli("plan", "create", "export-me").exit_code == 0
    items = exported(run_cli, "export-me")
    ecsv = tmp_path / "items.ecsv"
    assert run_cli("plan", "export", "export-me", "--format", "ecsv", "--out", str(ecsv)).exit_code == 0
    table = Table.read(ecsv, format="ascii.ecsv")
    assert list(table["frame_id"]) == [row["frame_id"] for row in items]
    assert list(table["branch"]) == [row["branch"] for row in items]
    assert list(table["density_class"]) == [row["density_class"] for row in items]
    csv_rows = run_cli("plan", "export", "export-me", "--branch", "standard").output.splitlines()
    assert len(csv_rows) == 1 + sum(row["branch"] == "standard" for row in items)

    out = tmp_path / "mocs"
    written = run_cli("plan", "export", "export-me", "--format", "moc", "--out", str(out))
    assert written.exit_code == 0, written.output
    files = sorted(out.iterdir())
    assert [path.name for path in files] == sorted(
        f"export-me_{branch}_moc.fits" for branch in {row["branch"] for row in items}
    )
    with database.engine.connect() as connection:
        footprints = dict(connection.execute(sa.text("SELECT id, footprint FROM frame")).all())
    for path in files:
        branch = path.name.removeprefix("export-me_").removesuffix("_moc.fits")
        ranges = np.array(
            [(r.lower, r.upper) for row in items if row["branch"] == branch for r in footprints[row["frame_id"]]],
            dtype=np.uint64,
        )
        expected = MOC.from_depth29_ranges(sky.FOOTPRINT_DEPTH, ranges)
        assert MOC.from_fits(path) == expected, branch


def test_deleting_campaigns_frames_and_results_keeps_items_consistent(
    run_cli, database: Database, survey: dict[str, int]
) -> None:
    assert run_cli("plan", "create", "kept").exit_code == 0
    assert run_cli("plan", "create", "dropped").exit_code == 0
    assert "campaign 'dropped' deleted (7 items)" in run_cli("plan", "delete", "dropped", "--yes").output
    with database.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM frame WHERE id = :id"), {"id": survey["extreme"]})
        connection.execute(sa.text("DELETE FROM density_result WHERE frame_id = :id"), {"id": survey["target"]})
        items = dict(connection.execute(sa.text("SELECT frame_id, result_id FROM campaign_item")).all())
    assert len(items) == 6 and survey["extreme"] not in items and items[survey["target"]] is None
    missing = run_cli("plan", "show", "dropped")
    assert missing.exit_code == 1 and "no campaign named 'dropped'; campaigns: kept" in missing.output


def test_cone_region_overlap_is_exact_at_the_edges() -> None:
    cone = ConeRegion(40.0, 0.0, 0.5)
    near_edge = square_corners(40.3, 0.0, HALF_SIDE_DEG)  # nearest edge at 0.205 deg, corners further
    beyond = square_corners(40.7, 0.0, HALF_SIDE_DEG)  # nearest edge at 0.605 deg
    around = square_corners(40.0, 0.0, 1.0)  # the cone lies inside the frame
    edge_only = square_corners(40.0, 0.58, 0.1, aspect=1.0)  # 0.48 deg from the centre along an edge's middle
    corner_ra = np.array([near_edge[0], beyond[0], around[0], edge_only[0]])
    corner_dec = np.array([near_edge[1], beyond[1], around[1], edge_only[1]])
    assert cone.overlaps(corner_ra, corner_dec).tolist() == [True, False, True, True]
