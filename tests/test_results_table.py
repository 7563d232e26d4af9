"""edgeuq.report.results_table: the one {headers, rows} builder of the package. It keeps the table
as given (content equal to the hand-built dict it replaces) and refuses malformed tables."""
import json

import pytest

from edgeuq.report import results_table


def test_content_equals_the_hand_built_dict():
    rows = [("a", 1, 0.5), ["b", None, "x"]]
    got = results_table(("h1", "h2", "h3"), rows, note="n", command="c")
    want = {"headers": ["h1", "h2", "h3"], "rows": [["a", 1, 0.5], ["b", None, "x"]], "note": "n", "command": "c"}
    assert json.loads(json.dumps(got)) == want


@pytest.mark.parametrize("headers, rows, match", [
    (["a", "b"], [[1, 2], [3]], r"row 1 has 1 cells for 2 headers"),
    (["a", "b"], [[1, 2, 3]], r"row 0 has 3 cells"),
    (["a", 2], [], r"headers must be a list of strings"),
    ("ab", [], r"headers must be a list of strings"),
    (["a"], ["x"], r"row 0 must be a list of cells"),
])
def test_malformed_tables_are_refused(headers, rows, match):
    with pytest.raises(ValueError, match=match):
        results_table(headers, rows)

