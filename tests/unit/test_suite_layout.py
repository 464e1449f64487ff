"""The test suite itself: pytest (rootdir-relative imports, no packages) cannot collect two
test modules of the same name, so a unit test named like an end-to-end one breaks the run."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_unit_test_module_shares_a_name_with_an_end_to_end_one():
    unit = {path.name for path in (TESTS / "unit").glob("test_*.py")}
    e2e = {path.name for path in (TESTS / "e2e").glob("test_*.py")}
    assert unit.isdisjoint(e2e), f"rename the unit test(s): {sorted(unit & e2e)}"
