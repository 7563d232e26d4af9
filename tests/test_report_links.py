"""report.md links its images relative to its own folder, however the paths were given."""
import os
import re

from edgeuq.report import format_table, write_markdown_report


def _links(text):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_relative_and_absolute_image_paths_resolve_from_the_report_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "a.png").write_bytes(b"\x89PNG")
    (run / "plots").mkdir()
    (run / "plots" / "b.png").write_bytes(b"\x89PNG")
    report = write_markdown_report(os.path.join("runs", "demo", "report.md"), "t", {"S": "body"},
                                   images={"A": os.path.join("runs", "demo", "a.png"),   # relative to the cwd
                                           "B": run / "plots" / "b.png"})              # absolute
    links = _links((run / "report.md").read_text())
    assert links == ["a.png", "plots/b.png"]
    for link in links:  # each resolves from the report's folder, not from the cwd
        assert (run / link).is_file()
    assert not list(run.glob(".*.tmp")) and str(report).endswith("report.md")


def test_markdown_table_format():
    assert format_table(["a", "b"], [[1, 0.5]], markdown=True) == "| a | b |\n|---|---|\n| 1 | 0.5 |"
